"""Batch runs that lose nothing: stage-major over chunks of images, every stage result stored as it is made.

Per chunk: tag all images, caption them, one batched pre-refinement, detect, one batched post-refinement,
segment, compose and write. Each model is loaded once per run (the pipeline builds it lazily and keeps
it). Every result goes into the output dir's SQLite store (`offline_seg.engines.store`) the moment it exists, so
a re-run after a crash, `kill -9` or a changed setting recomputes only what is missing.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from offline_seg.stages.composer import compose
from offline_seg.engines.faults import fault_point
from offline_seg.errors import InvalidInputError, OfflineSegError
from offline_seg.io.images import load_image
from offline_seg.io.inputs import output_names
from offline_seg.io.outputs import decode_rle, encode_rle, save_result
from offline_seg.pipeline import Pipeline
from offline_seg.engines.store import OutputLock, ResultStore, settings_key
from offline_seg.specs import MODELS, STEPS, ModelSpec
from offline_seg.types import Detections, InstanceMasks, Recognition, SegmentationResult
from offline_seg.weights import sha256_file

logger = logging.getLogger(__name__)

STAGES = STEPS  # the chain's steps, in order (offline_seg.specs)
@dataclass
class RunSummary:
    """What a run did: per stage how many results were computed or reused, and the time spent."""

    images: int = 0  # input files
    done: int = 0  # input files whose outputs exist
    failed: dict[str, str] = field(default_factory=dict)  # output name -> reason
    skipped: int = 0  # failures of an earlier run, not retried (see `retry_failed`)
    computed: Counter = field(default_factory=Counter)
    reused: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)

    def table(self) -> str:
        lines = [f"{'stage':12} {'computed':>9} {'reused':>7} {'seconds':>9}"]
        for stage in STAGES:
            if self.computed[stage] or self.reused[stage]:
                lines.append(f"{stage:12} {self.computed[stage]:9d} {self.reused[stage]:7d} {self.seconds[stage]:9.1f}")
        return "\n".join(lines)


@dataclass
class _Item:
    """One image of a chunk while it moves through the stages."""

    path: Path
    name: str  # output name: the path relative to the image root, without suffix
    image_hash: str | None
    image: Image.Image | None = None
    failed: str | None = None
    values: dict[str, Any] = field(default_factory=dict)


class BatchRunner:
    """Runs a `Pipeline` over many images, chunk by chunk and stage by stage, resumable."""

    def __init__(self, pipeline: Pipeline, out_dir: Path, chunk_size: int = 16, progress: bool = True,
                 swapped: Sequence[str] | None = None, retry_failed: bool = False):
        """The steps that run and the models released after each of their steps in every chunk come from
        the pipeline's `ChainSpec` (a memory plan marks models not resident); `swapped` overrides the latter.
        `retry_failed`: try again the files an earlier run recorded as failed (by default they are
        skipped and reported again; a file whose bytes changed is always tried again)."""
        self.pipeline = pipeline
        self.retry_failed = retry_failed
        self.out_dir = Path(out_dir)
        self.chunk_size = max(1, int(chunk_size))
        self.progress = progress
        self.swapped = set(pipeline.chain.swapped if swapped is None else swapped)
        self.keys = stage_keys(pipeline)

    def run(self, images: Sequence[Path], root: Path | None = None) -> RunSummary:
        from tqdm import tqdm

        summary = RunSummary(images=len(images))
        root = Path(root) if root else None
        self.pipeline.preflight()  # every missing weights file, before the first image
        stages = self.active_stages()
        bars = {
            stage: tqdm(total=len(images), desc=f"{stage:11}", unit="img", position=i, leave=True,
                        disable=not self.progress)
            for i, stage in enumerate(stages)
        }
        names = output_names(images, root)
        with OutputLock(self.out_dir), ResultStore.in_dir(self.out_dir) as store:
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

    # --- chunk set-up ---------------------------------------------------------------------------
    def open_items(self, store: ResultStore, paths: Sequence[Path], names: Sequence[str],
                    summary: RunSummary) -> list[_Item]:
        items = []
        for path, name in zip(paths, names):
            try:
                if not path.is_file():  # a folder, FIFO (reading it would block) or symlink loop named *.jpg
                    raise InvalidInputError("not a regular file" + (" (a symlink loop or a dangling link)"
                                                                    if path.is_symlink() else ""))
                image_hash = sha256_file(path)
            except (OSError, InvalidInputError) as error:
                store.add_image(name, str(path), None)
                reason = f"cannot read image {path}: {getattr(error, 'strerror', None) or error}"
                store.set_status(name, "failed", reason)
                summary.failed[name] = reason
                continue
            record = store.add_image(name, str(path), image_hash)
            if record.status == "failed" and not self.retry_failed:
                summary.failed[name] = f"{record.reason} (an earlier run; --retry-failed to try again)"
                summary.skipped += 1
                continue
            items.append(_Item(path, name, image_hash))
        return items

    def _release_after(self, stage: str) -> None:
        model = self.pipeline.chain.step_model(stage)
        if model in self.swapped:  # the plan loads it once per use (the LLM: for pre- and for post-refinement)
            self.pipeline.release(model)

    def active_stages(self) -> list[str]:
        """The steps the chain runs, in order (decided once, by `offline_seg.specs.chain_spec`)."""
        return list(self.pipeline.chain.steps)

    # --- one stage over a chunk -----------------------------------------------------------------
    def _run_stage(self, stage: str, chunk: list[_Item], store: ResultStore, summary: RunSummary) -> None:
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
        # Identical files in the chunk: compute once (the first of them), share the result.
        first: dict[str, _Item] = {}
        copies: list[_Item] = []
        for item in todo:
            if stage != "write" and item.image_hash in first:
                copies.append(item)
            else:
                first.setdefault(item.image_hash if stage != "write" else item.name, item)
        todo = list(first.values())
        results, seconds = self.compute(stage, todo)
        for item, value in zip(todo, results):
            self.commit(stage, item, value, seconds, store, summary)
        for item in copies:
            original = next(i for i in todo + chunk if i.image_hash == item.image_hash and i is not item
                            and (stage in i.values or i.failed))
            if original.failed:
                self._fail(item, store, summary, original.failed)
            else:
                item.values[stage] = original.values[stage]
                summary.reused[stage] += 1

    # The three steps of a stage, also called by the Ray engine (`offline_seg.engines.ray_engine`): the
    # driver looks up and commits, the workers compute (no store there).
    def lookup(self, stage: str, item: _Item, store: ResultStore) -> Any | None:
        """The stored result of `stage` for `item`; None when the stage must run for it. Writing is kept
        per input file, never shared between identical files."""
        key = self.keys[stage]
        if stage != "write":
            return store.get(item.image_hash, stage, key)
        cached = store.get_write(item.name, key)
        if cached is not None and not all(Path(cached[k]).is_file() for k in ("mask", "overlay", "record")):
            return None  # the outputs were deleted since: write them again from the stored stages
        return cached

    def compute(self, stage: str, items: list[_Item]) -> tuple[list[Any], float]:
        """`stage` on `items`, their pixels opened as needed: one value (or `StageFailure`) per item, and
        the seconds per item. Touches no store, so it runs anywhere the weights and images are."""
        unreadable: dict[int, StageFailure] = {}
        for item in items:  # images are opened only when some stage needs their pixels
            if item.image is None and stage not in ("labels", "post_refine"):
                try:
                    item.image = load_image(item.path)
                except InvalidInputError as error:
                    unreadable[id(item)] = StageFailure(str(error))
                except Exception as error:  # noqa: BLE001 - whatever a decoder raises fails this file only
                    unreadable[id(item)] = StageFailure(f"cannot read image {item.path}: {failure_reason(error)}")
        ready = [item for item in items if id(item) not in unreadable]
        if not ready:
            return [unreadable[id(item)] for item in items], 0.0
        start = time.perf_counter()
        computed = self._compute(stage, ready)
        seconds = (time.perf_counter() - start) / len(ready)
        values: dict[int, Any] = {
            id(item): StageFailure(f"{stage}: {value.reason}") if isinstance(value, StageFailure) else value
            for item, value in zip(ready, computed)
        }
        values.update(unreadable)
        return [values[id(item)] for item in items], seconds

    def commit(self, stage: str, item: _Item, value: Any, seconds: float, store: ResultStore,
               summary: RunSummary) -> None:
        """Store one computed result (or the image's failure) and count it."""
        if isinstance(value, StageFailure):
            self._fail(item, store, summary, value.reason)
            return
        item.values[stage] = value
        if stage == "write":
            store.put_write(item.name, self.keys[stage], value)
        else:
            store.put(item.image_hash, stage, self.keys[stage], value, seconds)
        summary.computed[stage] += 1
        summary.seconds[stage] += seconds
        fault_point("after", stage, summary.computed[stage])

    def _compute(self, stage: str, items: list[_Item]) -> list[Any]:
        """One stage over some images. An error of one image is that image's failure: a batch that raises
        is split and run image by image; CUDA out-of-memory frees the cache and tries once more. Errors that
        no image can cure (missing weights, an LLM server that is down) stop the run."""
        compute = getattr(self, f"_compute_{stage}")
        try:
            return with_oom_retry(lambda: compute(items), self.pipeline.config.device)
        except InvalidInputError as error:
            if len(items) == 1:
                return [StageFailure(failure_reason(error))]
            logger.info("%s failed on a batch of %d (%s); running them one by one", stage, len(items), error)
        except OfflineSegError:  # missing weights, an unreachable LLM server: the same for every image
            raise
        except Exception as error:  # noqa: BLE001 - one image's failure must not stop the batch
            if len(items) == 1:
                logger.debug("%s failed on %s", stage, items[0].name, exc_info=True)
                return [StageFailure(failure_reason(error))]
            logger.info("%s failed on a batch of %d (%s); running them one by one", stage, len(items), error)
        return [self._compute(stage, [item])[0] for item in items]

    def finish(self, chunk: list[_Item], store: ResultStore, summary: RunSummary) -> None:
        """After the last stage: every image of the chunk that did not fail is done."""
        for item in chunk:
            if not item.failed and "write" in item.values:
                store.set_status(item.name, "done")
                summary.done += 1
            item.image = None  # the chunk's pixels can go

    def _fail(self, item: _Item, store: ResultStore, summary: RunSummary, reason: str) -> None:
        item.failed = reason
        store.set_status(item.name, "failed", reason)
        summary.failed[item.name] = reason
        logger.warning("%s failed: %s", item.name, reason)

    # --- the stages -----------------------------------------------------------------------------
    def _compute_tag(self, items: list[_Item]) -> list[Any]:
        return [{"tags": tags} for tags in self.pipeline.tag([i.image for i in items])]

    def _compute_caption(self, items: list[_Item]) -> list[Any]:
        return [{"caption": caption} for caption in self.pipeline.caption([i.image for i in items])]

    def _compute_labels(self, items: list[_Item]) -> list[Any]:
        c = self.pipeline.config
        if c.oracle_labels or c.labels is not None:
            return [_guard(lambda i=i: {"labels": self.pipeline.fixed_labels(self._truth(i) if c.oracle_labels else None),
                                        "reply": None}) for i in items]
        recognitions = [_recognition(i.values) for i in items]
        return [{"labels": labels, "reply": reply} for labels, reply in self.pipeline.scene_labels(recognitions)]

    def _compute_detect(self, items: list[_Item]) -> list[Any]:
        c = self.pipeline.config
        if c.oracle_boxes:
            return [_guard(lambda i=i: _detections_value(
                self.pipeline.ground_truth_boxes(self._truth(i), i.path.stem), labelled=True)) for i in items]
        return [_detections_value(self.pipeline.detect(i.image, i.values["labels"]["labels"])) for i in items]

    def _compute_post_refine(self, items: list[_Item]) -> list[Any]:
        detections = [_detections_from(i.values["detect"]) for i in items]
        labelled = self.pipeline.label_detections(detections)
        return [{"labels": list(d.labels), "replies": replies} for d, replies in labelled]

    def _compute_segment(self, items: list[_Item]) -> list[Any]:
        results = []
        for item in items:
            instances = self.pipeline.segmenter.segment(item.image, _labelled_detections(item.values))
            results.append({
                "masks": [encode_rle(mask) for mask in instances.masks],
                "boxes": instances.boxes.tolist(),
                "scores": instances.scores.tolist(),
                "labels": instances.labels,
                "points": [np.asarray(p).tolist() for p in instances.points],
                "size": [item.image.height, item.image.width],
            })
        return results

    def _compute_write(self, items: list[_Item]) -> list[Any]:
        results = []
        for item in items:
            result = self.result_of(item.values, item.image)
            name = Path(item.name)
            paths = save_result(result, item.image, self.out_dir / name.parent, name.name,
                                settings=self.pipeline.config.summary())
            results.append({"mask": str(paths.mask), "overlay": str(paths.overlay), "record": str(paths.record)})
        return results

    # --- helpers --------------------------------------------------------------------------------
    def _truth(self, item: _Item) -> np.ndarray:
        if item.image is None:  # kept: the next stages of the chunk need the pixels too
            item.image = load_image(item.path)
        return self.pipeline.ground_truth_for(item.image, item.path.stem)

    def result_of(self, values: dict[str, Any], image: Image.Image) -> SegmentationResult:
        """The `SegmentationResult` of one image, rebuilt from its stored stage values."""
        classes = self.pipeline.config.classes
        stored = values["segment"]
        height, width = stored["size"]
        masks = _decode_masks(stored)
        instances = InstanceMasks(
            masks=masks, boxes=np.asarray(stored["boxes"], np.float32), scores=np.asarray(stored["scores"], np.float32),
            labels=list(stored["labels"]), points=[np.asarray(p, np.float32).reshape(-1, 2) for p in stored["points"]],
        )
        replies: dict[str, object] = {}
        if values.get("labels", {}).get("reply") is not None:
            replies["pre_refine"] = values["labels"]["reply"]
        if values.get("post_refine", {}).get("replies") is not None:
            replies["post_refine"] = values["post_refine"]["replies"]
        scene = values["labels"]["labels"] if "labels" in values else sorted(set(instances.labels))
        return SegmentationResult(
            class_map=compose(instances, classes, height, width),
            class_names=list(classes.names),
            recognition=_recognition(values) if "tag" in values else None,
            scene_labels=list(scene),
            detections=_labelled_detections(values),
            instances=instances,
            llm_replies=replies,
        )



def stage_identities(pipeline: Pipeline) -> dict[str, str]:
    """What each stage's results depend on beyond its settings, as content: each model's description
    (`ModelSpec`: backend, dtype, quantization, options) with its files' identity in place of its path,
    the prompt texts (not the prompts folder's name), the LLM a server actually serves."""
    from dataclasses import replace

    from offline_seg.stages.refiner import PromptTemplates
    from offline_seg.weights import model_identity

    chain = pipeline.chain  # only the models the run loads count, as `chain_spec` decided

    def identity(spec: ModelSpec | None) -> str:
        if spec is None:
            return "none"
        if spec.stage == "llm":
            return llm_identity(spec)
        return replace(spec, path=model_identity(Path(spec.path)), device="", resident=True,
                       gpu_memory_utilization=None).text()

    c = pipeline.config
    templates = PromptTemplates.load(c.prompts_dir) if c.pre_refine or c.post_refine else None
    return {
        **{stage: identity(chain.model(stage)) for stage in MODELS},
        "embedder": identity(pipeline.model_spec("embedder") if pipeline.uses_embedder else None),
        "prompts": settings_key(templates.pre_refine, templates.post_refine) if templates else "none",
    }


def llm_identity(spec: ModelSpec) -> str:
    """The LLM backend's own identity (as the phrase cache uses it): its files and loading options for a
    local model, the served model's name for a server (if the server cannot be asked now, its URL)."""
    from offline_seg.llm.registry import load_llm

    try:
        return str(load_llm(spec).identity)  # builds the client only: nothing is loaded
    except OfflineSegError as error:
        logger.warning("cannot ask %s which model it serves (%s); keying its results by the spec", spec.path, error)
        return spec.text()


def stage_keys(pipeline: Pipeline) -> dict[str, str]:
    """Each stage's settings key, chained through the stages it depends on."""
    c = pipeline.config
    ids = stage_identities(pipeline)
    classes = list(c.classes.names)
    llm = ids["llm"]
    prompts = ids["prompts"]
    # how phrases and captions become labels
    refiner = [c.refiner_mode, ids["embedder"], c.examples, str(c.examples_from), c.min_labels]
    keys: dict[str, str] = {}
    keys["tag"] = settings_key("tag", ids["tagger"])
    keys["caption"] = settings_key("caption", ids["captioner"], c.use_caption)
    if c.oracle_labels or c.oracle_boxes:
        keys["labels"] = settings_key("labels-gt", str(c.ground_truth_dir), classes)
    elif c.labels is not None:
        keys["labels"] = settings_key("labels-given", list(c.labels), classes)
    else:
        keys["labels"] = settings_key("labels", keys["tag"], keys["caption"], c.pre_refine, llm, c.constrained,
                                      prompts, classes, *refiner)
    if c.oracle_boxes:
        keys["detect"] = settings_key("boxes-gt", keys["labels"], c.gt_box_expand, c.gt_box_jitter, c.seed)
    elif pipeline.chain.masks_from == "detector":  # SAM 3 detects and segments: its masks go into the detect value
        keys["detect"] = settings_key("detect-sam3", keys["labels"], ids["detector"], c.sam3_score_threshold,
                                      c.sam3_presence_threshold, c.sam3_mask_threshold)
    else:
        keys["detect"] = settings_key("detect", keys["labels"], ids["detector"], c.box_threshold, c.text_threshold,
                                      c.nms_iou)
    keys["post_refine"] = settings_key("post_refine", keys["detect"], c.post_refine, llm, c.constrained, prompts,
                                       *refiner)
    segment_input = keys["detect"] if c.oracle_boxes else keys["post_refine"]
    # With no points the strategy changes nothing: box-only results are shared by every strategy.
    keys["segment"] = settings_key("segment", segment_input, ids["segmenter"], c.num_points,
                                   c.point_strategy if c.num_points else "box-only")
    if pipeline.chain.masks_from == "detector":  # the detect step's masks, reused
        keys["segment"] = settings_key("segment-reuse", keys["detect"])
    keys["write"] = settings_key("write", keys["segment"])
    return keys


@dataclass
class StageFailure:
    reason: str


def failure_reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if not isinstance(error, InvalidInputError) else text


def with_oom_retry(compute: Callable[[], Any], device: str) -> Any:
    """Run `compute`; on CUDA out-of-memory empty the allocator's cache and run it once more."""
    try:
        return compute()
    except Exception as error:
        import sys

        torch = sys.modules.get("torch")
        if torch is None or not isinstance(error, torch.cuda.OutOfMemoryError):
            raise
        logger.warning("CUDA out of memory (%s); emptying the cache and trying once more", error)
        import gc

        gc.collect()
        torch.cuda.empty_cache()
        return compute()


def _guard(compute: Callable[[], Any]) -> Any:
    """Run one image's computation; its bad input fails that image only."""
    try:
        return compute()
    except InvalidInputError as error:
        return StageFailure(str(error))


def _recognition(values: dict[str, Any]) -> Recognition:
    caption = values.get("caption", {}).get("caption")
    return Recognition(tuple(values["tag"]["tags"]), caption)


def _detections_value(detections: Detections, labelled: bool = False) -> dict[str, Any]:
    value = {"boxes": detections.boxes.tolist(), "scores": detections.scores.tolist(), "phrases": detections.phrases}
    if labelled:
        value["labels"] = list(detections.labels)
    if detections.masks is not None:  # a detector that segments too (SAM 3): labels and masks are its own
        value.update(labels=list(detections.labels), masks=[encode_rle(m) for m in detections.masks],
                     size=list(detections.masks.shape[1:]))
    return value


def _detections_from(value: dict[str, Any]) -> Detections:
    return Detections(np.asarray(value["boxes"], np.float32), np.asarray(value["scores"], np.float32),
                      list(value["phrases"]), list(value.get("labels") or []),
                      _decode_masks(value) if "masks" in value else None)


def _decode_masks(value: dict[str, Any]) -> np.ndarray:
    """(N, H, W) bool from a stored value's RLE `masks` and its image `size`."""
    height, width = value["size"]
    return np.stack([decode_rle(m) for m in value["masks"]]) if value["masks"] else np.zeros((0, height, width), bool)


def _labelled_detections(values: dict[str, Any]) -> Detections:
    """The detections with their class-list labels (from post-refinement, or stored with oracle boxes)."""
    detections = _detections_from(values["detect"])
    if "post_refine" in values:
        detections = detections.with_labels(values["post_refine"]["labels"])
    return detections
