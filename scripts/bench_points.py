"""The points ablation of the SAM stage: ground-truth boxes, n_p positive points, mIoU and time per image.

    python scripts/bench_points.py ../shared/data/voc-mini --segmenter onnx:weights/sam_onnx

Reads a VOC-layout folder (JPEGImages/ + SegmentationClass/), prompts the segmenter with one box per
connected component of each ground-truth class (`offline_seg.evaluation.oracle`), and for every n_p prints the
dataset-wide mIoU (confusion matrix, void excluded), the mean IoU per (image, class) and the seconds per
image; writes a PNG plot next to it. Each image is encoded once per n_p run, as in the pipeline.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from offline_seg.classes import ClassList
from offline_seg.stages.composer import compose
from offline_seg.evaluation.metrics import ConfusionMatrix
from offline_seg.io.images import IMAGE_SUFFIXES
from offline_seg.evaluation.oracle import GroundTruth, boxes_from_ground_truth
from offline_seg.stages.segmenter import load_segmenter
from offline_seg.weights import WeightsDir


def image_class_ious(confusion: ConfusionMatrix) -> list[float]:
    """IoU of every class present in one image's ground truth (background excluded)."""
    present = confusion.matrix.sum(1) > 0
    iou = confusion.iou_per_class()
    return [float(iou[index]) for index in np.flatnonzero(present) if index != 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="VOC-layout folder with JPEGImages/ and SegmentationClass/")
    parser.add_argument("--segmenter", default="onnx", help="segmenter spec (default: onnx = weights/sam_onnx)")
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--points", default="0,1,5,10,20,40", help="comma-separated n_p values")
    parser.add_argument("--preset", default="voc")
    parser.add_argument("--plot", type=Path, default=Path("bench_points.png"))
    args = parser.parse_args()

    classes = ClassList.preset(args.preset)
    truth = GroundTruth(args.root / "SegmentationClass", classes)
    images = sorted(p for p in (args.root / "JPEGImages").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    segmenter = load_segmenter(args.segmenter, WeightsDir(args.weights))
    samples = []
    for path in images:
        image = Image.open(path).convert("RGB")
        class_map = truth.class_map(path.stem, image.size)
        samples.append((image, class_map, boxes_from_ground_truth(class_map, classes)))
    boxes = sum(len(detections) for _, _, detections in samples)
    print(f"{len(samples)} images, {boxes} ground-truth boxes, segmenter {args.segmenter}")

    rows = []
    for n in (int(value) for value in args.points.split(",")):
        segmenter.num_points = n
        dataset = ConfusionMatrix(len(classes), classes.ignore_index)
        per_image_class: list[float] = []
        start = time.perf_counter()
        for image, class_map, detections in samples:
            instances = segmenter.segment(image, detections)
            prediction = compose(instances, classes, image.height, image.width)
            single = ConfusionMatrix(len(classes), classes.ignore_index)
            single.update(class_map, prediction)
            dataset.add(single)
            per_image_class += image_class_ious(single)
        seconds = (time.perf_counter() - start) / len(samples)
        rows.append((n, 100 * dataset.miou(), 100 * float(np.mean(per_image_class)), seconds))

    print(f"\n| n_p | mIoU % | mean IoU per (image, class) % | s / image |\n|---:|---:|---:|---:|")
    for n, miou, mean_iou, seconds in rows:
        print(f"| {n} | {miou:.2f} | {mean_iou:.2f} | {seconds:.2f} |")
    _plot(rows, args.plot, f"{args.root.name}: SAM stage with ground-truth boxes ({args.segmenter})")
    print(f"\nplot: {args.plot}")


def _plot(rows: list[tuple[int, float, float, float]], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5), dpi=120)
    axes = figure.subplots()
    points = [row[0] for row in rows]
    axes.plot(points, [row[1] for row in rows], "o-", label="mIoU (dataset)")
    axes.plot(points, [row[2] for row in rows], "s--", label="mean IoU per (image, class)")
    axes.set_xlabel("positive points per box (n_p)")
    axes.set_ylabel("%")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    main()
