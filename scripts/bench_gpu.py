"""The memory plan against a real GPU: every stage at full size with random weights, stage-major over N
images at real input sizes, on emulated 8 / 12 / 16 / 24 GiB cards.

No weights are needed: each model is built with its parameters on the meta device (buffers real, via
accelerate's `init_empty_weights(include_buffers=False)`) and materialised on CUDA one parameter at a
time in the precision the plan chose; Linear layers the plan quantizes become bitsandbytes int8 / nf4
layers straight from a random 16-bit weight, so a 16 GB model never has to fit the card unquantized.
`torch.cuda.set_per_process_memory_fraction` caps the allocator at the card's size; models the plan swaps
are built before their step and freed after it, in every chunk.

Per card and stage it prints the measured peak (`torch.cuda.max_memory_allocated`, so without the CUDA
context, which the plan adds once) beside the plan's figure for that step, the loaded weights beside the
plan's, and images/s of the whole chain. It needs CUDA and stops with a clear message without it.

    python scripts/bench_gpu.py --images 16 --cards 8,12,16,24 [--weights weights]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

GiB = 1024**3
LLM_PROMPT_TOKENS = 650  # the pre-refinement prompt with the COCO-81 list
LLM_NEW_TOKENS = 32
BOXES = 10  # detections per image the segmenter decodes
POINTS = 20
TEXT_TOKENS = 48  # a Grounding DINO prompt of ~20 VOC labels
DEVICE = "cuda"  # `--smoke-cpu`: the same code on the CPU with tiny configs, to check it without a GPU


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="images per card (one chunk of this many)")
    parser.add_argument("--cards", default="8,12,16,24", help="emulated card sizes in GiB")
    parser.add_argument("--weights", type=Path, default=Path("weights"),
                        help="configs are read here when present (full-size defaults otherwise)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke-cpu", action="store_true",
                        help="run the steps on the CPU (fp32, no quantization, no memory figures): a code check "
                        "for machines without a GPU; use with --weights of tiny models (`weights make-tiny`)")
    args = parser.parse_args(argv)

    import torch

    if args.smoke_cpu:
        global DEVICE
        DEVICE = "cpu"
        total = 1024 * GiB
    elif not torch.cuda.is_available():
        print("error: scripts/bench_gpu.py measures GPU memory and needs CUDA (torch.cuda.is_available() is "
              "False here). The plan's figures without a GPU: `offline-seg plan --all-cards`.", file=sys.stderr)
        return 2
    else:
        total = torch.cuda.get_device_properties(0).total_memory
    name = "CPU smoke run" if args.smoke_cpu else torch.cuda.get_device_name(0)
    print(f"# GPU memory plan vs measured ({name}, {total / GiB:.1f} GiB, "
          f"torch {torch.__version__}, {args.images} images, random weights)\n")
    rows = []
    for card in [float(c) for c in args.cards.split(",")]:
        rows.extend(bench_card(card, args, total))
    print("| card | stage | precision | residency | weights GiB (plan) | weights GiB (measured) | "
          "step peak GiB (plan) | step peak GiB (measured) | seconds |")
    print("|---:|---|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    return 0


def bench_card(card_gib: float, args: argparse.Namespace, total: int) -> list[list[Any]]:
    import torch

    from offline_seg.config import PipelineConfig
    from offline_seg.plan import PlanError, STEP_LABELS, fit_chain, stage_specs
    from offline_seg.chain import chain_spec

    chain = chain_spec(PipelineConfig(weights_dir=args.weights, device="cuda"))
    try:
        described, plan = fit_chain(chain, int(card_gib * GiB))
    except PlanError as error:
        return [[f"{card_gib:g}", "—", "—", "—", "—", "—", "—", f"does not fit: {error}", "—"]]
    cuda = DEVICE == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, card_gib * GiB / total), 0)
    specs = {spec.name: spec for spec in stage_specs(described)}
    torch.manual_seed(args.seed)
    loaded: dict[str, Any] = {}
    measured_weights: dict[str, int] = {}
    resident = set(plan.resident_stages)
    for name in plan.resident_stages:
        loaded[name], measured_weights[name] = _materialise(specs[name], plan.options.precision(name))
    results: dict[str, tuple[int, float]] = {}
    started = time.perf_counter()
    for step, model_name in described.model_steps:
        label = STEP_LABELS[step]
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        step_start = time.perf_counter()
        if model_name not in resident:
            loaded[model_name], measured_weights[model_name] = _materialise(specs[model_name],
                                                                            plan.options.precision(model_name))
        run_step(model_name, loaded[model_name], specs[model_name].config, args.images, plan.llm_sequences)
        if cuda:
            torch.cuda.synchronize()
        results[label] = (torch.cuda.max_memory_allocated() if cuda else 0, time.perf_counter() - step_start)
        if model_name not in resident:
            del loaded[model_name]
            if cuda:
                torch.cuda.empty_cache()
    seconds = time.perf_counter() - started
    loaded.clear()
    if cuda:
        torch.cuda.empty_cache()
    rows = []
    resident_weights = sum(s.weights_bytes for s in plan.stages if s.resident)
    for step, model_name in described.model_steps:
        label = STEP_LABELS[step]
        stage = plan.stage(model_name)
        planned_peak = resident_weights + stage.activation_bytes + (0 if stage.resident else stage.weights_bytes)
        peak, step_seconds = results[label]
        rows.append([f"{card_gib:g}", label, stage.precision, "resident" if stage.resident else "swapped",
                     f"{stage.weights_bytes / GiB:.2f}", f"{measured_weights[model_name] / GiB:.2f}",
                     f"{planned_peak / GiB:.2f}", f"{peak / GiB:.2f}", f"{step_seconds:.1f}"])
    rows.append([f"{card_gib:g}", "**chain**", "", "", "", "", f"{plan.peak_bytes / GiB:.2f} (+context)",
                 f"{max(p for p, _ in results.values()) / GiB:.2f}", f"{seconds:.1f} ({args.images / seconds:.2f} img/s)"])
    return rows


# --- random full-size models on CUDA, in the plan's precision -------------------------------------------
def _materialise(spec: Any, precision: tuple[str, str]) -> tuple[Any, int]:
    """`spec`'s architecture on CUDA with random weights at (dtype, quantization); and its weight bytes."""
    import torch
    from accelerate import init_empty_weights
    from torch import nn

    from offline_seg.plan import loaded_weight_bytes

    dtype_name, quant = ("fp32", "none") if DEVICE == "cpu" else precision
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    with init_empty_weights(include_buffers=False):
        model = spec.build(spec.config)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ()) | set(
        getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    for module_name, module in list(model.named_modules()):
        in_keep = any(part in keep for part in module_name.split("."))
        for child_name, child in list(module.named_children()):
            if (quant in ("int8", "int4", "awq", "gptq") and isinstance(child, nn.Linear) and child is not head
                    and not in_keep and not any(part in keep for part in child_name.split("."))):
                setattr(module, child_name, _quantized_linear(child, dtype, quant))
        for name, param in list(module.named_parameters(recurse=False)):
            if param.device.type == "meta":
                width = torch.float32 if in_keep and dtype == torch.float16 else dtype
                value = torch.randn(param.shape, dtype=width, device=DEVICE) * 0.02
                setattr(module, name, nn.Parameter(value, requires_grad=False))
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer is not None:
                module._buffers[name] = buffer.to(DEVICE, dtype if buffer.is_floating_point() and
                                                  buffer.dtype != torch.float32 else buffer.dtype)
    model.eval()
    return model, loaded_weight_bytes(model)


def _quantized_linear(linear: Any, dtype: Any, quant: str) -> Any:
    """A bitsandbytes layer from a random 16-bit weight made on CUDA (int8: LLM.int8, else nf4/64)."""
    import bitsandbytes as bnb
    import torch

    weight = torch.randn(linear.out_features, linear.in_features, dtype=torch.float16, device=DEVICE) * 0.02
    bias = linear.bias is not None
    if quant == "int8":
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False,
                                    device="meta")
        layer.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False).to(DEVICE)
    else:  # awq/gptq are measured as nf4: the same 4-bit weights, slightly larger scales
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias, compute_dtype=dtype,
                                  quant_type="nf4", device="meta")
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", blocksize=64).to(DEVICE)
    del weight
    if bias:
        layer.bias = torch.nn.Parameter(torch.zeros(linear.out_features, dtype=dtype, device=DEVICE),
                                        requires_grad=False)
    return layer


# --- one step over a chunk, at the sizes the stages really run at ---------------------------------------
def run_step(stage: str, model: Any, config: Any, images: int, llm_sequences: int) -> None:
    import torch

    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    with torch.inference_mode():
        if stage == "tagger":  # ≤ 4 tiles of 384² per image, batches of 8
            tiles = torch.randn(4 * images, 3, config.image_size, config.image_size, device=DEVICE, dtype=dtype)
            for start in range(0, len(tiles), 8):
                model.predict(tiles[start : start + 8])
        elif stage == "captioner":  # 224² (ViT-g), batches of 8, 30 new tokens
            side = config.vision_config.image_size
            prompt = [config.image_token_index or 50265] * config.num_query_tokens + [config.text_config.bos_token_id]
            for start in range(0, images, 8):
                n = min(8, images - start)
                ids = torch.tensor([prompt] * n, device=DEVICE)
                model.generate(pixel_values=torch.randn(n, 3, side, side, device=DEVICE, dtype=dtype), input_ids=ids,
                               attention_mask=torch.ones_like(ids), max_new_tokens=30, min_new_tokens=30,
                               do_sample=False)
        elif stage == "detector":  # 800×1333, one image at a time
            for _ in range(images):
                ids = torch.randint(0, min(config.text_config.vocab_size, 30000), (1, TEXT_TOKENS), device=DEVICE)
                model(pixel_values=torch.randn(1, 3, 800, 1333, device=DEVICE, dtype=dtype), input_ids=ids,
                      attention_mask=torch.ones_like(ids), pixel_mask=torch.ones(1, 800, 1333, device=DEVICE,
                                                                                 dtype=torch.long))
        elif stage == "segmenter":  # 1024², BOXES boxes, box pass then box + POINTS points
            side = config.vision_config.image_size
            for _ in range(images):
                embeddings = model.get_image_embeddings(torch.randn(1, 3, side, side, device=DEVICE, dtype=dtype))
                boxes = torch.tensor([[[100.0, 100.0, 600.0, 700.0]] * BOXES], device=DEVICE, dtype=dtype)
                model(image_embeddings=embeddings, input_boxes=boxes, multimask_output=False)
                points = torch.rand(1, BOXES, POINTS, 2, device=DEVICE, dtype=dtype) * 1000
                model(image_embeddings=embeddings, input_boxes=boxes, input_points=points,
                      input_labels=torch.ones(1, BOXES, POINTS, device=DEVICE, dtype=torch.long),
                      multimask_output=False)
        else:  # the LLM: the plan's batch of prompts, prefill + greedy decoding with the KV cache
            vocab = model.config.get_text_config().vocab_size
            for start in range(0, images, llm_sequences):
                n = min(llm_sequences, images - start)
                ids = torch.randint(0, vocab, (n, LLM_PROMPT_TOKENS), device=DEVICE)
                out = model(input_ids=ids, use_cache=True)
                past = out.past_key_values
                token = out.logits[:, -1:].argmax(-1)
                for _ in range(LLM_NEW_TOKENS):
                    out = model(input_ids=token, past_key_values=past, use_cache=True)
                    past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)


if __name__ == "__main__":
    sys.exit(main())
