"""Per-image outputs in standard formats: a palette PNG of class indices (VOC colours), an overlay with
boxes and a legend to look at, and a JSON record with instance masks as COCO RLE."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils

from offline_seg.classes import voc_palette
from offline_seg.types import SegmentationResult

_PALETTE = voc_palette()


@dataclass(frozen=True)
class OutputPaths:
    mask: Path
    overlay: Path
    record: Path


def class_map_image(class_map: np.ndarray) -> Image.Image:
    """Class indices as a palette ('P') PNG: pixel value = class index, colours = VOC colour map."""
    if class_map.max(initial=0) > 255:
        raise ValueError("more than 256 classes do not fit a palette PNG")
    image = Image.fromarray(class_map.astype(np.uint8), mode="P")
    image.putpalette(_PALETTE)
    return image


def _colour(index: int) -> tuple[int, int, int]:
    return tuple(_PALETTE[3 * index : 3 * index + 3])  # type: ignore[return-value]


def render_overlay(image: Image.Image, result: SegmentationResult, alpha: float = 0.5) -> Image.Image:
    """The photo with the class map blended in, each instance's box and `label score`, and a legend of
    the classes present, so a person can judge a result at a glance."""
    base = image.convert("RGB")
    colours = np.array(_PALETTE, dtype=np.uint8).reshape(-1, 3)[result.class_map]
    painted = result.class_map > 0
    pixels = np.asarray(base, dtype=np.float32)
    pixels[painted] = (1 - alpha) * pixels[painted] + alpha * colours[painted]
    blended = Image.fromarray(pixels.astype(np.uint8))
    font = ImageFont.load_default(size=max(12, min(base.size) // 40))
    draw = ImageDraw.Draw(blended)
    names = result.class_names
    for box, label, score in zip(result.instances.boxes, result.instances.labels, result.instances.scores):
        colour = _colour(names.index(label))
        draw.rectangle([float(v) for v in box], outline=colour, width=2)
        draw.text((float(box[0]) + 3, float(box[1]) + 2), f"{label} {score:.2f}", fill=colour, font=font,
                  stroke_width=2, stroke_fill=(0, 0, 0))

    present = [i for i in np.unique(result.class_map).tolist() if i > 0]
    entries = [(names[i], _colour(i)) for i in present] or [("(no class found)", (255, 255, 255))]
    line = font.size + 6
    legend_width = max(int(draw.textlength(name, font=font)) for name, _ in entries) + line + 16
    canvas = Image.new("RGB", (blended.width + legend_width, max(blended.height, line * len(entries) + 10)), "white")
    canvas.paste(blended, (0, 0))
    legend = ImageDraw.Draw(canvas)
    for row, (name, colour) in enumerate(entries):
        y = 5 + row * line
        x = blended.width + 8
        legend.rectangle([x, y, x + line - 6, y + line - 6], fill=colour, outline="black")
        legend.text((x + line, y), name, fill="black", font=font)
    return canvas


def encode_rle(mask: np.ndarray) -> dict[str, object]:
    """COCO RLE of a binary mask, JSON-ready (counts as a string)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, object]) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": str(rle["counts"]).encode("ascii")}).astype(bool)


def result_record(result: SegmentationResult, image_name: str, settings: dict[str, object] | None = None) -> dict:
    """Everything behind the class map, as plain JSON types."""
    recognition = result.recognition
    height, width = result.class_map.shape
    return {
        "image": image_name,
        "height": int(height),
        "width": int(width),
        "classes": result.class_names,
        "recognition": None
        if recognition is None
        else {"tags": list(recognition.tags), "caption": recognition.caption, "text": recognition.text},
        "scene_labels": result.scene_labels,
        "llm_replies": result.llm_replies,
        "detections": [
            {"box": [round(float(v), 2) for v in box], "phrase": phrase, "label": label, "score": round(float(score), 4)}
            for box, phrase, label, score in zip(
                result.detections.boxes, result.detections.phrases, result.detections.labels, result.detections.scores
            )
        ],
        "instances": [
            {
                "label": label,
                "class_index": result.class_names.index(label),
                "score": round(float(score), 4),
                "box": [round(float(v), 2) for v in box],
                "points": np.asarray(points).round(1).tolist(),
                "area": int(mask.sum()),
                "segmentation": encode_rle(mask),
            }
            for mask, box, score, label, points in zip(
                result.instances.masks,
                result.instances.boxes,
                result.instances.scores,
                result.instances.labels,
                result.instances.points,
            )
        ],
        "settings": settings or {},
    }


def save_result(
    result: SegmentationResult,
    image: Image.Image,
    out_dir: Path,
    stem: str,
    settings: dict[str, object] | None = None,
) -> OutputPaths:
    """Write `<stem>.png`, `<stem>_overlay.png` and `<stem>.json` into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = OutputPaths(out_dir / f"{stem}.png", out_dir / f"{stem}_overlay.png", out_dir / f"{stem}.json")
    class_map_image(result.class_map).save(paths.mask)
    render_overlay(image, result).save(paths.overlay)
    record = result_record(result, image_name=stem, settings=settings)
    paths.record.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return paths
