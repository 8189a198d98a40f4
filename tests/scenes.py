"""Synthetic pictures with known ground truth, for runs that need no real image."""

from __future__ import annotations

from pathlib import Path


def write_scene(folder: Path, gt: Path, name: str, boxes: dict[int, tuple[int, int, int, int]],
                size: tuple[int, int] = (96, 72), seed: int = 0) -> Path:
    """A synthetic photo with a coloured rectangle per VOC class id (x0, y0, x1, y1), and its ground truth."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    truth = np.zeros((height, width), np.uint8)
    for class_id, (x0, y0, x1, y1) in boxes.items():
        pixels[y0:y1, x0:x1] = ((53 * class_id) % 200 + 55, (97 * class_id) % 200 + 55, (31 * class_id) % 200 + 55)
        truth[y0:y1, x0:x1] = class_id
    folder.mkdir(parents=True, exist_ok=True)
    gt.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / f"{name}.png")
    Image.fromarray(truth, mode="L").save(gt / f"{name}.png")
    return folder / f"{name}.png"
