"""What a scoring produced: the dataset-wide matrix plus every image's fate, as the rows and JSON the
writers, the report and the ablation table read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from offline_seg.classes import ClassList
from offline_seg.evaluation.confusion import ConfusionMatrix

OK, MISSING, FAILED = "ok", "missing", "failed"


@dataclass(frozen=True)
class ImageScore:
    """One ground-truth image: its own mIoU (for ranking), where its files are, and what went wrong."""

    stem: str
    gt_path: Path
    pred_path: Path
    status: str = OK  # ok | missing | failed
    miou: float = float("nan")
    pixel_accuracy: float = float("nan")
    scored: bool = True  # False: left out of the dataset matrix (skip_missing, or unreadable ground truth)
    error: str | None = None


@dataclass
class EvalReport:
    """Dataset-wide scores plus every image's fate. IoUs are fractions in [0, 1]; writers show %."""

    classes: ClassList
    confusion: ConfusionMatrix
    images: list[ImageScore]
    extra: list[str] = field(default_factory=list)  # predictions with no ground truth (not scored)
    pred_ids: bool = False
    skip_missing: bool = False
    protocol: str = "paper"  # a key of classes.PROTOCOLS; `classes` is already the list as it scores it

    @property
    def iou(self) -> np.ndarray:
        return self.confusion.iou_per_class()

    @property
    def miou(self) -> float:
        return self.confusion.miou()

    @property
    def pixel_accuracy(self) -> float:
        return self.confusion.pixel_accuracy()

    @property
    def missing(self) -> list[str]:
        return [s.stem for s in self.images if s.status == MISSING]

    @property
    def failed(self) -> dict[str, str]:
        return {s.stem: s.error or "" for s in self.images if s.status == FAILED}

    @property
    def num_scored(self) -> int:
        return sum(s.scored for s in self.images)

    @property
    def not_scored(self) -> list[str]:
        """The classes the protocol leaves out of the mean (the background of the long lists)."""
        return [self.classes.names[index] for index in self.classes.not_scored]

    @property
    def protocol_note(self) -> str:
        """Which protocol a number used and what it left out, for every place that shows one."""
        left_out = self.not_scored
        return f"{self.protocol} protocol" + (f", {', '.join(left_out)} not scored" if left_out else "")

    @property
    def ok(self) -> bool:
        """True when every ground-truth image had a usable prediction."""
        return not self.missing and not self.failed

    def rows(self) -> list[dict[str, object]]:
        """One row per class: index, name, dataset id, whether it is scored, IoU % (None if absent or not
        scored), pixel counts."""
        iou = self.iou
        matrix = self.confusion.matrix
        scored = set(self.classes.scored)
        return [
            {
                "index": index,
                "class": name,
                "dataset_id": self.classes.ids[index],
                "scored": index in scored,
                "iou_percent": None if np.isnan(iou[index]) else round(100 * float(iou[index]), 2),
                "gt_pixels": int(matrix[index].sum()),
                "pred_pixels": int(matrix[:, index].sum()),
            }
            for index, name in enumerate(self.classes.names)
        ]

    def summary(self) -> dict[str, object]:
        """Everything as plain JSON types (NaN becomes null)."""
        return {
            "classes": self.classes.name,
            "num_classes": len(self.classes),
            "protocol": self.protocol,
            "scored_classes": len(self.classes.scored),
            "not_scored": self.not_scored,
            "miou_percent": _percent(self.miou),
            "pixel_accuracy_percent": _percent(self.pixel_accuracy),
            "classes_in_mean": int(np.isfinite(self.iou).sum()),
            "images": len(self.images),
            "images_scored": self.num_scored,
            "missing": self.missing,
            "failed": self.failed,
            "extra_predictions": self.extra,
            "missing_policy": "excluded" if self.skip_missing else "scored as all-background",
            "pred_ids": self.pred_ids,
            "per_class": self.rows(),
            "per_image": [
                {"image": s.stem, "status": s.status, "miou_percent": _percent(s.miou), "scored": s.scored,
                 "error": s.error}
                for s in self.images
            ],
        }


def _percent(value: float) -> float | None:
    return None if np.isnan(value) else round(100 * float(value), 2)
