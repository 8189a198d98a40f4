"""`plan`: the GPU memory plan."""

from __future__ import annotations

from pathlib import Path

import click

from offline_seg.cli.common import _go_offline, _setup_logging, main


@main.command("plan")
@click.option("--gpu-mem", default="8GiB", show_default=True, help="GPU memory, e.g. 8GiB, 12GB, 7680MiB.")
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), default="fp16", show_default=True)
@click.option("--llm-quant", type=click.Choice(["none", "int8", "int4"]), default="int4", show_default=True,
              help="LLM weight quantization (int4 = bitsandbytes nf4, 0.5625 byte/param).")
@click.option("--captioner-quant", type=click.Choice(["none", "int8", "int4"]), default="none", show_default=True,
              help="BLIP-2 weight quantization.")
@click.option("--llm-backend", type=click.Choice(["transformers", "vllm"]), default="transformers",
              show_default=True, help="vllm: a resident server process; prints its --gpu-memory-utilization.")
@click.option("--llm-seqs", type=click.IntRange(min=1), default=8, show_default=True,
              help="LLM prompts in flight (KV cache allowance; halved automatically when the LLM step does not fit).")
@click.option("--llm-context", type=click.IntRange(min=64), default=1024, show_default=True,
              help="Tokens per LLM sequence (prompt + reply) for the KV cache allowance.")
@click.option("--weights", "weights_dir", type=click.Path(path_type=Path), default=Path("weights"), show_default=True,
              help="Read each model's config.json here when present (defaults: the manifest's models).")
@click.option("--detector", help="sam3[:DIR]: plan SAM 3 as detector and segmenter (no SAM, no post-refinement).")
@click.option("--all-cards", is_flag=True, help="Also print one line each for 8, 12, 16 and 24 GiB cards.")
@click.option("-v", "--verbose", count=True)
def plan_command(gpu_mem: str, dtype: str, llm_quant: str, captioner_quant: str, llm_backend: str, llm_seqs: int,
                 llm_context: int, weights_dir: Path, all_cards: bool, verbose: int,
                 detector: str | None = None) -> None:
    """GPU memory plan: per-stage weights and activations from the full-size architectures (built on the
    meta device, no weights needed), which stages stay resident, the load order and the peak."""
    _go_offline()
    _setup_logging(verbose)
    from offline_seg.plan import PlanOptions, format_cards, format_plan, make_plan, parse_size, profile_all, stage_specs

    options = PlanOptions(dtype=dtype, llm_quant=llm_quant, captioner_quant=captioner_quant, llm_sequences=llm_seqs,
                          llm_context=llm_context, llm_backend=llm_backend)
    from offline_seg.plan import STEP_NAMES
    from offline_seg.stages.sam3 import is_sam3

    sam3 = is_sam3(detector)  # SAM 3's labels are class names: the LLM runs for pre-refinement only
    profiles = profile_all(stage_specs(weights_dir, detector=detector, llm_uses=1 if sam3 else 2))
    steps = [step for step in STEP_NAMES if not (sam3 and step == "llm (post)")]
    click.echo(format_plan(make_plan(profiles, parse_size(gpu_mem), options, steps=steps)))
    if all_cards:
        click.echo()
        click.echo(format_cards(profiles, options))

