"""What a run reads and what it calls each input: the images under a folder or dataset root, and one
distinct output name per input file."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Sequence

from offline_seg.errors import InvalidInputError
from offline_seg.io.images import IMAGE_SUFFIXES

# Dataset layouts: the image folder inside a dataset root.
DATASET_IMAGE_DIRS = ("JPEGImages", "leftImg8bit", "val2017", "images")


def find_images(source: Path, recursive: bool = True, names: Path | None = None) -> tuple[Path, list[Path]]:
    """The image root and its images: a file, a plain folder, or a dataset root (VOC `JPEGImages`,
    Cityscapes `leftImg8bit`, COCO `val2017`), searched recursively, sorted, our own outputs skipped.

    `names`: a text file of image stems, one per line (e.g. VOC's `ImageSets/Segmentation/val.txt`), to
    keep only those images; a listed name with no image is an error, so a split never shrinks silently.
    """
    source = Path(source)
    if source.is_file():
        return source.parent, [source]
    if not source.is_dir():
        raise InvalidInputError(f"no such file or folder: {source}")
    for name in DATASET_IMAGE_DIRS:
        if (source / name).is_dir():
            source = source / name
            break
    pattern = "**/*" if recursive else "*"
    # Every entry named like an image, also one that is not a regular file (a folder or FIFO named x.jpg,
    # a symlink loop): the run lists those as failed with their reason instead of skipping them silently.
    images = sorted(
        p for p in source.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_overlay")
    )
    if names is not None:
        wanted = [line.strip() for line in Path(names).read_text().splitlines() if line.strip()]
        by_stem = {p.stem: p for p in images}
        absent = [name for name in wanted if name not in by_stem]
        if absent:
            raise InvalidInputError(f"{len(absent)} image(s) listed in {names} not found under {source}, "
                                    f"e.g. {', '.join(absent[:3])}")
        images = [by_stem[name] for name in wanted]
    return source, images


def output_names(paths: Sequence[Path], root: Path | None = None) -> list[str]:
    """One distinct output name per input file: the path relative to `root` (or the file stem) without
    its suffix; where two files would share a name (`a/x.jpg b/x.jpg`, `x.jpg x.png`) the name keeps
    more of the path and, if still needed, the suffix, so no file's outputs overwrite another's."""
    def name_of(path: Path, level: int) -> str:
        if level == 0:
            return str(path.relative_to(root).with_suffix("")) if root else path.stem
        if level == 1:
            parts = Path(os.path.abspath(path)).with_suffix("").parts
            return "/".join(parts[-2:]) if root is None else str(path.relative_to(root).with_suffix(""))
        return name_of(path, 1) + "_" + path.suffix.lstrip(".").lower()

    names = [name_of(p, 0) for p in paths]
    for level in (1, 2):
        counts = Counter(names)
        names = [name_of(p, level) if counts[n] > 1 else n for p, n in zip(paths, names)]
    counts = Counter(names)
    seen: Counter = Counter()
    unique = []
    for name in names:  # the same file given twice: number the repeats
        seen[name] += 1
        unique.append(name if counts[name] == 1 or seen[name] == 1 else f"{name}_{seen[name]}")
    return unique
