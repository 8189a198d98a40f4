"""Embedding-guided refinement (stages/shortlist.py) with a scripted embedder and LLM: exact decisions."""

import numpy as np
import pytest

from offline_seg.classes import ClassList
from offline_seg.llm.base import LabelList
from offline_seg.stages.refiner import Refiner
from offline_seg.stages.shortlist import GuidedRefiner, LabelEmbeddings, ShortlistSettings, caption_terms
from offline_seg.types import Recognition

CLASSES = ClassList.parse("background, dog, cat, dining-table, person")


class TableEmbedder:
    """Unit vectors from a table of 4-d directions (dog, cat, table, person); unknown texts are orthogonal
    to all of them (a fifth axis), so they score 0 against every label."""

    AXES = {"dog": [1, 0, 0, 0, 0], "cat": [0, 1, 0, 0, 0], "dining table": [0, 0, 1, 0, 0], "person": [0, 0, 0, 1, 0],
            "puppy": [0.9, 0.1, 0, 0, 0], "pet": [0.6, 0.55, 0, 0, 0], "animal": [0.5, 0.45, 0, 0.1, 0],
            "desk": [0, 0, 0.7, 0, 0.3], "man": [0, 0, 0, 0.9, 0.2], "rock": [0.1, 0, 0, 0, 1]}

    def __init__(self):
        self.seen: list[list[str]] = []

    def encode(self, texts):
        self.seen.append(list(texts))
        rows = np.array([self.AXES.get(t, [0, 0, 0, 0, 1]) for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class ChoosingLLM:
    """Answers every choice with the option `pick` names for the phrase, and every label list with `lists`."""

    def __init__(self, pick: dict[str, str] | None = None, lists: str = "dog"):
        self.pick = pick or {}
        self.lists = lists
        self.calls: list[dict] = []

    def complete(self, conversations, *, choices=None, constraint=None, max_new_tokens=200):
        users = [c[-1]["content"] for c in conversations]
        self.calls.append({"users": users, "choices": choices, "constraint": constraint})
        if choices is not None:
            return [self.pick.get(u, choices[-1]) for u in users]
        return [self.lists for _ in users]


def _refiner(llm=None, **settings):
    embeddings = LabelEmbeddings(TableEmbedder(), CLASSES, template="{}")  # the table holds bare words
    return GuidedRefiner(embeddings, Refiner(llm, CLASSES) if llm else None, ShortlistSettings(**settings))


def test_exact_match_then_embedding_then_llm_on_a_shortlist():
    llm = ChoosingLLM({"pet": "cat"})
    refiner = _refiner(llm, accept=0.8, margin=0.2, reject=0.3, top_k=2)
    result = refiner.post_refine(["Dogs", "puppy", "pet", "rock", "background", "puppy"])
    # Dogs: exact; puppy: decisive (0.99 vs 0.11); pet: 0.74/0.68 undecided -> LLM; rock: 0.1 -> background.
    assert result.labels == ["dog", "dog", "cat", None, None, "dog"]
    assert llm.calls == [{"users": ["pet"], "choices": ["dog", "cat", "background"], "constraint": None}]
    assert result.replies == {"puppy": "embed:dog", "pet": "llm:cat of dog|cat", "rock": "reject"}
    assert refiner.post_refine(["pet"]).labels == ["cat"] and len(llm.calls) == 1  # decided once per phrase


def test_llm_may_answer_background_and_the_detection_drops():
    llm = ChoosingLLM({"animal": "background"})
    refiner = _refiner(llm, accept=0.9, reject=0.3, top_k=3)
    assert refiner.post_refine(["animal"]).labels == [None]
    assert llm.calls[0]["choices"] == ["dog", "cat", "person", "background"]


def test_one_llm_call_per_distinct_shortlist():
    llm = ChoosingLLM()
    refiner = _refiner(llm, accept=1.1, reject=0.0, top_k=1)  # nothing is decisive: everything asks the LLM
    refiner.post_refine_batch([["puppy", "desk"], ["man", "pet"]])
    assert sorted((call["choices"][0], call["users"]) for call in llm.calls) == [
        ("dining-table", ["desk"]), ("dog", ["puppy", "pet"]), ("person", ["man"])]


def test_embed_mode_never_needs_an_llm():
    refiner = _refiner(None, accept=0.9, reject=0.3)
    assert refiner.mode == "embed"
    assert refiner.post_refine(["pet", "desk", "rock", "man"]).labels == ["dog", "dining-table", None, "person"]


def test_pre_refinement_candidates_and_llm_confirmation():
    recognition = Recognition(("man", "puppy", "lawn"), "a man with his pet on a dining table")
    named, close = _refiner(None, candidate=0.8).candidates(recognition)
    assert named == ["dining-table"]  # named outright in the caption
    assert close == ["person", "dog"]  # "man" and "puppy" embed close; "pet" (0.74) is below 0.8
    embed_only = _refiner(None, candidate=0.8).pre_refine([recognition])
    assert embed_only[0][0] == ["dog", "dining-table", "person"]  # class-list order
    llm = ChoosingLLM(lists="dog, dining-table")
    [(labels, reply)] = _refiner(llm, candidate=0.8).pre_refine([recognition])
    assert labels == ["dog", "dining-table"]  # the LLM left "person" out: dropped; named labels always stay
    assert llm.calls[0]["constraint"] == LabelList(("dog", "dining-table", "person"))
    assert "candidates: person, dog" in reply


def test_no_candidates_means_no_llm_call():
    llm = ChoosingLLM()
    [(labels, _)] = _refiner(llm).pre_refine([Recognition(("cat", "rock"))])
    assert labels == ["cat"] and llm.calls == []


def test_caption_terms_keep_content_words_and_pairs():
    terms = caption_terms(Recognition(("Traffic Light",), "A red car waiting at the traffic light."))
    assert terms == ["traffic light", "car", "traffic", "light"]  # no stop words; the pair once


@pytest.mark.parametrize("text,tags,caption", [("a, b: a cat", ("a", "b"), "a cat"), ("cat, dog", ("cat", "dog"), None)])
def test_recognition_round_trips_through_its_text(text, tags, caption):
    recognition = Recognition.from_text(text)
    assert (recognition.tags, recognition.caption) == (tags, caption)
    assert recognition.text == text


def test_auto_mode_is_hybrid_on_cuda_and_embed_on_cpu():
    from offline_seg import PipelineConfig
    from offline_seg.stages.shortlist import resolve_mode

    assert [resolve_mode("auto", d) for d in ("cpu", "cuda", "cuda:1")] == ["embed", "hybrid", "hybrid"]
    assert resolve_mode("llm", "cpu") == "llm"
    assert resolve_mode("auto", "cpu", llm_given=True) == "hybrid"  # an LLM named with --llm is used
    assert PipelineConfig().refiner_mode == "embed" and PipelineConfig(device="cuda").refiner_mode == "hybrid"


def test_auto_mode_asks_no_llm_too_small_to_help():
    from offline_seg.stages.shortlist import MIN_HYBRID_LLM_PARAMS, resolve_mode

    asked: list[int | None] = []

    def size(parameters):
        return lambda: asked.append(parameters) or parameters

    assert resolve_mode("auto", "cpu", llm_given=True, llm_parameters=size(134_515_008)) == "embed"  # SmolLM2-135M
    assert resolve_mode("auto", "cuda", llm_parameters=size(134_515_008)) == "embed"  # on any device
    assert resolve_mode("auto", "cuda", llm_parameters=size(8_030_261_248)) == "hybrid"  # Llama-3-8B
    assert resolve_mode("auto", "cuda", llm_parameters=size(MIN_HYBRID_LLM_PARAMS)) == "hybrid"
    assert resolve_mode("auto", "cpu", llm_given=True, llm_parameters=size(None)) == "hybrid"  # unknown: a served one
    assert resolve_mode("hybrid", "cpu", llm_given=True, llm_parameters=size(1)) == "hybrid"  # asked for by name
    assert resolve_mode("auto", "cpu", llm_parameters=size(1)) == "embed"
    assert asked == [134_515_008, 134_515_008, 8_030_261_248, MIN_HYBRID_LLM_PARAMS, None]  # read only when needed


def test_auto_mode_counts_a_local_llm_from_its_config_and_warns(tmp_path, caplog):
    from transformers import LlamaConfig

    from offline_seg import PipelineConfig
    from offline_seg.plan import llm_parameters
    from offline_seg.specs import parse_spec
    from offline_seg.chain import chain_spec

    LlamaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
                num_key_value_heads=2).save_pretrained(tmp_path / "small")
    # embeddings 1000x64, per layer q 64x64, k and v 64x32, o 64x64, mlp 3x64x128, 2 norms of 64; final norm; lm head
    layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64
    assert llm_parameters(parse_spec(str(tmp_path / "small"), "llm", tmp_path)) == 1000 * 64 * 2 + 2 * layer + 64
    assert llm_parameters(parse_spec("openai:http://127.0.0.1:9/v1", "llm", tmp_path)) is None  # served: unknown
    assert llm_parameters(parse_spec(str(tmp_path / "absent"), "llm", tmp_path)) is None  # the loader names it
    config = PipelineConfig(weights_dir=tmp_path, llm=str(tmp_path / "small"))
    with caplog.at_level("WARNING"):
        assert config.refiner_mode == "embed" and config.refiner_mode == "embed"
    assert [r.getMessage() for r in caplog.records if "parameters" in r.getMessage()] == [
        "the LLM has 0.202 M parameters, fewer than 1 B: --refiner auto refines with the embedding alone (measured: a small "
        "LLM's answers lose to it); --refiner hybrid asks the LLM anyway"]  # once: resolved once per config
    assert "llm" not in [m.stage for m in chain_spec(config).models]  # it is not even loaded
    assert PipelineConfig(weights_dir=tmp_path, llm=str(tmp_path / "small"), refiner="hybrid").refiner_mode == "hybrid"
    assert PipelineConfig(weights_dir=tmp_path, llm=str(tmp_path / "absent")).refiner_mode == "hybrid"


def test_labels_are_found_per_tag_and_per_caption_not_across_them():
    classes = ClassList.parse("background, dog, hot-dog, bear, teddy-bear, bench, sports-ball")
    refiner = GuidedRefiner(LabelEmbeddings(TableEmbedder(), classes, template="{}"))
    assert refiner.candidates(Recognition(("hot", "dog")))[0] == ["dog"]  # not hot-dog
    assert refiner.candidates(Recognition(("teddy",), "a bear on a bench"))[0] == ["bear", "bench"]
    assert refiner.candidates(Recognition(("hot dog",), "a dog eating a hot dog"))[0] == ["hot-dog", "dog"]
    assert refiner.candidates(Recognition((), "a teddy bear on a bench"))[0] == ["teddy-bear", "bench"]


class WordEmbedder:
    """A label embeds on its own axis; any other text on the axes of the labels it shares a word with (so
    `hot` sits next to `hot dog`)."""

    LABELS = ["dog", "hot dog", "teddy bear", "sports ball"]

    def encode(self, texts):
        rows = []
        for text in texts:
            words = set(text.split())
            row = [1.0 if text == label or (text not in self.LABELS and words & set(label.split())) else 0.0
                   for label in self.LABELS] + [0.1]
            rows.append(np.array(row) / np.linalg.norm(row))
        return np.array(rows, dtype=np.float32)


def test_a_leading_word_of_a_label_does_not_propose_it_and_named_words_are_not_embedded_again():
    classes = ClassList.parse("background, dog, hot-dog, teddy-bear, sports-ball")
    refiner = GuidedRefiner(LabelEmbeddings(WordEmbedder(), classes, template="{}"), settings=ShortlistSettings(candidate=0.5))
    assert refiner.candidates(Recognition(("hot", "teddy", "ball"))) == ([], ["sports-ball"])  # the head word does
    # "hot dog" names hot-dog; its word "dog" names a label too, so it is left to the exact finder (no dog)
    assert refiner.candidates(Recognition(("hot dog",), "a hot dog")) == (["hot-dog"], [])


def test_hybrid_pre_refinement_is_one_llm_call_per_chunk():
    llm = ChoosingLLM(lists="person, dining-table")
    recognitions = [Recognition(("man",), "a man"), Recognition(("puppy",), "a puppy on a dining table"),
                    Recognition(("cat",))]
    results = _refiner(llm, candidate=0.8).pre_refine(recognitions)
    assert len(llm.calls) == 1 and len(llm.calls[0]["users"]) == 2  # the images with candidates, in one call
    assert llm.calls[0]["constraint"] == LabelList(("dog", "dining-table", "person"))  # what any image offers
    # each image keeps only its own candidates the LLM named: person for the first, no dog for the second
    assert [labels for labels, _ in results] == [["person"], ["dining-table"], ["cat"]]


class FreeTextLLM(ChoosingLLM):
    """Answers a free-text post-refinement prompt from `pick`, anything else with `lists`."""

    def complete(self, conversations, *, choices=None, constraint=None, max_new_tokens=200):
        answers = super().complete(conversations, choices=choices, constraint=constraint)
        users = [c[-1]["content"] for c in conversations]
        return [self.pick.get(u, answer) if choices is None else answer for u, answer in zip(users, answers)]


def test_unconstrained_hybrid_sends_no_constraint_and_parses_free_text():
    llm = FreeTextLLM({"pet": "I think it is a Cat."}, lists="1. Person\n2. Dining table")
    embeddings = LabelEmbeddings(TableEmbedder(), CLASSES, template="{}")
    refiner = GuidedRefiner(embeddings, Refiner(llm, CLASSES, constrained=False),
                            ShortlistSettings(accept=0.8, margin=0.2, reject=0.3, candidate=0.8))
    assert refiner.post_refine(["pet", "puppy"]).labels == ["cat", "dog"]
    assert llm.calls[-1]["choices"] is None and llm.calls[-1]["constraint"] is None
    [(labels, _)] = refiner.pre_refine([Recognition(("man", "puppy"))])
    assert labels == ["person"] and llm.calls[-1]["constraint"] is None
