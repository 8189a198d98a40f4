"""Ray engine throughput beside the local engine, and what N GPUs would do, from measured per-stage times.

    python scripts/bench_ray.py --images 16                 # tiny random models, synthetic images
    python scripts/bench_ray.py --weights weights --device cuda --gpu-mem 24GiB --folder DATASET

Runs the same images through the local engine and through the Ray engine with 1 and 2 actors per model
stage (Ray started on this machine: run it under `unshare -n` to keep Ray off the network, see README),
then times every stage on a warm pipeline (models loaded beforehand) and the driver's commit per image.
The projection: with N GPUs whose actors are sized to the stage times, every GPU is busy all the time, so
images/s = N / (sum of the per-image stage times), capped by the one driver committing to the store; the
bottleneck stage is the one that needs the most actors. On tiny models on CPU the figures are about
orchestration; run it with real weights on a GPU node for the real projection.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

from offline_seg.engines.ray_engine import RayOptions, RayRunner  # noqa: E402
from offline_seg.engines.runner import STAGES, BatchRunner, RunSummary  # noqa: E402
from offline_seg.io.inputs import find_images  # noqa: E402
from offline_seg.io.store import ResultStore  # noqa: E402
from offline_seg.pipeline import Pipeline  # noqa: E402
from offline_seg.config import PipelineConfig  # noqa: E402

from bench_pipeline import synthetic_images  # noqa: E402  (this script's folder is on sys.path)


def stage_times(config: PipelineConfig, images: list[Path], root: Path, work: Path, chunk: int) -> dict[str, float]:
    """Seconds per image of each stage on a warm pipeline (one warm-up chunk loads every model first)."""
    pipeline = Pipeline(config)
    BatchRunner(pipeline, work / "warm-up", chunk_size=chunk, progress=False).run(images[:chunk], root=root)
    summary = BatchRunner(pipeline, work / "warm", chunk_size=chunk, progress=False).run(images, root=root)
    return {stage: summary.seconds[stage] / summary.computed[stage] for stage in STAGES if summary.computed[stage]}


def commit_time(config: PipelineConfig, images: list[Path], root: Path, work: Path) -> float:
    """Seconds per image the driver spends committing a whole chain's results to the store."""
    source = work / "warm" / "offline_seg.sqlite"
    runner = BatchRunner(Pipeline(config), work / "commit", progress=False)
    stages = runner.active_stages()
    with ResultStore(source) as stored:
        values = [{stage: stored.get(rec.image_hash, stage, runner.keys[stage]) for stage in stages}
                  for rec in stored.images()]
    with ResultStore.in_dir(work / "commit") as store:
        summary = RunSummary()
        items = runner.open_items(store, images, root, summary)
        start = time.perf_counter()
        for item, value in zip(items, values):
            for stage in stages:
                runner.commit(stage, item, value[stage], 0.0, store, summary)
            runner.finish([item], store, summary)
        return (time.perf_counter() - start) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--folder", type=Path, help="real images instead of synthetic ones")
    parser.add_argument("--weights", type=Path, help="weights dir (default: tiny random models)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gpu-mem", help="card size for the GPU shares (needed with --device cuda)")
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--actors", default="1,2", help="actors per model stage to try, e.g. 1,2")
    parser.add_argument("--ray-cpus", type=int, help="logical CPUs of the local Ray (default: actors + 2)")
    parser.add_argument("--gpus", default="1,2,4,8,16", help="GPU counts of the projection")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        if args.weights is None:
            from offline_seg.tiny import make_tiny_weights

            args.weights = work / "tiny-weights"
            make_tiny_weights(args.weights)
        source = args.folder or synthetic_images(work / "images", args.images, size=(160, 120))
        root, images = find_images(source)
        config = PipelineConfig(weights_dir=args.weights, device=args.device, phrase_cache_dir=None)
        plan = None
        if args.gpu_mem:
            from offline_seg.plan import plan_for

            plan = plan_for(config, args.gpu_mem)

        rows = []
        start = time.perf_counter()
        BatchRunner(Pipeline(config), work / "local", chunk_size=args.chunk, progress=False).run(images, root=root)
        rows.append(("local", "-", time.perf_counter() - start))
        for actors in (int(a) for a in args.actors.split(",")):
            options = RayOptions(actors={"*": actors}, num_cpus=args.ray_cpus)
            runner = RayRunner(Pipeline(config), work / f"ray-{actors}", chunk_size=args.chunk, progress=False,
                               options=options, plan=plan)
            start = time.perf_counter()
            runner.run(images, root=root)
            rows.append(("ray", str(actors), time.perf_counter() - start))
        times = stage_times(config, images, root, work, args.chunk)
        commit = commit_time(config, images, root, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{len(images)} images, chunk {args.chunk}, device {args.device}, {os.cpu_count()} CPU cores; "
          "wall time includes starting Ray and the actors and loading every model\n")
    print("| engine | actors per model stage | wall s | images/s |\n|---|---:|---:|---:|")
    for engine, actors, seconds in rows:
        print(f"| {engine} | {actors} | {seconds:.1f} | {len(images) / seconds:.3f} |")
    total = sum(times.values())
    bottleneck = max(times, key=times.get)
    print("\n| stage | ms per image (warm) | share |\n|---|---:|---:|")
    for stage, seconds in times.items():
        mark = " (bottleneck)" if stage == bottleneck else ""
        print(f"| {stage}{mark} | {1000 * seconds:.1f} | {seconds / total:.0%} |")
    print(f"| driver commit | {1000 * commit:.2f} | - |")
    print(f"\nbottleneck: {bottleneck} ({times[bottleneck] / total:.0%} of the chain: give it that share of the "
          "actors)")
    print(f"\n| GPUs (each as fast as {args.device} here) | projected images/s | limited by |\n|---:|---:|---|")
    for gpus in (int(g) for g in args.gpus.split(",")):
        compute = gpus / total
        limit = 1 / commit
        print(f"| {gpus} | {min(compute, limit):.2f} | "
              f"{'the stages: N / sum of stage times' if compute < limit else 'the driver committing to the store'} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
