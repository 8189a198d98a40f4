"""CenterNet (MobileNetV3 backbone, 80 COCO classes) as ONNX on ONNX Runtime: the CPU tier's detector.

The network is the TF.js graph model that npm `@vladmandic/human` ships (trained by
github.com/610265158/mobilenetv3_centernet); `offline-seg weights pull centernet` converts it to ONNX
(`centernet_convert.py`). It takes one 512×512 RGB image with pixel values 0–255 (NHWC float32) and
returns its 100 best heat-map peaks as `[x1, y1, x2, y2, score, class]`, in input pixels, class 0-based
in the order of `classes.json` (the package's `src/object/labels.ts`).

Two ways to fit a photo into 512×512: `letterbox` (the model's training: aspect ratio kept, centred, zero
padding) and `squash` (what the npm library does: stretched to the square). Boxes are mapped back to the
photo's pixels either way.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from offline_seg.errors import MissingWeightsError
from offline_seg.models.loading import onnx_session

logger = logging.getLogger(__name__)

MODEL_FILE = "centernet.onnx"
CLASSES_FILE = "classes.json"
INPUT_SIZE = 512
RESIZE_MODES = ("letterbox", "squash")
# The 80 COCO names of `labels.ts`, in the model's class order; `classes.json` (written at pull) wins.
COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)


@dataclass(frozen=True)
class Fit:
    """How a photo was placed in the model's square: input = photo * scale + offset (per axis)."""

    scale_x: float
    scale_y: float
    offset_x: float = 0.0
    offset_y: float = 0.0

    def to_photo(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        """Input-frame xyxy boxes back in photo pixels, clipped to the photo."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - self.offset_x) / self.scale_x
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - self.offset_y) / self.scale_y
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        return boxes


def fit_image(image: Image.Image, mode: str, size: int = INPUT_SIZE) -> tuple[np.ndarray, Fit]:
    """The (1, size, size, 3) float32 input of a photo and how it was placed (bilinear resampling)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, not {mode!r}")
    image = image.convert("RGB")
    width, height = image.size
    if mode == "squash":
        resized = image.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(resized, np.float32)[None], Fit(size / width, size / height)
    scale = min(size / width, size / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    canvas = np.zeros((size, size, 3), np.float32)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    canvas[top:top + new_h, left:left + new_w] = np.asarray(image.resize((new_w, new_h), Image.Resampling.BILINEAR),
                                                            np.float32)
    return canvas[None], Fit(new_w / width, new_h / height, float(left), float(top))


@dataclass
class RawDetections:
    """The model's peaks for one photo, before any threshold: boxes in photo pixels, 0-based class ids."""

    boxes: np.ndarray  # (K, 4) float32 xyxy
    scores: np.ndarray  # (K,) float32
    classes: np.ndarray  # (K,) int64


def read_class_names(model_dir: Path) -> tuple[str, ...]:
    """The model's class names in output order: `classes.json` beside the model, else the known COCO list."""
    path = Path(model_dir) / CLASSES_FILE
    if path.is_file():
        return tuple(json.loads(path.read_text(encoding="utf-8")))
    return COCO_NAMES


class CenterNetOnnx:
    """The ONNX CenterNet of a weights dir (`centernet.onnx` + `classes.json`); the session opens on first use."""

    def __init__(self, model_dir: Path | str, threads: int | None = None, providers: list[str] | None = None):
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.providers = providers or ["CPUExecutionProvider"]
        self._session = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return read_class_names(self.model_dir)

    def _open(self):
        if self._session is None:
            path = self.model_dir / MODEL_FILE
            if not path.is_file():
                raise MissingWeightsError(path, component="centernet")
            self._session = onnx_session("centernet", path, self.threads, self.providers)
            logger.info("loaded CenterNet ONNX from %s", path)
        return self._session

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The network on a (1, 512, 512, 3) input: (K, 6) rows [x1, y1, x2, y2, score, class]."""
        session = self._open()
        return session.run(None, {session.get_inputs()[0].name: batch.astype(np.float32)})[0][0]

    def detect(self, image: Image.Image, resize: str = "letterbox") -> RawDetections:
        width, height = image.size
        batch, fit = fit_image(image, resize)
        rows = self.run(batch)
        boxes = fit.to_photo(rows[:, :4], width, height)
        return RawDetections(boxes, rows[:, 4].astype(np.float32), rows[:, 5].astype(np.int64))
