"""Typed results that flow one way through the pipeline: Recognition → Detections → InstanceMasks →
SegmentationResult. Arrays are numpy so results outlive the models that made them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Recognition:
    """What the tagger and captioner saw: the text the pre-refinement LLM reads."""

    tags: tuple[str, ...]
    caption: str | None = None

    @property
    def text(self) -> str:
        """`"<tags>: <caption>"` as in the method; tags alone when there is no caption."""
        tags = ", ".join(self.tags)
        return f"{tags}: {self.caption}" if self.caption else tags

    @classmethod
    def from_text(cls, text: str) -> Recognition:
        """The inverse of `text`: `"a, b: a caption"` → tags (a, b) and the caption; no colon: tags only."""
        tags, colon, caption = text.partition(":")
        return cls(tuple(t.strip() for t in tags.split(",") if t.strip()), caption.strip() if colon else None)


@dataclass
class Detections:
    """Boxes from the detector. `labels[i]` is the class-list label after post-refinement
    (None until refined, or when refinement found none). `masks` is set by detectors that segment too
    (SAM 3): the segment stage then reuses them instead of prompting SAM with the boxes."""

    boxes: np.ndarray  # (N, 4) float32, absolute pixel xyxy
    scores: np.ndarray  # (N,) float32
    phrases: list[str]
    labels: list[str | None] = field(default_factory=list)
    masks: np.ndarray | None = None  # (N, H, W) bool, or None when the detector made boxes only

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if not self.labels:
            self.labels = [None] * len(self.phrases)
        n = len(self.boxes)
        if not (len(self.scores) == len(self.phrases) == len(self.labels) == n):
            raise ValueError(
                f"inconsistent detections: {n} boxes, {len(self.scores)} scores, "
                f"{len(self.phrases)} phrases, {len(self.labels)} labels"
            )
        if self.masks is not None:
            self.masks = np.asarray(self.masks, dtype=bool)
            if self.masks.ndim != 3 or len(self.masks) != n:
                raise ValueError(f"inconsistent detections: {n} boxes, masks of shape {self.masks.shape}")

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), [], [])

    def select(self, keep: Sequence[int] | np.ndarray) -> Detections:
        """A new Detections holding only the rows in `keep` (indices or a boolean mask)."""
        index = np.asarray(keep)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = index.astype(int)
        return Detections(
            self.boxes[index],
            self.scores[index],
            [self.phrases[i] for i in index],
            [self.labels[i] for i in index],
            None if self.masks is None else self.masks[index],
        )

    def with_labels(self, labels: Sequence[str | None]) -> Detections:
        masks = None if self.masks is None else self.masks.copy()
        return Detections(self.boxes.copy(), self.scores.copy(), list(self.phrases), list(labels), masks)

    def labelled(self) -> Detections:
        """Only the detections that carry a class-list label."""
        return self.select([i for i, label in enumerate(self.labels) if label is not None])


@dataclass
class InstanceMasks:
    """One binary mask per labelled detection, with the positive points SAM's second pass used."""

    masks: np.ndarray  # (N, H, W) bool
    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    labels: list[str]
    points: list[np.ndarray] = field(default_factory=list)  # each (n_p, 2) xy pixels

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=bool)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if not self.points:
            self.points = [np.zeros((0, 2), np.float32) for _ in range(len(self.labels))]
        if not (len(self.masks) == len(self.boxes) == len(self.scores) == len(self.labels) == len(self.points)):
            raise ValueError("inconsistent instance masks: every field needs one row per instance")

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls, height: int, width: int) -> InstanceMasks:
        return cls(np.zeros((0, height, width), bool), np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), [])


def instance_map(instances: InstanceMasks, height: int, width: int) -> np.ndarray:
    """Which instance each pixel shows (-1: none): where masks overlap the higher detection score wins (on
    equal scores, the earlier detection). The class map and the instance exports both follow it."""
    winner = np.full((height, width), -1, dtype=np.int32)
    if len(instances) == 0:
        return winner
    if instances.masks.shape[1:] != (height, width):
        raise ValueError(f"masks are {instances.masks.shape[1:]}, expected {(height, width)}")
    # Paint low to high so later (higher-scored) masks overwrite; lexsort's last key is the primary one.
    order = np.lexsort((-np.arange(len(instances)), instances.scores))
    for i in order:
        winner[instances.masks[i]] = i
    return winner


@dataclass
class SamPrediction:
    """One SAM decoder call for N boxes: what the point strategies compare and feed back."""

    logits: np.ndarray  # (N, H, W) float32 mask logits at the image's size
    iou: np.ndarray  # (N,) float32: SAM's own predicted IoU of each mask
    low_res: np.ndarray  # (N, h, w) float32 decoder logits before upscaling (256x256): SAM's `mask_input`

    def select(self, keep_second: np.ndarray, second: SamPrediction) -> SamPrediction:
        """Per box: this prediction, or `second`'s where `keep_second` is true."""
        keep = np.asarray(keep_second, bool)
        return SamPrediction(
            np.where(keep[:, None, None], second.logits, self.logits),
            np.where(keep, second.iou, self.iou),
            np.where(keep[:, None, None], second.low_res, self.low_res),
        )


@dataclass
class SegmentationResult:
    """Everything the chain produced for one image: the class map plus the evidence behind it."""

    class_map: np.ndarray  # (H, W) int, index into `class_names`
    class_names: list[str]
    recognition: Recognition | None
    scene_labels: list[str]  # labels sent to the detector
    detections: Detections  # all detections, with post-refined labels
    instances: InstanceMasks
    llm_replies: dict[str, object] = field(default_factory=dict)  # {"pre_refine": str, "post_refine": {phrase: reply}}
