"""What a Ray run asks for: actor pools per step and the one LLM pool, their CPU and GPU shares (from the Ray
memory plan: every model loaded at once, each in its own process), and the descriptions the workers load."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Mapping, Sequence

from offline_seg.errors import InvalidInputError
from offline_seg.plan.shares import cards_needed
from offline_seg.specs import STEP_MODELS, ModelSpec
from offline_seg.chain import ChainSpec

if TYPE_CHECKING:
    from offline_seg.plan import MemoryPlan

# The refinement steps' actors mostly wait for the LLM pool; they still run the sentence embedder.
REFINER_CPUS = 0.5


@dataclass(frozen=True)
class StageResources:
    """How one step (or the LLM pool, "llm") runs on Ray: an actor pool of `actors` (0: stateless tasks), each
    with these shares."""

    stage: str
    actors: int
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run goes."""

    address: str | None = None  # None: start Ray on this machine; "auto" or HOST:PORT: join a cluster
    actors: Mapping[str, int] = field(default_factory=dict)  # per stage, "llm" (the LLM pool) or "*"; default 1
    num_cpus: int | None = None  # logical CPUs of a Ray started here; default: what the actors need + 2
    dashboard: bool = False
    max_restarts: int = 3  # an actor that dies is restarted this often ...
    max_task_retries: int = 3  # ... and its batch retried


POOLS = (*STEP_MODELS, "llm")  # what --ray-actors sizes: a step's pool, or the LLM's


def parse_actors(text: str | None) -> dict[str, int]:
    """'2' (every pool) or 'segment=2,llm=2' -> {stage: actors}."""
    if not text:
        return {}
    result: dict[str, int] = {}
    for part in str(text).split(","):
        stage, _, count = part.strip().rpartition("=")
        stage = stage.strip() or "*"
        if stage != "*" and stage not in POOLS:
            raise InvalidInputError(f"unknown stage {stage!r} in --ray-actors; stages: {', '.join(POOLS)}")
        try:
            result[stage] = int(count)
        except ValueError:
            raise InvalidInputError(f"cannot read an actor count from {part!r}; e.g. 2 or segment=2,detect=2") from None
        if result[stage] < 1:
            raise InvalidInputError(f"--ray-actors needs at least 1 actor per stage, not {part!r}")
    return result


def _on_gpu(model: ModelSpec | None) -> bool:
    return model is not None and model.on_gpu_plan and model.device.startswith("cuda")


def stage_resources(chain: ChainSpec, stages: Sequence[str], options: RayOptions,
                    plan: MemoryPlan | None = None) -> dict[str, StageResources]:
    """Per step: actor pool size and GPU share; plus the one LLM pool ("llm") that both refinement steps ask,
    whose actors run on the CPU themselves. On a GPU each model's share is its process's in the Ray plan
    (`PipelineConfig(engine="ray")`: every model loaded at once; weights + activations + a CUDA context of
    the planned card, vLLM's its gpu_memory_utilization); ONNX segmenters and served LLMs stay on the CPU."""
    cuda = any(_on_gpu(m) for m in chain.models)
    if cuda and plan is None:
        raise InvalidInputError("the Ray engine on a GPU needs the card size for each stage's GPU share: "
                                "pass --gpu-mem (e.g. --gpu-mem 24GiB)")
    if cuda and not plan.options.per_process:
        raise InvalidInputError("the Ray engine keeps every model loaded at once: plan it with "
                                "PipelineConfig(engine='ray') (the CLI does so for --engine ray)")
    shares = plan.gpu_shares() if cuda else {}
    default = options.actors.get("*", 1)
    result = {}
    for stage in stages:
        model = chain.step_model(stage)
        actors = options.actors.get(stage, default)
        if model is None:
            result[stage] = StageResources(stage, 0)
        elif model == "llm":  # asks the LLM pool
            result[stage] = StageResources(stage, actors, REFINER_CPUS)
        else:
            gpus = shares.get(model, 0.0) if _on_gpu(chain.model(model)) else 0.0
            result[stage] = StageResources(stage, actors, 1.0, gpus)
    if any(chain.step_model(stage) == "llm" for stage in stages):
        gpus = shares.get("llm", 0.0) if _on_gpu(chain.model("llm")) else 0.0
        result["llm"] = StageResources("llm", options.actors.get("llm", default), 1.0, gpus)
    return result


def gpus_requested(resources: Mapping[str, StageResources]) -> list[float]:
    """Every actor's GPU share, one entry per actor."""
    return [r.num_gpus for r in resources.values() for _ in range(r.actors) if r.num_gpus]


def worker_chain(chain: ChainSpec, resources: Mapping[str, StageResources]) -> ChainSpec:
    """The descriptions the workers load: a vLLM LLM claims the GPU share Ray gives its actor (unless the user
    set one), and a server the LLM actor starts takes any free port (several may share a node)."""
    llm = chain.model("llm")
    pool = resources.get("llm")
    if llm is None or pool is None:
        return chain
    if llm.is_vllm and pool.num_gpus:  # a share of the card Ray gives the actor, not of --gpu-mem
        llm = replace(llm.with_choices(gpu_memory_utilization=pool.num_gpus), planned_gpu_bytes=None)
    if llm.backend == "vllm_server":
        llm = llm.with_options(port="0")
    return chain.replace_models([llm])


def placement_error(resources: Mapping[str, StageResources], gpus: int) -> str | None:
    """Why the actors' GPU shares cannot all be placed on a cluster with `gpus` cards (Ray would wait for them
    forever), or None when they can."""
    requested = gpus_requested(resources)
    need = cards_needed(requested)
    if need <= gpus:
        return None
    return (f"the Ray engine keeps every model loaded at once: its actors ask for {sum(requested):.2f} GPUs "
            f"({need} card(s) of --gpu-mem when packed) and this Ray cluster has {gpus}; use --engine local "
            "(on one card it loads and frees models per chunk), fewer --ray-actors, or more GPUs")
