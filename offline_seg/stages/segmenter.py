"""Segmentation: labelled boxes → one binary mask each, with SAM in two passes.

Pass 1: box prompts only, single mask, logits. From each box's logit map take the n_p highest pixels
(the reference normalises all maps of the image together to 0–255 and picks the argmax n_p times,
zeroing each pick). Pass 2: the same box plus those n_p points as positive points, single mask.
n_p = 0 means box only (pass 1's mask is the result).

The two-pass algorithm (`TwoPassSegmenter`) runs on any `SamBackend`: transformers' `SamModel`
(`SamSegmenter`) or an ONNX export on ONNX Runtime (`OnnxSamSegmenter`, the CPU tier). The image is
encoded once per image; every box of both passes reuses that embedding.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from offline_seg.specs import ModelSpec
from offline_seg.types import Detections, InstanceMasks
from offline_seg.weights import WeightsDir

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


class SamBackend(Protocol):
    """A promptable SAM: encode an image once, then decode any number of box (+ point) prompts."""

    def encode(self, image: Image.Image) -> Any:
        """Whatever the decoder needs of the image (its embedding and sizes)."""

    def decode(self, encoded: Any, boxes: np.ndarray, points: np.ndarray | None) -> np.ndarray:
        """Mask logits (N, H, W) at the image's size, one single-mask prediction per box.

        `boxes` are (N, 4) pixel xyxy; `points` (N, n, 2) pixel xy positive points per box, or None.
        """


class TwoPassSegmenter:
    """The method's segmentation on any `SamBackend`: box → logits → top-n points → box + points."""

    def __init__(self, backend: SamBackend, num_points: int = 20):
        if num_points < 0:
            raise ValueError("num_points must be >= 0")
        self.backend = backend
        self.num_points = int(num_points)

    def segment(self, image: Image.Image, detections: Detections) -> InstanceMasks:
        """One mask per labelled detection, at the image's size; unlabelled detections are skipped."""
        width, height = image.size
        kept = detections.labelled()
        if len(kept) == 0:
            return InstanceMasks.empty(height, width)
        encoded = self.backend.encode(image.convert("RGB"))
        logits = self.backend.decode(encoded, kept.boxes, None)
        if self.num_points == 0:
            points = [np.zeros((0, 2), np.float32) for _ in range(len(kept))]
        else:
            points = top_n_points(logits, self.num_points)
            logits = self.backend.decode(encoded, kept.boxes, np.stack(points))
        logger.debug("segmented %d instances (%d points each)", len(kept), self.num_points)
        return InstanceMasks(
            masks=logits > 0.0,
            boxes=kept.boxes,
            scores=kept.scores,
            labels=[str(label) for label in kept.labels],
            points=points,
        )


class TransformersSam:
    """`SamBackend` on transformers: `SamModel` (a transformers dir or an official .pth, converted),
    `SamHQModel` or `Sam2Model` (transformers dirs), whichever `load_sam_model` finds.

    All three reuse one image encoding for every prompt call: SAM's embedding, SAM-HQ's embedding plus the
    vision encoder's intermediate (first global-attention block) features that its HQ token path fuses in,
    and SAM 2's multi-level feature maps. Each pass decodes all boxes of the image in one prompt-decoder
    call. The model loads on first use so that building a pipeline stays cheap.
    """

    def __init__(self, model_path: Path | str, device: str = "cpu", dtype: torch.dtype | None = None):
        self.model_path = Path(model_path)
        self.device = device
        self.dtype = dtype
        self._model: Any = None
        self._processor: Any = None

    def load(self) -> tuple[Any, Any]:
        if self._model is None:
            from offline_seg.models.sam_checkpoint import load_sam_model

            self._model, self._processor = load_sam_model(self.model_path, device=self.device, dtype=self.dtype)
        return self._model, self._processor

    def encode(self, image: Image.Image) -> dict[str, Any]:
        import torch

        model, processor = self.load()
        parameter = next(model.parameters())
        model_type = model.config.model_type
        inputs = processor(images=image, return_tensors="pt")
        pixels = inputs["pixel_values"].to(parameter.device, parameter.dtype)
        old_h, old_w = inputs["original_sizes"][0].tolist()
        with torch.inference_mode():
            if model_type == "sam2":
                # Feature maps high-res first; the decoder takes the last as the embedding, the rest as skips.
                embedding_inputs: dict[str, Any] = {"image_embeddings": model.get_image_embeddings(pixels)}
            elif model_type == "sam_hq":
                # Without `intermediate_embeddings` SAM-HQ silently drops the ViT features from its HQ mask.
                vision = model.vision_encoder(pixels)
                embedding_inputs = {
                    "image_embeddings": vision.last_hidden_state,
                    "intermediate_embeddings": list(vision.intermediate_embeddings),
                }
            else:
                embedding_inputs = {"image_embeddings": model.get_image_embeddings(pixels)}
        if model_type == "sam2":
            # SAM 2 squashes the image to a square without padding; masks need only the original size.
            new_h = new_w = processor.target_size
            post_sizes: tuple[Any, ...] = (inputs["original_sizes"],)
        else:
            new_h, new_w = inputs["reshaped_input_sizes"][0].tolist()
            post_sizes = (inputs["original_sizes"], inputs["reshaped_input_sizes"])
        return {
            "model_inputs": embedding_inputs,
            "post_sizes": post_sizes,
            # The same per-axis scaling the processors apply to prompts given in original pixels.
            "scale": np.array([new_w / old_w, new_h / old_h], dtype=np.float64),
        }

    def decode(self, encoded: dict[str, Any], boxes: np.ndarray, points: np.ndarray | None) -> np.ndarray:
        import torch

        model, processor = self.load()
        parameter = next(model.parameters())

        def to_model(xy: np.ndarray) -> torch.Tensor:
            scaled = np.asarray(xy, np.float64).reshape(*xy.shape[:-1], -1, 2) * encoded["scale"]
            return torch.as_tensor(scaled.reshape(xy.shape), dtype=parameter.dtype, device=parameter.device)

        prompts: dict[str, torch.Tensor] = {"input_boxes": to_model(boxes)[None]}  # (1, N, 4)
        if points is not None and points.shape[1] > 0:
            prompts["input_points"] = to_model(points)[None]  # (1, N, n, 2)
            prompts["input_labels"] = torch.ones(prompts["input_points"].shape[:-1], dtype=torch.long,
                                                 device=parameter.device)
        with torch.inference_mode():
            out = model(**encoded["model_inputs"], multimask_output=False, **prompts)
        logits = processor.post_process_masks(out.pred_masks.float().cpu(), *encoded["post_sizes"], binarize=False)[0]
        return logits[:, 0].numpy()  # (N, 1, H, W) -> (N, H, W)


class SamSegmenter(TwoPassSegmenter):
    """SAM on transformers (SAM, SAM-HQ or SAM 2): `model_path` is anything `load_sam_model` accepts."""

    def __init__(
        self,
        model_path: Path | str,
        num_points: int = 20,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
    ):
        super().__init__(TransformersSam(model_path, device=device, dtype=dtype), num_points=num_points)
        self.model_path = Path(model_path)

    @property
    def model(self) -> Any:
        return self.backend.load()[0]

    @property
    def processor(self) -> Any:
        return self.backend.load()[1]


class OnnxSamSegmenter(TwoPassSegmenter):
    """SAM exported to ONNX (image encoder + the standard SAM decoder) on ONNX Runtime: the CPU tier."""

    def __init__(self, model_dir: Path | str, num_points: int = 20, threads: int | None = None):
        from offline_seg.models.sam_onnx import OnnxSam

        super().__init__(OnnxSam(model_dir, threads=threads), num_points=num_points)
        self.model_dir = Path(model_dir)


SEGMENTER_BACKENDS = ("sam", "onnx")


def load_segmenter(spec: str | ModelSpec | None, weights: WeightsDir | None = None, num_points: int = 20,
                   device: str = "cpu") -> Segmenter:
    """A segmenter from its description: a `ModelSpec`, or the text `sam` (WEIGHTS/sam), `sam:PATH`
    (transformers dir or official .pth), `onnx` (WEIGHTS/sam_onnx) or `onnx:DIR`, with `?dtype=...`."""
    from offline_seg.specs import parse_spec

    if not isinstance(spec, ModelSpec):
        root = weights.root if weights is not None else Path("weights")
        spec = parse_spec(spec, "segmenter", root, device)
    if spec.backend == "onnx":
        return OnnxSamSegmenter(Path(spec.path), num_points=num_points)
    return SamSegmenter(Path(spec.path), num_points=num_points, device=spec.device, dtype=spec.torch_dtype())
