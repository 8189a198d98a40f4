"""Few-shot examples and the dense-list hint for pre-refinement, with stand-in stages (exact prompts)."""

import numpy as np
import pytest
from PIL import Image

from offline_seg import ClassList, Pipeline, PipelineConfig
from offline_seg.errors import InvalidInputError
from offline_seg.stages.examples import DENSE_HINT, EXAMPLES_HEADER

VOC = ClassList.preset("voc")


class Tagger:
    def tag(self, image):
        return ["man", "dog"] if image.getpixel((0, 0))[0] else ["cat"]


class LLM:
    """Records conversations; explains with a fixed sentence, pre-refines to `cat`."""

    def __init__(self):
        self.conversations = []

    def complete(self, conversations, *, choices=None, constraint=None, max_new_tokens=200):
        self.conversations += conversations
        return ["the man is a person." if "Output:" in c[-1]["content"] else "cat" for c in conversations]


def _annotated_set(root):
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    for name, red, ids in (("a", 255, (15, 12)), ("b", 0, (15, 8)), ("c", 255, (15, 12))):
        Image.new("RGB", (4, 4), (red, 0, 0)).save(root / "JPEGImages" / f"{name}.png")
        label = np.zeros((4, 4), np.uint8)
        label[0, :2] = ids[0]
        label[1, :2] = ids[1]
        Image.fromarray(label).save(root / "SegmentationClass" / f"{name}.png")


def test_examples_are_explained_appended_and_their_common_labels_added(tmp_path):
    _annotated_set(tmp_path / "set")
    llm = LLM()
    config = PipelineConfig(classes=VOC, refiner="llm", examples=3, examples_from=tmp_path / "set", min_labels=2,
                            use_caption=False, phrase_cache_dir=None)
    pipeline = Pipeline(config, tagger=Tagger(), llm=llm)
    [(labels, _)] = pipeline.scene_labels([pipeline.recognize(Image.new("RGB", (4, 4)))])
    assert labels == ["cat", "person"]  # person is in every example's ground truth
    explain = [c for c in llm.conversations if "Output:" in c[-1]["content"]]
    assert [c[-1]["content"] for c in explain] == [
        "Input: man, dog\nOutput: dog, person", "Input: cat\nOutput: cat, person", "Input: man, dog\nOutput: dog, person"]
    system = llm.conversations[-1][0]["content"]
    assert DENSE_HINT.format(count=2) in system and EXAMPLES_HEADER in system
    assert "Example 3.\nInput: man, dog\nOutput: dog, person\nWhy: the man is a person." in system
    assert system.index("label1, label2") < system.index(EXAMPLES_HEADER)  # appended after the paper's prompt


def test_examples_need_an_annotated_set_and_an_llm(tmp_path):
    with pytest.raises(InvalidInputError):
        PipelineConfig(examples=2)
    with pytest.raises(InvalidInputError):
        PipelineConfig(examples=2, examples_from=tmp_path, refiner="embed")
    pipeline = Pipeline(PipelineConfig(refiner="llm", examples=9, examples_from=tmp_path), tagger=Tagger(), llm=LLM())
    with pytest.raises(InvalidInputError, match="ground-truth folder"):
        pipeline.examples
