"""Where a command may write: never over its inputs, ground truth or weights, never outside its --out.

Checked once, before any model loads, with every path resolved (symlinks followed), so `--out .`,
`--out in/out` and `--out ../in` are seen for what they are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

from offline_seg.errors import InvalidInputError
from offline_seg.io.atomic import write_atomically
from offline_seg.io.inputs import safe_relative
from offline_seg.io.outputs import file_identity


def _real(path: Path | str) -> str:
    return os.path.realpath(path)


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies inside it (both resolved)."""
    return os.path.commonpath([path, folder]) == folder


def new_or_empty(folder: Path) -> bool:
    """Whether a command that fills a whole folder (tiny weights, a converted model) may write into `folder`."""
    folder = Path(folder)
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


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


LEDGER_NAME = ".offline_seg_written.json"


class Ledger:
    """The files a command (`eval`) writes into a folder that may hold other files: one it wrote before
    (the same size and sha256 as it recorded) is replaced; any other existing file is refused, one line,
    unless `overwrite`. Its earlier files that this run does not write again (stale worst-image panels)
    are removed, so the folder shows this result only."""

    def __init__(self, folder: Path, command: str, overwrite: bool = False):
        self.folder, self.command, self.overwrite = Path(folder), command, overwrite
        self.path = self.folder / LEDGER_NAME
        self.records = self._read()

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        files = data.get("files") if isinstance(data, dict) and data.get("command") == self.command else None
        return {name: record for name, record in (files or {}).items()
                if isinstance(record, dict) and safe_relative(name) == name}

    def ours(self, path: Path) -> bool:
        """Whether `path` (in the folder) is a file this command wrote and nobody changed since."""
        record = self.records.get(Path(path).relative_to(self.folder).as_posix())
        return record is not None and path.is_file() and not path.is_symlink() and file_identity(path) == record

    def check(self, paths: Iterable[Path]) -> None:
        """Refuse before writing: an existing file among `paths` that is not ours (a folder, a link, a
        user's file), unless `overwrite` (a folder or link in the way is refused even then)."""
        for path in paths:
            if not (path.exists() or path.is_symlink()) or self.ours(path):
                continue
            if self.overwrite and path.is_file() and not path.is_symlink():
                continue
            raise InvalidInputError(f"{path} exists and was not written by `offline-seg {self.command}`; move it "
                                    "away, choose another --out, or pass --overwrite")

    def remove_stale(self, keep: Iterable[Path]) -> None:
        """Delete the files this command wrote earlier and will not write now (only unchanged ones)."""
        keep_names = {Path(p).relative_to(self.folder).as_posix() for p in keep}
        for name in list(self.records):
            path = self.folder / name
            if name not in keep_names and self.ours(path):
                path.unlink()
                del self.records[name]

    def record(self, paths: Iterable[Path]) -> None:
        """Remember what was written (the ledger itself is replaced atomically)."""
        for path in paths:
            self.records[Path(path).relative_to(self.folder).as_posix()] = file_identity(path)
        text = json.dumps({"command": self.command, "files": self.records}, indent=1) + "\n"
        write_atomically(self.path, lambda target: target.write_text(text, encoding="utf-8"))
