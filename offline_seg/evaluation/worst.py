"""Worst-image panels: the lowest-mIoU images side by side with their ground truth, to see why."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from offline_seg.classes import voc_palette
from offline_seg.errors import InvalidInputError
from offline_seg.evaluation.results import OK, EvalReport, ImageScore
from offline_seg.evaluation.scoring import load_prediction
from offline_seg.io.images import read_label_map
from offline_seg.io.inputs import safe_name

logger = logging.getLogger(__name__)

_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(-1, 3)


def _coloured(class_map: np.ndarray) -> Image.Image:
    return Image.fromarray(_PALETTE[np.clip(class_map, 0, 255)])


def _find_image(images_dir: Path | None, stem: str) -> Path | None:
    from offline_seg.io.images import IMAGE_SUFFIXES

    if images_dir is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        for candidate in (images_dir / f"{stem}{suffix}", images_dir / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def panel_paths(report: EvalReport, out_dir: Path, count: int = 10) -> list[tuple[Path, ImageScore]]:
    """Where the panels of the `count` images with the lowest per-image mIoU go, worst first
    (`NN_<stem>.png`). Only images with a usable prediction are ranked; missing ones are listed already."""
    ranked = sorted((s for s in report.images if s.status == OK and not np.isnan(s.miou)), key=lambda s: s.miou)
    return [(Path(out_dir) / f"{rank:02d}_{safe_name(score.stem).replace('/', '_')}.png", score)
            for rank, score in enumerate(ranked[:max(count, 0)], start=1)]


def worst_images(
    report: EvalReport, out_dir: Path, count: int = 10, images_dir: Path | None = None, pred_suffix: str = ""
) -> list[Path]:
    """Side-by-side panels (image if found | prediction | ground truth, VOC colours, void in the VOC
    void colour) of the worst images (`panel_paths`)."""
    from offline_seg.io.images import load_image

    panels_to_write = panel_paths(report, out_dir, count)
    if not panels_to_write:
        return []
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=14)
    written: list[Path] = []
    for path, score in panels_to_write:
        gt = report.classes.class_indices(read_label_map(score.gt_path, "ground truth"))
        pred = load_prediction(score.pred_path, gt.shape, report.classes, report.pred_ids, resize=True)
        panels = [("prediction", _coloured(pred)), ("ground truth", _coloured(gt))]
        image_path = _find_image(images_dir, f"{score.stem}{pred_suffix}") or _find_image(images_dir, score.stem)
        if image_path is not None:
            try:
                photo = load_image(image_path).resize((gt.shape[1], gt.shape[0]))
                panels.insert(0, ("image", photo))
            except InvalidInputError as error:
                logger.warning("%s: %s (panel without the photo)", score.stem, error)
        width, height, header = gt.shape[1], gt.shape[0], 22
        canvas = Image.new("RGB", (width * len(panels), height + header), "white")
        draw = ImageDraw.Draw(canvas)
        for column, (title, panel) in enumerate(panels):
            canvas.paste(panel.convert("RGB"), (column * width, header))
            label = f"{title} - {score.stem} mIoU {100 * score.miou:.1f}" if column == 0 else title
            draw.text((column * width + 4, 3), label, fill="black", font=font)
        canvas.save(path)
        written.append(path)
    return written
