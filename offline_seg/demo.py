"""What `offline-seg demo` segments: a real photo for the real CPU tier, a drawn scene for tiny models.

The photo is "Chelsea the cat" by Stefan van der Walt, released under CC0 (no copyright restrictions) and
bundled the same way by scikit-image (`skimage.data.chelsea`); see the README's credits.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

DEMO_PHOTO = Path(__file__).with_name("data") / "chelsea.png"
DEMO_PHOTO_CREDIT = "Chelsea the cat, by Stefan van der Walt (CC0), as bundled by scikit-image"


def demo_photo() -> Image.Image:
    """The bundled real photo (451x300, RGB)."""
    return Image.open(DEMO_PHOTO).convert("RGB")


def demo_image(width: int = 640, height: int = 480) -> Image.Image:
    """A simple outdoor scene: sky, grass, a house, a tree, a car and a person-like figure."""
    image = Image.new("RGB", (width, height), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    horizon = int(height * 0.6)
    draw.rectangle([0, horizon, width, height], fill=(90, 160, 70))
    draw.ellipse([width * 0.78, height * 0.06, width * 0.9, height * 0.22], fill=(250, 220, 90))
    draw.rectangle([width * 0.08, height * 0.32, width * 0.38, horizon + 10], fill=(200, 120, 90))
    draw.polygon([(width * 0.05, height * 0.33), (width * 0.23, height * 0.15), (width * 0.41, height * 0.33)],
                 fill=(130, 50, 40))
    draw.rectangle([width * 0.2, height * 0.45, width * 0.26, horizon + 10], fill=(90, 60, 40))
    draw.rectangle([width * 0.56, height * 0.3, width * 0.6, horizon + 20], fill=(100, 70, 40))
    draw.ellipse([width * 0.48, height * 0.12, width * 0.68, height * 0.38], fill=(40, 120, 40))
    draw.rounded_rectangle([width * 0.62, height * 0.68, width * 0.92, height * 0.82], radius=12, fill=(200, 30, 40))
    draw.ellipse([width * 0.66, height * 0.78, width * 0.72, height * 0.86], fill=(20, 20, 20))
    draw.ellipse([width * 0.82, height * 0.78, width * 0.88, height * 0.86], fill=(20, 20, 20))
    draw.ellipse([width * 0.44, height * 0.55, width * 0.48, height * 0.61], fill=(240, 200, 170))
    draw.rectangle([width * 0.435, height * 0.61, width * 0.485, height * 0.75], fill=(40, 60, 160))
    draw.rectangle([width * 0.44, height * 0.75, width * 0.48, height * 0.86], fill=(50, 50, 50))
    return image
