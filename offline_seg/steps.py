"""The chain, once: each step over a batch of images, as JSON-able values, and the result built from them.

`Pipeline.segment` (one image, in memory), the batch runner (chunks, every value stored) and the Ray workers
all compute through `Steps.compute`, so a step reads the same inputs and makes the same value on every path;
`offline_seg.engines.keys` declares what each step reads and keys the stored values by it.

A step never raises for one image: an image it cannot process gets a `StepFailure` with the reason, a batch
that raises is run again image by image, and CUDA out-of-memory empties the cache and tries once more.
Errors no image can cure (missing or damaged weights, an LLM server that is down) are `OfflineSegError`s
and propagate: the run stops.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from offline_seg.errors import InvalidInputError, OfflineSegError, first_line
from offline_seg.io.images import load_image
from offline_seg.io.outputs import decode_rle, encode_rle
from offline_seg.stages.composer import compose
from offline_seg.types import Detections, InstanceMasks, Recognition, SegmentationResult

if TYPE_CHECKING:
    from offline_seg.chain import ChainSpec
    from offline_seg.stages.segmenter import Segmenter

logger = logging.getLogger(__name__)

PIXEL_FREE_STEPS = ("labels", "post_refine")  # steps that never need an image's pixels


@dataclass
class StepFailure:
    """One image's step could not be done; `reason` says why (recorded against that image only)."""

    reason: str


@dataclass
class Item:
    """One input image while it moves through the steps.

    `path` is None for an image given in memory. `stem` names its ground truth (oracle modes) and seeds the
    jitter of oracle boxes. `labels` and `truth`, when set, override the configured labels / the ground
    truth for this image (`Pipeline.segment(image, labels, ground_truth=...)`)."""

    path: Path | None
    name: str  # output name (runs) or any name (in memory)
    image_hash: str | None = None
    image: Image.Image | None = None
    failed: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] | None = None
    truth: np.ndarray | None = None

    @property
    def stem(self) -> str:
        return self.path.stem if self.path is not None else Path(self.name).name


class ChainModels(Protocol):
    """What the steps need of a `Pipeline`: its chain, settings and the stage methods over its models."""

    chain: ChainSpec
    config: Any

    @property
    def segmenter(self) -> Segmenter: ...
    def tag(self, images: Sequence[Image.Image]) -> list[list[str]]: ...
    def caption(self, images: Sequence[Image.Image]) -> list[str | None]: ...
    def scene_labels(self, recognitions: Sequence[Recognition]) -> list[tuple[list[str], str | None]]: ...
    def fixed_labels(self, ground_truth: np.ndarray | None, labels: Sequence[str] | None = None) -> list[str] | None: ...
    def detect(self, image: Image.Image, labels: Sequence[str]) -> Detections: ...
    def ground_truth_boxes(self, ground_truth: np.ndarray, name: str) -> Detections: ...
    def ground_truth_for(self, image: Image.Image, name: str | None) -> np.ndarray: ...
    def label_detections(self, detections: Sequence[Detections], labels: Sequence[Sequence[str]] | None = None
                         ) -> list[tuple[Detections, dict[str, str] | None]]: ...


class Steps:
    """The chain's steps on a `Pipeline`'s models."""

    def __init__(self, pipeline: ChainModels):
        self.pipeline = pipeline

    def compute(self, step: str, items: Sequence[Item],
                function: Callable[[list[Item]], list[Any]] | None = None) -> list[Any]:
        """`step` on `items` (their pixels opened as needed): one value or `StepFailure` per item.
        `function` computes a step this module does not know (the runner's `write`)."""
        compute = function or getattr(self, f"_{step}")
        values: dict[int, Any] = {}
        ready = []
        for item in items:
            if item.image is None and step not in PIXEL_FREE_STEPS:
                try:
                    item.image = load_image(item.path)
                except InvalidInputError as error:
                    values[id(item)] = StepFailure(str(error))
                    continue
                except Exception as error:  # noqa: BLE001 - whatever a decoder raises fails this file only
                    values[id(item)] = StepFailure(f"cannot read image {item.path}: {failure_reason(error)}")
                    continue
            ready.append(item)
        if ready:
            for item, value in zip(ready, self._guarded(step, ready, compute)):
                values[id(item)] = StepFailure(f"{step}: {value.reason}") if isinstance(value, StepFailure) else value
        return [values[id(item)] for item in items]

    def _guarded(self, step: str, items: list[Item], compute: Callable[[list[Item]], list[Any]]) -> list[Any]:
        """An error of one image is that image's failure: a batch that raises is split and run image by
        image; CUDA out-of-memory frees the cache and tries once more. Errors that no image can cure
        (missing or damaged weights, an LLM server that is down) stop the run."""
        try:
            return with_oom_retry(lambda: compute(items), self.pipeline.config.device)
        except InvalidInputError as error:
            if len(items) == 1:
                return [StepFailure(failure_reason(error))]
            logger.info("%s failed on a batch of %d (%s); running them one by one", step, len(items), error)
        except OfflineSegError:
            raise
        except Exception as error:  # noqa: BLE001 - one image's failure must not stop the batch
            if len(items) == 1:
                logger.debug("%s failed on %s", step, items[0].name, exc_info=True)
                return [StepFailure(failure_reason(error))]
            logger.info("%s failed on a batch of %d (%s); running them one by one", step, len(items), error)
        return [self._guarded(step, [item], compute)[0] for item in items]

    # --- the steps ------------------------------------------------------------------------------
    def _tag(self, items: list[Item]) -> list[Any]:
        return [{"tags": tags} for tags in self.pipeline.tag([i.image for i in items])]

    def _caption(self, items: list[Item]) -> list[Any]:
        return [{"caption": caption} for caption in self.pipeline.caption([i.image for i in items])]

    def _labels(self, items: list[Item]) -> list[Any]:
        pipeline = self.pipeline
        fixed = [i for i in items if pipeline.chain.labels_from in ("gt", "given", "all") or i.labels is not None]
        values: dict[int, Any] = {
            id(i): _guard(lambda i=i: {"labels": pipeline.fixed_labels(self._truth(i), i.labels), "reply": None})
            for i in fixed
        }
        recognized = [i for i in items if id(i) not in values]
        labelled = pipeline.scene_labels([recognition_of(i.values) for i in recognized])
        for item, (labels, reply) in zip(recognized, labelled):
            values[id(item)] = {"labels": labels, "reply": reply}
        return [values[id(i)] for i in items]

    def _detect(self, items: list[Item]) -> list[Any]:
        pipeline = self.pipeline
        if pipeline.chain.boxes_from == "gt":
            return [_guard(lambda i=i: detections_value(pipeline.ground_truth_boxes(self._truth(i), i.stem),
                                                        labelled=True)) for i in items]
        return [detections_value(pipeline.detect(i.image, i.values["labels"]["labels"])) for i in items]

    def _post_refine(self, items: list[Item]) -> list[Any]:
        labelled = self.pipeline.label_detections([detections_from(i.values["detect"]) for i in items],
                                                  [i.values["labels"]["labels"] for i in items])
        return [{"labels": list(d.labels), "replies": replies} for d, replies in labelled]

    def _segment(self, items: list[Item]) -> list[Any]:
        results = []
        for item in items:
            instances = self.pipeline.segmenter.segment(item.image, labelled_detections(item.values))
            results.append({
                "masks": [encode_rle(mask) for mask in instances.masks],
                "boxes": instances.boxes.tolist(),
                "scores": instances.scores.tolist(),
                "labels": instances.labels,
                "points": [np.asarray(p).tolist() for p in instances.points],
                "size": [item.image.height, item.image.width],
            })
        return results

    def _truth(self, item: Item) -> np.ndarray | None:
        """The image's ground truth when the chain reads it (oracle labels or boxes), else None."""
        if self.pipeline.chain.labels_from != "gt" and self.pipeline.chain.boxes_from != "gt":
            return None
        if item.truth is None:
            if item.image is None:  # kept: the next steps of the chunk need the pixels too
                item.image = load_image(item.path)
            item.truth = self.pipeline.ground_truth_for(item.image, item.stem)
        return item.truth

    # --- the result -----------------------------------------------------------------------------
    def result(self, values: dict[str, Any]) -> SegmentationResult:
        """The `SegmentationResult` of one image, built from its step values."""
        classes = self.pipeline.config.classes
        stored = values["segment"]
        height, width = stored["size"]
        instances = InstanceMasks(
            masks=decode_masks(stored), boxes=np.asarray(stored["boxes"], np.float32),
            scores=np.asarray(stored["scores"], np.float32), labels=list(stored["labels"]),
            points=[np.asarray(p, np.float32).reshape(-1, 2) for p in stored["points"]],
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
            recognition=recognition_of(values) if "tag" in values else None,
            scene_labels=list(scene),
            detections=labelled_detections(values),
            instances=instances,
            llm_replies=replies,
        )


# --- values ---------------------------------------------------------------------------------------------
def recognition_of(values: dict[str, Any]) -> Recognition:
    caption = values.get("caption", {}).get("caption")
    return Recognition(tuple(values["tag"]["tags"]), caption)


def detections_value(detections: Detections, labelled: bool = False) -> dict[str, Any]:
    value = {"boxes": detections.boxes.tolist(), "scores": detections.scores.tolist(), "phrases": detections.phrases}
    if labelled:
        value["labels"] = list(detections.labels)
    if detections.masks is not None:  # a detector that segments too (SAM 3): labels and masks are its own
        value.update(labels=list(detections.labels), masks=[encode_rle(m) for m in detections.masks],
                     size=list(detections.masks.shape[1:]))
    return value


def detections_from(value: dict[str, Any]) -> Detections:
    return Detections(np.asarray(value["boxes"], np.float32), np.asarray(value["scores"], np.float32),
                      list(value["phrases"]), list(value.get("labels") or []),
                      decode_masks(value) if "masks" in value else None)


def decode_masks(value: dict[str, Any]) -> np.ndarray:
    """(N, H, W) bool from a value's RLE `masks` and its image `size`."""
    height, width = value["size"]
    return np.stack([decode_rle(m) for m in value["masks"]]) if value["masks"] else np.zeros((0, height, width), bool)


def labelled_detections(values: dict[str, Any]) -> Detections:
    """The detections with their class-list labels (from post-refinement, or stored with oracle boxes)."""
    detections = detections_from(values["detect"])
    if "post_refine" in values:
        detections = detections.with_labels(values["post_refine"]["labels"])
    return detections


# --- failures -------------------------------------------------------------------------------------------
def failure_reason(error: BaseException) -> str:
    text = first_line(error)
    return f"{type(error).__name__}: {text}" if not isinstance(error, InvalidInputError) else text


def with_oom_retry(compute: Callable[[], Any], device: str) -> Any:
    """Run `compute`; on CUDA out-of-memory (on a CUDA `device`) empty the allocator's cache and run it
    once more. On other devices nothing is retried."""
    try:
        return compute()
    except Exception as error:
        torch = sys.modules.get("torch")
        if not device.startswith("cuda") or torch is None or not isinstance(error, torch.cuda.OutOfMemoryError):
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
        return StepFailure(str(error))
