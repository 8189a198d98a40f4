"""Fitting a chain on one card: precision per stage, which models stay resident and which load per
chunk (the subset that saves the most reloaded bytes), the peak, and the cheapest cuts when it does not fit."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any, Sequence

from offline_seg.errors import InvalidInputError
from offline_seg.plan.allowances import (
    CHAIN, CUDA_CONTEXT_BYTES, DTYPE_BYTES, GiB, LLM_CONTEXT, LLM_SEQUENCES, STEP_NAMES, VLLM_MAX_MODEL_LEN,
)
from offline_seg.plan.shares import cards_needed, share_of
from offline_seg.plan.sizes import StageProfile

LLM_BACKENDS = ("transformers", "vllm", "vllm-server")
RESTART_CUT = "the LLM server stopped between its steps"  # how a plan with `llm_restart` reads as a change


@dataclass(frozen=True)
class PlanOptions:
    """Precision and allowance choices of one plan."""

    dtype: str = "fp16"
    llm_quant: str = "int4"
    captioner_quant: str = "none"
    llm_sequences: int = LLM_SEQUENCES
    llm_context: int = LLM_CONTEXT
    # "vllm": in-process vLLM, whose engine runs in a child process (its own CUDA context), resident for the
    # run; "vllm-server": a vLLM server the run manages, the same on the card, and stoppable (see llm_restart)
    llm_backend: str = "transformers"
    cuda_context_bytes: int = CUDA_CONTEXT_BYTES
    # vllm-server only: may stop after each LLM step and start again at the next (a server gives all of its
    # memory back when it stops). Chosen only when nothing fits with it resident: every start takes a while.
    llm_restart: bool = False
    # Every model resident in a process of its own, all at once (the Ray engine: one actor per model stage,
    # each with its CUDA context, all running together): the card holds the sum of their footprints.
    per_process: bool = False
    # Per-stage choices a plan must not change: a model description's explicit dtype / quantization,
    # or a pre-quantized checkpoint's method. (stage, value) pairs.
    fixed_dtype: tuple[tuple[str, str], ...] = ()
    fixed_quant: tuple[tuple[str, str], ...] = ()

    def precision(self, stage: str) -> tuple[str, str]:
        """(dtype, quantization) of a stage."""
        quant = {"llm": self.llm_quant, "captioner": self.captioner_quant}.get(stage, "none")
        return dict(self.fixed_dtype).get(stage, self.dtype), dict(self.fixed_quant).get(stage, quant)

    def unfixed(self) -> PlanOptions:
        """These options with every per-stage choice open again (to name the cheapest change)."""
        return replace(self, fixed_dtype=(), fixed_quant=())


@dataclass(frozen=True)
class StagePlan:
    """One stage's share of the card."""

    name: str
    description: str
    params: int
    precision: str
    weights_bytes: int
    activation_bytes: int  # workspace while it runs (+ KV cache and logits for the LLM)
    resident: bool
    uses: int
    load_order: int  # 1-based: resident stages load once at start, the rest per chunk in chain order

    @property
    def step_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes


@dataclass(frozen=True)
class MemoryPlan:
    """Which stages stay on the GPU, the load order, the peak, and what to change when it does not fit."""

    gpu_bytes: int
    options: PlanOptions
    stages: tuple[StagePlan, ...]
    steps: tuple[str, ...]  # chain steps of one chunk, e.g. ("tagger", ..., "llm (post)", "segmenter")
    peak_bytes: int
    peak_step: str
    fits: bool
    llm_sequences: int  # may be below options.llm_sequences when the LLM step alone did not fit
    suggestions: tuple[str, ...] = ()
    vllm_gpu_memory_utilization: float | None = None
    cards: int = 1  # per_process: the cards one process of each model packs onto

    @property
    def resident_stages(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages if s.resident)

    @property
    def swapped_stages(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages if not s.resident)

    def stage(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.name == name)

    def process_bytes(self, model: str) -> int:
        """What one process holding `model` takes on the card: weights, workspace (and KV cache), CUDA context."""
        return self.stage(model).step_bytes + self.options.cuda_context_bytes

    def gpu_shares(self) -> dict[str, float]:
        """Per model, the share of one card its process asks for (`plan.shares`): a vLLM LLM its
        `gpu_memory_utilization` (the same bytes, rounded as vLLM's flag is), any other its `process_bytes`."""
        shares = {}
        for stage in self.stages:
            if stage.name == "llm" and self.vllm_gpu_memory_utilization is not None:
                shares[stage.name] = self.vllm_gpu_memory_utilization
            else:
                shares[stage.name] = share_of(self.process_bytes(stage.name), self.gpu_bytes)
        return shares

    @property
    def verdict(self) -> str:
        gib = f"{self.peak_bytes / GiB:.2f} of {self.gpu_bytes / GiB:.0f} GiB"
        if self.options.per_process:
            if not self.fits:
                hint = f"; try: {', '.join(self.suggestions)}" if self.suggestions else ""
                return f"does NOT fit: a model's process alone is larger than a {self.gpu_bytes / GiB:.0f} GiB card{hint}"
            return (f"fits: one process per model, {self.peak_bytes / GiB:.2f} GiB together, on {self.cards} "
                    f"card{'s' if self.cards > 1 else ''} of {self.gpu_bytes / GiB:.0f} GiB")
        if not self.fits:
            hint = f"; try: {', '.join(self.suggestions)}" if self.suggestions else "; no downgrade makes it fit"
            return f"does NOT fit: peak {gib} at {self.peak_step}{hint}"
        if not self.swapped_stages:
            return f"fits, all resident: peak {gib}"
        return (f"fits with swapping: peak {gib} at {self.peak_step}; "
                f"{', '.join(self.swapped_stages)} load per chunk")


def _stage_sizes(profile_: StageProfile, options: PlanOptions, sequences: int) -> tuple[int, int]:
    dtype, quant = options.precision(profile_.name)
    scale = DTYPE_BYTES[dtype] / 2  # allowances are in 2-byte elements
    weights = profile_.params.weight_bytes(dtype, quant)
    act = int(profile_.workspace_elements * 2 * scale)
    if profile_.name == "llm":
        cache_bytes = 2 if dtype == "fp32" and quant != "none" else DTYPE_BYTES[dtype]  # quantized: 16-bit compute
        tokens = sequences * options.llm_context
        if options.llm_backend == "vllm":  # it refuses to start without room for one full-length sequence
            tokens = max(tokens, VLLM_MAX_MODEL_LEN)
        act = int(profile_.workspace_elements * 2 * cache_bytes / 2)
        act += tokens * (profile_.kv_per_token_elements + profile_.act_per_token_elements) * cache_bytes
        act += sequences * profile_.logits_per_sequence_bytes
    return weights, act


def _peak(sizes: dict[str, tuple[int, int]], resident: frozenset[str], steps: Sequence[tuple[str, str]],
          context: int) -> tuple[int, str]:
    """Peak over the chain: the resident weights + the running step's (weights if swapped) + workspace."""
    base = context + sum(sizes[name][0] for name in resident)
    best, at = base, "start"
    for step, name in steps:
        weights, act = sizes[name]
        value = base + act + (0 if name in resident else weights)
        if value > best:
            best, at = value, step
    return best, at


def _choose(sizes: dict[str, tuple[int, int]], uses: dict[str, int], steps: Sequence[tuple[str, str]], gpu: int,
            context: int,
            forced: frozenset[str]) -> tuple[frozenset[str], int, str]:
    """The resident set that fits and saves the most reloaded bytes per chunk (all 2^n subsets; n ≤ 5)."""
    names = sorted(sizes)
    best: tuple[int, int, frozenset[str], int, str] | None = None
    for r in range(len(names) + 1):
        for subset in itertools.combinations(names, r):
            resident = frozenset(subset) | forced
            peak, at = _peak(sizes, resident, steps, context)
            saved = sum(uses[n] * sizes[n][0] for n in resident)
            key = (peak <= gpu, saved if peak <= gpu else -peak)
            if best is None or key > best[:2]:
                best = (*key, resident, peak, at)
    assert best is not None
    return best[2], best[3], best[4]


def _fits(sizes: dict[str, tuple[int, int]], peak: int, gpu_bytes: int, options: PlanOptions) -> bool:
    """On one card: the peak fits. Every model in its own process (Ray): each process fits a card (a set of
    them may take several; `MemoryPlan.cards` says how many)."""
    if options.per_process:
        return max((weights for weights, _ in sizes.values()), default=0) <= gpu_bytes
    return peak <= gpu_bytes


def make_plan(profiles: Sequence[StageProfile], gpu_bytes: int, options: PlanOptions | None = None,
              *, steps: Sequence[str] | None = None, suggest: bool = True) -> MemoryPlan:
    """Residency and load order of `profiles` on a card of `gpu_bytes`.

    `steps` are the chain steps that run (names of STEP_NAMES); default: every step of a profiled stage.
    """
    options = options or PlanOptions()
    if options.llm_backend not in LLM_BACKENDS:
        raise InvalidInputError(f"llm backend must be one of {', '.join(LLM_BACKENDS)}, not {options.llm_backend!r}")
    uses = {p.name: p.uses for p in profiles}
    chain = [(step, name) for step, name in zip(STEP_NAMES, CHAIN)
             if name in uses and (steps is None or step in steps)]
    vllm = options.llm_backend in ("vllm", "vllm-server") and "llm" in uses
    forced = frozenset({"llm"}) if vllm and not (options.llm_backend == "vllm-server" and options.llm_restart) \
        else frozenset()
    context = options.cuda_context_bytes
    if options.per_process:  # every model in its own process, all loaded together
        forced, context = frozenset(uses), 0
    requested = max(1, options.llm_sequences)
    candidates = [requested >> i for i in range(requested.bit_length())] if "llm" in uses else [requested]
    attempts = []
    for sequences in candidates:  # halve the LLM's batch only when nothing fits at the requested one
        sizes = {p.name: _stage_sizes(p, options, sequences) for p in profiles}
        for name, (weights, act) in sizes.items():
            if options.per_process or (vllm and name == "llm"):
                # a process of its own: its CUDA context, and (vLLM's KV cache) its workspace held while it lives
                sizes[name] = (weights + act + options.cuda_context_bytes, 0)
        attempts.append((sequences, sizes, *_choose(sizes, uses, chain, gpu_bytes, context, forced)))
        if _fits(attempts[-1][1], attempts[-1][3], gpu_bytes, options):
            break
    if not _fits(attempts[-1][1], attempts[-1][3], gpu_bytes, options):
        attempts = attempts[:1]  # fewer sequences did not help: report the requested batch
    sequences, sizes, resident, peak, at = attempts[-1]
    if options.per_process:
        at = "all stages at once"
    order = [p.name for p in profiles if p.name in resident] + [p.name for p in profiles if p.name not in resident]
    stages = []
    for p in profiles:
        dtype, quant = options.precision(p.name)
        weights, act = _stage_sizes(p, options, sequences)
        stages.append(StagePlan(
            name=p.name, description=p.description, params=p.params.total,
            precision=dtype if quant == "none" else f"{quant}/{dtype}",
            weights_bytes=weights, activation_bytes=act, resident=p.name in resident, uses=p.uses,
            load_order=order.index(p.name) + 1,
        ))
    fits = _fits(sizes, peak, gpu_bytes, options)
    utilization = None
    if vllm:  # the share of the card its process may claim: weights, KV cache, workspace and CUDA context
        utilization = round(min(0.95, sizes["llm"][0] / gpu_bytes + 0.005), 2)
    cards = 1
    if options.per_process:
        shares = [utilization if name == "llm" and utilization else share_of(size, gpu_bytes)
                  for name, (size, _) in sizes.items()]
        cards = cards_needed(shares)
    plan = MemoryPlan(
        gpu_bytes=gpu_bytes, options=options, stages=tuple(stages),
        steps=tuple(step for step, _ in chain), peak_bytes=peak, peak_step=at, fits=fits,
        llm_sequences=sequences, vllm_gpu_memory_utilization=utilization, cards=cards,
    )
    if not fits and suggest:
        plan = replace(plan, suggestions=_downgrades(profiles, gpu_bytes, options.unfixed(), plan.steps))
    return plan


def _downgrades(profiles: Sequence[StageProfile], gpu_bytes: int, options: PlanOptions,
                steps: Sequence[str], *, cuts_only: bool = False) -> tuple[str, ...] | PlanOptions | None:
    """The shortest prefix of the usual precision cuts that makes the plan fit: the flags that say so
    (`()` when none does), or with `cuts_only` the options themselves (None when none does). Stages
    whose precision `options` fixes are not cut."""
    names = {p.name for p in profiles}
    fixed_quant = dict(options.fixed_quant)
    cuts: list[tuple[str, dict[str, Any]]] = []
    if options.dtype == "fp32" and not options.fixed_dtype:
        cuts.append(("--dtype fp16", {"dtype": "fp16"}))
    if "llm" in names and "llm" not in fixed_quant and options.llm_quant not in ("int4", "awq", "gptq"):
        cuts.append(("--llm-quant int4", {"llm_quant": "int4"}))
    if "captioner" in names and "captioner" not in fixed_quant:
        if options.captioner_quant == "none":
            cuts.append(("--captioner-quant int8", {"captioner_quant": "int8"}))
        if options.captioner_quant != "int4":
            cuts.append(("--captioner-quant int4", {"captioner_quant": "int4"}))
    if "llm" in names and options.llm_context > 512:
        cuts.append(("--llm-context 512", {"llm_context": 512}))
    starts: list[tuple[list[str], PlanOptions]] = [([], options)]
    if "llm" in names and options.llm_backend == "vllm-server" and not options.llm_restart \
            and not options.per_process:  # last resort: the server stops between its steps (slow: it restarts)
        starts.append(([RESTART_CUT], replace(options, llm_restart=True)))
    for applied, current in starts:
        if applied and make_plan(profiles, gpu_bytes, current, steps=steps, suggest=False).fits:
            return current if cuts_only else tuple(applied)
        for label, change in cuts:
            current = replace(current, **change)
            flag = label.split()[0]
            applied = [done for done in applied if done.split()[0] != flag] + [label]  # int4 replaces int8
            if make_plan(profiles, gpu_bytes, current, steps=steps, suggest=False).fits:
                return current if cuts_only else tuple(applied)
    return None if cuts_only else ()


