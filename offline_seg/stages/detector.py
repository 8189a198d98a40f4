"""Open-vocabulary box detection: the scene labels go in as one text prompt, boxes with phrases come out.

Grounding DINO runs through transformers' own implementation (`GroundingDinoForObjectDetection`)
rather than the `groundingdino-py` package: that package is unmaintained, builds its BERT from the
Hugging Face hub at load time (impossible offline), fails to import on transformers 5, and loads
checkpoints with `torch.load` without `weights_only`. The transformers port reads a local
safetensors directory and needs no compiled extension.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from offline_seg.models.hf import load_local_pretrained
from offline_seg.types import Detections

logger = logging.getLogger(__name__)

COMPONENT = "grounding_dino"
REQUIRED_FILES = ("config.json", "*.safetensors", "preprocessor_config.json")
_SPECIAL_TOKENS = re.compile(r"\[(?:SEP|CLS|PAD|MASK|UNK)\]|</?s>|<pad>", re.IGNORECASE)


@runtime_checkable
class Detector(Protocol):
    """Anything that turns an image and a list of labels into boxes with the phrase each box matched."""

    def detect(self, image: Image.Image, labels: Sequence[str]) -> Detections:
        """Boxes in pixel xyxy with `phrases` filled; `labels` stay None until post-refinement."""
        ...


def build_text_prompt(labels: Sequence[str]) -> str:
    """The method's prompt: labels lower-cased and joined as `a . b . c .`.

    Grounding DINO splits phrases on `.`, so dots inside a label are dropped; blank and repeated
    labels are skipped so each phrase appears once.
    """
    phrases: list[str] = []
    for label in labels:
        phrase = " ".join(str(label).replace(".", " ").lower().split())
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return " ".join(f"{phrase} ." for phrase in phrases)


def clean_phrase(text: str) -> str:
    """The decoded tokens of one box as a plain phrase: special tokens and dots removed, whitespace
    collapsed, lower case. Merged phrases ("cat dog") stay as they are; post-refinement maps them."""
    text = _SPECIAL_TOKENS.sub(" ", text).replace(".", " ")
    return " ".join(text.lower().split())


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, shape (len(a), len(b)); empty boxes have IoU 0."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    left_top = np.maximum(a[:, None, :2], b[None, :, :2])
    right_bottom = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(right_bottom - left_top, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Class-agnostic greedy non-maximum suppression in numpy (no torchvision offline).

    Returns the indices of the kept boxes, highest score first; a box is dropped when its IoU with
    an already kept box is strictly greater than `iou`. Ties in score keep the lower index first.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"nms: {len(boxes)} boxes but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")
    overlaps = box_iou(boxes, boxes)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep: list[int] = []
    for index in order:
        if suppressed[index]:
            continue
        keep.append(int(index))
        suppressed |= overlaps[index] > iou
    return np.asarray(keep, dtype=np.int64)


class GroundingDinoDetector:
    """Grounding DINO on a local transformers directory, loaded on first use.

    Boxes must pass `box_threshold` (max token probability), phrases are the tokens above
    `text_threshold`, and overlapping boxes are merged by class-agnostic NMS at `nms_iou`, as in the
    method (0.18 / 0.15 / 0.8).
    """

    def __init__(
        self,
        model_dir: Path | str,
        box_threshold: float = 0.18,
        text_threshold: float = 0.15,
        nms_iou: float = 0.8,
        device: str = "cpu",
        dtype: object | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.nms_iou = nms_iou
        self.device = device
        self.dtype = dtype
        self._model = None
        self._processor = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

        self._processor, self._model = load_local_pretrained(
            self.model_dir, COMPONENT, REQUIRED_FILES, GroundingDinoForObjectDetection, GroundingDinoProcessor,
            device=self.device, dtype=self.dtype,
        )

    @property
    def model(self):
        """The loaded torch model (loads it on first use)."""
        self._load()
        return self._model

    def prompt_pieces(self, labels: Sequence[str]) -> list[str]:
        """The label prompt cut into pieces that each fit the model's text input (`max_text_len` tokens,
        counted with its own tokenizer, [CLS] and [SEP] included); a label is never cut in two."""
        self._load()
        limit = int(getattr(self._model.config, "max_text_len", 256)) - 2
        tokenizer = self._processor.tokenizer
        pieces: list[list[str]] = [[]]
        used = 0
        for phrase in build_text_prompt(labels).split(" ."):
            phrase = phrase.strip()
            if not phrase:
                continue
            size = len(tokenizer(f"{phrase} .", add_special_tokens=False)["input_ids"])
            if size > limit:
                logger.warning("label %r is %d tokens, longer than the detector's text limit; cut", phrase, size)
                phrase = tokenizer.decode(tokenizer(phrase, add_special_tokens=False)["input_ids"][: limit - 1])
                size = limit
            if used + size > limit and pieces[-1]:
                pieces.append([])
                used = 0
            pieces[-1].append(phrase)
            used += size
        return [" ".join(f"{p} ." for p in piece) for piece in pieces if piece]

    def detect(self, image: Image.Image, labels: Sequence[str]) -> Detections:
        """Detect the labels in one image; boxes are pixel xyxy clipped to the image. A label list longer
        than the text input runs once per piece; all boxes meet in one NMS."""
        prompt = build_text_prompt(labels)
        if not prompt:
            return Detections.empty()
        self._load()
        image = image.convert("RGB")
        found = [self._detect_piece(image, piece) for piece in self.prompt_pieces(labels)]
        boxes = np.concatenate([f[0] for f in found]).reshape(-1, 4)
        scores = np.concatenate([f[1] for f in found]).reshape(-1)
        phrases = [phrase for f in found for phrase in f[2]]
        keep = nms(boxes, scores, self.nms_iou)
        detections = Detections(boxes[keep], scores[keep], [phrases[i] for i in keep])
        logger.info("prompt %r (%d piece(s)): %d boxes (%d before NMS)", prompt, len(found), len(detections),
                    len(phrases))
        return detections

    def _detect_piece(self, image: Image.Image, prompt: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Boxes, scores and phrases of one prompt that fits the text input, before NMS."""
        import torch

        width, height = image.size
        inputs = self._processor(images=image, text=prompt, return_tensors="pt").to(self.device)
        if self.dtype is not None:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            outputs = self._model(**inputs)
        outputs.logits = outputs.logits.float()
        outputs.pred_boxes = outputs.pred_boxes.float()
        result = self._processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            target_sizes=[(height, width)],
        )[0]
        boxes = result["boxes"].detach().cpu().numpy().astype(np.float32).reshape(-1, 4)
        scores = result["scores"].detach().cpu().numpy().astype(np.float32).reshape(-1)
        phrases = [clean_phrase(text) for text in result["text_labels"]]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        valid = [i for i, phrase in enumerate(phrases) if phrase and _has_area(boxes[i])]
        if len(valid) < len(phrases):
            logger.debug("dropped %d boxes with no phrase or no area", len(phrases) - len(valid))
        return boxes[valid], scores[valid], [phrases[i] for i in valid]


def _has_area(box: np.ndarray) -> bool:
    return bool(box[2] > box[0] and box[3] > box[1])
