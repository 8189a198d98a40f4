"""Cost per image against the number of prompts: SAM 3 (detect + segment) and Grounding DINO + SAM.

    python scripts/bench_sam3.py                                  # tiny random models, written to a temp dir
    python scripts/bench_sam3.py --weights weights --device cuda  # real weights
    python scripts/bench_sam3.py --full-size --prompts 1,4,16     # full-size SAM 3 with random weights

Prompts are the first N class names of the COCO-81 list. Images: `--images DIR` (default: the VOC crops of
../shared/data/voc-mini when present, else the bundled demo scene). Both chains are built through the
product's own loaders (`Pipeline` with `--detector sam3` / the default detector and segmenter). SAM 3 is
timed warm (its text embeddings cached, as from the second image of a run on) and the one-off text encoding
of the N prompts is shown apart. Times are CPU seconds of this process (`time.process_time`, 1 torch thread
by default), the best of `--repeats` runs per image, averaged over the images: on a shared machine wall
time measures the neighbours. Grounding DINO + SAM: one detector call with all N labels in one prompt,
then SAM's two passes (20 points) on every box; post-refinement (an LLM) is left out of both. Prints a
markdown table; random weights make the instance counts meaningless, not the timings.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from offline_seg.classes import ClassList
from offline_seg.demo import demo_image
from offline_seg.io.images import IMAGE_SUFFIXES
from offline_seg.pipeline import Pipeline
from offline_seg.config import PipelineConfig

VOC_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc-mini" / "JPEGImages"


def _images(folder: Path | None) -> list[Image.Image]:
    folder = folder or (VOC_MINI if VOC_MINI.is_dir() else None)
    if folder is None:
        return [demo_image(500, 375)]
    return [Image.open(p).convert("RGB") for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]


def _timed(function, *args, repeats: int = 1):
    """(best CPU seconds of `repeats` calls, the last result)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        result = function(*args)
        best = min(best, time.process_time() - start)
    return best, result


def _full_size_sam3(directory: Path) -> Path:
    """A full-size SAM 3 (facebook/sam3's architecture) with random weights, saved with the tiny tokenizer."""
    import torch
    from transformers import Sam3Config, Sam3Model

    from offline_seg.tiny import sam3 as tiny_sam3

    tiny_sam3.write(directory)  # tokenizer + preprocessing files (1008 px below), replaced model
    torch.manual_seed(0)
    Sam3Model(Sam3Config()).save_pretrained(directory)  # the tiny tokenizer's ids fit CLIP's 49,408
    for name in ("preprocessor_config.json",):
        (directory / name).unlink()  # SAM 3's defaults: 1008 px, mean/std 0.5
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="weights dir (default: tiny random models in a temp dir)")
    parser.add_argument("--images", type=Path, help="folder of images (default: voc-mini, else the demo scene)")
    parser.add_argument("--prompts", default="1,2,5,10,20,40,80", help="comma-separated prompt counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="runs per image; the fastest counts")
    parser.add_argument("--full-size", action="store_true",
                        help="SAM 3 at full size with random weights (3.4 GB written to a temp dir); skips GDINO+SAM")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    temp = tempfile.TemporaryDirectory(prefix="bench-sam3-")
    weights = args.weights
    if weights is None:
        from offline_seg.tiny import make_tiny_weights

        weights = Path(temp.name) / "weights"
        make_tiny_weights(weights, components=("grounding_dino", "sam", "sam3"))
    if args.full_size:
        _full_size_sam3(weights / "sam3")
    images = _images(args.images)
    labels = list(ClassList.preset("coco81").foreground)
    counts = [int(n) for n in args.prompts.split(",")]
    print(f"{len(images)} images, device {args.device}, torch threads {torch.get_num_threads()}, CPU s (best of "
          f"{args.repeats}), "
          f"weights {'full-size random SAM 3' if args.full_size else weights}")

    sam3 = Pipeline(PipelineConfig(weights_dir=weights, detector="sam3", device=args.device))
    dino_sam = None if args.full_size else Pipeline(PipelineConfig(weights_dir=weights, device=args.device))
    sam3.detector.load()
    sam3.detector.detect(images[0], labels[:1])  # warm-up: first-call allocations, lazy imports
    if dino_sam is not None:
        warm = dino_sam.detector.detect(images[0], labels[:1])
        dino_sam.segmenter.segment(images[0], warm.with_labels(warm.phrases))
    header = "| prompts | SAM 3 s/img | SAM 3 text encoding, once (s) | SAM 3 instances/img |"
    header += "" if dino_sam is None else " GDINO + SAM s/img | GDINO boxes/img |"
    print("\n" + header + "\n|" + "---:|" * (header.count("|") - 1))
    for n in counts:
        prompts = labels[:n]
        sam3.detector.clear_text_cache()  # as a new run starts
        encode, _ = _timed(sam3.detector.text_embeddings, prompts)  # the first call of a run: all N are new
        times, found = [], []
        for image in images:
            seconds, detections = _timed(lambda i: sam3.segmenter.segment(i, sam3.detector.detect(i, prompts)), image,
                                         repeats=args.repeats)
            times.append(seconds)
            found.append(len(detections.labels))
        row = f"| {n} | {statistics.mean(times):.3f} | {encode:.3f} | {statistics.mean(found):.1f} |"
        if dino_sam is not None:
            times, boxes = [], []
            for image in images:
                def chain(i):
                    detections = dino_sam.detector.detect(i, prompts)
                    dino_sam.segmenter.segment(i, detections.with_labels(detections.phrases))
                    return detections

                seconds, detections = _timed(chain, image, repeats=args.repeats)
                times.append(seconds)
                boxes.append(len(detections))
            row += f" {statistics.mean(times):.3f} | {statistics.mean(boxes):.1f} |"
        print(row, flush=True)
    temp.cleanup()


if __name__ == "__main__":
    main()
