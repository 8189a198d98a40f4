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
        what = ("a folder" if path.is_dir() else "not a regular file" if path.exists()
                else "a symlink loop or a dangling link" if path.is_symlink() else "not found")
        raise InvalidInputError(f"cannot read image {path}: {what}")
    if path.stat().st_size == 0:
        raise InvalidInputError(f"cannot read image {path}: the file is empty (0 bytes)")
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as error:  # a header claiming more pixels than PIL's safety limit
        raise InvalidInputError(f"cannot read image {path}: too large ({error})") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidInputError(f"cannot read image {path}: {error}") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode; 16/32-bit grey is scaled to 8 bits (PIL's own conversion would clip it)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(pixels.max(initial=0)), 1.0)
        image = Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")  # transparent pixels onto white, not onto whatever colour they hold
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


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
