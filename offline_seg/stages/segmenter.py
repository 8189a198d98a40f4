"""Segmentation: labelled boxes → one binary mask each, with SAM in two passes.

Pass 1: box prompts only, single mask, logits. Pass 2: a point strategy (`offline_seg.stages.points`)
turns pass 1 into a second prompt: the paper's is the same box plus the n_p highest pixels as positive
points (the reference normalises all maps of the image together to 0–255 and picks the argmax n_p times,
zeroing each pick). n_p = 0 means box only (pass 1's mask is the result).

The two-pass algorithm (`TwoPassSegmenter`) runs on any `SamBackend`: transformers' `SamModel`
(`SamSegmenter`) or an ONNX export on ONNX Runtime (`OnnxSamSegmenter`, the CPU tier). The image is
encoded once per image; every box of both passes reuses that embedding.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from offline_seg.errors import InvalidInputError
from offline_seg.specs import ModelSpec
from offline_seg.stages.points import STRATEGIES, Refined, normalise_jointly, top_n_points  # noqa: F401 - re-exported
from offline_seg.types import Detections, InstanceMasks, SamPrediction
from offline_seg.weights import WeightsDir

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class Segmenter(Protocol):
    """Anything that turns the labelled detections of an image into instance masks."""

    def segment(self, image: Image.Image, detections: Detections) -> InstanceMasks: ...


class SamBackend(Protocol):
    """A promptable SAM: encode an image once, then decode any number of box (+ point, + mask) prompts."""

    def encode(self, image: Image.Image) -> Any:
        """Whatever the decoder needs of the image (its embedding and sizes)."""

    def predict(
        self, encoded: Any, boxes: np.ndarray, points: np.ndarray | None, mask_input: np.ndarray | None = None
    ) -> SamPrediction:
        """One single-mask prediction per box: logits at the image's size, predicted IoU, low-res logits.

        `boxes` are (N, 4) pixel xyxy; `points` (N, n, 2) pixel xy positive points per box, or None;
        `mask_input` (N, 256, 256) low-res logits of an earlier prediction, or None.
        """


class EncodeOnce:
    """A `SamBackend` that encodes each distinct image (by its pixels) once and reuses the embedding: for
    sweeps and tests that run many prompt settings on the same images. Keeps every embedding it made."""

    def __init__(self, backend: SamBackend):
        self.backend = backend
        self.cache: dict[str, Any] = {}
        self.seconds = 0.0  # spent encoding

    def encode(self, image: Image.Image) -> Any:
        key = hashlib.sha1(image.tobytes() + repr(image.size).encode()).hexdigest()
        if key not in self.cache:
            start = time.perf_counter()
            self.cache[key] = self.backend.encode(image)
            self.seconds += time.perf_counter() - start
        return self.cache[key]

    def predict(
        self, encoded: Any, boxes: np.ndarray, points: np.ndarray | None, mask_input: np.ndarray | None = None
    ) -> SamPrediction:
        return self.backend.predict(encoded, boxes, points, mask_input)


class TwoPassSegmenter:
    """The method's segmentation on any `SamBackend`: box → prediction → a point strategy's second pass."""

    def __init__(self, backend: SamBackend, num_points: int = 20, strategy: str = "paper"):
        if num_points < 0:
            raise ValueError("num_points must be >= 0")
        if strategy not in STRATEGIES:
            raise InvalidInputError(f"unknown point strategy {strategy!r}; use one of: {', '.join(STRATEGIES)}")
        self.backend = backend
        self.num_points = int(num_points)
        self.strategy = strategy

    def segment(self, image: Image.Image, detections: Detections) -> InstanceMasks:
        """One mask per labelled detection, at the image's size; unlabelled detections are skipped."""
        width, height = image.size
        kept = detections.labelled()
        if len(kept) == 0:
            return InstanceMasks.empty(height, width)
        encoded = self.backend.encode(image.convert("RGB"))
        first = self.backend.predict(encoded, kept.boxes, None)
        if self.num_points == 0:
            refined = Refined(first, [np.zeros((0, 2), np.float32) for _ in range(len(kept))])
        else:
            refined = STRATEGIES[self.strategy](
                first, kept.boxes, self.num_points,
                lambda points, mask_input: self.backend.predict(encoded, kept.boxes, points, mask_input),
            )
        logger.debug("segmented %d instances (%s, %d points)", len(kept), self.strategy, self.num_points)
        return InstanceMasks(
            masks=refined.prediction.logits > 0.0,
            boxes=kept.boxes,
            scores=kept.scores,
            labels=[str(label) for label in kept.labels],
            points=refined.points,
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
            from offline_seg.models.loading import loading
            from offline_seg.models.sam_loader import load_sam_model

            with loading("sam", self.model_path):
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
        """Mask logits (N, H, W) at the image's size (`predict`'s logits)."""
        return self.predict(encoded, boxes, points).logits

    def predict(
        self, encoded: dict[str, Any], boxes: np.ndarray, points: np.ndarray | None, mask_input: np.ndarray | None = None
    ) -> SamPrediction:
        """All boxes in one prompt-decoder call; with `mask_input`, one call per box (transformers adds the
        dense mask embedding to the image's embedding before repeating it per box, so it takes one mask)."""
        if mask_input is None:
            return self._predict(encoded, boxes, points, None)
        parts = [self._predict(encoded, boxes[i : i + 1], None if points is None else points[i : i + 1],
                               mask_input[i : i + 1]) for i in range(len(boxes))]
        return SamPrediction(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("logits", "iou", "low_res")))

    def _predict(
        self, encoded: dict[str, Any], boxes: np.ndarray, points: np.ndarray | None, mask_input: np.ndarray | None
    ) -> SamPrediction:
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
        if mask_input is not None:  # (1, 256, 256) -> (1, 1, 256, 256)
            prompts["input_masks"] = torch.as_tensor(np.asarray(mask_input)[:, None], dtype=parameter.dtype,
                                                     device=parameter.device)
        with torch.inference_mode():
            out = model(**encoded["model_inputs"], multimask_output=False, **prompts)
        low_res = out.pred_masks.float().cpu()  # (1, N, 1, h, w)
        logits = processor.post_process_masks(low_res, *encoded["post_sizes"], binarize=False)[0]
        return SamPrediction(
            logits=logits[:, 0].numpy(),  # (N, 1, H, W) -> (N, H, W)
            iou=out.iou_scores.float().cpu().reshape(-1).numpy(),
            low_res=low_res[0, :, 0].numpy(),
        )


class SamSegmenter(TwoPassSegmenter):
    """SAM on transformers (SAM, SAM-HQ or SAM 2): `model_path` is anything `load_sam_model` accepts."""

    def __init__(
        self,
        model_path: Path | str,
        num_points: int = 20,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        strategy: str = "paper",
    ):
        super().__init__(TransformersSam(model_path, device=device, dtype=dtype), num_points=num_points,
                         strategy=strategy)
        self.model_path = Path(model_path)

    @property
    def model(self) -> Any:
        return self.backend.load()[0]

    @property
    def processor(self) -> Any:
        return self.backend.load()[1]


class OnnxSamSegmenter(TwoPassSegmenter):
    """SAM exported to ONNX (image encoder + the standard SAM decoder) on ONNX Runtime: the CPU tier."""

    def __init__(self, model_dir: Path | str, num_points: int = 20, threads: int | None = None,
                 strategy: str = "paper"):
        from offline_seg.models.sam_onnx import OnnxSam

        super().__init__(OnnxSam(model_dir, threads=threads), num_points=num_points, strategy=strategy)
        self.model_dir = Path(model_dir)


SEGMENTER_BACKENDS = ("sam", "onnx")
PAPER_POINTS = 20  # the paper's n_p: what a named strategy uses when --points is not given
# Per backend: (strategy, n_p) when neither --point-strategy nor --points is given; the strategy is also what
# `--points N` alone gets. Chosen from scripts/bench_points.py (README, "Point prompts"): n_p = 0 is box only.
DEFAULT_POINT_PROMPTS = {"sam": ("gated", 3), "onnx": ("gated", 3)}


def resolve_point_prompt(backend: str, strategy: str | None, points: int | None) -> tuple[str, int]:
    """The (strategy, n_p) a segmenter backend runs with: the backend's default for what is not given, except
    that a strategy named without a point count gets the paper's 20 points (`paper` alone is the paper)."""
    default_strategy, default_points = DEFAULT_POINT_PROMPTS.get(backend, DEFAULT_POINT_PROMPTS["sam"])
    if points is None:
        points = default_points if strategy is None else PAPER_POINTS
    return strategy or default_strategy, points


def load_segmenter(spec: str | ModelSpec | None, weights: WeightsDir | None = None, num_points: int = 20,
                   device: str = "cpu", strategy: str = "paper") -> Segmenter:
    """A segmenter from its description: a `ModelSpec`, or the text `sam` (WEIGHTS/sam), `sam:PATH`
    (transformers dir or official .pth), `onnx` (WEIGHTS/sam_onnx) or `onnx:DIR`, with `?dtype=...`."""
    from offline_seg.specs import parse_spec

    if not isinstance(spec, ModelSpec):
        root = weights.root if weights is not None else Path("weights")
        spec = parse_spec(spec, "segmenter", root, device)
    if spec.backend == "onnx":
        return OnnxSamSegmenter(Path(spec.path), num_points=num_points, strategy=strategy)
    return SamSegmenter(Path(spec.path), num_points=num_points, device=spec.device, dtype=spec.torch_dtype(),
                        strategy=strategy)
