"""Throughput of the chain on the tiny models: stage-major chunks vs image-at-a-time, and resume cost.

    python scripts/bench_pipeline.py --images 24            # synthetic images
    python scripts/bench_pipeline.py --folder ../shared/data/voc-mini/JPEGImages

Prints images/s for both modes, the time per stage of the stage-major run, and what a re-run costs after
a `kill -9` half-way (a real subprocess) and when everything is already done. Tiny random models make
the figures about orchestration, batching and I/O, not about model speed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Quiet, offline model loading (read by transformers / huggingface_hub at import).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from offline_seg.io.outputs import save_result  # noqa: E402
from offline_seg.pipeline import Pipeline  # noqa: E402
from offline_seg.config import PipelineConfig  # noqa: E402
from offline_seg.engines.runner import BatchRunner  # noqa: E402
from offline_seg.io.inputs import find_images  # noqa: E402
from offline_seg.io.store import STORE_NAME  # noqa: E402
from offline_seg.tiny import make_tiny_weights  # noqa: E402


def synthetic_images(directory: Path, count: int, size: tuple[int, int] = (320, 240)) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(directory / f"img_{i:03d}.png")
    return directory


def image_at_a_time(weights: Path, images: list[Path], out: Path) -> float:
    pipeline = Pipeline(PipelineConfig(weights_dir=weights))
    start = time.perf_counter()
    for path in images:
        result = pipeline.segment(path)
        save_result(result, Image.open(path).convert("RGB"), out, path.stem)
    return time.perf_counter() - start


def stage_major(weights: Path, images: list[Path], root: Path, out: Path, chunk: int):
    start = time.perf_counter()
    summary = BatchRunner(Pipeline(PipelineConfig(weights_dir=weights)), out, chunk_size=chunk, progress=False).run(
        images, root=root)
    return time.perf_counter() - start, summary


def killed_then_resumed(weights: Path, folder: Path, out: Path, chunk: int, total: int) -> tuple[int, float]:
    """Kill a CLI run once half the images are done, then time the re-run that finishes the job."""
    command = [sys.executable, "-m", "offline_seg.cli", "run", str(folder), "--weights", str(weights),
               "--out", str(out), "--chunk-size", str(chunk)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = out / STORE_NAME
    done = 0
    while process.poll() is None and done < total // 2:
        time.sleep(0.05)
        if store.exists():
            try:
                with sqlite3.connect(store, timeout=1) as db:
                    done = db.execute("SELECT COUNT(*) FROM images WHERE status='done'").fetchone()[0]
            except sqlite3.OperationalError:
                pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return done, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="number of synthetic images")
    parser.add_argument("--folder", type=Path, help="use these images instead")
    parser.add_argument("--chunk-size", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "weights"
        make_tiny_weights(weights)
        folder = args.folder or synthetic_images(tmp / "images", args.images)
        root, images = find_images(folder)
        n = len(images)
        print(f"{n} images from {folder}, tiny models, chunk size {args.chunk_size}, {os.cpu_count()} CPU(s)\n")

        single = image_at_a_time(weights, images, tmp / "single")
        major, summary = stage_major(weights, images, root, tmp / "major", args.chunk_size)
        rerun, _ = stage_major(weights, images, root, tmp / "major", args.chunk_size)
        done_at_kill, resumed = killed_then_resumed(weights, folder, tmp / "killed", args.chunk_size, n)

        print("| mode | seconds | images/s |\n|---|---:|---:|")
        print(f"| image-at-a-time (`Pipeline.segment`) | {single:.1f} | {n / single:.2f} |")
        print(f"| stage-major (`offline-seg run`) | {major:.1f} | {n / major:.2f} |")
        print(f"| re-run, all done (every stage reused) | {rerun:.1f} | {n / rerun:.2f} |")
        print(f"| re-run after kill -9 with {done_at_kill}/{n} done (CLI, incl. start-up) | {resumed:.1f} | "
              f"{(n - done_at_kill) / resumed:.2f} |")
        print("\nstage-major, time per stage (model loading included):\n")
        print(summary.table())


if __name__ == "__main__":
    main()
