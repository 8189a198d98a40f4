"""Reading images the way every stage expects them: RGB, EXIF orientation applied, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from offline_seg.errors import InvalidInputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def load_image(source: str | Path | Image.Image) -> Image.Image:
    """An RGB PIL image from a path or an image; unreadable files raise InvalidInputError."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    path = Path(source)
    if not path.is_file():
        raise InvalidInputError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise InvalidInputError(f"cannot read image {path}: {error}") from error


def read_label_map(path: Path, what: str = "label map") -> np.ndarray:
    """A single-channel label PNG as an int64 array; RGB colour-coded maps are refused, not guessed."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise InvalidInputError(f"{what} {path.name} is a {image.mode} image; expected a single-channel "
                                        "label map (palette, grey or 16-bit PNG)")
            return np.asarray(image).astype(np.int64)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise InvalidInputError(f"cannot read {what} {path}: {error}") from error
