"""The closed-set detector backend (CenterNet, COCO-80): input fitting, box selection, the vocabulary that
post-refinement decides, the chain it runs, and the real ONNX model on the bundled photo."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from offline_seg import ClassList, Pipeline, PipelineConfig
from offline_seg.cli import main
from offline_seg.demo import demo_photo
from offline_seg.errors import InvalidInputError
from offline_seg.models.centernet import COCO_NAMES, CenterNetOnnx, RawDetections, fit_image
from offline_seg.specs import parse_spec
from offline_seg.chain import chain_spec
from offline_seg.stages.centernet import CenterNetDetector, CenterNetSettings, select
from offline_seg.stages.vocabulary import build_vocabulary, check_coverage

VOC = ClassList.preset("voc")


# --- fitting a photo into the 512² input ----------------------------------------------------------
def test_letterbox_keeps_the_aspect_ratio_centred_and_maps_boxes_back():
    image = Image.new("RGB", (1024, 512), (255, 0, 0))
    batch, fit = fit_image(image, "letterbox")
    assert batch.shape == (1, 512, 512, 3)
    assert (fit.scale_x, fit.scale_y, fit.offset_x, fit.offset_y) == (0.5, 0.5, 0.0, 128.0)
    assert batch[0, 127].max() == 0 and batch[0, 128, 0, 0] == 255 and batch[0, 384].max() == 0  # padding rows
    box = fit.to_photo(np.array([[0, 128, 256, 384]]), 1024, 512)
    np.testing.assert_allclose(box, [[0, 0, 512, 512]])


def test_squash_stretches_and_clips_boxes_to_the_photo():
    batch, fit = fit_image(Image.new("RGB", (256, 1024)), "squash")
    assert batch.shape == (1, 512, 512, 3) and (fit.scale_x, fit.scale_y) == (2.0, 0.5)
    np.testing.assert_allclose(fit.to_photo(np.array([[-10, 0, 600, 256]]), 256, 1024), [[0, 0, 256, 512]])
    with pytest.raises(ValueError, match="resize"):
        fit_image(Image.new("RGB", (8, 8)), "crop")


# --- choosing boxes ------------------------------------------------------------------------------
def _raw(rows) -> RawDetections:
    rows = np.array(rows, np.float32)
    return RawDetections(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64))


def test_select_applies_threshold_per_class_nms_and_orders_by_score():
    raw = _raw([
        [0, 0, 100, 100, 0.90, 15],  # cat
        [2, 2, 100, 100, 0.80, 15],  # the same cat again: suppressed (IoU 0.96 > 0.6)
        [2, 2, 100, 100, 0.70, 16],  # a dog on the same spot: another class, kept
        [200, 0, 300, 90, 0.35, 0],  # a person
        [0, 0, 50, 50, 0.29, 0],  # below the threshold
        [10, 10, 10, 40, 0.95, 2],  # no area
    ])
    detections = select(raw, COCO_NAMES, CenterNetSettings(threshold=0.3, nms=0.6, agnostic=1.0))
    assert detections.phrases == ["cat", "dog", "person"]
    np.testing.assert_allclose(detections.scores, [0.9, 0.7, 0.35])
    np.testing.assert_allclose(detections.boxes[0], [0, 0, 100, 100])
    no_nms = select(raw, COCO_NAMES, CenterNetSettings(threshold=0.3, nms=1.0, agnostic=1.0))
    assert no_nms.phrases == ["cat", "cat", "dog", "person"]
    # across classes (the default 0.9): the dog on the cat's spot is the same object called twice
    assert select(raw, COCO_NAMES, CenterNetSettings(threshold=0.3)).phrases == ["cat", "person"]


def test_detector_options_are_parsed_once_and_checked():
    spec = parse_spec("centernet?threshold=0.2&resize=squash&nms=0.6&agnostic=1", "detector", "w")
    assert (spec.backend, spec.path, spec.component) == ("centernet", str(Path("w") / "centernet"), "centernet")
    assert CenterNetSettings.from_spec(spec) == CenterNetSettings(0.2, "squash", 0.6, 1.0)
    assert CenterNetSettings.from_spec(parse_spec("centernet", "detector", "w")) == CenterNetSettings(0.25, "letterbox",
                                                                                                  0.5, 0.9)
    for bad in ("centernet?resize=crop", "centernet?threshold=2", "centernet?threshold=x", "centernet?agnostic=0"):
        with pytest.raises(InvalidInputError):
            CenterNetSettings.from_spec(parse_spec(bad, "detector", "w"))
    with pytest.raises(InvalidInputError, match="unknown option"):
        parse_spec("centernet?box_threshold=0.3", "detector", "w")


# --- the vocabulary ------------------------------------------------------------------------------
def test_a_label_the_detector_names_outright_belongs_to_that_class_alone():
    names = ["dog", "hot dog", "airplane", "truck", "car", "tv", "toaster"]
    refined = ["dog", "dog", "aeroplane", "car", "car", "monitor", None]  # what post-refinement answered
    vocabulary = build_vocabulary(names, refined, VOC, {"airplane": "embed:aeroplane", "tv": "embed:monitor"})
    assert dict(vocabulary.labels) == {"dog": "dog", "hot dog": None, "airplane": "aeroplane", "truck": None,
                                       "car": "car", "tv": "monitor", "toaster": None}
    assert vocabulary.reasons["hot dog"] == "not dog: owned by dog"
    assert vocabulary.reasons["airplane"] == "embed:aeroplane" and vocabulary.reasons["car"] == "exact"
    assert vocabulary.label("airplane", allowed=["dog"]) is None and vocabulary.label("airplane") == "aeroplane"
    found = {"dog", "aeroplane", "car", "monitor"}
    assert vocabulary.uncovered == [label for label in VOC.foreground if label not in found]


def test_a_name_the_embedding_did_not_decide_is_not_guessed():
    vocabulary = build_vocabulary(["clock", "tv"], ["monitor", "monitor"], VOC, {"clock": "embed:monitor"},
                                  undecided={"clock": "the embedding did not decide (0.55, runner-up 0.48)"})
    assert dict(vocabulary.labels) == {"clock": None, "tv": "monitor"}
    assert vocabulary.reasons["clock"] == "not monitor: the embedding did not decide (0.55, runner-up 0.48)"


def test_voc_vocabulary_of_the_real_embedder(tmp_path, minilm_dir):
    """What post-refinement (the CPU default: the embedding alone) makes of COCO's 80 names for VOC."""
    pipeline = Pipeline(PipelineConfig(classes=VOC, weights_dir=tmp_path, detector="centernet", segmenter="onnx",
                                       embedder=str(minilm_dir)))
    labels = pipeline.vocabulary.labels
    assert {name: labels[name] for name in ("airplane", "motorcycle", "couch", "tv", "dining table", "potted plant",
                                            "person", "dog")} == {
        "airplane": "aeroplane", "motorcycle": "motorbike", "couch": "sofa", "tv": "monitor",
        "dining table": "dining-table", "potted plant": "potted-plant", "person": "person", "dog": "dog"}
    for name in ("hot dog", "truck", "cup", "wine glass", "umbrella", "kite", "clock", "microwave", "keyboard",
                 "giraffe", "toaster"):
        assert labels[name] is None, (name, pipeline.vocabulary.reasons[name])
    assert pipeline.vocabulary.uncovered == []


def test_uncovered_classes_warn_or_stop(caplog):
    vocabulary = build_vocabulary(["cat"], ["cat"], ClassList.parse("background, cat, road, sky"))
    with caplog.at_level(logging.WARNING):
        check_coverage(vocabulary)
    assert "no class that becomes road, sky (2 of 3 classes" in caplog.text
    with pytest.raises(InvalidInputError, match="road, sky"):
        check_coverage(vocabulary, required=True)


# --- the chain it runs ---------------------------------------------------------------------------
def test_closed_set_chain_skips_recognition_and_loads_only_its_own_models(tmp_path):
    config = PipelineConfig(classes=VOC, weights_dir=tmp_path, detector="centernet", segmenter="onnx")
    chain = chain_spec(config)
    assert chain.steps == ("labels", "detect", "post_refine", "segment", "write")
    assert chain.labels_from == "all" and chain.post_refine
    assert [m.stage for m in chain.models] == ["detector", "segmenter"]  # no tagger, captioner, LLM (CPU: embed)
    assert chain.model("detector").on_gpu_plan is False
    given = chain_spec(PipelineConfig(classes=VOC, weights_dir=tmp_path, detector="centernet", labels=("cat",)))
    assert given.labels_from == "given" and "tag" not in given.steps
    assert Pipeline(config).fixed_labels(None) == list(VOC.foreground)


def test_preflight_asks_for_centernet_sam_onnx_and_the_embedder_only(tmp_path):
    weights = tmp_path / "weights"
    for name in ("centernet/centernet.onnx", "centernet/classes.json", "sam_onnx/encoder.onnx", "sam_onnx/decoder.onnx",
                 "embedder/config.json", "embedder/tokenizer.json", "embedder/model.safetensors"):
        (weights / name).parent.mkdir(parents=True, exist_ok=True)
        (weights / name).write_bytes(b"")
    pipeline = Pipeline(PipelineConfig(classes=VOC, weights_dir=weights, detector="centernet", segmenter="onnx"))
    assert pipeline.chain.missing_files(weights, extra=[pipeline.model_spec("embedder")]) == []
    (weights / "centernet" / "centernet.onnx").unlink()
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    result = CliRunner().invoke(main, ["segment", str(image), "--weights", str(weights), "--detector", "centernet",
                                       "--segmenter", "onnx", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "offline-seg weights pull centernet" in result.output, result.output
    assert "Traceback" not in result.output


def test_a_damaged_centernet_stops_the_run_once_naming_the_file(tmp_path, minilm_dir):
    """Like every model file: not each image's failure, one line before the first image is written."""
    weights = tmp_path / "weights"
    for name in ("sam_onnx/encoder.onnx", "sam_onnx/decoder.onnx"):
        (weights / name).parent.mkdir(parents=True, exist_ok=True)
        (weights / name).write_bytes(b"")
    (weights / "centernet").mkdir()
    (weights / "centernet" / "centernet.onnx").write_bytes(b"\x08\x07 not a model")
    (weights / "centernet" / "classes.json").write_text(json.dumps(list(COCO_NAMES)))
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32)).save(tmp_path / name)
    result = CliRunner().invoke(main, ["segment", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--weights",
                                       str(weights), "--detector", "centernet", "--segmenter", "onnx", "--embedder",
                                       str(minilm_dir), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "cannot load the centernet model" in result.output, result.output
    assert "centernet.onnx is damaged" in result.output and "skipped" not in result.output


# --- the real model ------------------------------------------------------------------------------
def test_real_centernet_finds_the_demo_cat(centernet_dir):
    model = CenterNetOnnx(centernet_dir, threads=1)
    assert model.class_names == COCO_NAMES
    raw = model.detect(demo_photo(), "letterbox")
    assert raw.boxes.shape == (100, 4) and np.all(np.diff(raw.scores) <= 0)  # the 100 best peaks, best first
    assert model.class_names[raw.classes[0]] == "cat" and 0.45 < raw.scores[0] < 0.65
    np.testing.assert_allclose(raw.boxes[0], [0, 3, 411, 296], atol=6)  # the cat fills the photo's left 90 %
    detections = CenterNetDetector(model, CenterNetSettings()).detect(demo_photo())
    assert detections.phrases[0] == "cat" and all(s >= CenterNetSettings().threshold for s in detections.scores)
