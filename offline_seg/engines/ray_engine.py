"""The batch run on Ray Data: many GPUs and machines, the same stage-major chain and the same store.

Each model stage is an actor pool (`map_batches` with a callable class) holding its model for the whole run;
the LLM is one pool of its own that both refinement steps ask (their actors hold the class list, prompts and
the sentence embedder on the CPU); stages without a model (given labels, ground-truth boxes, writing the
outputs) run as tasks. The driver looks up what the output dir's store already has, sends only the images that
miss some stage, and commits every result that streams back through the local runner's own `commit`, so
resume, re-running only the stages after a changed setting, `eval` and `--ablation` behave exactly as with
the local engine.

Every worker builds its pipeline from the driver's `ChainSpec` (the descriptions as the memory plan filled
them in), never from the switches again. On a GPU the plan is the Ray one (`PipelineConfig(engine="ray")`:
every model loaded at once, each in its own process) and each actor asks Ray for its process's share of a
card (`offline_seg.plan.shares`). The computing is `BatchRunner.compute` on the workers; nothing here
duplicates a stage. Images, weights and the output dir must be at the same paths on every node (shared
storage). Ray is an optional extra (`pip install 'offline_seg[ray]'`); this module imports it only when a
run starts.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from offline_seg.engines.ray_resources import (RayOptions, StageResources, gpus_requested, parse_actors,
                                               placement_error, stage_resources, worker_chain)
from offline_seg.engines.ray_workers import FAULT_ENV, _decode, _encode, _LLMActor, _stage_task, _StageActor
from offline_seg.engines.keys import llm_identity
from offline_seg.engines.runner import BatchRunner, RunItem, RunSummary
from offline_seg.io.store import OutputLock, ResultStore
from offline_seg.errors import OfflineSegError
from offline_seg.io.inputs import output_names
from offline_seg.pipeline import Pipeline
from offline_seg.steps import StepFailure

if TYPE_CHECKING:
    from offline_seg.plan import MemoryPlan

__all__ = ["FAULT_ENV", "RayOptions", "RayRunner", "RaySession", "StageResources", "WORKER_ENV", "parse_actors",
           "stage_resources"]

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
        self.resources = stage_resources(pipeline.chain, self.stages, self.options, plan)
        self.chain = worker_chain(pipeline.chain, self.resources)

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
        local.pipeline.preflight(start=False)  # every missing weights file; the LLM's server is the pool's
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
                self._check_gpus()
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

    def _check_gpus(self) -> None:
        """Stop before any work when the actors' GPU shares cannot all be placed on the cluster's cards."""
        if gpus_requested(self.resources):
            error = placement_error(self.resources, int(_import_ray().cluster_resources().get("GPU", 0)))
            if error:
                raise OfflineSegError(error)

    def _llm_pool(self) -> list[Any]:
        """The LLM pool's actors (none when no step asks an LLM)."""
        resources = self.resources.get("llm")
        llm = self.chain.model("llm")
        if resources is None or llm is None:
            return []
        actor = _import_ray().remote(_LLMActor).options(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_restarts=self.options.max_restarts,
            max_task_retries=self.options.max_task_retries)
        return [actor.remote(llm) for _ in range(resources.actors)]

    def _stream(self, todo: Sequence[RunItem]) -> Iterator[tuple[int, RunItem, dict[str, float], tuple[str, str] | None]]:
        """The Ray Data chain over `todo`; rows come back as each finishes its last stage."""
        ray = _import_ray()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.raise_original_map_exception = True  # a worker's own error (a damaged model) reaches the driver
        for name in _RAY_ERROR_LOGGERS:  # they print a worker's traceback; the run says it in one line
            logging.getLogger(name).setLevel(logging.CRITICAL)
        chunk = self.local.chunk_size
        rows = [{"item": _encode(index, item, {}, None)} for index, item in enumerate(todo)]
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / chunk)))
        config, chain = self.local.pipeline.config, self.chain
        out_dir = str(self.local.out_dir.resolve())
        fault = os.environ.get(FAULT_ENV)
        pool = self._llm_pool()
        identity = llm_identity(chain.model("llm")) if pool else ""
        try:
            with warnings.catch_warnings():  # Ray 2.60: remote args (our restart and retry counts) are to be renamed
                warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
                for stage in self.stages:
                    resources = self.resources[stage]
                    asks_llm = chain.step_model(stage) == "llm"
                    if resources.actors:
                        dataset = dataset.map_batches(
                            _StageActor, batch_size=chunk, batch_format="numpy",
                            fn_constructor_kwargs=dict(stage=stage, config=config, chain=chain, out_dir=out_dir,
                                                       fault=fault, llm_pool=pool if asks_llm else (),
                                                       llm_identity=identity if asks_llm else ""),
                            compute=ray.data.ActorPoolStrategy(size=resources.actors),
                            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
                            max_restarts=self.options.max_restarts, max_task_retries=self.options.max_task_retries,
                        )
                    else:
                        dataset = dataset.map_batches(
                            _stage_task, batch_size=chunk, batch_format="numpy",
                            fn_kwargs=dict(stage=stage, config=config, chain=chain, out_dir=out_dir),
                            num_cpus=resources.num_cpus or 1.0, max_retries=self.options.max_task_retries,
                        )
            try:
                for row in dataset.iter_rows():
                    yield _decode(row["item"])
            except Exception as error:  # noqa: BLE001 - Ray wraps a worker's error; ours is one line, as locally
                cause = _toolkit_error(error)
                if cause is None:
                    raise
                raise cause from None
        finally:
            for actor in pool:  # its vLLM server (if any) goes with it: the server's watchdog sees the actor end
                ray.kill(actor)


# Ray Data's loggers that print the traceback of an error a worker raised, before the driver sees it.
_RAY_ERROR_LOGGERS = ("ray.data._internal.execution.streaming_executor_state", "ray.data.exceptions")
_RAY_RETRY_NOTE = re.compile(r"\nFailed to .* attempts \(total backoff .*\Z", re.S)


def _toolkit_error(error: BaseException) -> OfflineSegError | None:
    """The toolkit's own error inside what Ray raised (a damaged model in an actor, a server that cannot
    start): Ray wraps it as RayTaskError(UserCodeException) with the original as a cause."""
    seen: set[int] = set()
    stack: list[object] = [error]
    while stack:
        current = stack.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)  # RayTaskError(X) is also an X: its cause is the plain X
        if isinstance(current, OfflineSegError) and not isinstance(cause, OfflineSegError):
            if current.args and isinstance(current.args[0], str):  # Ray Data appends its retry advice
                current.args = (_RAY_RETRY_NOTE.sub("", current.args[0]), *current.args[1:])
            return current
        stack += [current.__context__, current.__cause__, cause]
    return None
