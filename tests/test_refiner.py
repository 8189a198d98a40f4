import pytest
from PIL import Image

from offline_seg.classes import ClassList
from offline_seg.errors import InvalidInputError
from offline_seg.llm.base import LabelList
from offline_seg.stages.refiner import PromptTemplates, Refiner, labels_without_llm
from offline_seg.types import Recognition

VOC = ClassList.preset("voc")


class ScriptedLLM:
    """Answers from a table and records every call, so tests can count LLM traffic."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers
        self.calls: list[dict] = []

    def complete(self, conversations, *, choices=None, max_new_tokens=200):
        self.calls.append({"users": [c[-1]["content"] for c in conversations], "choices": choices})
        return [self.answers.get(c[-1]["content"], "no idea") for c in conversations]


def test_templates_are_the_papers_with_labels_filled():
    templates = PromptTemplates.load()
    system = templates.system(templates.pre_refine, VOC)
    assert 'predefined label list: "background, aeroplane, bicycle,' in system
    assert "label1, label2, ... labeln" in system
    assert "{labels}" not in templates.system(templates.post_refine, VOC)


def test_templates_from_a_directory(tmp_path):
    (tmp_path / "pre_refine.txt").write_text("PRE {labels}")
    (tmp_path / "post_refine.txt").write_text("POST {labels}")
    templates = PromptTemplates.load(tmp_path)
    assert templates.system(templates.post_refine, ClassList.parse("bg, x")) == "POST bg, x"
    with pytest.raises(InvalidInputError):
        PromptTemplates.load(tmp_path / "nowhere")
    (tmp_path / "pre_refine.txt").write_bytes(b"\xff PRE {labels}")
    with pytest.raises(InvalidInputError, match="the prompt template .* is not UTF-8 text"):
        PromptTemplates.load(tmp_path)


def test_pre_refine_builds_the_prompt_and_parses_reply():
    recognition = Recognition(("man", "dog", "couch"), "a man with his dog on a couch")
    llm = ScriptedLLM({"Here are input caption tags and text: man, dog, couch: a man with his dog on a couch":
                       "Person, dogs, sofa, background, lamp"})
    refiner = Refiner(llm, VOC)
    [(labels, reply)] = refiner.pre_refine([recognition])
    assert labels == ["person", "dog", "sofa"]  # background and non-members dropped
    assert reply == "Person, dogs, sofa, background, lamp"
    assert llm.calls[0]["choices"] is None


def test_post_refine_skips_known_phrases_batches_and_caches():
    llm = ScriptedLLM({"man": "person", "couch": "sofa", "wall": "background", "lamp": "a lamp"})
    refiner = Refiner(llm, VOC)
    result = refiner.post_refine(["man", "dog", "couch", "man", "wall", "lamp", "Dogs"])
    assert result.labels == ["person", "dog", "sofa", "person", None, None, "dog"]
    assert llm.calls == [{"users": ["man", "couch", "wall", "lamp"], "choices": list(VOC.names)}]
    assert result.replies == {"man": "person", "couch": "sofa", "wall": "background", "lamp": "a lamp"}
    again = refiner.post_refine(["couch", "man", "cat"])
    assert again.labels == ["sofa", "person", "cat"]
    assert len(llm.calls) == 1 and again.replies == {}  # all cached or known: no new call


def test_unconstrained_post_refine_sends_no_choices():
    llm = ScriptedLLM({"tv screen": "Monitor."})
    refiner = Refiner(llm, VOC, constrained=False)
    assert refiner.post_refine(["tv screen"]).labels == ["monitor"]
    assert llm.calls[0]["choices"] is None


class ConstrainedScriptedLLM(ScriptedLLM):
    """The current protocol: takes `constraint=` and has an identity for the persistent cache."""

    identity = "scripted-v1"

    def complete(self, conversations, *, choices=None, constraint=None, max_new_tokens=200):
        self.calls.append({"users": [c[-1]["content"] for c in conversations], "choices": choices,
                           "constraint": constraint})
        return [self.answers.get(c[-1]["content"], "background") for c in conversations]


def test_constrained_pre_refine_asks_for_a_foreground_label_list():
    llm = ConstrainedScriptedLLM({"Here are input caption tags and text: dog": "dog, sofa"})
    [(labels, _)] = Refiner(llm, VOC).pre_refine([Recognition(("dog",))])
    assert labels == ["dog", "sofa"]
    assert llm.calls[0]["constraint"] == LabelList((*VOC.foreground, "none of these"))
    Refiner(llm, VOC, constrained=False).pre_refine([Recognition(("dog",))])
    assert llm.calls[1]["constraint"] is None


def test_post_refine_batch_makes_one_call_for_a_chunk():
    llm = ConstrainedScriptedLLM({"man": "person", "couch": "sofa", "puppy": "dog"})
    refiner = Refiner(llm, VOC)
    results = refiner.post_refine_batch([["man", "dog"], ["couch", "man"], [], ["puppy", "wall"]])
    assert [r.labels for r in results] == [["person", "dog"], ["sofa", "person"], [], ["dog", None]]
    assert llm.calls == [{"users": ["man", "couch", "puppy", "wall"], "choices": list(VOC.names), "constraint": None}]
    assert results[1].replies == {"couch": "sofa", "man": "person"} and results[2].replies == {}


def test_persistent_phrase_cache_spares_calls_in_the_next_run(tmp_path):
    answers = {"man": "person", "wall": "background"}
    first = ConstrainedScriptedLLM(answers)
    cache = Refiner.open_phrase_cache(tmp_path, first, VOC)
    Refiner(first, VOC, phrase_cache=cache).post_refine(["man", "wall"])
    second = ConstrainedScriptedLLM(answers)  # a new run: same model, class list and prompt
    refiner = Refiner(second, VOC, phrase_cache=Refiner.open_phrase_cache(tmp_path, second, VOC))
    assert refiner.post_refine(["wall", "man", "puppy"]).labels == [None, "person", None]
    assert [call["users"] for call in second.calls] == [["puppy"]]
    other_list = Refiner.open_phrase_cache(tmp_path, second, ClassList.preset("dram"))
    assert "man" not in other_list
    assert Refiner.open_phrase_cache(tmp_path, ScriptedLLM({}), VOC) is None  # no identity: nothing reused


def test_no_post_refine_keeps_only_members():
    assert labels_without_llm(["dog", "man", "Cats", "background"], VOC) == ["dog", None, "cat", None]


def test_constrained_pre_refine_can_answer_none_of_these_and_keeps_and_inside_labels():
    classes = ClassList.parse("background, salt and pepper, dog, cat")
    llm = ConstrainedScriptedLLM({"Here are input caption tags and text: shaker": "salt and pepper, dog",
                                  "Here are input caption tags and text: sky": "none of these"})
    results = Refiner(llm, classes).pre_refine([Recognition(("shaker",)), Recognition(("sky",))])
    assert [labels for labels, _ in results] == [["salt and pepper", "dog"], []]
    assert "none of these" in llm.calls[0]["constraint"].options


def test_nothing_named_means_the_detector_is_not_called():
    from offline_seg.pipeline import Pipeline
    from offline_seg.config import PipelineConfig

    class NoDetector:
        def detect(self, image, labels):
            raise AssertionError("the detector must not run when pre-refinement names nothing")

    class OneTag:
        def tag(self, image):
            return ("sky",)

    llm = ConstrainedScriptedLLM({"Here are input caption tags and text: sky": "none of these"})
    pipeline = Pipeline(PipelineConfig(use_caption=False, phrase_cache_dir=None, refiner="llm"), tagger=OneTag(), llm=llm,
                        detector=NoDetector())
    [(labels, reply)] = pipeline.scene_labels([Recognition(("sky",))])
    assert labels == [] and reply == "none of these"
    assert len(pipeline.detect(Image.new("RGB", (8, 8)), labels)) == 0
