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
from offline_seg.errors import InvalidInputError
from offline_seg.io.images import IMAGE_SUFFIXES, load_image
from offline_seg.evaluation.oracle import boxes_from_ground_truth
from offline_seg.io.outputs import decode_rle, encode_rle, save_result
from offline_seg.pipeline import Pipeline
from offline_seg.engines.store import ResultStore, settings_key
from offline_seg.stages.sam3 import is_sam3
from offline_seg.types import Detections, InstanceMasks, Recognition, SegmentationResult
from offline_seg.weights import sha256_file

logger = logging.getLogger(__name__)

STAGES = ("tag", "caption", "labels", "detect", "post_refine", "segment", "write")
# The model each stage runs (names as in the memory plan).
STAGE_MODELS = {"tag": "tagger", "caption": "captioner", "labels": "llm", "detect": "detector",
                "post_refine": "llm", "segment": "segmenter"}
# Dataset layouts: the image folder inside a dataset root.
DATASET_IMAGE_DIRS = ("JPEGImages", "leftImg8bit", "val2017", "images")


def find_images(source: Path, recursive: bool = True, names: Path | None = None) -> tuple[Path, list[Path]]:
    """The image root and its images: a file, a plain folder, or a dataset root (VOC `JPEGImages`,
    Cityscapes `leftImg8bit`, COCO `val2017`), searched recursively, sorted, our own outputs skipped.

    `names`: a text file of image stems, one per line (e.g. VOC's `ImageSets/Segmentation/val.txt`), to
    keep only those images; a listed name with no image is an error, so a split never shrinks silently.
    """
    source = Path(source)
    if source.is_file():
        return source.parent, [source]
    if not source.is_dir():
        raise InvalidInputError(f"no such file or folder: {source}")
    for name in DATASET_IMAGE_DIRS:
        if (source / name).is_dir():
            source = source / name
            break
    pattern = "**/*" if recursive else "*"
    images = sorted(
        p for p in source.glob(pattern)
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_overlay")
    )
    if names is not None:
        wanted = [line.strip() for line in Path(names).read_text().splitlines() if line.strip()]
        by_stem = {p.stem: p for p in images}
        absent = [name for name in wanted if name not in by_stem]
        if absent:
            raise InvalidInputError(f"{len(absent)} image(s) listed in {names} not found under {source}, "
                                    f"e.g. {', '.join(absent[:3])}")
        images = [by_stem[name] for name in wanted]
    return source, images


@dataclass
class RunSummary:
    """What a run did: per stage how many results were computed or reused, and the time spent."""

    images: int = 0
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # image name -> reason
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
    image_hash: str
    image: Image.Image | None = None
    failed: str | None = None
    values: dict[str, Any] = field(default_factory=dict)


class BatchRunner:
    """Runs a `Pipeline` over many images, chunk by chunk and stage by stage, resumable."""

    def __init__(self, pipeline: Pipeline, out_dir: Path, chunk_size: int = 16, progress: bool = True,
                 swapped: Sequence[str] = ()):
        """`swapped`: models (tagger, captioner, llm, detector, segmenter) to release after their stage in
        every chunk, as a memory plan (`offline_seg.plan`) decides for a small GPU; the rest stay loaded."""
        self.pipeline = pipeline
        self.out_dir = Path(out_dir)
        self.chunk_size = max(1, int(chunk_size))
        self.progress = progress
        self.swapped = set(swapped)
        self.keys = stage_keys(pipeline)

    def run(self, images: Sequence[Path], root: Path | None = None) -> RunSummary:
        from tqdm import tqdm

        summary = RunSummary(images=len(images))
        root = Path(root) if root else None
        stages = self._active_stages()
        bars = {
            stage: tqdm(total=len(images), desc=f"{stage:11}", unit="img", position=i, leave=True,
                        disable=not self.progress)
            for i, stage in enumerate(stages)
        }
        with ResultStore.in_dir(self.out_dir) as store:
            try:
                for start in range(0, len(images), self.chunk_size):
                    chunk = self._open_chunk(store, images[start : start + self.chunk_size], root, summary)
                    for stage in stages:
                        self._run_stage(stage, chunk, store, summary)
                        bars[stage].update(len(chunk))
                        self._release_after(stage)
                    self._finish(chunk, store, summary)
            finally:
                for bar in bars.values():
                    bar.close()
        return summary

    # --- chunk set-up ---------------------------------------------------------------------------
    def _open_chunk(self, store: ResultStore, paths: Sequence[Path], root: Path | None, summary: RunSummary) -> list[_Item]:
        items = []
        for path in paths:
            name = str(path.relative_to(root).with_suffix("")) if root else path.stem
            try:
                image_hash = sha256_file(path)
            except OSError as error:
                store.record_unreadable(str(path), str(error))
                summary.failed[name] = str(error)
                continue
            store.add_image(image_hash, name, str(path))
            items.append(_Item(path, name, image_hash))
        return items

    def _release_after(self, stage: str) -> None:
        model = STAGE_MODELS.get(stage)
        if model in self.swapped:  # the plan loads it once per use (the LLM: for pre- and for post-refinement)
            self.pipeline.release(model)

    def _active_stages(self) -> list[str]:
        c = self.pipeline.config
        if c.oracle_boxes:
            return ["detect", "segment", "write"]
        stages = list(STAGES)
        if c.oracle_labels or c.labels is not None:
            stages = [s for s in stages if s not in ("tag", "caption")]
        elif not c.use_caption:
            stages.remove("caption")
        if is_sam3(c.detector):  # its detections are class names already
            stages.remove("post_refine")
        return stages

    # --- one stage over a chunk -----------------------------------------------------------------
    def _run_stage(self, stage: str, chunk: list[_Item], store: ResultStore, summary: RunSummary) -> None:
        key = self.keys[stage]
        todo = []
        for item in chunk:
            if item.failed:
                continue
            cached = store.get(item.image_hash, stage, key)
            if stage == "write" and cached is not None and not Path(cached["record"]).is_file():
                cached = None  # the outputs were deleted since: write them again from the stored stages
            if cached is None:
                todo.append(item)
            else:
                item.values[stage] = cached
                summary.reused[stage] += 1
        for item in todo:  # images are opened only when some stage needs their pixels
            if item.image is None and stage not in ("labels", "post_refine"):
                self._load(item, store, summary)
        todo = [item for item in todo if not item.failed]
        if not todo:
            return
        start = time.perf_counter()
        try:
            results = getattr(self, f"_compute_{stage}")(todo)
        except InvalidInputError as error:  # e.g. a missing ground truth: fail those images, go on
            for item in todo:
                self._fail(item, store, summary, f"{stage}: {error}")
            return
        seconds = (time.perf_counter() - start) / len(todo)
        for item, value in zip(todo, results):
            if isinstance(value, _Failure):
                self._fail(item, store, summary, f"{stage}: {value.reason}")
                continue
            item.values[stage] = value
            store.put(item.image_hash, stage, key, value, seconds)
            summary.computed[stage] += 1
            summary.seconds[stage] += seconds

    def _finish(self, chunk: list[_Item], store: ResultStore, summary: RunSummary) -> None:
        """After the last stage: every image of the chunk that did not fail is done."""
        for item in chunk:
            if not item.failed:
                store.set_status(item.image_hash, "done")
                summary.done += 1
            item.image = None  # the chunk's pixels can go

    def _load(self, item: _Item, store: ResultStore, summary: RunSummary) -> None:
        try:
            item.image = load_image(item.path)
        except InvalidInputError as error:
            self._fail(item, store, summary, str(error))

    def _fail(self, item: _Item, store: ResultStore, summary: RunSummary, reason: str) -> None:
        item.failed = reason
        store.set_status(item.image_hash, "failed", reason)
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
            return [_guard(lambda i=i: _detections_value(boxes_from_ground_truth(self._truth(i), c.classes),
                                                          labelled=True)) for i in items]
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



def stage_keys(pipeline: Pipeline) -> dict[str, str]:
    """Each stage's settings key, chained through the stages it depends on."""
    c = pipeline.config
    weights = str(pipeline.weights.root.resolve())
    classes = list(c.classes.names)
    llm = c.llm or f"{weights}/llm"
    prompts = str(c.prompts_dir) if c.prompts_dir else "builtin"
    keys: dict[str, str] = {}
    keys["tag"] = settings_key("tag", weights)
    keys["caption"] = settings_key("caption", weights, c.use_caption)
    if c.oracle_labels or c.oracle_boxes:
        keys["labels"] = settings_key("labels-gt", str(c.ground_truth_dir), classes)
    elif c.labels is not None:
        keys["labels"] = settings_key("labels-given", list(c.labels), classes)
    else:
        keys["labels"] = settings_key("labels", keys["tag"], keys["caption"], c.pre_refine, llm, c.constrained,
                                      prompts, classes)
    if c.oracle_boxes:
        keys["detect"] = settings_key("boxes-gt", keys["labels"])
    elif is_sam3(c.detector):  # detects and segments: its masks go into the detect value
        keys["detect"] = settings_key("detect-sam3", keys["labels"], c.detector, weights, c.sam3_score_threshold,
                                      c.sam3_presence_threshold, c.sam3_mask_threshold)
    else:
        keys["detect"] = settings_key("detect", keys["labels"], weights, c.box_threshold, c.text_threshold, c.nms_iou)
    keys["post_refine"] = settings_key("post_refine", keys["detect"], c.post_refine, llm, c.constrained, prompts)
    segment_input = keys["detect"] if c.oracle_boxes else keys["post_refine"]
    keys["segment"] = settings_key("segment", segment_input, c.segmenter or f"sam:{weights}", c.num_points)
    if is_sam3(c.detector):  # the detect stage's masks, reused
        keys["segment"] = settings_key("segment-reuse", keys["detect"])
    keys["write"] = settings_key("write", keys["segment"])
    return keys


@dataclass
class _Failure:
    reason: str


def _guard(compute: Callable[[], Any]) -> Any:
    """Run one image's computation; its bad input fails that image only."""
    try:
        return compute()
    except InvalidInputError as error:
        return _Failure(str(error))


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
