"""Point strategies of the SAM stage: strategy × n_p × box looseness on ground-truth boxes, mIoU and time.

    python scripts/bench_points.py ../shared/data/voc-mini --segmenter onnx:weights/sam_onnx

Reads a VOC-layout folder (JPEGImages/ + SegmentationClass/), prompts the segmenter with one box per
connected component of each ground-truth class (`offline_seg.stages.oracle`), loosened per setting
(tight, each side out by 10 % / 20 % of the box, each side jittered by up to ±10 %, fixed seed), and for every
point strategy and n_p prints the dataset-wide mIoU (confusion matrix, void excluded) next to box-only, the
difference, and the seconds per image of the prompt decoding; writes a PNG plot. Each image is encoded once
for the whole sweep (the embedding does not depend on the prompts), so the sweep costs decoder calls only.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from offline_seg.classes import ClassList
from offline_seg.evaluation.confusion import ConfusionMatrix
from offline_seg.stages.oracle import GroundTruth, boxes_from_ground_truth, loosen_boxes
from offline_seg.io.images import IMAGE_SUFFIXES
from offline_seg.stages.composer import compose
from offline_seg.stages.points import STRATEGIES
from offline_seg.stages.segmenter import EncodeOnce, TwoPassSegmenter, load_segmenter
from offline_seg.weights import WeightsDir

# name -> (expand, jitter): how far the oracle's tight boxes are loosened, per side, as a share of the box.
LOOSENESS = {"tight": (0.0, 0.0), "+10%": (0.1, 0.0), "+20%": (0.2, 0.0), "jitter 10%": (0.0, 0.1)}


@dataclass
class Row:
    strategy: str
    points: int
    miou: dict[str, float]  # looseness -> mIoU %
    seconds: dict[str, float]  # looseness -> decoding seconds per image


def score(segmenter: TwoPassSegmenter, samples: list[tuple[Image.Image, np.ndarray, Any]], classes: ClassList
          ) -> tuple[float, float]:
    """Dataset mIoU % of the segmenter on (image, class map, detections) samples, and seconds per image."""
    dataset = ConfusionMatrix.of(classes)
    start = time.perf_counter()
    for image, class_map, detections in samples:
        instances = segmenter.segment(image, detections)
        dataset.update(class_map, compose(instances, classes, image.height, image.width))
    return 100 * dataset.miou(), (time.perf_counter() - start) / len(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="VOC-layout folder with JPEGImages/ and SegmentationClass/")
    parser.add_argument("--segmenter", default="onnx", help="segmenter spec (default: onnx = weights/sam_onnx)")
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated point strategies")
    parser.add_argument("--points", default="1,3,5,10,20", help="comma-separated n_p values (0 = box only, always run)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the jittered boxes")
    parser.add_argument("--preset", default="voc")
    parser.add_argument("--plot", type=Path, default=Path("bench_points.png"))
    args = parser.parse_args()

    classes = ClassList.preset(args.preset)
    truth = GroundTruth(args.root / "SegmentationClass", classes)
    images = sorted(p for p in (args.root / "JPEGImages").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    segmenter = load_segmenter(args.segmenter, WeightsDir(args.weights))
    segmenter.backend = backend = EncodeOnce(segmenter.backend)
    tight = []
    for path in images:
        image = Image.open(path).convert("RGB")
        class_map = truth.class_map(path.stem, image.size)
        tight.append((path.stem, image, class_map, boxes_from_ground_truth(class_map, classes)))
    settings = {
        name: [(image, class_map, loosen_boxes(boxes, image.size, expand, jitter, args.seed, key=stem))
               for stem, image, class_map, boxes in tight]
        for name, (expand, jitter) in LOOSENESS.items()
    }
    boxes = sum(len(detections) for *_, detections in tight)
    print(f"{len(tight)} images, {boxes} ground-truth boxes, segmenter {args.segmenter}")

    configs = [("box only", 0)] + [(s, int(n)) for s in args.strategies.split(",") for n in args.points.split(",")]
    rows = []
    for strategy, n in configs:
        segmenter.strategy, segmenter.num_points = ("paper" if n == 0 else strategy), n
        results = {name: score(segmenter, samples, classes) for name, samples in settings.items()}
        rows.append(Row(strategy, n, {k: v[0] for k, v in results.items()}, {k: v[1] for k, v in results.items()}))
        print(f"  {strategy} n_p={n}: " + ", ".join(f"{k} {v[0]:.2f}" for k, v in results.items()), flush=True)
    print(f"encoding: {backend.seconds / len(tight):.2f} s / image, once for the whole sweep")

    print()
    print(table(rows))
    _plot(rows, args.plot, f"{args.root.name}: SAM stage with ground-truth boxes ({args.segmenter})")
    print(f"\nplot: {args.plot}")


def table(rows: list[Row]) -> str:
    """Markdown: mIoU % per looseness with the difference to box-only, and decoding time per image."""
    base = rows[0].miou
    names = list(base)
    lines = [
        "| strategy | n_p | " + " | ".join(f"{name} mIoU % (Δ box only)" for name in names) + " | s / image |",
        "|---|---:|" + "---:|" * len(names) + "---:|",
    ]
    for row in rows:
        cells = [f"{row.miou[k]:.2f}" + ("" if row.points == 0 else f" ({row.miou[k] - base[k]:+.2f})") for k in names]
        seconds = np.mean(list(row.seconds.values()))
        lines.append(f"| {row.strategy} | {row.points} | " + " | ".join(cells) + f" | {seconds:.2f} |")
    return "\n".join(lines)


def _plot(rows: list[Row], path: Path, title: str) -> None:
    from matplotlib.figure import Figure  # Agg canvas, no display needed

    names = list(rows[0].miou)
    figure = Figure(figsize=(3.2 * len(names), 3.4), dpi=120)
    axes_row = figure.subplots(1, len(names), sharey=True, squeeze=False)[0]
    strategies = list(dict.fromkeys(row.strategy for row in rows[1:]))
    for axes, name in zip(axes_row, names):
        axes.axhline(rows[0].miou[name], color="black", linestyle=":", label="box only")
        for strategy in strategies:
            picked = [row for row in rows if row.strategy == strategy]
            axes.plot([row.points for row in picked], [row.miou[name] for row in picked], "o-", label=strategy)
        axes.set_xscale("symlog", linthresh=1)
        axes.set_xlabel("positive points per box (n_p)")
        axes.set_title(f"boxes: {name}", fontsize=9)
        axes.grid(alpha=0.3)
    axes_row[0].set_ylabel("mIoU %")
    axes_row[-1].legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    main()
