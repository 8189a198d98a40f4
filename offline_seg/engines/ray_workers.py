"""What runs on Ray's workers: one image's state as a row, a step over a batch of rows, the actors of the model
steps and of the LLM pool, and the tasks of the steps without a model. Each builds its pipeline from the
driver's `ChainSpec`, never from the switches again."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from offline_seg.engines.runner import BatchRunner, RunItem
from offline_seg.llm.base import ChatMessage, Constraint, LLMStats
from offline_seg.pipeline import Pipeline
from offline_seg.config import PipelineConfig
from offline_seg.specs import ModelSpec
from offline_seg.chain import ChainSpec
from offline_seg.steps import StepFailure

logger = logging.getLogger(__name__)

# Fault injection for the fault-tolerance tests: "STAGE:MARKER_FILE" makes the first actor of STAGE that
# finds no MARKER_FILE create it and exit hard (os._exit) in the middle of a batch, once per marker.
FAULT_ENV = "OFFLINE_SEG_RAY_FAULT"


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


class _LLMActor:
    """One actor of the run's LLM pool: the LLM as its description says (a vLLM server it starts, on the GPU
    Ray gives it, and stops when the actor ends), asked by both refinement steps."""

    def __init__(self, spec: ModelSpec):
        from offline_seg.llm.registry import load_llm

        self.llm = load_llm(spec)
        start = getattr(self.llm, "start", None)
        if callable(start):
            start()

    def complete(self, conversations: list[list[ChatMessage]], **options: Any) -> list[str]:
        return self.llm.complete(conversations, **options)


class _PooledLLM:
    """The `LLM` of a refinement actor: each call goes to one actor of the LLM pool, in turn."""

    def __init__(self, actors: Sequence[Any], identity: str):
        self.actors = list(actors)
        self.identity = identity  # the LLM's own (its files and options), as the driver keys results by
        self.stats = LLMStats()
        self._turn = 0

    def complete(self, conversations: Sequence[Sequence[ChatMessage]], *, choices: Sequence[str] | None = None,
                 constraint: Constraint | None = None, max_new_tokens: int = 200) -> list[str]:
        import ray

        actor = self.actors[self._turn % len(self.actors)]
        self._turn += 1
        replies = ray.get(actor.complete.remote([list(c) for c in conversations], choices=choices,
                                                constraint=constraint, max_new_tokens=max_new_tokens))
        self.stats.add(calls=1, requests=len(replies))
        return replies


class _StageActor:
    """An actor of one step: builds its pipeline once from the driver's chain (a model loads on the first
    batch); a refinement step's asks the LLM pool and embeds on the CPU."""

    def __init__(self, stage: str, config: PipelineConfig, chain: ChainSpec, out_dir: str, fault: str | None = None,
                 llm_pool: Sequence[Any] = (), llm_identity: str = ""):
        self.stage = stage
        self.fault = fault
        pipeline = Pipeline(config, chain=chain)
        if llm_pool:
            llm = _PooledLLM(llm_pool, llm_identity)
            pipeline = Pipeline(config, chain=chain, llm=llm)
            if pipeline.uses_embedder:
                from offline_seg.models.embedder import load_embedder

                embedder = load_embedder(replace(pipeline.model_spec("embedder"), device="cpu"))
                pipeline = Pipeline(config, chain=chain, llm=llm, embedder=embedder)
        self.runner = BatchRunner(pipeline, Path(out_dir), progress=False)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return _run_batch(self.runner, self.stage, batch, self.fault)


def _stage_task(batch: dict[str, Any], stage: str, config: PipelineConfig, chain: ChainSpec,
                out_dir: str) -> dict[str, Any]:
    """A stage without a model as a stateless task: the pipeline is built from the driver's chain (no plan
    fitting, no model loaded) and the runner computes no store keys (the driver has them)."""
    return _run_batch(BatchRunner(Pipeline(config, chain=chain), Path(out_dir), progress=False), stage, batch)
