"""The closed-set detector stage: CenterNet's COCO-80 boxes as `Detections`, behind the `Detector` interface.

Unlike Grounding DINO it reads no label prompt: it finds what it was trained on, and each box's phrase is its
COCO class name. Post-refinement turns those names into class-list labels (`offline_seg.stages.vocabulary`)
and drops the rest, so the labels a chain passes to `detect` do not change what it returns.

Settings (the `--detector centernet?...` options, defaults measured: README, `scripts/bench_cpu_tier.py`):
`threshold` (minimum peak score), `resize` (`letterbox` or `squash`, how the photo fits the 512² input) and
`nms` (per-class IoU above which the lower-scored of two boxes of a class is dropped; 1 keeps all) and
`agnostic` (the same across classes, after it: one object that two classes claim; 1 = off).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from offline_seg.errors import InvalidInputError
from offline_seg.models.centernet import RESIZE_MODES, CenterNetOnnx, RawDetections
from offline_seg.specs import ModelSpec
from offline_seg.stages.detector import nms
from offline_seg.types import Detections

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CenterNetSettings:
    """Defaults chosen on 158 COCO val2017 photos (VOC and COCO-81 class lists), not on voc-mini (README)."""

    threshold: float = 0.25
    resize: str = "letterbox"
    nms: float = 0.5
    agnostic: float = 0.9  # class-agnostic NMS IoU after the per-class one (1: off)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> CenterNetSettings:
        """The settings a `centernet?threshold=..&resize=..&nms=..` description asks for (checked here)."""
        options = spec.option_dict
        try:
            settings = cls(float(options.get("threshold", cls.threshold)), options.get("resize", cls.resize),
                           float(options.get("nms", cls.nms)), float(options.get("agnostic", cls.agnostic)))
        except ValueError as error:
            raise InvalidInputError(f"bad option in detector spec {spec.text()!r}: {error}") from error
        if not 0.0 <= settings.threshold < 1.0 or not (0.0 < settings.nms <= 1.0 and 0.0 < settings.agnostic <= 1.0):
            raise InvalidInputError("centernet threshold must be in [0, 1), nms and agnostic in (0, 1]")
        if settings.resize not in RESIZE_MODES:
            raise InvalidInputError(f"centernet resize must be one of {', '.join(RESIZE_MODES)}, "
                                    f"not {settings.resize!r}")
        return settings


def select(raw: RawDetections, names: Sequence[str], settings: CenterNetSettings) -> Detections:
    """Peaks at or above the threshold, per-class NMS, highest score first, boxes with no area dropped."""
    has_area = (raw.boxes[:, 2] > raw.boxes[:, 0]) & (raw.boxes[:, 3] > raw.boxes[:, 1])
    keep = (raw.scores >= settings.threshold) & has_area
    boxes, scores, classes = raw.boxes[keep], raw.scores[keep], raw.classes[keep]
    chosen: list[int] = []
    for cls in np.unique(classes):
        members = np.flatnonzero(classes == cls)
        chosen.extend(members[nms(boxes[members], scores[members], settings.nms)].tolist())
    order = sorted(chosen, key=lambda i: (-float(scores[i]), i))
    if settings.agnostic < 1.0:  # one object, two class hypotheses: the better-scored one stays
        order = [order[i] for i in nms(boxes[order], scores[order], settings.agnostic)]
    return Detections(boxes[order], scores[order], [names[int(classes[i])] for i in order])


class CenterNetDetector:
    """`Detector` over the ONNX CenterNet; `labels` are accepted for the interface and not read."""

    def __init__(self, model: CenterNetOnnx, settings: CenterNetSettings | None = None):
        self.model = model
        self.settings = settings or CenterNetSettings()

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.model.class_names

    def detect(self, image: Image.Image, labels: Sequence[str] = ()) -> Detections:
        detections = select(self.model.detect(image, self.settings.resize), self.class_names, self.settings)
        logger.info("centernet: %d boxes at score >= %.2f", len(detections), self.settings.threshold)
        return detections
