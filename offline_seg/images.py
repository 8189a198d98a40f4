"""Reading images the way every stage expects them: RGB, EXIF orientation applied, clear errors."""

from __future__ import annotations

from pathlib import Path

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
