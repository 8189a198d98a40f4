"""What a run reads and what it calls each input: the images under a folder or dataset root, and one
distinct output name per input file."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

from offline_seg.errors import InvalidInputError
from offline_seg.io.images import IMAGE_SUFFIXES
from offline_seg.textfiles import read_text

# Dataset layouts: the image folder inside a dataset root.
DATASET_IMAGE_DIRS = ("JPEGImages", "leftImg8bit", "val2017", "images")


def find_images(source: Path, recursive: bool = True, names: Path | None = None,
                exclude: Sequence[Path] = ()) -> tuple[Path, list[Path]]:
    """The image root and its images: a file, a plain folder, or a dataset root (VOC `JPEGImages`,
    Cityscapes `leftImg8bit`, COCO `val2017`), searched recursively (symlinked folders are not followed),
    sorted. A run's own outputs are never inputs: folders holding an `offline_seg.sqlite` (a run's output
    folder) and the `exclude` folders (this run's `--out`) are skipped.

    `names`: a text file of image stems, one per line (e.g. VOC's `ImageSets/Segmentation/val.txt`), to
    keep only those images; a listed name with no image is an error, so a split never shrinks silently.
    """
    from offline_seg.io.store import STORE_NAME

    source = Path(source)
    if source.is_file():
        return source.parent, [source]
    if not source.is_dir():
        raise InvalidInputError(f"no such file or folder: {source}")
    for name in DATASET_IMAGE_DIRS:
        if (source / name).is_dir():
            source = source / name
            break
    if (source / STORE_NAME).exists():
        raise InvalidInputError(f"{source} is a run's output folder (it holds {STORE_NAME}), not a folder of "
                                "input images")
    skip = {os.path.realpath(p) for p in exclude}
    images: list[Path] = []
    for folder, dirs, files in os.walk(source):
        if os.path.realpath(folder) in skip or os.path.exists(os.path.join(folder, STORE_NAME)):
            dirs[:] = []
            continue
        # Every entry named like an image, also one that is not a regular file (a folder or FIFO named
        # x.jpg, a symlink loop): the run lists those as failed with their reason instead of skipping them.
        images += [Path(folder) / entry for entry in (*dirs, *files) if Path(entry).suffix.lower() in IMAGE_SUFFIXES]
        if not recursive:
            break
        dirs.sort()
    images.sort()
    if names is not None:
        text = read_text(names, "the image list", "one image name per line")
        wanted = [line.strip() for line in text.splitlines() if line.strip()]
        by_stem = {p.stem: p for p in images}
        absent = [name for name in wanted if name not in by_stem]
        if absent:
            raise InvalidInputError(f"{len(absent)} image(s) listed in {names} not found under {source}, "
                                    f"e.g. {', '.join(absent[:3])}")
        images = [by_stem[name] for name in wanted]
    return source, images


# One part of an output name, in bytes: room for "_overlay.png" and a partial-file prefix under NAME_MAX (255).
MAX_PART_BYTES = 200


def safe_name(text: str) -> str:
    """`text` as a safe output name: a relative path that cannot leave the output folder (no leading `/`,
    no `..`, no empty parts), printable (control characters as `_`, bytes that are not UTF-8 as `%XX`), each
    part short enough for any file system (cut, with a stable hash of the whole part appended). Idempotent:
    a safe name is its own safe name, which is how names read back from a store are checked."""
    parts = []
    for part in str(text).split("/"):
        if part in ("", "."):
            continue
        part = "__" if part == ".." else "".join(_safe_char(c) for c in part)
        if len(part.encode("utf-8")) > MAX_PART_BYTES:
            digest = hashlib.sha256(part.encode("utf-8")).hexdigest()[:16]
            head = part.encode("utf-8")[: MAX_PART_BYTES - len(digest) - 1].decode("utf-8", "ignore")
            part = f"{head}~{digest}"
        parts.append(part)
    return "/".join(parts) or "_"


def _safe_char(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, as Python's file-system decoding keeps it
        return f"%{code - 0xDC00:02X}"
    if code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code <= 0xDFFF:
        return "_"
    return char


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safe_relative(text: str) -> str | None:
    """A relative path read back from a store or lock file, if it is safe (as `safe_name` leaves it)."""
    return text if text and safe_name(text) == text else None


def output_names(paths: Sequence[Path], root: Path | None = None) -> list[str]:
    """One distinct, safe output name per input file: the path relative to `root` (or the file stem)
    without its suffix; where two files would share a name (`a/x.jpg b/x.jpg`, `x.jpg x.png`) the name keeps
    more of the path and, if still needed, the suffix, so no file's outputs overwrite another's (nor one's
    mask another's overlay: `x` and `x_overlay`)."""
    def name_of(path: Path, level: int) -> str:
        if level == 0:
            raw = str(path.relative_to(root).with_suffix("")) if root else path.stem
        elif level == 1:
            parts = Path(os.path.abspath(path)).with_suffix("").parts
            raw = "/".join(parts[-2:]) if root is None else str(path.relative_to(root).with_suffix(""))
        else:
            return name_of(path, 1) + "_" + safe_name(path.suffix.lstrip(".").lower())
        return safe_name(raw)

    names = [name_of(p, 0) for p in paths]
    for level in (1, 2):
        counts = Counter(names)
        names = [name_of(p, level) if counts[n] > 1 else n for p, n in zip(paths, names)]
    used: set[str] = set()
    unique = []
    for name in names:  # the same file given twice, or names that meet after cleaning: number the repeats
        candidate, number = name, 1
        while candidate in used or f"{candidate}_overlay" in used or (
                candidate.endswith("_overlay") and candidate[: -len("_overlay")] in used):
            number += 1
            candidate = f"{name}_{number}"
        used.add(candidate)
        unique.append(candidate)
    return unique
