"""Segmentation: labelled boxes → one binary mask each, with SAM in two passes.

Pass 1: box prompts only, single mask, logits. From each box's logit map take the n_p highest pixels
(the reference normalises all maps of the image together to 0–255 and picks the argmax n_p times,
zeroing each pick). Pass 2: the same box plus those n_p points as positive points, single mask.
n_p = 0 means box only (pass 1's mask is the result).

The image is encoded once per image; both passes reuse the embedding, and each pass decodes all boxes of
the image in one prompt-decoder call.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from offline_seg.types import Detections, InstanceMasks

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class Segmenter(Protocol):
    """Anything that turns the labelled detections of an image into instance masks."""

    def segment(self, image: Image.Image, detections: Detections) -> InstanceMasks: ...


def normalise_jointly(logits: np.ndarray) -> np.ndarray:
    """Map all of an image's logit maps together onto 0–255 as uint8 (round to nearest, half to even).

    Joint, not per map: a box whose map is weak overall ends up with low, often tied, values, as in the
    reference. Constant input (max == min) gives all zeros.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.size == 0:
        return np.zeros(logits.shape, np.uint8)
    low, high = float(logits.min()), float(logits.max())
    if high <= low:
        return np.zeros(logits.shape, np.uint8)
    return np.rint((logits - low) * (255.0 / (high - low))).astype(np.uint8)


def top_n_points(logits: np.ndarray, n: int) -> list[np.ndarray]:
    """The n highest pixels of each (H, W) map in `logits` (N, H, W), as (n, 2) float32 xy arrays.

    Follows the reference loop exactly: quantise all maps jointly to uint8 0–255 (`normalise_jointly`),
    then n times take the argmax of each map and set that pixel to 0. Ties go to the first pixel in
    row-major order (numpy's argmax). When a map has no non-zero pixel left, further picks land on its
    first zero pixel in row-major order, which may repeat an earlier pick, as the reference does.
    x is the column, y the row.
    """
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"expected (N, H, W) logits, got shape {logits.shape}")
    count, height, width = logits.shape
    if n <= 0 or count == 0:
        return [np.zeros((0, 2), np.float32) for _ in range(count)]
    if height * width == 0:
        raise ValueError("cannot pick points from empty maps")
    flat = normalise_jointly(logits).reshape(count, -1)
    rows = np.arange(count)
    picks = np.empty((count, n), dtype=np.int64)
    for k in range(n):
        index = flat.argmax(axis=1)
        picks[:, k] = index
        flat[rows, index] = 0
    ys, xs = np.divmod(picks, width)
    return [np.stack([xs[i], ys[i]], axis=1).astype(np.float32) for i in range(count)]


class SamSegmenter:
    """SAM (transformers `SamModel`) prompted with boxes, then boxes plus their top logit points.

    `model_path` is anything `load_sam_model` accepts; the model loads on first use so that building a
    pipeline stays cheap.
    """

    def __init__(
        self,
        model_path: Path | str,
        num_points: int = 20,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
    ):
        if num_points < 0:
            raise ValueError("num_points must be >= 0")
        self.model_path = Path(model_path)
        self.num_points = int(num_points)
        self.device = device
        self.dtype = dtype
        self._model: Any = None
        self._processor: Any = None

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            from offline_seg.models.sam_checkpoint import load_sam_model

            self._model, self._processor = load_sam_model(self.model_path, device=self.device, dtype=self.dtype)
        return self._model, self._processor

    @property
    def model(self) -> Any:
        return self._load()[0]

    @property
    def processor(self) -> Any:
        return self._load()[1]

    def segment(self, image: Image.Image, detections: Detections) -> InstanceMasks:
        """One mask per labelled detection, at the image's size; unlabelled detections are skipped."""
        import torch

        width, height = image.size
        kept = detections.labelled()
        if len(kept) == 0:
            return InstanceMasks.empty(height, width)
        model, processor = self._load()
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device

        inputs = processor(images=image.convert("RGB"), return_tensors="pt")
        original_sizes = inputs["original_sizes"]
        reshaped_sizes = inputs["reshaped_input_sizes"]
        (old_h, old_w), (new_h, new_w) = original_sizes[0].tolist(), reshaped_sizes[0].tolist()
        # The same per-axis scaling SamProcessor applies to prompts given in original pixels.
        scale = np.array([new_w / old_w, new_h / old_h], dtype=np.float64)

        def to_model(xy: np.ndarray) -> torch.Tensor:
            shaped = xy.reshape(*xy.shape[:-1], -1, 2) * scale
            return torch.as_tensor(shaped.reshape(xy.shape), dtype=dtype, device=device)

        with torch.inference_mode():
            embeddings = model.get_image_embeddings(inputs["pixel_values"].to(device=device, dtype=dtype))
            boxes = to_model(kept.boxes.astype(np.float64))[None]  # (1, N, 4)

            def decode(**prompts: torch.Tensor) -> np.ndarray:
                out = model(image_embeddings=embeddings, input_boxes=boxes, multimask_output=False, **prompts)
                logits = processor.post_process_masks(
                    out.pred_masks.float().cpu(), original_sizes, reshaped_sizes, binarize=False
                )[0]  # (N, 1, H, W)
                return logits[:, 0].numpy()

            logits = decode()
            if self.num_points == 0:
                points = [np.zeros((0, 2), np.float32) for _ in range(len(kept))]
            else:
                points = top_n_points(logits, self.num_points)
                input_points = to_model(np.stack(points).astype(np.float64))[None]  # (1, N, n, 2)
                labels = torch.ones(input_points.shape[:-1], dtype=torch.long, device=device)
                logits = decode(input_points=input_points, input_labels=labels)
        masks = logits > 0.0
        logger.debug("segmented %d instances (%d points each)", len(kept), self.num_points)
        return InstanceMasks(
            masks=masks,
            boxes=kept.boxes,
            scores=kept.scores,
            labels=[str(label) for label in kept.labels],
            points=points,
        )
