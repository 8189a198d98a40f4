"""The device check of the GPU journey (`bash scripts/gpu_check.sh`): the whole chain through the default CUDA path
on a machine with one CUDA card and no weights, on emulated 8, 12 and 24 GiB cards.

1. Weights: every stage at full size with random weights, written as `weights pull` lays them out (RAM++ Swin-L
   with 4,585 tags, BLIP-2 OPT-2.7b, Grounding DINO Swin-T, SAM ViT-H, all-MiniLM-L6-v2, and the AWQ
   Llama-3-8B's config.json, which vLLM serves with random weights: `load_format=dummy`). The tokenizers and
   processors are the tiny models' (`weights make-tiny`), at the real input sizes. Written in a child process,
   so its CUDA memory is gone before anything is measured.
2. Per card, in a child process: `torch.cuda.set_per_process_memory_fraction(card / total)` caps this
   process's allocator, the plan is made for the card (`--gpu-mem`), and `BatchRunner` runs N synthetic images
   in one chunk exactly as `offline-seg run --device cuda` does: the refiner `auto` (hybrid), the LLM the
   default managed vLLM server (started from .venv-vllm with the plan's share, converted to this device's
   memory; on 8 GiB it stops after each LLM step and starts again), the plan's precisions and swaps.
3. While a card runs, `nvidia-smi` samples the device's used memory every 100 ms: every process of the run
   (this one, the vLLM server's engine and worker), CUDA contexts included. Its peak above the idle device is
   printed beside the plan's peak, with the seconds and images/s of every stage.

Exit 1 when a measured peak passes its card, a card's run fails, or an image fails. `--smoke`: the same code on
a CPU (tiny weights, vLLM's CPU build serving `--smoke-llm DIR`), no memory figures: a check of the script.

    bash scripts/gpu_check.sh [--images 8] [--cards 8,12,24] [--work DIR]
    bash scripts/gpu_check.sh --smoke --smoke-llm .cache/llm/smollm2-135m-instruct-98362432
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GiB = 1024**3
MiB = 1024**2
IMAGE_SIZE = (640, 480)  # a VOC-like photo: the detector and SAM resize it as they would a real one
BUILD_DEVICE = "cuda"  # where random full-size models are initialised before they are saved
WRITTEN = ".gpu_check_weights"  # marks a complete weights dir (a rerun with --work skips writing it)


# --- 1. weights --------------------------------------------------------------------------------------------
def write_weights(root: Path, smoke: bool) -> None:
    """The tiny weights dir, then (unless `smoke`) every model grown to full size with random weights."""
    from offline_seg.tiny import make_tiny_weights

    make_tiny_weights(root, components=("ram_plus", "blip2", "grounding_dino", "sam", "llm", "embedder"))
    if not smoke:
        _full_size(root)
        (root / "weights.lock.json").unlink()  # the tiny models' digests; hashing 11 GB again buys nothing here
    (root / WRITTEN).touch()


def _patch_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path.write_text(json.dumps(data, indent=2) + "\n")


def _save_random(model_class: Any, config: Any, directory: Path) -> None:
    """A random model of `config`, initialised on the GPU (seconds, not minutes), saved in fp16 safetensors."""
    import torch

    for old in directory.glob("*.safetensors"):
        old.unlink()
    with torch.device(BUILD_DEVICE):
        model = model_class(config).half().eval()
    model.save_pretrained(directory)
    del model
    torch.cuda.empty_cache()


def _full_size(root: Path) -> None:
    from transformers import (AutoTokenizer, BertConfig, BertModel, Blip2ForConditionalGeneration,
                              GroundingDinoForObjectDetection, SamModel)

    from offline_seg.models.ram_plus import RamPlusConfig
    from offline_seg.plan.architectures import (_blip2_defaults, _grounding_dino_defaults, _llama3_8b_defaults,
                                                _sam_defaults)
    from offline_seg.tiny import ram_plus

    started = time.monotonic()
    ram_plus.write(root / "ram_plus", config=RamPlusConfig())  # the official size: 329,493,046 parameters
    # BLIP-2: OPT's 50,272-token vocabulary (the tiny tokenizer padded with placeholder tokens, so any id the
    # random model generates decodes), 32 query tokens, 224 px
    blip2 = root / "blip2"
    tokenizer = AutoTokenizer.from_pretrained(blip2)
    config = _blip2_defaults()
    tokenizer.add_tokens([f"<t{i}>" for i in range(len(tokenizer), config.text_config.vocab_size)])
    tokenizer.save_pretrained(blip2)
    config.image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config.text_config, key, getattr(tokenizer, key))
    _save_random(Blip2ForConditionalGeneration, config, blip2)
    size = {"height": config.vision_config.image_size, "width": config.vision_config.image_size}
    _patch_json(blip2 / "preprocessor_config.json", size=size)
    _patch_json(blip2 / "processor_config.json", num_query_tokens=config.num_query_tokens,
                image_processor={"size": size})
    # Grounding DINO Swin-T with BERT-base's text encoder, 800 x 1333
    _save_random(GroundingDinoForObjectDetection, _grounding_dino_defaults(), root / "grounding_dino")
    _patch_json(root / "grounding_dino" / "preprocessor_config.json", size={"shortest_edge": 800, "longest_edge": 1333})
    # SAM ViT-H at 1024
    _save_random(SamModel, _sam_defaults("vit_h"), root / "sam")
    _patch_json(root / "sam" / "preprocessor_config.json", size={"longest_edge": 1024},
                pad_size={"height": 1024, "width": 1024})
    # all-MiniLM-L6-v2's shape
    minilm = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512)
    _save_random(BertModel, minilm, root / "embedder")
    _patch_json(root / "embedder" / "1_Pooling" / "config.json", word_embedding_dimension=384)
    # the LLM: the AWQ Llama-3-8B's config (vLLM makes its random weights) and a weights file of no tensors for
    # the manifest's check; the tiny tokenizer and its Llama-3 chat template
    llm = root / "llm"
    config = _llama3_8b_defaults()
    config.quantization_config = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                                  "version": "gemm"}
    tokenizer = AutoTokenizer.from_pretrained(llm)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, key, getattr(tokenizer, key))
    config.dtype = "float16"
    for old in llm.glob("*.safetensors"):
        old.unlink()
    config.save_pretrained(llm)
    from safetensors.torch import save_file

    save_file({}, str(llm / "model.safetensors"))
    print(f"full-size random weights written to {root} in {time.monotonic() - started:.0f} s", flush=True)


def synthetic_images(directory: Path, count: int) -> Path:
    """Photo-sized images with a few flat shapes on a gradient (the models' input sizes, not their content)."""
    import numpy as np
    from PIL import Image, ImageDraw

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    width, height = IMAGE_SIZE
    for i in range(count):
        ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * rng.uniform(0.3, 1.0, (1, 1, 3))
        image = Image.fromarray(np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = int(rng.integers(0, width - 120)), int(rng.integers(0, height - 120))
            draw.rectangle((x, y, x + int(rng.integers(40, 120)), y + int(rng.integers(40, 120))),
                           fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        image.save(directory / f"synthetic_{i:03d}.jpg", quality=92)
    return directory


# --- 2. one card, in its own process -----------------------------------------------------------------------
def run_card(card: float, weights: Path, images: Path, out: Path, smoke_llm: Path | None) -> dict[str, Any]:
    """The chain over `images` on a card of `card` GiB, as `offline-seg run --device cuda --gpu-mem` runs it."""
    import torch

    from offline_seg.engines.runner import BatchRunner
    from offline_seg.io.inputs import find_images
    from offline_seg.pipeline import Pipeline
    from offline_seg.config import PipelineConfig

    smoke = smoke_llm is not None
    if not smoke:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, card * GiB / total), 0)
    llm_dir = smoke_llm or weights / "llm"
    config = PipelineConfig(weights_dir=weights, device="cpu" if smoke else "cuda",
                            gpu_mem=None if smoke else f"{card:g}GiB",
                            llm=f"vllm_server:{llm_dir}?load_format=dummy&port=0",
                            refiner="hybrid" if smoke else "auto")
    started = time.perf_counter()
    pipeline = Pipeline(config)
    plan = pipeline.memory_plan
    _, paths = find_images(images)
    runner = BatchRunner(pipeline, out, chunk_size=len(paths), progress=False)
    try:
        summary = runner.run(paths, root=images)
    finally:
        pipeline.close()
    llm = pipeline.chain.model("llm")
    return {
        "card": card,
        "wall_s": time.perf_counter() - started,
        "plan_peak": plan.peak_bytes + plan.options.cuda_context_bytes if plan else None,
        "plan_verdict": plan.verdict if plan else "no plan on a CPU",
        "vllm_share": llm.gpu_memory_utilization if llm else None,
        "llm_resident": bool(llm and llm.resident),
        "torch_peak": torch.cuda.max_memory_allocated() if not smoke else None,
        "stages": {stage: [summary.computed[stage], summary.seconds[stage]] for stage in summary.computed},
        "done": summary.done,
        "failed": dict(summary.failed),
    }


# --- 3. the device's memory, sampled -----------------------------------------------------------------------
class Sampler:
    """`nvidia-smi` reports the device's used memory every 100 ms; the peak is kept."""

    def __init__(self, index: int) -> None:
        self.process = subprocess.Popen(
            ["nvidia-smi", f"--id={index}", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
             "--loop-ms=100"], stdout=subprocess.PIPE, text=True)
        self.peak_mib = 0
        self.samples = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            try:
                self.peak_mib = max(self.peak_mib, int(float(line.strip())))
                self.samples += 1
            except ValueError:
                continue

    def stop(self) -> int:
        self.process.terminate()
        self.process.wait()
        self._thread.join(timeout=5)
        return self.peak_mib * MiB


def used_bytes(index: int) -> int:
    done = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True, check=True)
    return int(float(done.stdout.strip())) * MiB


# --- the check -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="synthetic images per card (one chunk)")
    parser.add_argument("--cards", default="8,12,24", help="emulated card sizes, GiB")
    parser.add_argument("--work", type=Path, help="weights, images and outputs go here (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true", help="on the CPU with tiny weights: a check of this script")
    parser.add_argument("--smoke-llm", type=Path, help="--smoke: a small HF LLM dir vLLM's CPU build can serve")
    parser.add_argument("--write-weights", type=Path, help=argparse.SUPPRESS)  # the child that writes them
    parser.add_argument("--card-run", type=float, help=argparse.SUPPRESS)  # the child that runs one card
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_weights:
        write_weights(args.write_weights, args.smoke)
        return 0
    if args.card_run is not None:
        result = run_card(args.card_run, args.weights, args.work / "images", args.out, args.smoke_llm)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    return check(args)


def _gpu() -> tuple[int, str, int] | None:
    """(index, name, total bytes) of the card this check runs on, asked without CUDA in this process."""
    from offline_seg.gpus import card_for, gpu_report

    card = card_for("cuda", gpu_report())
    return None if card is None else (card.index, card.name, card.total_bytes)


def check(args: argparse.Namespace) -> int:
    if args.smoke and args.smoke_llm is None:
        print("error: --smoke needs --smoke-llm DIR (e.g. the SmolLM2 dir the tests convert into .cache/llm/)",
              file=sys.stderr)
        return 2
    gpu = None if args.smoke else _gpu()
    if not args.smoke and gpu is None:
        print("error: no CUDA card here (nvidia-smi lists none); `--smoke --smoke-llm DIR` checks the script on a CPU",
              file=sys.stderr)
        return 2
    from offline_seg.llm.vllm_server_backend import vllm_python

    if vllm_python() is None:
        print("error: no vLLM venv (.venv-vllm): run `GPU=1 bash scripts/setup.sh` first", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    weights, started = work / "weights", time.monotonic()
    me = [sys.executable, str(Path(__file__).resolve())] + (["--smoke", "--smoke-llm", str(args.smoke_llm)]
                                                            if args.smoke else [])
    if not (weights / WRITTEN).is_file():
        subprocess.run([*me, "--write-weights", str(weights)], check=True)
    synthetic_images(work / "images", args.images)
    name = "CPU (smoke run)" if args.smoke else f"{gpu[1]}, {gpu[2] / GiB:.0f} GiB"
    print(f"# gpu_check: {name}, {args.images} synthetic images of {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} per card, "
          f"random full-size weights{' (tiny: smoke)' if args.smoke else ''}\n", flush=True)
    cards = [float(c) for c in args.cards.split(",")] if not args.smoke else [0.0]
    results, failures = [], []
    for card in cards:
        out = work / f"out-{card:g}"
        shutil.rmtree(out, ignore_errors=True)
        idle = used_bytes(gpu[0]) if gpu else 0
        sampler = Sampler(gpu[0]) if gpu else None
        done = subprocess.run([*me, "--card-run", str(card), "--weights", str(weights), "--work", str(work),
                               "--out", str(out)], capture_output=True, text=True)
        peak = sampler.stop() - idle if sampler else None
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            failures.append(f"{card:g} GiB: the run failed (exit {done.returncode}): {done.stderr[-1500:]}")
            continue
        result = json.loads(lines[-1][len("RESULT "):])
        result["measured_peak"] = peak
        results.append(result)
        if peak is not None and peak > card * GiB:
            failures.append(f"{card:g} GiB: measured peak {peak / GiB:.2f} GiB passes the card")
        if result["failed"] or result["done"] != args.images:
            failures.append(f"{card:g} GiB: {result['done']} of {args.images} images done; failed: {result['failed']}")
    print(table(results))
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


def table(results: list[dict[str, Any]]) -> str:
    def gib(value: Any) -> str:
        return "-" if value is None else f"{value / GiB:.2f}"

    lines = ["| card GiB | plan peak GiB (+ CUDA context) | measured peak GiB (nvidia-smi) | torch peak GiB (this "
             "process) | vLLM share | plan | wall s |", "|---:|---:|---:|---:|---:|---|---:|"]
    for r in results:
        share = f"{r['vllm_share']}" + ("" if r["llm_resident"] else ", restarted per LLM step")
        lines.append(f"| {r['card']:g} | {gib(r['plan_peak'])} | {gib(r['measured_peak'])} | {gib(r['torch_peak'])} | "
                     f"{share} | {r['plan_verdict']} | {r['wall_s']:.0f} |")
    lines += ["", "| card GiB | stage | images | s per image | images/s |", "|---:|---|---:|---:|---:|"]
    for r in results:
        for stage, (count, seconds) in r["stages"].items():
            rate = f"{count / seconds:.2f}" if seconds else "-"
            lines.append(f"| {r['card']:g} | {stage} | {count} | {seconds / max(count, 1):.2f} | {rate} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
