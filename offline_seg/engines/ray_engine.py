"""The batch run on Ray Data: many GPUs and machines, the same stage-major chain and the same store.

Each model stage is an actor pool (`map_batches` with a callable class) holding its model for the whole run;
stages without a model (given labels, ground-truth boxes, writing the outputs) run as tasks. The driver
looks up what the output dir's store already has, sends only the images that miss some stage, and commits
every result that streams back through the local runner's own `commit`, so resume, re-running only the
stages after a changed setting, `eval` and `--ablation` behave exactly as with the local engine.

The computing is `BatchRunner.compute` on the workers; nothing here duplicates a stage. Images, weights
and the output dir must be at the same paths on every node (shared storage). Ray is an optional extra
(`pip install 'offline_seg[ray]'`); this module imports it only when a run starts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from offline_seg.engines.runner import BatchRunner, RunItem, RunSummary
from offline_seg.steps import StepFailure
from offline_seg.io.inputs import output_names
from offline_seg.engines.store import OutputLock, ResultStore
from offline_seg.errors import InvalidInputError, OfflineSegError
from offline_seg.pipeline import Pipeline, PipelineConfig
from offline_seg.specs import STEP_MODELS, chain_spec

if TYPE_CHECKING:
    from offline_seg.plan import MemoryPlan

logger = logging.getLogger(__name__)

# Environment of every Ray worker: no hub, no telemetry (Ray's own, Hugging Face's, vLLM's).
WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
# Fault injection for the fault-tolerance tests: "STAGE:MARKER_FILE" makes the first actor of STAGE that
# finds no MARKER_FILE create it and exit hard (os._exit) in the middle of a batch, once per marker.
FAULT_ENV = "OFFLINE_SEG_RAY_FAULT"
# Fraction of a GPU is rounded up to this step, so that Ray's fractional accounting stays exact.
GPU_STEP = 0.05


class RayUnavailableError(OfflineSegError):
    """Ray is not installed (the `[ray]` extra)."""


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise RayUnavailableError("the Ray engine needs Ray Data: pip install 'offline_seg[ray]' "
                                  "(see README, Scaling out)") from error
    return ray


# --- resources --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageResources:
    """How one stage runs on Ray: an actor pool of `actors` (0: stateless tasks), each with these shares."""

    stage: str
    actors: int
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run goes."""

    address: str | None = None  # None: start Ray on this machine; "auto" or HOST:PORT: join a cluster
    actors: Mapping[str, int] = field(default_factory=dict)  # per stage (or "*"); default 1
    num_cpus: int | None = None  # logical CPUs of a Ray started here; default: what the actors need + 2
    dashboard: bool = False
    max_restarts: int = 3  # an actor that dies is restarted this often ...
    max_task_retries: int = 3  # ... and its batch retried


def parse_actors(text: str | None) -> dict[str, int]:
    """'2' (every model stage) or 'segment=2,detect=2' -> {stage: actors}."""
    if not text:
        return {}
    result: dict[str, int] = {}
    for part in str(text).split(","):
        stage, _, count = part.strip().rpartition("=")
        stage = stage.strip() or "*"
        if stage != "*" and stage not in STEP_MODELS:
            raise InvalidInputError(f"unknown stage {stage!r} in --ray-actors; stages: {', '.join(STEP_MODELS)}")
        try:
            result[stage] = int(count)
        except ValueError:
            raise InvalidInputError(f"cannot read an actor count from {part!r}; e.g. 2 or segment=2,detect=2") from None
        if result[stage] < 1:
            raise InvalidInputError(f"--ray-actors needs at least 1 actor per stage, not {part!r}")
    return result


def stage_resources(config: PipelineConfig, stages: Sequence[str], options: RayOptions,
                    plan: MemoryPlan | None = None) -> dict[str, StageResources]:
    """Per stage: actor pool size and GPU share. On a GPU the share is the stage's step in the memory plan
    (weights + activations + a CUDA context, of the planned card), vLLM's its `gpu_memory_utilization`;
    ONNX segmenters and served LLMs stay on the CPU."""
    cuda = config.device.startswith("cuda")
    if cuda and plan is None:
        raise InvalidInputError("the Ray engine on a GPU needs the card size for each stage's GPU share: "
                                "pass --gpu-mem (e.g. --gpu-mem 24GiB)")
    default = options.actors.get("*", 1)
    chain = chain_spec(config)  # which model each step runs: the one decision the local engine follows too
    llm = chain.model("llm")
    result = {}
    for stage in stages:
        model = chain.step_model(stage)
        if model is None:
            result[stage] = StageResources(stage, 0)
            continue
        gpus = 0.0
        if cuda and plan is not None and model in {s.name for s in plan.stages}:
            llm_vllm = model == "llm" and llm is not None and llm.backend == "vllm"
            if llm_vllm and plan.vllm_gpu_memory_utilization:
                share = plan.vllm_gpu_memory_utilization
            else:
                share = (plan.stage(model).step_bytes + plan.options.cuda_context_bytes) / plan.gpu_bytes
            gpus = min(1.0, math.ceil(share / GPU_STEP - 1e-9) * GPU_STEP)
        result[stage] = StageResources(stage, options.actors.get(stage, default), 1.0, round(gpus, 2))
    return result


def _worker_config(config: PipelineConfig, resources: StageResources) -> PipelineConfig:
    """The config an actor builds its pipeline from: a vLLM LLM claims only the GPU share Ray gave it."""
    llm = config.llm or ""
    if resources.num_gpus and llm.startswith("vllm:") and "gpu_memory_utilization" not in llm:
        llm += ("&" if "?" in llm else "?") + f"gpu_memory_utilization={resources.num_gpus}"
        return replace(config, llm=llm)
    return config


# --- rows: one image's state as it moves through the stages ------------------------------------------
def _encode(index: int, item: RunItem, computed: Mapping[str, float], failure: tuple[str, str] | None) -> str:
    return json.dumps({"index": index, "path": os.fsencode(str(item.path)).hex(), "name": item.name,
                       "hash": item.image_hash, "owned": sorted(item.owned), "values": item.values,
                       "computed": dict(computed), "failure": failure})


def _decode(text: str) -> tuple[int, RunItem, dict[str, float], tuple[str, str] | None]:
    state = json.loads(text)
    item = RunItem(Path(os.fsdecode(bytes.fromhex(state["path"]))), state["name"], state["hash"],
                   values=state["values"], owned=frozenset(state["owned"]))
    failure = tuple(state["failure"]) if state["failure"] else None
    return state["index"], item, state["computed"], failure  # type: ignore[return-value]


def _run_batch(runner: BatchRunner, stage: str, batch: dict[str, Any], fault: str | None = None) -> dict[str, Any]:
    """One stage over a batch of rows on a worker: the rows that still miss the stage are computed."""
    import numpy as np

    rows = [_decode(text) for text in batch["item"]]
    todo = [(index, item) for index, item, _, failure in rows if failure is None and stage not in item.values]
    if fault and todo:
        fault_stage, _, marker = fault.partition(":")
        if fault_stage == stage and not os.path.exists(marker):
            Path(marker).touch()
            logger.warning("fault injection: the %s actor exits now", stage)
            os._exit(1)
    results, seconds = runner.compute(stage, [item for _, item in todo])
    outcome = {index: value for (index, _), value in zip(todo, results)}
    out = []
    for index, item, computed, failure in rows:
        if index in outcome:
            value = outcome[index]
            if isinstance(value, StepFailure):
                failure = (stage, value.reason)
            else:
                item.values[stage] = value
                computed[stage] = seconds
        item.image = None
        out.append(_encode(index, item, computed, failure))
    return {"item": np.array(out, dtype=object)}


class _StageActor:
    """An actor of one model stage: builds its pipeline once (the model loads on the first batch)."""

    def __init__(self, stage: str, config: PipelineConfig, out_dir: str, fault: str | None = None):
        self.stage = stage
        self.fault = fault
        self.runner = BatchRunner(Pipeline(config), Path(out_dir), progress=False)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return _run_batch(self.runner, self.stage, batch, self.fault)


def _stage_task(batch: dict[str, Any], stage: str, config: PipelineConfig, out_dir: str) -> dict[str, Any]:
    """A stage without a model as a stateless task (building a pipeline loads nothing)."""
    return _run_batch(BatchRunner(Pipeline(config), Path(out_dir), progress=False), stage, batch)


# --- the engine -------------------------------------------------------------------------------------------
class RaySession:
    """Ray connected for the runs of one command: started here (loopback, no dashboard, no usage stats) or
    joined at `address`; shut down at the end only if started here."""

    def __init__(self, options: RayOptions, num_cpus: int):
        self.options = options
        self.num_cpus = num_cpus
        self._started = False

    def __enter__(self) -> RaySession:
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        ray = _import_ray()
        if not ray.is_initialized():
            verbose = logger.isEnabledFor(logging.INFO)  # -v: the workers' logs and Ray Data's progress too
            if not verbose:
                logging.getLogger("ray.data").setLevel(logging.WARNING)
            kwargs: dict[str, Any] = dict(include_dashboard=self.options.dashboard, logging_level=logging.WARNING,
                                          runtime_env={"env_vars": dict(WORKER_ENV)}, log_to_driver=verbose)
            if self.options.address:
                ray.init(address=self.options.address, **kwargs)
            else:
                ray.init(num_cpus=self.num_cpus, _node_ip_address="127.0.0.1", **kwargs)
            self._started = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            _import_ray().shutdown()


class RayRunner:
    """`BatchRunner`'s run on Ray Data: same stages, same store, same outputs."""

    def __init__(self, pipeline: Pipeline, out_dir: Path, chunk_size: int = 16, progress: bool = True,
                 options: RayOptions | None = None, plan: MemoryPlan | None = None, retry_failed: bool = False):
        self.local = BatchRunner(pipeline, out_dir, chunk_size=chunk_size, progress=progress,
                                 retry_failed=retry_failed)
        self.options = options or RayOptions()
        self.stages = self.local.active_stages()
        self.resources = stage_resources(pipeline.config, self.stages, self.options, plan)

    @property
    def cpus_needed(self) -> int:
        """Logical CPUs for the actor pools plus room for the read and write tasks (else Ray waits forever)."""
        return int(math.ceil(sum(r.actors * r.num_cpus for r in self.resources.values()))) + 2

    def run(self, images: Sequence[Path], root: Path | None = None) -> RunSummary:
        """Like `BatchRunner.run`; Ray is joined (or started) only when some image misses some stage."""
        from tqdm import tqdm

        local = self.local
        root = Path(root) if root else None
        summary = RunSummary(images=len(images))
        local.pipeline.preflight()  # every missing weights file, before the first image
        with OutputLock(local.out_dir), ResultStore.in_dir(local.out_dir) as store:
            names = output_names(images, root)
            local.open_store(store, names)
            items = local.open_items(store, images, names, summary)
            todo = []
            for item in items:
                for stage in self.stages:
                    cached = local.lookup(stage, item, store)
                    if cached is not None:
                        item.values[stage] = cached
                        summary.reused[stage] += 1
                if all(stage in item.values for stage in self.stages):
                    local.finish([item], store, summary)
                else:
                    todo.append(item)
            if not todo:
                return summary
            logger.info("%d of %d images go to Ray", len(todo), len(items))
            pending = dict(enumerate(todo))
            with RaySession(self.options, self.options.num_cpus or self.cpus_needed), \
                    tqdm(total=len(todo), desc="ray", unit="img", disable=not local.progress) as bar:
                for index, state, computed, failure in self._stream(todo):
                    item = pending.pop(index, None)
                    if item is None:  # a batch Ray ran twice: its first result is already committed
                        logger.warning("Ray returned %s twice; kept the first result", state.name)
                        continue
                    for stage in self.stages:  # in chain order, as the local engine commits them
                        if stage in computed:
                            local.commit(stage, item, state.values[stage], computed[stage], store, summary)
                    if failure is not None:
                        local.commit(failure[0], item, StepFailure(failure[1]), 0.0, store, summary)
                    local.finish([item], store, summary)
                    bar.update()
            if pending:
                names = [item.name for item in pending.values()]
                raise OfflineSegError(f"Ray returned no result for {len(names)} image(s), e.g. {names[:3]}; "
                                      "run again to compute them")
        return summary

    def _stream(self, todo: Sequence[RunItem]) -> Iterator[tuple[int, RunItem, dict[str, float], tuple[str, str] | None]]:
        """The Ray Data chain over `todo`; rows come back as each finishes its last stage."""
        ray = _import_ray()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        chunk = self.local.chunk_size
        rows = [{"item": _encode(index, item, {}, None)} for index, item in enumerate(todo)]
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / chunk)))
        config = self.local.pipeline.config
        out_dir = str(self.local.out_dir.resolve())
        fault = os.environ.get(FAULT_ENV)
        with warnings.catch_warnings():  # Ray 2.60: remote args (our restart and retry counts) are to be renamed
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            for stage in self.stages:
                resources = self.resources[stage]
                if resources.actors:
                    dataset = dataset.map_batches(
                        _StageActor, batch_size=chunk, batch_format="numpy",
                        fn_constructor_kwargs=dict(stage=stage, config=_worker_config(config, resources),
                                                   out_dir=out_dir, fault=fault),
                        compute=ray.data.ActorPoolStrategy(size=resources.actors),
                        num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
                        max_restarts=self.options.max_restarts, max_task_retries=self.options.max_task_retries,
                    )
                else:
                    dataset = dataset.map_batches(
                        _stage_task, batch_size=chunk, batch_format="numpy",
                        fn_kwargs=dict(stage=stage, config=config, out_dir=out_dir),
                        num_cpus=resources.num_cpus or 1.0, max_retries=self.options.max_task_retries,
                    )
        for row in dataset.iter_rows():
            yield _decode(row["item"])
