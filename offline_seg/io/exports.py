"""Pre-labelling exports: a run in the formats annotation tools and trainers import (COCO instances,
Label Studio tasks, CVAT "Segmentation mask 1.1", YOLO segmentation, PASCAL VOC).

Every format carries the instances as the class map shows them: where masks overlap, the pixels go to
the higher-scored instance (`stages.composer.instance_map`), so each export agrees with `<name>.png`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import zipfile
from pathlib import Path
from typing import Callable
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import Image

from offline_seg.classes import voc_palette
from offline_seg.errors import InvalidInputError
from offline_seg.io.outputs import class_map_image, encode_rle
from offline_seg.io.runs import Run

logger = logging.getLogger(__name__)

_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(-1, 3)
LABEL_STUDIO_FROM = "label"
LABEL_STUDIO_TO = "image"
LABEL_STUDIO_URL = "/data/local-files/?d={path}"
EXPORT_MARKER = ".offline_seg_export.json"  # in a folder export: the files it wrote (a re-export may replace them)
ZIP_COMMENT = b"offline_seg export"


def _version() -> str:
    from importlib.metadata import version

    return f"offline_seg {version('offline_seg')}"


def _colour(index: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in _PALETTE[index])  # type: ignore[return-value]


# --- COCO ---------------------------------------------------------------------------------------
def export_coco(run: Run, out: Path) -> Path:
    """One COCO instances JSON: images, categories (the foreground classes with their dataset ids),
    annotations with RLE segmentation, bbox, area and score (usable as results and as pre-labels)."""
    out = Path(out)
    classes = run.classes
    images, annotations = [], []
    for image_id, image in enumerate(run.images, start=1):
        images.append({"id": image_id, "file_name": image.file_name, "width": image.width, "height": image.height})
        for instance in image.instances:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": classes.ids[instance.class_index],
                "segmentation": encode_rle(instance.mask),
                "area": int(instance.mask.sum()),
                "bbox": list(instance.bbox),
                "iscrowd": 0,
                "score": round(instance.score, 4),
            })
    categories = [{"id": classes.ids[i], "name": name, "supercategory": "object"}
                  for i, name in zip(classes.foreground_indices, classes.foreground)]
    data = {"info": {"description": f"pre-labels from {run.root}", "version": _version()},
            "licenses": [], "images": images, "annotations": annotations, "categories": categories}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data) + "\n", encoding="utf-8")
    return out


def written_by_export(out: Path, fmt: str) -> bool:
    """Whether `out` is an earlier export of ours (which a new export may replace): a COCO file whose info
    names offline_seg, a CVAT zip with our comment, a folder whose every file our marker lists."""
    out = Path(out)
    try:
        if fmt == "coco" and out.is_file():
            info = json.loads(out.read_text(encoding="utf-8")).get("info", {})
            return str(info.get("version", "")).startswith("offline_seg")
        if fmt == "cvat" and out.is_file():
            with zipfile.ZipFile(out) as archive:
                return archive.comment == ZIP_COMMENT
        if out.is_dir():
            listed = set(json.loads((out / EXPORT_MARKER).read_text(encoding="utf-8"))["files"])
            present = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() or p.is_symlink()}
            return present - {EXPORT_MARKER} <= listed
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile):
        return False
    return False


def mark_export(out: Path) -> None:
    """Record the files of a folder export, so that exporting again into it is allowed."""
    files = sorted(str(p.relative_to(out)) for p in Path(out).rglob("*") if p.is_file() and p.name != EXPORT_MARKER)
    (Path(out) / EXPORT_MARKER).write_text(json.dumps({"tool": _version(), "files": files}) + "\n", encoding="utf-8")


def image_as_shown(source: Path, target: Path, jpeg: bool = False) -> None:
    """The input image as the masks see it: with its EXIF orientation applied (a rotated JPEG is re-encoded
    upright, its tag dropped); else a plain copy (`jpeg`: always JPEG). A file that is not an image is an
    error, never copied."""
    from PIL import ImageOps, UnidentifiedImageError

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with Image.open(source) as pixels:
            rotated = pixels.getexif().get(0x0112, 1) not in (0, 1)
            same_format = not jpeg or pixels.format == "JPEG"
            if same_format and not rotated:
                shutil.copyfile(source, target)
                return
            upright = ImageOps.exif_transpose(pixels)
            fmt = "JPEG" if jpeg else pixels.format
            if fmt == "JPEG":
                upright = upright.convert("RGB")
            upright.save(target, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidInputError(f"cannot export {source}: not a readable image ({error})") from None


# --- Label Studio -------------------------------------------------------------------------------
def _brush():
    """Label Studio's own brush RLE codec. Its package's `converter/__init__` imports the whole converter
    (pandas, opencv, ...) inside a try and prints what is missing; the brush module needs only numpy and
    Pillow, so that print is kept off our output."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from label_studio_sdk.converter import brush
    except ImportError as error:
        raise InvalidInputError(f"the Label Studio export needs label-studio-sdk ({error}); install it with "
                                "`pip install --no-deps label-studio-sdk` (its brush codec needs only numpy "
                                "and Pillow) or `pip install offline_seg[labelstudio]`") from None
    return brush


def labelstudio_config(run: Run) -> str:
    """The labeling config the predictions fit: one image, brush labels of the foreground classes."""
    labels = "\n".join(
        f"    <Label value={quoteattr(name)} background={quoteattr('#%02x%02x%02x' % _colour(i))}/>"
        for i, name in zip(run.classes.foreground_indices, run.classes.foreground)
    )
    return (f'<View>\n  <Image name="{LABEL_STUDIO_TO}" value="$image" zoom="true"/>\n'
            f'  <BrushLabels name="{LABEL_STUDIO_FROM}" toName="{LABEL_STUDIO_TO}">\n{labels}\n'
            f"  </BrushLabels>\n</View>\n")


def export_labelstudio(run: Run, out: Path, image_url: str = LABEL_STUDIO_URL) -> Path:
    """`tasks.json` (one task per image, the run's instances as `predictions` in brush RLE) and
    `labeling_config.xml` in `out`. `image_url` makes each task's image address from `{path}` (the input's
    absolute path without the leading slash, for Label Studio's local-files storage) or `{file}` (its
    file name in the export)."""
    try:
        image_url.format(path="p", file="f")
    except (KeyError, IndexError, ValueError) as error:
        raise InvalidInputError(f"--image-url {image_url!r} cannot be filled ({type(error).__name__}: {error}): "
                                "it may name only {path} and {file}; write {{ and }} for literal braces") from None
    brush = _brush()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    version = _version()
    tasks = []
    for image in run.images:
        source = str(image.source.resolve()) if image.source else image.file_name
        results = []
        for number, instance in enumerate(image.instances, start=1):
            results.append({
                "id": f"{Path(image.name).name}-{number}",
                "from_name": LABEL_STUDIO_FROM,
                "to_name": LABEL_STUDIO_TO,
                "type": "brushlabels",
                "original_width": image.width,
                "original_height": image.height,
                "image_rotation": 0,
                "score": round(instance.score, 4),
                "value": {"format": "rle", "rle": brush.mask2rle(instance.mask.astype(np.uint8) * 255),
                          "brushlabels": [instance.label]},
            })
        tasks.append({
            "data": {LABEL_STUDIO_TO: image_url.format(path=quote(source.lstrip("/")), file=quote(image.file_name)),
                     "name": image.name},
            "predictions": [{"model_version": version, "score": round(image.score, 4), "result": results}],
        })
    (out / "tasks.json").write_text(json.dumps(tasks) + "\n", encoding="utf-8")
    (out / "labeling_config.xml").write_text(labelstudio_config(run), encoding="utf-8")
    mark_export(out)
    return out


# --- CVAT ---------------------------------------------------------------------------------------
def _colour_png(index_map: np.ndarray) -> bytes:
    """An RGB PNG of an index map in VOC colours (CVAT matches mask colours against labelmap.txt)."""
    if index_map.max(initial=0) >= len(_PALETTE):
        raise InvalidInputError(f"{int(index_map.max())} classes or instances in one image do not fit "
                                f"{len(_PALETTE)} mask colours")
    buffer = io.BytesIO()
    Image.fromarray(_PALETTE[index_map]).save(buffer, format="PNG")
    return buffer.getvalue()


def labelmap_name(name: str) -> str:
    """A class name as a `labelmap.txt` line can hold it: `:` separates its fields and a leading `#` makes a
    comment, so those become `-` (and `_`); name the tool's labels the same way (`export` prints them)."""
    cleaned = " ".join(name.replace(":", " -").split())
    return "_" + cleaned[1:] if cleaned.startswith("#") else cleaned


def _labelmap(run: Run, colour_of: Callable[[int], tuple[int, int, int]]) -> str:
    names = [labelmap_name(name) for name in run.classes.names]
    if len(set(names)) != len(names):
        raise InvalidInputError("two class names become the same label in labelmap.txt (':' and '#' are "
                                f"replaced there): {names}")
    lines = ["# label:color_rgb:parts:actions"]
    lines += [f"{name}:{','.join(map(str, colour_of(i)))}::" for i, name in enumerate(names)]
    return "\n".join(lines) + "\n"


def export_cvat(run: Run, out: Path) -> Path:
    """A zip in CVAT's "Segmentation mask 1.1" layout: labelmap.txt, SegmentationClass and
    SegmentationObject colour PNGs, ImageSets/Segmentation/default.txt (import it into a task whose
    images have the same names)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.comment = ZIP_COMMENT
        archive.writestr("labelmap.txt", _labelmap(run, _colour))
        archive.writestr("ImageSets/Segmentation/default.txt", "".join(f"{i.name}\n" for i in run.images))
        for image in run.images:
            archive.writestr(f"SegmentationClass/{image.name}.png", _colour_png(image.class_map()))
            archive.writestr(f"SegmentationObject/{image.name}.png", _colour_png(image.object_map()))
    return out


# --- PASCAL VOC ---------------------------------------------------------------------------------
def export_voc(run: Run, out: Path) -> Path:
    """The VOC layout: JPEGImages, SegmentationClass (palette PNGs of dataset ids, so `offline-seg eval
    --gt OUT/SegmentationClass` reads them with the same preset), SegmentationObject (palette PNGs of
    instance numbers), ImageSets/Segmentation/default.txt and a Datumaro-style labelmap.txt."""
    run.require_sources()
    out = Path(out)
    ids = np.asarray(run.classes.ids)
    if ids.max() > 255:
        raise InvalidInputError("dataset ids above 255 do not fit VOC's palette PNGs")
    for image in run.images:
        assert image.source is not None
        image_as_shown(image.source, out / "JPEGImages" / f"{image.name}.jpg", jpeg=True)
        for folder, index_map in (("SegmentationClass", ids[image.class_map()]), ("SegmentationObject", image.object_map())):
            path = out / folder / f"{image.name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            class_map_image(index_map).save(path)
    sets = out / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "default.txt").write_text("".join(f"{i.name}\n" for i in run.images), encoding="utf-8")
    (out / "labelmap.txt").write_text(_labelmap(run, lambda i: _colour(int(ids[i]))), encoding="utf-8")
    mark_export(out)
    return out


# --- YOLO segmentation --------------------------------------------------------------------------
def mask_polygons(mask: np.ndarray, min_area: float = 4.0) -> list[np.ndarray]:
    """Outer boundaries of a binary mask as (N, 2) x, y polygons in pixel-edge coordinates (holes are
    filled: YOLO polygons have none). Marching squares at level 0.5 via contourpy (matplotlib's)."""
    import contourpy

    padded = np.pad(mask.astype(np.float64), 1)
    filled = contourpy.contour_generator(z=padded, fill_type="OuterOffset").filled(0.5, 2.0)
    polygons = []
    for points, offsets in zip(*filled):
        outer = points[offsets[0] : offsets[1]] - 0.5  # pad (-1) and pixel centres at +0.5
        x, y = outer[:, 0], outer[:, 1]
        if 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) >= min_area:
            polygons.append(_drop_collinear(outer[:-1] if np.array_equal(outer[0], outer[-1]) else outer))
    return polygons


def _drop_collinear(polygon: np.ndarray) -> np.ndarray:
    """The same polygon without the points that lie on a straight run (most of a traced pixel edge)."""
    before, after = polygon - np.roll(polygon, 1, axis=0), np.roll(polygon, -1, axis=0) - polygon
    turns = np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9
    return polygon[turns] if turns.sum() >= 3 else polygon


def export_yolo(run: Run, out: Path) -> Path:
    """Ultralytics' segmentation layout: images/, labels/<name>.txt with one `class x1 y1 x2 y2 ...` line
    (normalised) per instance part, and data.yaml. Class numbers are the foreground classes from 0."""
    import yaml

    run.require_sources()
    out = Path(out)
    for image in run.images:
        assert image.source is not None
        image_as_shown(image.source, out / "images" / image.file_name)
        lines = []
        for instance in image.instances:
            for polygon in mask_polygons(instance.mask):
                xy = np.clip(polygon / [image.width, image.height], 0.0, 1.0)
                number = run.classes.foreground_indices.index(instance.class_index)
                lines.append(" ".join([str(number)] + [f"{v:.6f}" for v in xy.ravel()]))
        label = out / "labels" / f"{image.name}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    names = dict(enumerate(run.classes.foreground))
    data = {"path": str(out.resolve()), "train": "images", "val": "images", "names": names}
    (out / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    mark_export(out)
    return out


EXPORTERS: dict[str, Callable[[Run, Path], Path]] = {
    "coco": export_coco,
    "labelstudio": export_labelstudio,
    "cvat": export_cvat,
    "yolo-seg": export_yolo,
    "voc": export_voc,
}
