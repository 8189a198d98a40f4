"""The CPU tier end to end on real images: CenterNet -> post-refinement -> MobileSAM, mIoU tables.

    python scripts/bench_cpu_tier.py --set voc-mini=../shared/data/voc-mini:voc \\
        --set coco-voc=/work/data/eval/coco:voc:SegmentationClassVOC --set coco=/work/data/eval/coco:coco81 \\
        --cache /tmp/bench-cache

A set is `NAME=ROOT:PRESET[:GT_FOLDER[:LIST]]` (ROOT/JPEGImages + ROOT/GT_FOLDER, default SegmentationClass;
LIST: a file of image names to keep; build the larger ones with scripts/eval_sets/build.py). Every number goes through the product's own code: the chain's
`Pipeline` (detector, the vocabulary post-refinement decides, the ONNX SAM and its point strategies), the
composer and `evaluation.confusion.ConfusionMatrix` (dataset-wide, void excluded, as `offline-seg eval`).

Tables printed (Markdown):
1. detector settings x box-only SAM: `resize` x `threshold` x per-class `nms` x `agnostic` NMS, mIoU per set;
2. on the chosen detector settings (`--choose`), box only and every point strategy x n_p: mIoU per set;
3. per-class IoU of the chosen chain (`--choose` and `--choose-points`) per set;
4. seconds per image per stage (CenterNet, SAM encoding, SAM decoding per setting).
SAM's image embedding does not depend on the prompts: each image is encoded once (kept in `--cache`), and
box-only masks are kept per box and pass 1 per image, so the sweeps cost decoder calls of pass 2 only
(`decode s/img` of a two-pass setting is box only's first pass plus its own second pass).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from offline_seg import ClassList, Pipeline, PipelineConfig
from offline_seg.evaluation.confusion import ConfusionMatrix
from offline_seg.stages.oracle import GroundTruth
from offline_seg.io.images import IMAGE_SUFFIXES
from offline_seg.models.centernet import RESIZE_MODES, RawDetections
from offline_seg.models.sam_onnx import EncodedImage
from offline_seg.stages.centernet import CenterNetSettings, select
from offline_seg.stages.composer import compose
from offline_seg.stages.points import STRATEGIES
from offline_seg.stages.segmenter import TwoPassSegmenter
from offline_seg.types import Detections, InstanceMasks


@dataclass
class Sample:
    name: str
    image: Image.Image
    truth: np.ndarray
    raw: dict[str, RawDetections] = field(default_factory=dict)  # resize mode -> the model's peaks


@dataclass
class BenchSet:
    name: str
    classes: ClassList
    samples: list[Sample]
    pipeline: Pipeline


class DiskEncoder:
    """A SAM backend whose image embeddings are kept on disk (one .npz per image) and in memory."""

    def __init__(self, backend, cache: Path):
        self.backend, self.cache = backend, cache
        self.memory: dict[str, EncodedImage] = {}
        self.first_pass: dict = {}  # (embedding, boxes) -> pass 1's prediction
        self.seconds: list[float] = []  # encoding time of each image encoded here
        cache.mkdir(parents=True, exist_ok=True)

    def encode(self, image: Image.Image) -> EncodedImage:
        key = hashlib.sha1(image.tobytes() + repr(image.size).encode()).hexdigest()
        if key not in self.memory:
            path = self.cache / f"{key}.npz"
            if path.is_file():
                data = np.load(path)
                self.memory[key] = EncodedImage(data["embedding"], tuple(data["size"]), data["scale"])
            else:
                start = time.perf_counter()
                encoded = self.backend.encode(image)
                self.seconds.append(time.perf_counter() - start)
                np.savez(path, embedding=encoded.embedding, size=np.array(encoded.original_size), scale=encoded.scale)
                self.memory[key] = encoded
        return self.memory[key]

    def predict(self, encoded, boxes, points, mask_input=None):
        """Pass 1 (boxes only) is the same for every point strategy: decoded once per image and boxes."""
        if points is not None or mask_input is not None:
            return self.backend.predict(encoded, boxes, points, mask_input)
        key = (id(encoded), np.asarray(boxes, np.float32).tobytes())
        if key not in self.first_pass:
            self.first_pass[key] = self.backend.predict(encoded, boxes, None, None)
        return self.first_pass[key]


def load_set(spec: str, weights: Path, embedder: str | None) -> BenchSet:
    name, _, rest = spec.partition("=")
    root, preset, *extra = rest.split(":")
    classes = ClassList.preset(preset)
    truth = GroundTruth(Path(root) / (extra[0] if extra else "SegmentationClass"), classes)
    images = sorted(p for p in (Path(root) / "JPEGImages").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(extra) > 1:
        keep = set(Path(extra[1]).read_text(encoding="utf-8").split())
        images = [p for p in images if p.stem in keep]
    samples = []
    for path in images:
        image = Image.open(path).convert("RGB")
        samples.append(Sample(path.stem, image, truth.class_map(path.stem, image.size)))
    pipeline = Pipeline(PipelineConfig(classes=classes, weights_dir=weights, detector="centernet", segmenter="onnx",
                                       embedder=embedder, num_points=0))
    return BenchSet(name, classes, samples, pipeline)


def labelled(bench: BenchSet, detections: Detections) -> Detections:
    """Post-refinement as the chain does it (the vocabulary), then only the boxes that got a label."""
    [(refined, _)] = bench.pipeline.label_detections([detections])
    return refined.labelled()


def miou(bench: BenchSet, maps: list[np.ndarray]) -> tuple[float, ConfusionMatrix]:
    matrix = ConfusionMatrix(len(bench.classes), bench.classes.ignore_index)
    for sample, predicted in zip(bench.samples, maps):
        matrix.update(sample.truth, predicted)
    return 100 * matrix.miou(), matrix


def box_only_maps(bench: BenchSet, settings: CenterNetSettings, backend: DiskEncoder, masks: dict) -> list[np.ndarray]:
    """Class maps of box-only SAM on the detector's labelled boxes (each box's mask decoded once, kept)."""
    names = bench.pipeline.detector.class_names
    maps = []
    for sample in bench.samples:
        kept = labelled(bench, select(sample.raw[settings.resize], names, settings))
        height, width = sample.truth.shape
        rows = []
        for box in kept.boxes:
            key = (sample.name, settings.resize, tuple(np.round(box, 3)))
            if key not in masks:
                prediction = backend.predict(backend.encode(sample.image), box[None], None)
                masks[key] = np.packbits(prediction.logits[0] > 0)
            rows.append(np.unpackbits(masks[key])[: height * width].reshape(height, width).astype(bool))
        instances = InstanceMasks(np.array(rows).reshape(-1, height, width), kept.boxes, kept.scores,
                                  [str(label) for label in kept.labels])
        maps.append(compose(instances, bench.classes, height, width))
    return maps


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="sets", action="append", required=True,
                        help="NAME=ROOT:PRESET[:GT_FOLDER[:LIST]]")
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--embedder", help="sentence embedder dir (default: WEIGHTS/embedder)")
    parser.add_argument("--cache", type=Path, default=Path(".cache/bench_cpu_tier"), help="SAM embeddings kept here")
    parser.add_argument("--resize", default=",".join(RESIZE_MODES))
    parser.add_argument("--thresholds", default="0.15,0.2,0.25,0.3,0.35,0.4,0.5")
    parser.add_argument("--nms", default="0.5,1.0", help="per-class NMS IoU values (1 = none)")
    parser.add_argument("--agnostic", default="1.0", help="class-agnostic NMS IoU values (1 = none)")
    parser.add_argument("--choose", default="letterbox,0.25,0.5,1.0", help="RESIZE,THRESHOLD,NMS,AGNOSTIC of tables 2-4")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--points", default="1,3,5,20")
    parser.add_argument("--choose-points", default="gated,3", help="STRATEGY,N_P of table 3 (0 = box only)")
    parser.add_argument("--skip", default="", help="comma-separated tables not to run (1,2,3)")
    args = parser.parse_args()
    skip = set(args.skip.split(","))

    benches = [load_set(spec, args.weights, args.embedder) for spec in args.sets]
    model = benches[0].pipeline.detector.model
    detect_seconds = []
    for bench in benches:
        for sample in bench.samples:
            for mode in args.resize.split(","):
                start = time.perf_counter()
                sample.raw[mode] = model.detect(sample.image, mode)
                detect_seconds.append(time.perf_counter() - start)
    sam = benches[0].pipeline.segmenter.backend
    backend = DiskEncoder(sam, args.cache)
    masks: dict = {}
    names = [b.name for b in benches]
    for bench in benches:  # every vocabulary once, for the record
        print(f"vocabulary on {bench.classes.name}: {bench.pipeline.vocabulary.describe()}\n")

    if "1" not in skip:
        rows = []
        for mode, threshold, nms_iou, agnostic in itertools.product(
                args.resize.split(","), map(float, args.thresholds.split(",")), map(float, args.nms.split(",")),
                map(float, args.agnostic.split(","))):
            settings = CenterNetSettings(threshold, mode, nms_iou, agnostic)
            scores = [miou(b, box_only_maps(b, settings, backend, masks))[0] for b in benches]
            rows.append([mode, f"{threshold:.2f}", f"{nms_iou:.2f}", f"{agnostic:.2f}", *(f"{s:.2f}" for s in scores),
                         f"{np.mean(scores):.2f}"])
            print("  ", rows[-1], flush=True)
        print("\n## 1. Detector settings, box-only MobileSAM (mIoU %)\n")
        print(markdown(["resize", "threshold", "nms", "agnostic", *names, "mean"], rows))

    mode, threshold, nms_iou, *agnostic = args.choose.split(",")
    chosen = CenterNetSettings(float(threshold), mode, float(nms_iou), float(agnostic[0]) if agnostic else 1.0)
    detections = {b.name: [labelled(b, select(s.raw[chosen.resize], b.pipeline.detector.class_names, chosen))
                           for s in b.samples] for b in benches}
    settings_list = [("box only", 0)] + [(s, int(n)) for s in args.strategies.split(",") for n in args.points.split(",")]
    decode_seconds: dict[str, float] = {}
    results: dict[tuple[str, int], list[float]] = {}
    matrices: dict[tuple[str, int], list[ConfusionMatrix]] = {}
    want = tuple(args.choose_points.split(","))
    want = ("box only", 0) if int(want[1]) == 0 else (want[0], int(want[1]))
    for strategy, points in settings_list:
        if "2" in skip and (strategy, points) != want:
            continue
        segmenter = TwoPassSegmenter(backend, num_points=points, strategy="paper" if strategy == "box only" else strategy)
        scores, mats, spent, count = [], [], 0.0, 0
        for bench in benches:
            maps = []
            for sample, dets in zip(bench.samples, detections[bench.name]):
                backend.encode(sample.image)  # outside the timing: decoding only
                start = time.perf_counter()
                instances = segmenter.segment(sample.image, dets)
                spent += time.perf_counter() - start
                count += 1
                maps.append(compose(instances, bench.classes, *sample.truth.shape))
            score, matrix = miou(bench, maps)
            scores.append(score)
            mats.append(matrix)
        results[(strategy, points)], matrices[(strategy, points)] = scores, mats
        # pass 1 is decoded once (the box-only row) and reused: a two-pass setting costs both passes
        first = decode_seconds.get("box only", 0.0) if points else 0.0
        decode_seconds[f"{strategy} {points}" if points else strategy] = first + spent / count
        print("  ", strategy, points, [f"{s:.2f}" for s in scores], f"{first + spent / count:.2f} s", flush=True)
    if "2" not in skip:
        base = results[("box only", 0)]
        rows = [[strategy, str(points), *(f"{s:.2f} ({s - b:+.2f})" for s, b in zip(scores, base)),
                 f"{np.mean(scores):.2f}", f"{decode_seconds[f'{strategy} {points}' if points else strategy]:.2f}"]
                for (strategy, points), scores in results.items()]
        print(f"\n## 2. Point strategies on CenterNet's boxes ({args.choose}): mIoU % (change vs box only)\n")
        print(markdown(["strategy", "n_p", *names, "mean", "decode s/img"], rows))

    if "3" not in skip:
        print(f"\n## 3. Per-class IoU %, {args.choose} + {args.choose_points}\n")
        for bench, matrix in zip(benches, matrices[want]):
            ious = 100 * matrix.iou_per_class()
            present = matrix.matrix.sum(0) + matrix.matrix.sum(1) > 0
            cells = [f"{label} {iou:.1f}" for label, iou, seen in zip(bench.classes.names, ious, present) if seen]
            print(f"- {bench.name} ({len(bench.samples)} images, mIoU {100 * matrix.miou():.2f}): " + ", ".join(cells))

    print("\n## 4. Seconds per image per stage (this machine)\n")
    rows = [["CenterNet (ONNX, 512², both resize modes averaged)", f"{np.mean(detect_seconds):.3f}"],
            ["post-refinement (the vocabulary is decided once per run)", "0.000"]]
    if backend.seconds:
        rows.append(["MobileSAM encoder (ONNX)", f"{np.mean(backend.seconds):.2f}"])
    rows += [[f"MobileSAM decoder, {k}", f"{v:.2f}"] for k, v in decode_seconds.items()]
    print(markdown(["stage", "s / image"], rows))


if __name__ == "__main__":
    main()
