"""Detector: prompt building, phrase cleaning, numpy NMS, and the tiny Grounding DINO end to end."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from offline_seg.stages.detector import (
    Detector,
    GroundingDinoDetector,
    box_iou,
    build_text_prompt,
    clean_phrase,
    nms,
)
from offline_seg.errors import MissingWeightsError

LABELS = ["person", "dog", "car"]


def test_build_text_prompt():
    assert build_text_prompt(["Person", "dog", "Potted Plant"]) == "person . dog . potted plant ."
    assert build_text_prompt(["a"]) == "a ."
    assert build_text_prompt(["  tv   monitor ", "", "tv monitor", "st. bernard"]) == "tv monitor . st bernard ."
    assert build_text_prompt([]) == ""


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("dog", "dog"),
        ("[CLS] Dog [SEP]", "dog"),
        ("cat dog [SEP]", "cat dog"),
        ("potted plant .", "potted plant"),
        ("[SEP]", ""),
        (" . [PAD] [pad] ", ""),
        ("tv   monitor\n", "tv monitor"),
    ],
)
def test_clean_phrase(raw, cleaned):
    assert clean_phrase(raw) == cleaned


BOXES = np.array(
    [
        [0, 0, 10, 10],  # 0
        [1, 1, 11, 11],  # 1: IoU 81/119 = 0.68 with 0
        [0, 0, 10, 9.5],  # 2: IoU 0.95 with 0
        [20, 20, 30, 30],  # 3
        [50, 50, 60, 60],  # 4
    ],
    dtype=np.float32,
)
SCORES = np.array([0.9, 0.8, 0.85, 0.7, 0.95], dtype=np.float32)


def test_box_iou_exact():
    iou = box_iou(BOXES[:3], BOXES[:3])
    np.testing.assert_allclose(np.diag(iou), 1.0)
    assert iou[0, 1] == pytest.approx(81 / 119)
    assert iou[0, 2] == pytest.approx(0.95)
    assert box_iou(BOXES[:1], BOXES[3:])[0].tolist() == [0.0, 0.0]


def test_nms_keeps_highest_scores_first():
    assert nms(BOXES, SCORES, 0.8).tolist() == [4, 0, 1, 3]
    assert nms(BOXES, SCORES, 0.5).tolist() == [4, 0, 3]
    assert nms(BOXES, SCORES, 0.99).tolist() == [4, 0, 2, 1, 3]


def test_nms_suppresses_only_strictly_above_threshold_and_is_class_agnostic():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 8]], np.float32)  # IoU exactly 0.8
    assert nms(boxes, np.array([0.5, 0.6]), 0.8).tolist() == [1, 0]
    assert nms(boxes, np.array([0.5, 0.6]), 0.79).tolist() == [1]
    # equal scores: stable order
    assert nms(BOXES[[3, 4]], np.array([0.3, 0.3]), 0.8).tolist() == [0, 1]


def test_nms_empty():
    keep = nms(np.zeros((0, 4)), np.zeros((0,)), 0.8)
    assert keep.shape == (0,) and keep.dtype == np.int64


def test_missing_dir_names_a_file(tmp_path: Path):
    detector = GroundingDinoDetector(tmp_path / "nope")
    with pytest.raises(MissingWeightsError) as error:
        detector.detect(Image.new("RGB", (32, 32)), LABELS)
    assert error.value.component == "grounding_dino"
    assert error.value.path == tmp_path / "nope" / "config.json"
    assert "config.json" in str(error.value)


def test_missing_weights_file_is_named(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match=r"\*\.safetensors"):
        GroundingDinoDetector(tmp_path).detect(Image.new("RGB", (32, 32)), LABELS)


def test_no_labels_means_no_model(tmp_path: Path):
    # nothing to look for: no load (the directory does not even exist), no boxes
    assert len(GroundingDinoDetector(tmp_path / "absent").detect(Image.new("RGB", (32, 32)), [])) == 0


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory) -> GroundingDinoDetector:
    from offline_seg.tiny import grounding_dino

    directory = grounding_dino.write(tmp_path_factory.mktemp("gdino") / "grounding_dino", seed=0)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"):
        assert (directory / name).is_file(), name
    return GroundingDinoDetector(directory)


def _scene(width: int = 160, height: int = 120) -> Image.Image:
    """A typical-looking picture: sky, grass, and two blobs."""
    image = Image.new("RGB", (width, height), (120, 170, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, height // 2, width, height], fill=(60, 150, 60))
    draw.ellipse([20, 40, 70, 110], fill=(200, 150, 120))
    draw.rectangle([90, 60, 150, 100], fill=(180, 30, 30))
    return image


def test_tiny_grounding_dino_detects(tiny_detector: GroundingDinoDetector):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert isinstance(tiny_detector, Detector)
    image = _scene()
    detections = tiny_detector.detect(image, ["Person", "dog", "car"])
    assert len(detections) >= 1
    assert detections.boxes.dtype == np.float32 and detections.boxes.shape == (len(detections), 4)
    boxes = detections.boxes
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= image.width).all() and (boxes[:, 3] <= image.height).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (detections.scores >= 0.18).all() and (detections.scores <= 1).all()
    assert list(detections.scores) == sorted(detections.scores, reverse=True)
    for phrase in detections.phrases:
        assert phrase and set(phrase.split()) <= set(LABELS), phrase
    assert detections.labels == [None] * len(detections)
    iou = box_iou(boxes, boxes)
    np.fill_diagonal(iou, 0)
    assert (iou <= 0.8).all()

    again = tiny_detector.detect(image, ["Person", "dog", "car"])
    np.testing.assert_array_equal(again.boxes, detections.boxes)
    assert again.phrases == detections.phrases


def test_tiny_grounding_dino_thresholds(tiny_detector: GroundingDinoDetector):
    image = _scene(90, 140)
    loose = GroundingDinoDetector(tiny_detector.model_dir, box_threshold=0.1, text_threshold=0.1, nms_iou=1.0)
    loose._model, loose._processor = tiny_detector._model, tiny_detector._processor  # share the loaded model
    strict = GroundingDinoDetector(tiny_detector.model_dir, box_threshold=0.99)
    strict._model, strict._processor = tiny_detector._model, tiny_detector._processor
    assert len(strict.detect(image, LABELS)) == 0
    assert len(loose.detect(image, LABELS)) >= len(tiny_detector.detect(image, LABELS)) >= 1


def test_a_150_class_prompt_is_split_to_fit_the_text_limit_and_merged(tiny_detector: GroundingDinoDetector):
    from offline_seg.classes import ClassList

    labels = list(ClassList.preset("ade20k").foreground)
    pieces = tiny_detector.prompt_pieces(labels)
    limit = tiny_detector._model.config.max_text_len
    tokenizer = tiny_detector._processor.tokenizer
    assert len(tokenizer(build_text_prompt(labels))["input_ids"]) > limit  # the whole list would not fit
    assert len(pieces) >= 2
    assert all(len(tokenizer(piece)["input_ids"]) <= limit for piece in pieces)
    assert " ".join(pieces) == build_text_prompt(labels)  # every label once, none cut
    image = _scene()
    detections = tiny_detector.detect(image, labels)  # used to raise: tensor a (452) vs tensor b (256)
    merged = GroundingDinoDetector(tiny_detector.model_dir, nms_iou=1.0)
    merged._model, merged._processor = tiny_detector._model, tiny_detector._processor
    everything = merged.detect(image, labels)
    per_piece = sum(len(merged.detect(image, [p.strip() for p in piece.split(" .") if p.strip()]))
                    for piece in pieces)
    assert len(everything) == per_piece >= len(detections)  # all pieces' boxes, then one NMS
    iou = box_iou(detections.boxes, detections.boxes)
    np.fill_diagonal(iou, 0)
    assert (iou <= 0.8).all()
