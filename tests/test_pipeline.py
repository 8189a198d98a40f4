"""The chain's orchestration with stand-in stages (exact values), and every Table-3 switch."""

import numpy as np
import pytest
from PIL import Image

from offline_seg import ClassList, Detections, InstanceMasks, Pipeline, PipelineConfig
from offline_seg.errors import InvalidInputError
from offline_seg.stages.segmenter import DEFAULT_POINT_PROMPTS

VOC = ClassList.preset("voc")


class Recorder:
    def __init__(self):
        self.calls = []


class FakeTagger(Recorder):
    def tag(self, image):
        self.calls.append(image.size)
        return ["man", "dog", "couch"]


class FakeCaptioner(Recorder):
    def caption(self, image):
        self.calls.append(image.size)
        return "a man and his dog on a couch"


class FakeLLM(Recorder):
    def complete(self, conversations, *, choices=None, max_new_tokens=200):
        users = [c[-1]["content"] for c in conversations]
        self.calls.append(users)
        table = {"puppy": "dog", "couch": "sofa"}
        return [table.get(u, "person, dog, sofa") for u in users]


class FakeDetector(Recorder):
    """Three boxes on a 10×8 image: the dog box overlaps the person box."""

    def detect(self, image, labels):
        self.calls.append(list(labels))
        boxes = np.array([[0, 0, 5, 4], [3, 2, 8, 6], [0, 6, 10, 8]], np.float32)
        return Detections(boxes, np.array([0.5, 0.9, 0.3]), ["person", "puppy", "couch"])


class BoxSegmenter(Recorder):
    """Masks are the boxes themselves."""

    def segment(self, image, detections):
        kept = detections.labelled()
        self.calls.append(list(kept.labels))
        masks = np.zeros((len(kept), image.height, image.width), bool)
        for mask, (x0, y0, x1, y1) in zip(masks, kept.boxes.astype(int)):
            mask[y0:y1, x0:x1] = True
        return InstanceMasks(masks, kept.boxes, kept.scores, list(kept.labels))


def _pipeline(**settings):
    stages = dict(tagger=FakeTagger(), captioner=FakeCaptioner(), llm=FakeLLM(), detector=FakeDetector(),
                  segmenter=BoxSegmenter())
    return Pipeline(PipelineConfig(classes=VOC, **{"refiner": "llm", **settings}), **stages), stages


IMAGE = Image.new("RGB", (10, 8))


def test_full_chain_exact_class_map():
    pipeline, stages = _pipeline()
    result = pipeline.segment(IMAGE)
    assert result.recognition.text == "man, dog, couch: a man and his dog on a couch"
    assert result.scene_labels == ["person", "dog", "sofa"]
    assert stages["detector"].calls == [["person", "dog", "sofa"]]
    assert result.detections.labels == ["person", "dog", "sofa"]
    assert stages["llm"].calls[1] == ["puppy", "couch"]  # only phrases not in the list reach the LLM
    expected = np.zeros((8, 10), np.uint8)
    expected[0:4, 0:5] = 15  # person
    expected[2:6, 3:8] = 12  # dog wins the overlap (0.9 > 0.5)
    expected[6:8, 0:10] = 18  # sofa
    assert np.array_equal(result.class_map, expected)
    assert result.llm_replies["post_refine"] == {"puppy": "dog", "couch": "sofa"}


def test_no_caption_uses_tags_only():
    pipeline, stages = _pipeline(use_caption=False)
    result = pipeline.segment(IMAGE)
    assert stages["captioner"].calls == [] and result.recognition.text == "man, dog, couch"


def test_no_pre_refine_sends_tags_to_the_detector():
    pipeline, stages = _pipeline(pre_refine=False)
    result = pipeline.segment(IMAGE)
    assert stages["detector"].calls == [["man", "dog", "couch"]]
    assert "pre_refine" not in result.llm_replies


def test_no_post_refine_drops_unknown_phrases_without_llm():
    pipeline, stages = _pipeline(post_refine=False)
    result = pipeline.segment(IMAGE)
    assert result.detections.labels == ["person", None, None]
    assert len(stages["llm"].calls) == 1  # the pre-refinement call only
    assert stages["segmenter"].calls == [["person"]]


def test_given_labels_skip_recognition_and_pre_refinement():
    pipeline, stages = _pipeline(labels=("dogs", "Person"))
    result = pipeline.segment(IMAGE)
    assert stages["tagger"].calls == [] and stages["captioner"].calls == []
    assert stages["detector"].calls == [["dog", "person"]] and result.recognition is None
    per_call = pipeline.segment(IMAGE, labels=["sofa"])
    assert per_call.scene_labels == ["sofa"]


def test_nothing_recognised_means_no_detector_call():
    pipeline, stages = _pipeline()
    stages["llm"].complete = lambda conversations, **_: ["nothing here"] * len(conversations)
    result = pipeline.segment(IMAGE)
    assert stages["detector"].calls == [] and not result.class_map.any()


def test_points_setting_reaches_the_default_segmenter(tiny_weights):
    pipeline = Pipeline(PipelineConfig(weights_dir=tiny_weights, num_points=0))
    assert pipeline.segmenter.num_points == 0
    with pytest.raises(ValueError):
        PipelineConfig(num_points=-1)
    spread = Pipeline(PipelineConfig(weights_dir=tiny_weights, num_points=7, point_strategy="spread")).segmenter
    assert (spread.strategy, spread.num_points) == ("spread", 7)
    with pytest.raises(InvalidInputError, match="point strategy"):
        PipelineConfig(point_strategy="best")


@pytest.mark.parametrize("segmenter", [None, "sam:/x", "onnx", "onnx:/y"])
def test_point_prompt_defaults_follow_the_segmenter_backend(segmenter):
    backend = (segmenter or "sam").partition(":")[0]
    config = PipelineConfig(segmenter=segmenter)
    assert (config.point_strategy, config.num_points) == DEFAULT_POINT_PROMPTS[backend]
    assert PipelineConfig(segmenter=segmenter, num_points=3).point_strategy == DEFAULT_POINT_PROMPTS[backend][0]
    assert PipelineConfig(segmenter=segmenter, point_strategy="paper").num_points == 20  # the paper, unchanged
