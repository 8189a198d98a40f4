"""Scoring a folder of class maps against ground truth: which files pair up, how each image is read,
and what happens to a missing or unusable prediction.

Conventions (the standard VOC / mmseg ones, stated because results are compared across papers):

* Ground truth holds dataset ids; it is mapped to class indices with `ClassList.class_indices()`, so
  non-contiguous ids (Cityscapes labelIds, COCO category ids) work, and every id outside the class
  list (void 255, Cityscapes' non-train classes) is ignored.
* Predictions hold class indices (our own `<stem>.png` format) unless `pred_ids=True`, in which case
  they hold dataset ids like the ground truth and go through the same table.
* IoU of a class = TP / (TP + FP + FN) over the whole dataset; a class with no ground-truth and no
  predicted pixel has IoU NaN and is left out of the mean. mIoU = mean of the non-NaN IoUs.
* The protocol (`classes.PROTOCOLS`) turns the class list into the one it scores (`ClassList.for_protocol`);
  a class without a dataset id (the background of the long lists; Cityscapes' under "standard") is not in
  the mean, and pixels predicted as it only count as misses of their true class (`ClassList.scored`).
* A missing or unusable prediction is never silently dropped: it is listed by name and, unless
  `skip_missing`, scored as all-background (which is what a failed image really produced).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from offline_seg.classes import ClassList
from offline_seg.errors import InvalidInputError
from offline_seg.evaluation.confusion import ConfusionMatrix
from offline_seg.evaluation.results import FAILED, MISSING, OK, EvalReport, ImageScore
from offline_seg.io.images import read_label_map

logger = logging.getLogger(__name__)


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
    protocol: str = "paper",
    progress: Callable[[Sequence[str]], Iterable[str]] | None = None,
) -> EvalReport:
    """Score `pred_dir/<key><pred_suffix>.png` against every `gt_dir/**/<key><gt_suffix>.png`: the one
    scoring function behind `eval`, `report` and `run --ablation`, so their numbers agree.

    `resize` scales a prediction of another size to the ground truth with nearest neighbour
    (otherwise a size mismatch fails that image). `progress` wraps the list of keys (e.g. tqdm) so the
    caller, not the library, owns the terminal. Per-image problems are recorded, never raised.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    classes = classes.for_protocol(protocol)
    for directory, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not directory.is_dir():
            raise InvalidInputError(f"{what} directory not found: {directory}")
    reports = pred_dir / "eval"  # `eval`'s default --out: its charts and panels are no label maps, on either side
    gt_files = _files_by_key(gt_dir, gt_suffix, "ground-truth", skip=reports)
    pred_files = _files_by_key(pred_dir, pred_suffix, "prediction", skip=reports)
    if not gt_files:
        raise InvalidInputError(f"no ground-truth files *{gt_suffix}.png under {gt_dir}")

    total = ConfusionMatrix.of(classes)
    scores: list[ImageScore] = []
    keys = list(gt_files)
    for key in progress(keys) if progress else keys:
        gt_path, pred_path = gt_files[key], pred_files.get(key, pred_dir / f"{key}{pred_suffix}.png")
        try:
            raw = read_label_map(gt_path, "ground truth")
            unknown = classes.unknown_ids(raw)
            if unknown:
                ids = [classes.ids[index] for index in classes.scored]
                raise InvalidInputError(
                    f"ground truth {gt_path.name} holds id(s) {', '.join(map(str, unknown[:8]))} that the "
                    f"{classes.name} class list does not have (ids {min(ids)}..{max(ids)}, "
                    f"void {classes.ignore_index}): another dataset's labels, or a colour-coded map?")
            gt = classes.class_indices(raw)
        except InvalidInputError as error:
            logger.warning("%s: %s (not scored)", key, error)
            scores.append(ImageScore(key, gt_path, pred_path, FAILED, scored=False, error=str(error)))
            continue
        status, error = OK, None
        image_matrix = ConfusionMatrix.of(classes)
        if not pred_path.is_file():
            status, error = MISSING, f"no prediction {pred_path.name}"
        else:
            try:
                image_matrix.update(gt, load_prediction(pred_path, gt.shape, classes, pred_ids, resize))
            except InvalidInputError as problem:
                status, error = FAILED, str(problem)
        if status != OK:
            logger.warning("%s: %s (%s)", key, error, "excluded" if skip_missing else "scored as all-background")
            if skip_missing:
                scores.append(ImageScore(key, gt_path, pred_path, status, scored=False, error=error))
                continue
            image_matrix = ConfusionMatrix.of(classes)
            image_matrix.update(gt, np.zeros_like(gt))
        total.add(image_matrix)
        scores.append(ImageScore(key, gt_path, pred_path, status, image_matrix.miou(),
                                 image_matrix.pixel_accuracy(), error=error))

    extra = sorted(key for key in pred_files if key not in gt_files)
    if extra:
        logger.info("%d prediction(s) have no ground truth and were not scored: %s", len(extra), ", ".join(extra[:10]))
    return EvalReport(classes, total, scores, extra, pred_ids=pred_ids, skip_missing=skip_missing, protocol=protocol)


def load_prediction(
    path: Path, shape: tuple[int, ...], classes: ClassList, pred_ids: bool, resize: bool
) -> np.ndarray:
    """A prediction as class indices. In dataset ids, an id of no scored class (void, Cityscapes' 0 under
    "standard") means "no class": it becomes the unscored class, a miss, where the list has one."""
    pred = read_label_map(path, "prediction")
    if pred.shape != shape:
        if not resize:
            raise InvalidInputError(f"prediction is {pred.shape[1]}x{pred.shape[0]} but the ground truth "
                                    f"{shape[1]}x{shape[0]} (use resize to scale it with nearest neighbour)")
        pred = np.asarray(Image.fromarray(pred.astype(np.int32)).resize(
            (shape[1], shape[0]), Image.Resampling.NEAREST)).astype(np.int64)
    if not pred_ids:
        return pred
    indices = classes.class_indices(pred)
    unscored = classes.not_scored
    return np.where(indices == classes.ignore_index, unscored[0], indices) if unscored else indices
