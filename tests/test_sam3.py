"""SAM 3 as the detect-and-segment backend, with the tiny random SAM 3 loaded through the product's loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from offline_seg.classes import ClassList
from offline_seg.cli import main
from offline_seg.demo import demo_image
from offline_seg.engines.runner import BatchRunner
from offline_seg.io.store import ResultStore
from offline_seg.errors import InvalidInputError
from offline_seg.pipeline import Pipeline
from offline_seg.config import PipelineConfig
from offline_seg.specs import parse_spec
from offline_seg.stages.sam3 import Sam3Detector, Sam3Thresholds, prompt_text
from offline_seg.types import Detections

VOC = ClassList.preset("voc")


@pytest.fixture(scope="module")
def street(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam3-images") / "street.jpg"
    demo_image(320, 240).save(path)
    return path


@pytest.fixture(scope="module")
def detector(tiny_weights):
    return Sam3Detector(tiny_weights / "sam3")


def test_segment_cli_with_sam3_writes_the_usual_outputs(tiny_weights, street, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["segment", str(street), "--detector", "sam3", "--weights", str(tiny_weights),
                                       "--labels", "all", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "street.json").read_text())
    class_map = np.asarray(Image.open(out / "street.png"))
    assert class_map.shape == (240, 320) and (out / "street_overlay.png").is_file()
    assert record["scene_labels"] == list(VOC.foreground)  # --labels all: every class but the background
    assert record["settings"]["detector"] == "sam3"
    instances = record["instances"]
    assert instances, "the tiny SAM 3 finds some instances of the 20 VOC prompts on the demo scene"
    # SAM 3's labels are the prompts: phrases are class names, no post-refinement LLM call, no SAM points
    assert all(d["phrase"] == d["label"] and d["label"] in VOC.foreground for d in record["detections"])
    assert "post_refine" not in record["llm_replies"]
    assert all(i["points"] == [] for i in instances)
    painted = {VOC.names[index] for index in np.unique(class_map) if index}
    assert painted and painted <= {i["label"] for i in instances}


def test_detections_carry_masks_and_thresholds_follow_sam3(detector, street):
    image = Image.open(street).convert("RGB")
    labels = ["person", "dog", "car", "boat"]
    found = detector.detect(image, labels)
    assert len(found) > 0 and found.masks.shape == (len(found), 240, 320)
    assert set(found.labels) <= set(labels) and found.phrases == found.labels
    assert np.all(found.scores > 0.3)  # SAM 3's default score threshold
    assert np.all(found.boxes[:, [0, 2]] <= 320) and np.all(found.boxes[:, [1, 3]] <= 240)
    strict = Sam3Detector(detector.model_dir, Sam3Thresholds(score=0.3, mask=0.9)).detect(image, labels)
    assert len(strict) == len(found) and not np.any(strict.masks & ~found.masks)  # a higher mask cut: subsets
    assert strict.masks.sum() < found.masks.sum()
    assert len(Sam3Detector(detector.model_dir, Sam3Thresholds(presence=1.0)).detect(image, labels)) == 0
    assert len(Sam3Detector(detector.model_dir, Sam3Thresholds(score=1.0)).detect(image, labels)) == 0
    selected = found.select([0]).with_labels(["cat"])
    assert selected.masks.shape == (1, 240, 320) and np.array_equal(selected.masks[0], found.masks[0])


def test_text_embeddings_are_computed_once_per_class_list(tiny_weights, street, monkeypatch):
    pipeline = Pipeline(PipelineConfig(weights_dir=tiny_weights, detector="sam3", labels=("person", "dog", "car")))
    model = pipeline.detector.load()
    encoded: list[int] = []
    original = model.get_text_features

    def counting(input_ids, **kwargs):
        encoded.append(len(input_ids))
        return original(input_ids=input_ids, **kwargs)

    monkeypatch.setattr(model, "get_text_features", counting)
    image = Image.open(street)
    first = pipeline.segment(image)
    for flipped in (image.transpose(Image.FLIP_LEFT_RIGHT), image.rotate(90, expand=True)):
        pipeline.segment(flipped)
    assert encoded == [3]  # one call for the three labels, reused for every image
    assert first.scene_labels == ["person", "dog", "car"]
    again = pipeline.segment(image, labels=["dog", "bus", "person"])
    assert encoded == [3, 1]  # only the new label goes through the text encoder
    assert set(again.instances.labels) <= {"dog", "bus", "person"}
    # cached embeddings give the same result as fresh ones
    fresh = Pipeline(PipelineConfig(weights_dir=tiny_weights, detector="sam3")).segment(
        image, labels=["person", "dog", "car"])
    assert np.array_equal(fresh.class_map, first.class_map) and fresh.instances.labels == first.instances.labels


def test_run_with_sam3_resumes_and_reruns_only_what_a_threshold_changes(tiny_weights, street, tmp_path):
    for i, angle in enumerate((0, 90)):
        Image.open(street).rotate(angle, expand=True).save(tmp_path / f"img_{i}.png")
    images = sorted(tmp_path.glob("img_*.png"))
    out = tmp_path / "out"

    def run(**settings):
        config = PipelineConfig(weights_dir=tiny_weights, detector="sam3", **settings)
        return BatchRunner(Pipeline(config), out, progress=False).run(images, root=tmp_path)

    first = run()
    assert first.done == 2 and not first.failed
    assert {stage for stage, n in first.computed.items() if n} == {"tag", "caption", "labels", "detect", "segment",
                                                                   "write"}  # no post-refinement
    again = run()
    assert sum(again.computed.values()) == 0 and again.reused["write"] == 2 and again.reused["detect"] == 2
    changed = run(sam3_mask_threshold=0.7)
    assert changed.reused["labels"] == 2 and changed.computed["tag"] == 0
    assert changed.computed["detect"] == changed.computed["segment"] == changed.computed["write"] == 2
    keys = BatchRunner(Pipeline(PipelineConfig(weights_dir=tiny_weights, detector="sam3")), out).keys
    with ResultStore.in_dir(out) as store:  # the segment stage holds the detect stage's masks, no SAM pass
        for record in store.images():
            detect = store.get(record.image_hash, "detect", keys["detect"])
            segment = store.get(record.image_hash, "segment", keys["segment"])
            assert detect["masks"] == segment["masks"] and detect["labels"] == segment["labels"]


def test_sam3_options_are_checked(tiny_weights, street, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["segment", str(street), "--detector", "sam3", "--labels", "cat",
                                   "--weights", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "sam3" in missing.output and "offline-seg weights pull sam3" in missing.output
    mixed = runner.invoke(main, ["segment", str(street), "--detector", "sam3", "--segmenter", "onnx",
                                 "--weights", str(tiny_weights), "--out", str(tmp_path / "o")])
    assert mixed.exit_code == 2 and "SAM 3 makes its own masks" in mixed.output
    unknown = runner.invoke(main, ["segment", str(street), "--detector", "yolo:x", "--weights", str(tiny_weights)])
    assert unknown.exit_code == 2 and "unknown detector" in unknown.output
    assert prompt_text("Dining-table") == "dining table" and prompt_text("traffic_light") == "traffic light"
    assert parse_spec(None, "detector").backend == parse_spec("grounding-dino", "detector").backend == "grounding_dino"
    assert parse_spec("sam3:/x/y", "detector").path == "/x/y"
    assert parse_spec("sam3", "detector", tmp_path).path == str(tmp_path / "sam3")
    with pytest.raises(InvalidInputError, match="threshold"):
        PipelineConfig(detector="sam3", sam3_score_threshold=1.5)
    helptext = runner.invoke(main, ["segment", "--help"]).output
    assert "--detector" in helptext and "--sam3-score-threshold" in helptext
    assert "point refinement" in " ".join(helptext.split())  # says the two-pass refinement does not apply


def test_weights_list_shows_the_gated_sam3_entry_and_its_licence(tiny_weights):
    listing = CliRunner().invoke(main, ["weights", "list", "--weights", str(tiny_weights)]).output
    line = next(line for line in listing.splitlines() if line.startswith("sam3 "))
    assert "present" in line and "facebook/sam3" in line and "SAM License" in line and "gated" in line


def test_memory_plan_has_sam3_with_its_exact_parameter_count(tmp_path):
    from offline_seg.plan import plan_for

    plan = plan_for(PipelineConfig(weights_dir=tmp_path, detector="sam3", refiner="llm"), "24GiB")
    detector = plan.stage("detector")
    assert detector.description == "SAM 3" and detector.params == 840_376_374  # Sam3Model(Sam3Config()) on meta
    assert "segmenter" not in {s.name for s in plan.stages} and "llm (post)" not in plan.steps
    assert plan.stage("llm").uses == 1
    output = CliRunner().invoke(main, ["plan", "--detector", "sam3", "--weights", str(tmp_path)]).output
    assert "840,376,374" in output and "segmenter" not in output and "llm (post)" not in output


def test_mask_reuse_needs_masks():
    from offline_seg.stages.sam3 import MaskReuseSegmenter

    boxes_only = Detections(np.array([[0, 0, 4, 4]]), np.array([0.9]), ["cat"], ["cat"])
    with pytest.raises(InvalidInputError, match="no masks"):
        MaskReuseSegmenter().segment(Image.new("RGB", (8, 8)), boxes_only)
