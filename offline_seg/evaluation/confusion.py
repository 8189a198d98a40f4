"""The metric: one dataset-wide confusion matrix over class indices, and the IoU / mIoU / pixel accuracy
read from it (the standard VOC / mmseg conventions: IoU = TP / (TP + FP + FN) over the whole dataset; a
class with no ground-truth and no predicted pixel has IoU NaN and is left out of the mean, and so is a
class the protocol does not score, whose predicted pixels only count as misses of their true class)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from offline_seg.classes import ClassList
from offline_seg.errors import InvalidInputError


@dataclass
class ConfusionMatrix:
    """`matrix[gt, pred]` pixel counts over class indices; pixels whose ground truth is ignored never
    enter it, so the ignore label cannot leak into any IoU. `scored` names the classes of the mean (all
    by default); the others have no IoU and no ground truth (theirs is ignored like void)."""

    num_classes: int
    ignore_index: int = 255
    scored: tuple[int, ...] | None = None
    matrix: np.ndarray = field(init=False, repr=False)
    _scored_mask: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self._scored_mask = np.zeros(self.num_classes, dtype=bool)
        self._scored_mask[list(range(self.num_classes) if self.scored is None else self.scored)] = True

    @classmethod
    def of(cls, classes: ClassList) -> ConfusionMatrix:
        """An empty matrix scoring `classes` as their list says (`ClassList.scored`)."""
        return cls(len(classes), classes.ignore_index, classes.scored)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add one image. `gt` and `pred` are class-index maps of one shape; `gt` may hold
        `ignore_index` (or any value outside the classes, treated the same). A prediction value outside
        the classes at a scored pixel raises InvalidInputError: it is a bug upstream, not a class."""
        gt = np.asarray(gt).astype(np.int64, copy=False).ravel()
        pred = np.asarray(pred).astype(np.int64, copy=False).ravel()
        if gt.shape != pred.shape:
            raise InvalidInputError(f"ground truth has {gt.size} pixels but the prediction {pred.size}")
        n = self.num_classes
        valid = (gt >= 0) & (gt < n) & (gt != self.ignore_index)
        valid[valid] = self._scored_mask[gt[valid]]
        gt, pred = gt[valid], pred[valid]
        bad = (pred < 0) | (pred >= n)
        if bad.any():
            values = np.unique(pred[bad])[:10].tolist()
            raise InvalidInputError(f"prediction holds values {values} that are not class indices 0..{n - 1}")
        self.matrix += np.bincount(gt * n + pred, minlength=n * n).reshape(n, n)

    def add(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    def iou_per_class(self) -> np.ndarray:
        """IoU per class index; NaN where the class is neither in the ground truth nor predicted, or not
        scored. A pixel predicted as an unscored class still adds to its true class's FN (the row sum)."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where((union > 0) & self._scored_mask, tp / union, np.nan)

    def miou(self) -> float:
        """Mean IoU over classes with a non-empty union (VOC/mmseg convention); NaN if there are none."""
        iou = self.iou_per_class()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.total
        return float(np.trace(self.matrix) / total) if total else float("nan")
