"""The plan of a `ChainSpec`: profile its models, choose precision and residency for a card, and record
the choices in the model descriptions the loaders read."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from offline_seg.errors import InvalidInputError
from offline_seg.plan.allowances import SPEC_QUANTS, STEP_LABELS, VLLM_MAX_MODEL_LEN, GiB
from offline_seg.plan.architectures import stage_specs
from offline_seg.plan.residency import MemoryPlan, PlanOptions, _downgrades, make_plan
from offline_seg.plan.sizes import StageProfile, parse_size, profile_all


# --- entry points -----------------------------------------------------------------------------------------
class PlanError(InvalidInputError):
    """The configured chain does not fit the card; the message names the cheapest change that would."""


def chain_options(chain: Any, options: PlanOptions | None = None) -> PlanOptions:
    """Plan options for a `ChainSpec`: its LLM backend, and every dtype / quantization its model
    descriptions fix (explicit options, a pre-quantized checkpoint, the device's default dtype)."""
    options = options or PlanOptions()
    fixed_dtype, fixed_quant = [], []
    for model in chain.models:
        if not model.on_gpu_plan:
            continue
        if "dtype" in model.explicit or not model.device.startswith("cuda"):
            fixed_dtype.append((model.stage, model.resolved_dtype))
        method = model.checkpoint_quantization
        if "quantization" in model.explicit:
            fixed_quant.append((model.stage, SPEC_QUANTS[model.quantization]))
        elif method in ("awq", "gptq"):
            fixed_quant.append((model.stage, method))
    llm = chain.model("llm")
    backend = {"vllm": "vllm", "vllm_server": "vllm-server"}.get(llm.backend if llm is not None else "", "transformers")
    return replace(options, fixed_dtype=tuple(fixed_dtype), fixed_quant=tuple(fixed_quant), llm_backend=backend)


def plan_chain(chain: Any, gpu_bytes: int | str, options: PlanOptions | None = None) -> MemoryPlan:
    """The plan of a `ChainSpec` as described (no precision chosen for it: see `fit_chain`)."""
    gpu = parse_size(gpu_bytes) if isinstance(gpu_bytes, str) else int(gpu_bytes)
    steps = [STEP_LABELS[step] for step, _ in chain.model_steps]
    return make_plan(profile_all(stage_specs(chain)), gpu, chain_options(chain, options), steps=steps)


def fit_chain(chain: Any, gpu_bytes: int | str, options: PlanOptions | None = None) -> tuple[Any, MemoryPlan]:
    """Choose each model's precision and residency for a card of `gpu_bytes`, and return the `ChainSpec`
    that records them with the plan. The highest precision that fits wins (LLM 4-bit unless told
    otherwise; BLIP-2 fp16, then int8, then int4; a shorter LLM context last); explicit choices stay.
    Raises PlanError naming the cheapest change when nothing fits."""
    gpu = parse_size(gpu_bytes) if isinstance(gpu_bytes, str) else int(gpu_bytes)
    on_cpu = sorted({m.device for m in chain.models if m.on_gpu_plan and not m.device.startswith("cuda")})
    if on_cpu:
        raise InvalidInputError(f"--gpu-mem plans a CUDA card, but the models run on {', '.join(on_cpu)}: "
                                "pass --device cuda, or leave --gpu-mem out (on a CPU every model stays loaded)")
    steps = [STEP_LABELS[step] for step, _ in chain.model_steps]
    profiles = profile_all(stage_specs(chain))
    options = chain_options(chain, options)
    plan = make_plan(profiles, gpu, options, steps=steps, suggest=False)
    if not plan.fits:
        cut = _downgrades(profiles, gpu, options, steps, cuts_only=True)  # on a small card, with the LLM
        if cut is None:  # server stopped between its steps as the last resort
            raise PlanError(_no_fit_message(chain, profiles, gpu, options, steps, plan))
        options = cut
        plan = make_plan(profiles, gpu, options, steps=steps, suggest=False)
    return apply_plan(chain, plan), plan


def _no_fit_message(chain: Any, profiles: Sequence[StageProfile], gpu: int, options: PlanOptions,
                    steps: Sequence[str], plan: MemoryPlan) -> str:
    where = " with every model loaded at once in its own process (the Ray engine)" if options.per_process else ""
    head = (f"the chain does not fit a {gpu / GiB:.0f} GiB card{where}: peak {plan.peak_bytes / GiB:.2f} GiB at "
            f"{plan.peak_step}, before any image was processed.")
    fixes = _downgrades(profiles, gpu, options.unfixed(), steps)
    if fixes:
        return f"{head} Cheapest change that fits: {', '.join(fixes)} (your explicit precision options prevent it)."
    if any(p.name == "llm" for p in profiles):
        rest = [p for p in profiles if p.name != "llm"]
        others = [s for s in steps if not s.startswith("llm")]
        if not rest or make_plan(rest, gpu, options.unfixed(), steps=others).fits or _downgrades(
                rest, gpu, options.unfixed(), others):
            return (f"{head} Cheapest change that fits: serve the LLM elsewhere (--llm openai:http://HOST:8000/v1, "
                    f"see `offline-seg llm serve`) and cut precision as `offline-seg plan` suggests.")
    return f"{head} No precision cut makes it fit: use a larger card, or --segmenter onnx and fewer stages."


def apply_plan(chain: Any, plan: MemoryPlan) -> Any:
    """`chain` with the plan's dtype, quantization and residency recorded in each model's description
    (explicit user choices are kept), and vLLM's memory share."""
    models = []
    for model in chain.models:
        if not model.on_gpu_plan or model.stage not in {s.name for s in plan.stages}:
            models.append(model)
            continue
        stage = plan.stage(model.stage)
        dtype, quant = plan.options.precision(model.stage)
        changes: dict[str, Any] = {"dtype": dtype, "quantization": None if quant == "none" else quant}
        if model.is_vllm:
            method = model.checkpoint_quantization
            changes["quantization"] = method if method in ("awq", "gptq") else (
                "bitsandbytes" if quant == "int4" else "fp8" if quant == "int8" else None)
            changes["gpu_memory_utilization"] = plan.vllm_gpu_memory_utilization
            changes["max_model_len"] = VLLM_MAX_MODEL_LEN
            if "gpu_memory_utilization" not in model.explicit:
                changes["planned_gpu_bytes"] = plan.gpu_bytes
        elif quant in ("awq", "gptq"):
            changes["quantization"] = None  # the checkpoint carries it; transformers loads it as it is
        model = model.with_choices(**changes)
        models.append(replace(model, resident=stage.resident))
    return chain.replace_models(models)


def plan_for(config: Any, gpu_bytes: int | str, options: PlanOptions | None = None) -> MemoryPlan:
    """The plan for a `PipelineConfig` as described: only the models its switches load."""
    from offline_seg.chain import chain_spec

    return plan_chain(chain_spec(config), gpu_bytes, options)

