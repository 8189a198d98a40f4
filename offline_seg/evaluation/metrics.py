"""Scoring class maps against ground truth: mIoU from one dataset-wide confusion matrix, per-class IoU,
and the files a person reads to judge a run (CSV/Markdown table, bar chart, worst-image panels).

Conventions (the standard VOC / mmseg ones, stated because results are compared across papers):

* Ground truth holds dataset ids; it is mapped to class indices with `ClassList.class_indices()`, so
  non-contiguous ids (Cityscapes labelIds, COCO category ids) work, and every id outside the class
  list (void 255, Cityscapes' non-train classes) is ignored.
* Predictions hold class indices (our own `<stem>.png` format) unless `pred_ids=True`, in which case
  they hold dataset ids like the ground truth and go through the same table.
* IoU of a class = TP / (TP + FP + FN) over the whole dataset; a class with no ground-truth and no
  predicted pixel has IoU NaN and is left out of the mean. mIoU = mean of the non-NaN IoUs.
* A missing or unusable prediction is never silently dropped: it is listed by name and, unless
  `skip_missing`, scored as all-background (which is what a failed image really produced).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from offline_seg.classes import ClassList, voc_palette
from offline_seg.errors import InvalidInputError
from offline_seg.io.images import read_label_map

logger = logging.getLogger(__name__)

_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(-1, 3)
OK, MISSING, FAILED = "ok", "missing", "failed"


# --- the metric ---------------------------------------------------------------------------------
@dataclass
class ConfusionMatrix:
    """`matrix[gt, pred]` pixel counts over class indices; pixels whose ground truth is ignored never
    enter it, so the ignore label cannot leak into any IoU."""

    num_classes: int
    ignore_index: int = 255
    matrix: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

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
        """IoU per class index; NaN where the class is neither in the ground truth nor predicted."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        """Mean IoU over classes with a non-empty union (VOC/mmseg convention); NaN if there are none."""
        iou = self.iou_per_class()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.total
        return float(np.trace(self.matrix) / total) if total else float("nan")


# --- results ------------------------------------------------------------------------------------
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
    def ok(self) -> bool:
        """True when every ground-truth image had a usable prediction."""
        return not self.missing and not self.failed

    def rows(self) -> list[dict[str, object]]:
        """One row per class: index, name, dataset id, IoU % (None if absent), pixel counts."""
        iou = self.iou
        matrix = self.confusion.matrix
        return [
            {
                "index": index,
                "class": name,
                "dataset_id": self.classes.ids[index],
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


# --- reading ------------------------------------------------------------------------------------
def _key(path: Path, suffix: str) -> str:
    return path.stem[: len(path.stem) - len(suffix)] if suffix else path.stem


def _files_by_key(directory: Path, suffix: str, what: str, skip: Path | None = None) -> dict[str, Path]:
    """`key → path` for every `*<suffix>.png` under `directory` (recursive, so Cityscapes' city folders and
    `run`'s nested outputs work; overlays and anything under `skip` are not label maps); two files with
    one key would make matching ambiguous, so that is an error."""
    files: dict[str, Path] = {}
    for path in sorted(directory.rglob(f"*{suffix}.png")):
        if path.stem.endswith("_overlay") or (skip is not None and path.is_relative_to(skip)):
            continue
        key = _key(path, suffix)
        if key in files:
            raise InvalidInputError(f"two {what} files for image {key!r}: {files[key]} and {path}")
        files[key] = path
    return files


# --- evaluation ---------------------------------------------------------------------------------
def evaluate(
    pred_dir: Path,
    gt_dir: Path,
    classes: ClassList,
    *,
    pred_ids: bool = False,
    skip_missing: bool = False,
    resize: bool = False,
    gt_suffix: str = "",
    pred_suffix: str = "",
    progress: Callable[[Sequence[str]], Iterable[str]] | None = None,
) -> EvalReport:
    """Score `pred_dir/<key><pred_suffix>.png` against every `gt_dir/**/<key><gt_suffix>.png`.

    `resize` scales a prediction of another size to the ground truth with nearest neighbour
    (otherwise a size mismatch fails that image). `progress` wraps the list of keys (e.g. tqdm) so the
    caller, not the library, owns the terminal. Per-image problems are recorded, never raised.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for directory, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not directory.is_dir():
            raise InvalidInputError(f"{what} directory not found: {directory}")
    gt_files = _files_by_key(gt_dir, gt_suffix, "ground-truth")
    pred_files = _files_by_key(pred_dir, pred_suffix, "prediction", skip=pred_dir / "eval")
    if not gt_files:
        raise InvalidInputError(f"no ground-truth files *{gt_suffix}.png under {gt_dir}")

    total = ConfusionMatrix(len(classes), classes.ignore_index)
    scores: list[ImageScore] = []
    keys = list(gt_files)
    for key in progress(keys) if progress else keys:
        gt_path, pred_path = gt_files[key], pred_files.get(key, pred_dir / f"{key}{pred_suffix}.png")
        try:
            raw = read_label_map(gt_path, "ground truth")
            unknown = classes.unknown_ids(raw)
            if unknown:
                raise InvalidInputError(
                    f"ground truth {gt_path.name} holds id(s) {', '.join(map(str, unknown[:8]))} that the "
                    f"{classes.name} class list does not have (ids {min(classes.ids)}..{max(classes.ids)}, "
                    f"void {classes.ignore_index}): another dataset's labels, or a colour-coded map?")
            gt = classes.class_indices(raw)
        except InvalidInputError as error:
            logger.warning("%s: %s (not scored)", key, error)
            scores.append(ImageScore(key, gt_path, pred_path, FAILED, scored=False, error=str(error)))
            continue
        status, error = OK, None
        image_matrix = ConfusionMatrix(len(classes), classes.ignore_index)
        if not pred_path.is_file():
            status, error = MISSING, f"no prediction {pred_path.name}"
        else:
            try:
                image_matrix.update(gt, _load_prediction(pred_path, gt.shape, classes, pred_ids, resize))
            except InvalidInputError as problem:
                status, error = FAILED, str(problem)
        if status != OK:
            logger.warning("%s: %s (%s)", key, error, "excluded" if skip_missing else "scored as all-background")
            if skip_missing:
                scores.append(ImageScore(key, gt_path, pred_path, status, scored=False, error=error))
                continue
            image_matrix = ConfusionMatrix(len(classes), classes.ignore_index)
            image_matrix.update(gt, np.zeros_like(gt))
        total.add(image_matrix)
        scores.append(ImageScore(key, gt_path, pred_path, status, image_matrix.miou(),
                                 image_matrix.pixel_accuracy(), error=error))

    extra = sorted(key for key in pred_files if key not in gt_files)
    if extra:
        logger.info("%d prediction(s) have no ground truth and were not scored: %s", len(extra), ", ".join(extra[:10]))
    return EvalReport(classes, total, scores, extra, pred_ids=pred_ids, skip_missing=skip_missing)


def _load_prediction(
    path: Path, shape: tuple[int, ...], classes: ClassList, pred_ids: bool, resize: bool
) -> np.ndarray:
    pred = read_label_map(path, "prediction")
    if pred.shape != shape:
        if not resize:
            raise InvalidInputError(f"prediction is {pred.shape[1]}x{pred.shape[0]} but the ground truth "
                                    f"{shape[1]}x{shape[0]} (use resize to scale it with nearest neighbour)")
        pred = np.asarray(Image.fromarray(pred.astype(np.int32)).resize(
            (shape[1], shape[0]), Image.Resampling.NEAREST)).astype(np.int64)
    return classes.class_indices(pred) if pred_ids else pred


# --- writers ------------------------------------------------------------------------------------
def _fmt(value: object) -> str:
    return "n/a" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def format_table(report: EvalReport) -> str:
    """The per-class table as aligned plain text, for a terminal."""
    width = max(len(name) for name in report.classes.names)
    lines = [f"{'#':>3}  {'class':<{width}}  {'id':>4}  {'IoU %':>6}  {'GT px':>11}  {'pred px':>11}"]
    for row in report.rows():
        lines.append(f"{row['index']:>3}  {row['class']:<{width}}  {row['dataset_id']:>4}  "
                     f"{_fmt(row['iou_percent']):>6}  {row['gt_pixels']:>11}  {row['pred_pixels']:>11}")
    return "\n".join(lines)


def write_csv(report: EvalReport, path: Path) -> Path:
    """Per-class rows; an absent class has an empty IoU cell (not 0, which would read as a failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = report.rows()
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return path


def write_markdown(report: EvalReport, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["| # | class | id | IoU (%) | GT pixels | predicted pixels |", "|---:|---|---:|---:|---:|---:|"]
    for row in report.rows():
        lines.append(f"| {row['index']} | {row['class']} | {row['dataset_id']} | {_fmt(row['iou_percent'])} "
                     f"| {row['gt_pixels']} | {row['pred_pixels']} |")
    lines += ["", summary_line(report)]
    if report.missing or report.failed:
        lines.append(f"\nMissing: {', '.join(report.missing) or 'none'}; failed: "
                     f"{', '.join(report.failed) or 'none'} ({report.summary()['missing_policy']}).")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def summary_line(report: EvalReport) -> str:
    summary = report.summary()
    return (f"mIoU {_fmt(summary['miou_percent'])} % over {summary['classes_in_mean']} of "
            f"{summary['num_classes']} classes, pixel accuracy {_fmt(summary['pixel_accuracy_percent'])} %, "
            f"{summary['images_scored']} of {summary['images']} images scored")


def write_summary(report: EvalReport, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.summary(), indent=1) + "\n", encoding="utf-8")
    return path


def plot_per_class(report: EvalReport, path: Path) -> Path:
    """Bar chart of per-class IoU in the VOC colours, mIoU as a dashed line; absent classes say n/a.

    Uses `matplotlib.figure.Figure` directly (Agg canvas) so no pyplot global state or GUI backend.
    """
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iou = report.iou
    count = len(iou)
    figure = Figure(figsize=(max(6.0, 0.32 * count + 1.5), 4.2), dpi=120, layout="constrained")
    axes = figure.add_subplot()
    heights = np.nan_to_num(iou * 100, nan=0.0)
    colours = _PALETTE[:count] / 255.0
    axes.bar(range(count), heights, color=colours, edgecolor="black", linewidth=0.5)
    for index in np.flatnonzero(np.isnan(iou)):
        axes.text(index, 1, "n/a", ha="center", va="bottom", rotation=90, fontsize=7, color="grey")
    if not np.isnan(report.miou):
        axes.axhline(100 * report.miou, color="black", linestyle="--", linewidth=1,
                     label=f"mIoU {100 * report.miou:.2f}")
        axes.legend(loc="upper right", fontsize=8)
    axes.set_xticks(range(count), report.classes.names, rotation=60, ha="right", fontsize=8)
    axes.set_ylim(0, 100)
    axes.set_ylabel("IoU (%)")
    axes.set_title(f"Per-class IoU ({report.classes.name}, {report.num_scored} images)", fontsize=10)
    figure.savefig(path)
    return path


def _coloured(class_map: np.ndarray) -> Image.Image:
    return Image.fromarray(_PALETTE[np.clip(class_map, 0, 255)])


def _find_image(images_dir: Path | None, stem: str) -> Path | None:
    from offline_seg.io.images import IMAGE_SUFFIXES

    if images_dir is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        for candidate in (images_dir / f"{stem}{suffix}", images_dir / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def worst_images(
    report: EvalReport, out_dir: Path, count: int = 10, images_dir: Path | None = None, pred_suffix: str = ""
) -> list[Path]:
    """Side-by-side panels (image if found | prediction | ground truth, VOC colours, void in the VOC
    void colour) of the `count` images with the lowest per-image mIoU, worst first, named
    `NN_<stem>.png`. Only images with a usable prediction are ranked; missing ones are listed already."""
    from offline_seg.io.images import load_image

    ranked = sorted((s for s in report.images if s.status == OK and not np.isnan(s.miou)), key=lambda s: s.miou)
    if count <= 0 or not ranked:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=14)
    written: list[Path] = []
    for rank, score in enumerate(ranked[:count], start=1):
        gt = report.classes.class_indices(read_label_map(score.gt_path, "ground truth"))
        pred = _load_prediction(score.pred_path, gt.shape, report.classes, report.pred_ids, resize=True)
        panels = [("prediction", _coloured(pred)), ("ground truth", _coloured(gt))]
        image_path = _find_image(images_dir, f"{score.stem}{pred_suffix}") or _find_image(images_dir, score.stem)
        if image_path is not None:
            try:
                photo = load_image(image_path).resize((gt.shape[1], gt.shape[0]))
                panels.insert(0, ("image", photo))
            except InvalidInputError as error:
                logger.warning("%s: %s (panel without the photo)", score.stem, error)
        width, height, header = gt.shape[1], gt.shape[0], 22
        canvas = Image.new("RGB", (width * len(panels), height + header), "white")
        draw = ImageDraw.Draw(canvas)
        for column, (title, panel) in enumerate(panels):
            canvas.paste(panel.convert("RGB"), (column * width, header))
            label = f"{title} - {score.stem} mIoU {100 * score.miou:.1f}" if column == 0 else title
            draw.text((column * width + 4, 3), label, fill="black", font=font)
        path = out_dir / f"{rank:02d}_{score.stem}.png"
        canvas.save(path)
        written.append(path)
    return written
