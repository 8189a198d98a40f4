"""The plan as a person reads it: one table per plan, one line per card size."""

from __future__ import annotations

from typing import Sequence

from offline_seg.plan.allowances import CARDS_GIB, CHAIN, GiB, STEP_NAMES
from offline_seg.plan.residency import MemoryPlan, PlanOptions, make_plan
from offline_seg.plan.sizes import StageProfile, parse_size



def _gib(value: int) -> str:
    return f"{value / GiB:.2f}"


def format_plan(plan: MemoryPlan) -> str:
    """A readable table of one plan, the load order and the verdict."""
    header = f"{'stage':10} {'model':22} {'params':>14} {'precision':10} {'weights':>8} {'act+kv':>8} " \
             f"{'residency':9} {'load':>4}"
    lines = [f"GPU {plan.gpu_bytes / GiB:.0f} GiB, dtype {plan.options.dtype}, LLM {plan.options.llm_quant} "
             f"({plan.options.llm_backend}, {plan.llm_sequences} seq × {plan.options.llm_context} tokens)",
             header, "-" * len(header)]
    for s in plan.stages:
        residency = "resident" if s.resident else "swapped"
        lines.append(f"{s.name:10} {s.description[:22]:22} {s.params:>14,} {s.precision:10} {_gib(s.weights_bytes):>8} "
                     f"{_gib(s.activation_bytes):>8} {residency:9} {s.load_order:>4}")
    vllm = plan.vllm_gpu_memory_utilization is not None
    processes = len(plan.stages) if plan.options.per_process else 1 + vllm
    what = "CUDA context" + (f" x {processes}" if processes > 1 else "")
    lines.append(f"{'context':10} {what:22} {'':>14} {'':10} {'':>8} "
                 f"{_gib(plan.options.cuda_context_bytes * processes):>8}")
    resident = ", ".join(plan.resident_stages) or "none"
    chunk = " → ".join(
        step + ("" if name in plan.resident_stages else " (load, run, free)")
        for step, name in zip(STEP_NAMES, CHAIN) if step in plan.steps
    )
    lines.append(f"load once: {resident}; per chunk: {chunk}")
    if vllm:
        restart = " (the server stops after each LLM step and starts again at the next)" if not plan.stage(
            "llm").resident else ""
        lines.append(f"vLLM: --gpu-memory-utilization {plan.vllm_gpu_memory_utilization}{restart}")
    if plan.options.per_process:
        lines.append("Ray: every model stays loaded in its own actor process; one actor of each fits one card")
    lines.append(f"peak {_gib(plan.peak_bytes)} GiB at {plan.peak_step} (weights and act+kv in GiB)")
    lines.append(plan.verdict)
    return "\n".join(lines)


def format_cards(profiles: Sequence[StageProfile], options: PlanOptions,
                 cards_gib: Sequence[float] = CARDS_GIB) -> str:
    """One line per card size: peak, residency, verdict."""
    header = f"{'card':>7} {'peak GiB':>9} {'fits':5} {'llm seq':>7} {'resident':46} swapped / suggestion"
    lines = [header, "-" * len(header)]
    for card in cards_gib:
        plan = make_plan(profiles, parse_size(card), options)
        tail = ", ".join(plan.swapped_stages) or "-"
        if not plan.fits:
            tail = "try: " + (", ".join(plan.suggestions) or "a smaller model")
        lines.append(f"{card:>3g} GiB {_gib(plan.peak_bytes):>9} {'yes' if plan.fits else 'NO':5} {plan.llm_sequences:>7} "
                     f"{', '.join(plan.resident_stages) or '-':46} {tail}")
    return "\n".join(lines)
