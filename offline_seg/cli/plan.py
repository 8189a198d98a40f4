"""`plan`: the GPU memory plan."""

from __future__ import annotations

from pathlib import Path

import click

from offline_seg.cli.common import _go_offline, _setup_logging, main


@main.command("plan")
@click.option("--gpu-mem", default="8GiB", show_default=True, help="GPU memory, e.g. 8GiB, 12GB, 7680MiB.")
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), default="fp16", show_default=True,
              help="Compute dtype of the models whose description does not fix one.")
@click.option("--llm-quant", type=click.Choice(["none", "int8", "int4"]),
              help="LLM weight quantization (int4 = bitsandbytes nf4, 0.5625 byte/param); default: the plan's "
              "choice (int4, or what a pre-quantized AWQ/GPTQ checkpoint carries).")
@click.option("--captioner-quant", type=click.Choice(["none", "int8", "int4"]),
              help="BLIP-2 weight quantization; default: the plan's choice (none, then int8, then int4).")
@click.option("--llm-backend", type=click.Choice(["vllm-server", "transformers", "vllm"]), default="vllm-server",
              show_default=True, help="vllm-server: the server a CUDA run starts (the default; prints its "
              "--gpu-memory-utilization); transformers: in-process, bitsandbytes 4-bit; vllm: vLLM in-process.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: every model stays loaded in its own actor process, all at once (one CUDA context each).")
@click.option("--llm", "llm_spec", help="The LLM's description as `run --llm` takes it (overrides --llm-backend).")
@click.option("--segmenter", help="The segmenter's description as `run --segmenter` takes it.")
@click.option("--llm-seqs", type=click.IntRange(min=1), default=8, show_default=True,
              help="LLM prompts in flight (KV cache allowance; halved automatically when the LLM step does not fit).")
@click.option("--llm-context", type=click.IntRange(min=64), default=1024, show_default=True,
              help="Tokens per LLM sequence (prompt + reply) for the KV cache allowance.")
@click.option("--weights", "weights_dir", type=click.Path(path_type=Path), default=Path("weights"), show_default=True,
              help="Read each model's config.json here when present (defaults: the manifest's models).")
@click.option("--detector", help="The detector's description as `run --detector` takes it; sam3[:DIR]: SAM 3 "
              "as detector and segmenter (no SAM, no post-refinement).")
@click.option("--all-cards", is_flag=True, help="Also print one line each for 8, 12, 16 and 24 GiB cards.")
@click.option("-v", "--verbose", count=True)
def plan_command(gpu_mem: str, dtype: str, llm_quant: str | None, captioner_quant: str | None, llm_backend: str,
                 llm_spec: str | None, segmenter: str | None, llm_seqs: int, llm_context: int, weights_dir: Path,
                 all_cards: bool, verbose: int, detector: str | None = None, engine: str = "local") -> None:
    """GPU memory plan: per-stage weights and activations from the full-size architectures (built on the
    meta device, no weights needed), which stages stay resident, the load order and the peak.

    It is the plan `run --gpu-mem` and `segment --gpu-mem` follow: the same model descriptions, the same
    choice of precision; explicit --llm-quant / --captioner-quant are kept, as there."""
    _go_offline()
    _setup_logging(verbose)
    from offline_seg.config import PipelineConfig
    from offline_seg.plan import (PlanError, PlanOptions, chain_options, fit_chain, format_cards, format_plan,
                                  plan_chain, profile_all, stage_specs)
    from offline_seg.chain import chain_spec

    llm = llm_spec or f"{llm_backend.replace('-', '_')}:{weights_dir / 'llm'}"
    if llm_quant is not None:
        llm = f"{llm}{'&' if '?' in llm else '?'}quantization={llm_quant}"
    chain = chain_spec(PipelineConfig(weights_dir=weights_dir, device="cuda", llm=llm, segmenter=segmenter,
                                      captioner_quant=captioner_quant, detector=detector, refiner="hybrid"))
    options = PlanOptions(dtype=dtype, llm_sequences=llm_seqs, llm_context=llm_context, per_process=engine == "ray")
    try:
        _, plan = fit_chain(chain, gpu_mem, options)
        failure = None
    except PlanError as error:
        plan, failure = plan_chain(chain, gpu_mem, options), error
    click.echo(format_plan(plan))
    if all_cards:
        click.echo()
        click.echo(format_cards(profile_all(stage_specs(chain)), chain_options(chain, options)))
    if failure is not None:
        raise failure
