"""Batch runs that lose nothing: stage-major over chunks of images, every step result stored as it is made.

Per chunk: tag all images, caption them, one batched pre-refinement, detect, one batched post-refinement,
segment, compose and write. Each model is loaded once per run (the pipeline builds it lazily and keeps
it). Every result goes into the output dir's SQLite store (`offline_seg.io.store`) the moment it exists,
keyed as `offline_seg.engines.keys` declares, so a re-run after a crash, `kill -9` or a changed setting
recomputes only what is missing. The steps themselves are `offline_seg.steps`: the same code `segment` runs.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from offline_seg.engines.faults import fault_point
from offline_seg.engines.keys import StepKeys
from offline_seg.io.store import OutputLock, ResultStore, WriteRecord
from offline_seg.errors import InvalidInputError
from offline_seg.io.inputs import output_names, sha256_file
from offline_seg.io.outputs import holds, save_result
from offline_seg.pipeline import Pipeline
from offline_seg.specs import STEPS
from offline_seg.steps import Item, StepFailure, Steps

logger = logging.getLogger(__name__)

STAGES = STEPS  # the chain's steps, in order (offline_seg.specs)


@dataclass
class RunSummary:
    """What a run did: per stage how many results were computed or reused, and the time spent."""

    images: int = 0  # input files
    done: int = 0  # input files whose outputs exist
    failed: dict[str, str] = field(default_factory=dict)  # output name -> reason
    skipped: int = 0  # failures of an earlier run with the same settings, not retried (see `retry_failed`)
    computed: Counter = field(default_factory=Counter)
    reused: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)
    written: dict[str, list[str]] = field(default_factory=dict)  # output name -> labels of its instances

    def table(self) -> str:
        lines = [f"{'stage':12} {'computed':>9} {'reused':>7} {'seconds':>9}"]
        for stage in STAGES:
            if self.computed[stage] or self.reused[stage]:
                lines.append(f"{stage:12} {self.computed[stage]:9d} {self.reused[stage]:7d} {self.seconds[stage]:9.1f}")
        return "\n".join(lines)


@dataclass
class RunItem(Item):
    """An input file in a run: its previous outputs (the only existing files the run may write over)."""

    owned: frozenset[str] = frozenset()


class BatchRunner:
    """Runs a `Pipeline` over many images, chunk by chunk and stage by stage, resumable."""

    def __init__(self, pipeline: Pipeline, out_dir: Path, chunk_size: int = 16, progress: bool = True,
                 swapped: Sequence[str] | None = None, retry_failed: bool = False):
        """The steps that run and the models released after each of their steps in every chunk come from
        the pipeline's `ChainSpec` (a memory plan marks models not resident); `swapped` overrides the latter.
        `retry_failed`: try again the files an earlier run recorded as failed with these settings (by
        default they are skipped and reported again; a changed file or setting is always tried again)."""
        self.pipeline = pipeline
        self.retry_failed = retry_failed
        self.out_dir = Path(out_dir)
        self.chunk_size = max(1, int(chunk_size))
        self.progress = progress
        self.swapped = set(pipeline.chain.swapped if swapped is None else swapped)
        self.steps = Steps(pipeline)

    @cached_property
    def keys(self) -> StepKeys:
        """Each step's store key, made on first use (Ray's workers compute and never look up: no hashing there)."""
        return StepKeys(self.pipeline)

    def run(self, images: Sequence[Path], root: Path | None = None) -> RunSummary:
        from tqdm import tqdm

        summary = RunSummary(images=len(images))
        self.pipeline.preflight()  # every missing weights file, before the first image
        stages = self.active_stages()
        names = output_names(images, Path(root) if root else None)
        with OutputLock(self.out_dir), ResultStore.in_dir(self.out_dir) as store:
            self.open_store(store, names)
            bars = {stage: tqdm(total=len(images), desc=f"{stage:11}", unit="img", position=i, leave=True,
                                disable=not self.progress) for i, stage in enumerate(stages)}
            try:
                for start in range(0, len(images), self.chunk_size):
                    chunk = self.open_items(store, images[start : start + self.chunk_size],
                                            names[start : start + self.chunk_size], summary)
                    for stage in stages:
                        self._run_stage(stage, chunk, store, summary)
                        bars[stage].update(len(chunk))
                        self._release_after(stage)
                    self.finish(chunk, store, summary)
            finally:
                for bar in bars.values():
                    bar.close()
        return summary

    # --- set-up ---------------------------------------------------------------------------------
    def open_store(self, store: ResultStore, names: Sequence[str]) -> None:
        """Claim the output dir for this class list; earlier inputs that are no longer there stop being done."""
        classes = self.pipeline.config.classes
        store.claim_class_list(classes.names, classes.ids)
        current = set(names)
        for record in store.images("done"):
            if record.name not in current and not os.path.exists(record.source):
                store.set_status(record.name, "gone", f"its input {record.source} is no longer there")

    def open_items(self, store: ResultStore, paths: Sequence[Path], names: Sequence[str],
                   summary: RunSummary) -> list[RunItem]:
        items = []
        for path, name in zip(paths, names):
            try:
                if not path.is_file():  # a folder, FIFO (reading it would block) or symlink loop named *.jpg
                    raise InvalidInputError("not a regular file" + (" (a symlink loop or a dangling link)"
                                                                    if path.is_symlink() else ""))
                image_hash = sha256_file(path)
            except (OSError, InvalidInputError) as error:
                store.add_image(name, path, None)
                reason = f"cannot read image {path}: {getattr(error, 'strerror', None) or error}"
                store.set_status(name, "failed", reason)
                summary.failed[name] = reason
                continue
            record = store.add_image(name, path, image_hash)
            item = RunItem(path, name, image_hash)
            if record.status == "failed" and not self.retry_failed and self._same_failure(record, item):
                summary.failed[name] = f"{record.reason} (an earlier run; --retry-failed to try again)"
                summary.skipped += 1
                continue
            items.append(item)
        return items

    def _same_failure(self, record: Any, item: RunItem) -> bool:
        """Whether a recorded failure was made by these settings (bytes are unchanged when it is still
        recorded): only then is it skipped; a failure under other settings is tried again."""
        if record.failed_step is None:  # recorded before failures kept their step: as it was
            return True
        return (record.failed_step in self.keys.steps
                and self.keys.key(record.failed_step, item) == record.failed_key)

    def _release_after(self, stage: str) -> None:
        model = self.pipeline.chain.step_model(stage)
        if model in self.swapped:  # the plan loads it once per use (the LLM: for pre- and for post-refinement)
            self.pipeline.release(model)

    def active_stages(self) -> list[str]:
        """The steps the chain runs, in order (decided once, by `offline_seg.chain.chain_spec`)."""
        return list(self.pipeline.chain.steps)

    # --- one stage over a chunk -----------------------------------------------------------------
    def _run_stage(self, stage: str, chunk: list[RunItem], store: ResultStore, summary: RunSummary) -> None:
        todo = []
        for item in chunk:
            if item.failed:
                continue
            cached = self.lookup(stage, item, store)
            if cached is None:
                todo.append(item)
            else:
                item.values[stage] = cached
                summary.reused[stage] += 1
        # Identical files in the chunk: compute once (the first of them), share the result. Writing is
        # per input file, never shared.
        first: dict[str, RunItem] = {}
        copies: list[RunItem] = []
        for item in todo:
            share = self.keys.key(stage, item) + (item.image_hash or "") if stage != "write" else item.name
            if share in first:
                copies.append(item)
            else:
                first[share] = item
        todo = list(first.values())
        results, seconds = self.compute(stage, todo)
        for item, value in zip(todo, results):
            self.commit(stage, item, value, seconds, store, summary)
        for item in copies:
            share = self.keys.key(stage, item) + (item.image_hash or "")
            original = first[share]
            if original.failed:
                self._fail(item, store, summary, original.failed, stage)
            else:
                item.values[stage] = original.values[stage]
                summary.reused[stage] += 1

    # The three parts of a stage, also called by the Ray engine (`offline_seg.engines.ray_engine`): the
    # driver looks up and commits, the workers compute (no store there).
    def lookup(self, stage: str, item: RunItem, store: ResultStore) -> Any | None:
        """The stored result of `stage` for `item`; None when the stage must run for it. For `write`: the
        files of this input under these settings, only while every one of them is on disk as written."""
        key = self.keys.key(stage, item)
        if stage != "write":
            return store.get(item.image_hash, stage, key)
        record = store.get_write(item.name)
        if record is None:
            return None
        item.owned = frozenset(record.paths())
        if record.image_hash != item.image_hash or record.stage_key != key:
            return None  # another picture or other settings: written again
        if not all(holds(self.out_dir, entry) for entry in record.files.values()):
            return None  # deleted, truncated or edited since: written again from the stored steps
        return {"files": record.files}

    def compute(self, stage: str, items: list[RunItem]) -> tuple[list[Any], float]:
        """`stage` on `items`: one value (or `StepFailure`) per item, and the seconds per item. Touches no
        store, so it runs anywhere the weights, images and output dir are."""
        start = time.perf_counter()
        values = self.steps.compute(stage, items, self._write if stage == "write" else None)
        return values, (time.perf_counter() - start) / max(1, len(items))

    def commit(self, stage: str, item: RunItem, value: Any, seconds: float, store: ResultStore,
               summary: RunSummary) -> None:
        """Store one computed result (or the image's failure) and count it."""
        if isinstance(value, StepFailure):
            self._fail(item, store, summary, value.reason, stage)
            return
        item.values[stage] = value
        key = self.keys.key(stage, item)
        if stage == "write":
            store.put_write(item.name, WriteRecord(item.image_hash, key, value["files"]))
        else:
            store.put(item.image_hash, stage, key, value, seconds)
        summary.computed[stage] += 1
        summary.seconds[stage] += seconds
        fault_point("after", stage, summary.computed[stage])

    def finish(self, chunk: list[RunItem], store: ResultStore, summary: RunSummary) -> None:
        """After the last stage: every image of the chunk that did not fail is done."""
        for item in chunk:
            if not item.failed and "write" in item.values:
                store.set_status(item.name, "done")
                summary.done += 1
                summary.written[item.name] = list(item.values.get("segment", {}).get("labels", []))
            item.image = None  # the chunk's pixels can go

    def _fail(self, item: RunItem, store: ResultStore, summary: RunSummary, reason: str, stage: str) -> None:
        item.failed = reason
        store.set_status(item.name, "failed", reason, stage, self.keys.key(stage, item))
        summary.failed[item.name] = reason
        logger.warning("%s failed: %s", item.name, reason)

    def _write(self, items: list[RunItem]) -> list[Any]:
        """The outputs of each item, from its stored steps, over nothing but its own earlier outputs."""
        settings = self.pipeline.config.summary()
        return [{"files": save_result(self.steps.result(item.values), item.image, self.out_dir, item.name,
                                      settings=settings, owned=item.owned, input_sha256=item.image_hash)}
                for item in items]


def stage_keys(pipeline: Pipeline) -> dict[str, str]:
    """Each step's run-wide key (see `offline_seg.engines.keys`)."""
    return StepKeys(pipeline).as_dict()
