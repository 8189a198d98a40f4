"""Oracle inputs from ground truth, for stage-wise evaluation.

`--labels gt` replaces recognition + pre-refinement by the classes present in the ground truth (the
paper's "ground-truth labels" row); `--boxes gt` replaces everything before the segmenter by one box per
connected component of each class (a row that isolates the segmenter). Detector boxes are rarely tight:
`loosen_boxes` widens (`--gt-box-expand`) and jitters (`--gt-box-jitter`, fixed `--seed`) the oracle's.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from offline_seg.classes import ClassList
from offline_seg.errors import InvalidInputError
from offline_seg.io.images import read_label_map
from offline_seg.types import Detections

GT_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
# 8-connectivity: a thin diagonal limb stays part of its object.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class GroundTruth:
    """Ground-truth label maps in a directory, matched to images by file stem, in dataset ids."""

    directory: Path
    classes: ClassList

    def path_for(self, stem: str) -> Path:
        for suffix in GT_SUFFIXES:
            candidate = Path(self.directory) / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
        # Cityscapes names its label maps <city>_<seq>_<frame>_gtFine_labelIds.png for <...>_leftImg8bit.png.
        if stem.endswith("_leftImg8bit"):
            candidate = Path(self.directory) / f"{stem[: -len('_leftImg8bit')]}_gtFine_labelIds.png"
            if candidate.is_file():
                return candidate
        raise InvalidInputError(f"no ground truth for {stem!r} in {self.directory}")

    def class_map(self, stem: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """(H, W) class indices (`classes.ignore_index` for void and unknown ids) for image `stem`.

        `size` = the image's (width, height), checked so that an oracle never silently misaligns.
        """
        path = self.path_for(stem)
        ids = read_label_map(path, "ground truth")
        if size is not None and (ids.shape[1], ids.shape[0]) != tuple(size):
            raise InvalidInputError(f"{path}: ground truth is {ids.shape[1]}x{ids.shape[0]}, image is {size[0]}x{size[1]}")
        return self.classes.class_indices(ids)


def labels_from_ground_truth(class_map: np.ndarray, classes: ClassList) -> list[str]:
    """The foreground classes present, in class-list order."""
    present = set(np.unique(class_map).tolist())
    return [name for index, name in zip(classes.foreground_indices, classes.foreground) if index in present]


def boxes_from_ground_truth(class_map: np.ndarray, classes: ClassList, min_area: int = 100) -> Detections:
    """One labelled detection per connected component of each foreground class.

    Components under `min_area` pixels are dropped: in VOC they are mostly fragments cut off by the void
    border, and a box around a few pixels gives SAM a prompt it cannot resolve (on voc-mini with 20
    points, keeping them lowered mean IoU from 0.85 to 0.79). The score is 1 − the component's share of
    the image, so where two oracle masks overlap the smaller object, usually the one in front, wins.
    """
    height, width = class_map.shape
    boxes, scores, labels = [], [], []
    for index, name in enumerate(classes.names):
        if index == 0:
            continue
        components, count = ndimage.label(class_map == index, structure=_EIGHT_CONNECTED)
        if count == 0:
            continue
        areas = ndimage.sum_labels(np.ones_like(components), components, index=np.arange(1, count + 1))
        for area, found in zip(areas, ndimage.find_objects(components)):
            if found is None or area < min_area:
                continue
            rows, cols = found
            boxes.append([cols.start, rows.start, cols.stop - 1, rows.stop - 1])
            scores.append(1.0 - area / (height * width))
            labels.append(name)
    if not boxes:
        return Detections.empty()
    return Detections(np.array(boxes, np.float32), np.array(scores, np.float32), list(labels), list(labels))


def loosen_boxes(
    detections: Detections, size: tuple[int, int], expand: float = 0.0, jitter: float = 0.0, seed: int = 0,
    key: str = "",
) -> Detections:
    """Ground-truth boxes made detector-like, clipped to the image (`size` = (width, height)).

    Each side moves out by `expand` × the box's width (left/right) or height (top/bottom), then by a
    uniform random shift in [−jitter, +jitter] × the same length, drawn from `seed` and `key` (the image's
    name, so images get different shifts): the same inputs always give the same boxes. Corners are clipped
    to the pixel grid and kept ordered.
    """
    if expand < 0 or jitter < 0:
        raise InvalidInputError("--gt-box-expand and --gt-box-jitter must be >= 0")
    if len(detections) == 0 or (expand == 0 and jitter == 0):
        return detections
    boxes = detections.boxes.astype(np.float64)
    lengths = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)  # (w, h, w, h) per box
    outward = np.array([-1.0, -1.0, 1.0, 1.0])
    shift = np.random.default_rng([seed, zlib.crc32(key.encode())]).uniform(-jitter, jitter, boxes.shape) if jitter else 0.0
    moved = boxes + (outward * expand + shift) * lengths
    width, height = size
    low = np.clip(np.minimum(moved[:, :2], moved[:, 2:]), 0, [width - 1, height - 1])
    high = np.clip(np.maximum(moved[:, :2], moved[:, 2:]), 0, [width - 1, height - 1])
    return Detections(np.concatenate([low, high], axis=1).astype(np.float32), detections.scores,
                      list(detections.phrases), list(detections.labels))
