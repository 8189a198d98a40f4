"""Long class lists (ADE20K-150) and long tag lists go through Grounding DINO's 256-token text input in
pieces: the whole chain runs on the real tiny architectures without a tensor-size error."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from offline_seg.classes import ClassList
from offline_seg.cli import main
from offline_seg.pipeline import Pipeline
from offline_seg.config import PipelineConfig


def test_ade20k_150_classes_segment_without_error(tiny_weights, tmp_path):
    image = tmp_path / "room.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(image)
    labels = ", ".join(ClassList.preset("ade20k").foreground)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["segment", str(image), "--weights", str(tiny_weights), "--out", str(out),
                                       "--preset", "ade20k", "--labels", labels, "--points", "1", "--no-post-refine"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "room.json").read_text())
    assert len(record["classes"]) == 151 and len(record["scene_labels"]) == 150
    assert Image.open(out / "room.png").size == (80, 60)


class _ManyTags:
    """A tagger for a big photo tagged tile by tile: the union of the tiles' tags is a long list."""

    def __init__(self, tags):
        self.tags = tuple(tags)
        self.seen: list[tuple[int, int]] = []

    def tag(self, image):
        self.seen.append(image.size)
        return self.tags


def test_tags_of_a_large_image_without_pre_refinement_go_to_the_detector_in_pieces(tiny_weights):
    classes = ClassList.preset("coco-stuff")
    tags = [name.replace("-", " ") for name in classes.foreground]  # 171 tags, > 256 tokens as one prompt
    tagger = _ManyTags(tags)
    config = PipelineConfig(classes=classes, weights_dir=tiny_weights, use_caption=False, pre_refine=False,
                            post_refine=False, num_points=0)
    pipeline = Pipeline(config, tagger=tagger)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (1200, 1600, 3), dtype=np.uint8))
    result = pipeline.segment(image)
    assert tagger.seen == [(1600, 1200)]
    assert result.scene_labels == tags
    pieces = pipeline.detector.prompt_pieces(tags)
    assert len(pieces) >= 2
    assert result.class_map.shape == (1200, 1600)
    assert all(classes.match(label) for label in result.instances.labels)
