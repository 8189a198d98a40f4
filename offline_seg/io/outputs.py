"""Per-image outputs in standard formats: a palette PNG of class indices (VOC colours), an overlay with
boxes and a legend to look at, and a JSON record with instance masks as COCO RLE."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo
from pycocotools import mask as mask_utils

from offline_seg.classes import ClassList, voc_palette
from offline_seg.errors import InvalidInputError
from offline_seg.io.atomic import write_atomically
from offline_seg.io.inputs import safe_name, safe_relative, sha256_file
from offline_seg.types import SegmentationResult

_PALETTE = voc_palette()


def class_map_image(class_map: np.ndarray) -> Image.Image:
    """Class indices as a palette ('P') PNG: pixel value = class index, colours = VOC colour map."""
    if class_map.max(initial=0) >= MAX_CLASSES:
        raise InvalidInputError(f"more than {MAX_CLASSES} classes do not fit a palette PNG")
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
    painted = result.class_map != ClassList.BACKGROUND_INDEX
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

    present = [i for i in np.unique(result.class_map).tolist() if i != ClassList.BACKGROUND_INDEX]
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


OUTPUT_SUFFIXES = {"mask": ".png", "overlay": "_overlay.png", "record": ".json"}
MAX_CLASSES = 256  # an 8-bit palette PNG holds class indices 0..255


class UnsafeOutputError(InvalidInputError):
    """A name that would place an output outside the output dir, or over a file the run did not write."""


def output_path(out_dir: Path, name: str, kind: str = "mask") -> Path:
    """The one place a name becomes an output path: `OUT/<name><suffix of kind>`. The name must be a safe
    output name (`offline_seg.io.inputs.safe_name`: relative, no `..`, no control characters, short parts),
    and the path, with every symlink of its folders followed, must stay inside `out_dir`."""
    if not name or safe_name(name) != name:
        raise UnsafeOutputError(f"unsafe output name {name!r}: outputs stay inside --out under safe names")
    path = Path(out_dir) / f"{name}{OUTPUT_SUFFIXES[kind]}"
    root = os.path.realpath(out_dir)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise UnsafeOutputError(f"{path} would leave the output folder {out_dir} (a symlinked folder?)")
    return path


MARK = "offline_seg_output"  # in every output file (PNG text chunk, record key): the output name it was written as


def written_for(path: Path, name: str) -> bool:
    """Whether the file at `path` says it was written by offline_seg as output `name` (a regular file only)."""
    try:
        if path.is_symlink() or not path.is_file():
            return False
        if path.suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8")).get(MARK) == name
        with Image.open(path) as image:
            return getattr(image, "text", {}).get(MARK) == name
    except (OSError, ValueError, AttributeError, SyntaxError):
        return False


def file_identity(path: Path) -> dict[str, object]:
    """Size and sha256 of a written file: what a later run checks before it calls the file done."""

    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def holds(out_dir: Path, entry: dict[str, object]) -> bool:
    """Whether the file a write record lists is on disk as it was written (same size, same sha256)."""

    relative = safe_relative(str(entry.get("path", "")))
    if relative is None or entry.get("sha256") is None:
        return False
    path = Path(out_dir) / relative
    try:
        return path.is_file() and not path.is_symlink() and file_identity(path) == {
            "size": entry["size"], "sha256": entry["sha256"]}
    except OSError:
        return False


def save_result(
    result: SegmentationResult,
    image: Image.Image,
    out_dir: Path,
    name: str,
    settings: dict[str, object] | None = None,
    owned: set[str] | frozenset[str] = frozenset(),
    input_sha256: str | None = None,
) -> dict[str, dict[str, object]]:
    """Write `<name>.png`, `<name>_overlay.png` and `<name>.json` under `out_dir` and return each file's
    path (relative to `out_dir`), size and sha256.

    An existing file is replaced only when `owned` (the paths an earlier run recorded writing for this
    input) lists it or the file itself says it was written by offline_seg under this name (a run stopped
    between writing the files and recording them): nothing else is ever written over. Each file is written
    beside its place and renamed into it, so a crash never leaves a half-written output under its name."""
    out_dir = Path(out_dir)
    paths = {kind: output_path(out_dir, name, kind) for kind in OUTPUT_SUFFIXES}
    for path in paths.values():
        relative = str(path.relative_to(out_dir))
        if (path.exists() or path.is_symlink()) and relative not in owned and not written_for(path, name):
            raise UnsafeOutputError(f"{path} exists and was not written by offline_seg for this input; move it "
                                    "away or choose another --out")
    paths["mask"].parent.mkdir(parents=True, exist_ok=True)
    record = result_record(result, image_name=Path(name).name, settings=settings)
    record[MARK] = name
    if input_sha256 is not None:
        record["input_sha256"] = input_sha256
    mark = PngInfo()
    mark.add_text(MARK, name)
    writers = {
        "mask": lambda target: class_map_image(result.class_map).save(target, format="PNG", pnginfo=mark),
        "overlay": lambda target: render_overlay(image, result).save(target, format="PNG", pnginfo=mark),
        "record": lambda target: target.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8"),
    }
    files = {}
    for kind, path in paths.items():
        write_atomically(path, writers[kind])
        files[kind] = {"path": str(path.relative_to(out_dir)), **file_identity(path)}
    return files
