"""Where a command may write: never over its inputs, ground truth or weights, never outside its --out.

Checked once, before any model loads, with every path resolved (symlinks followed), so `--out .`,
`--out in/out` and `--out ../in` are seen for what they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from offline_seg.errors import InvalidInputError


def _real(path: Path | str) -> str:
    return os.path.realpath(path)


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies inside it (both resolved)."""
    return os.path.commonpath([path, folder]) == folder


def check_out_dir(out: Path, *, input_files: Iterable[Path] = (), folders: Mapping[str, Iterable[Path | None]] = {}) -> None:
    """Refuse an output folder that is a file, that is, contains or lies inside one of `folders` (e.g.
    {"input folder": [...], "ground-truth folder": [...], "weights folder": [...]}), or that contains an
    input file given one by one. One line, before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file; give a folder for the outputs")
    target = _real(out)
    for what, paths in folders.items():
        for folder in paths:
            if folder is None:
                continue
            real = _real(folder)
            if target == real:
                raise InvalidInputError(f"--out {out} is the {what} {folder}: outputs would be written over it; "
                                        "choose another --out")
            if _inside(target, real):
                raise InvalidInputError(f"--out {out} lies inside the {what} {folder}; choose an --out outside it")
            if _inside(real, target):
                raise InvalidInputError(f"--out {out} contains the {what} {folder}; choose an --out that does not")
    for file in input_files:
        if _inside(_real(Path(file).parent), target):
            raise InvalidInputError(f"--out {out} contains the input {file}: outputs could be written over "
                                    "inputs; choose an --out that holds no input")


# A dataset's parts (VOC, Cityscapes), and what marks a dataset root.
DATASET_PARTS = ("SegmentationClass", "SegmentationClassAug", "SegmentationObject", "JPEGImages", "gtFine",
                 "leftImg8bit")
ANNOTATED_IMAGES = ("images", "val2017", "train2017")  # beside an `annotations` folder: COCO, ADE20K


def dataset_root_of(path: Path, exports: Iterable[Path] = ()) -> Path | None:
    """The nearest folder at or above `path` that is a dataset (it holds VOC/Cityscapes parts, or
    annotations beside images) or one of its parts, else None. Folders in `exports` (an earlier export of
    ours, which has a dataset's layout) do not count."""
    skip = {_real(p) for p in exports}
    current = Path(_real(path))
    for folder in (current, *current.parents):
        if str(folder) in skip:
            continue
        if folder.name in DATASET_PARTS:
            return folder
        if folder.is_dir() and (any((folder / part).is_dir() for part in DATASET_PARTS) or (
                (folder / "annotations").is_dir() and any((folder / i).is_dir() for i in ANNOTATED_IMAGES))):
            return folder
    return None


def check_export_target(out: Path, *, kind: str, run_dir: Path, input_folders: Iterable[Path],
                        ground_truth: Iterable[Path | None], overwrite: bool, ours: bool) -> None:
    """Refuse an export target of the wrong kind (`kind` "file" or "folder"), one inside the run dir, one
    that is, holds or lies in a dataset, the run's inputs or its ground truth (even with --overwrite), and a
    non-empty one this export did not write (`ours`) unless `overwrite`."""
    out = Path(out)
    if kind == "file" and out.is_dir():
        raise InvalidInputError(f"--out {out} is a folder; this format writes one file (e.g. {out}/export"
                                f"{'.json' if out.suffix != '.zip' else '.zip'})")
    if kind == "folder" and out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file; this format writes a folder")
    target = _real(out)
    if _inside(target, _real(run_dir)) or _inside(_real(run_dir), target):
        raise InvalidInputError(f"--out {out} overlaps the run folder {run_dir}; export next to it, not into it")
    for what, folders in (("input folder", input_folders), ("ground-truth folder", ground_truth)):
        for folder in folders:
            if folder is not None and (_inside(target, _real(folder)) or _inside(_real(folder), target)):
                raise InvalidInputError(f"--out {out} overlaps the run's {what} {folder}; choose another --out")
    dataset = dataset_root_of(out if kind == "folder" else out.parent, exports=[out] if ours else [])
    if dataset is not None:
        raise InvalidInputError(f"--out {out} is in the dataset {dataset} (it holds ground truth or its images); "
                                "export outside it")
    occupied = out.is_file() or (out.is_dir() and any(out.iterdir()))
    if occupied and not ours and not overwrite:
        raise InvalidInputError(f"--out {out} exists and was not written by `offline-seg export`; pass "
                                "--overwrite to replace it, or choose another --out")
