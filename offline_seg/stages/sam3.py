"""SAM 3 as the detect-and-segment backend: every chosen class name is a concept prompt.

SAM 3 (transformers' `Sam3Model`) finds and segments every instance of a short noun phrase and scores
whether the concept is in the image at all (its presence head). With a closed class list each label is
its own prompt, so the detections come back already labelled with class names (no post-refinement) and
with their masks (no SAM pass: the segment stage reuses them, `MaskReuseSegmenter`).

Costs: the image is encoded once, each label's text once per run (a cache keyed by label), and the
DETR encoder/decoder + mask head run once per prompt, in batches of `prompt_batch` prompts that share
the image features. transformers' `Sam3ImageProcessor` needs torchvision, which this toolkit does not
install, so the image side uses the same squash-resize preprocessing written with torch alone
(`Sam2PilProcessor`) and the post-processing below follows `post_process_instance_segmentation`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from offline_seg.errors import InvalidInputError
from offline_seg.types import Detections, InstanceMasks

logger = logging.getLogger(__name__)

COMPONENT = "sam3"
REQUIRED_FILES = ("config.json", "*.safetensors", "tokenizer_config.json")
# Defaults of SAM 3's own post-processing (`Sam3Processor.post_process_instance_segmentation`): an instance
# is kept when sigmoid(logit) x sigmoid(presence) > 0.3, its mask is sigmoid(mask logits) > 0.5. That
# post-processing has no separate presence gate (presence only scales the scores), hence 0.0.
SCORE_THRESHOLD = 0.3
MASK_THRESHOLD = 0.5
PRESENCE_THRESHOLD = 0.0
TEXT_LENGTH = 32  # `Sam3Processor` pads every prompt to 32 tokens (the text encoder's positions)
PROMPT_BATCH = 8  # prompts decoded together against one image encoding
MASK_CHUNK = 16  # instances upsampled to the image's size at once
# `Sam3ImageProcessor`'s defaults, used where the weights dir's processor config says nothing.
IMAGE_SIZE = 1008
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)

def prompt_text(label: str) -> str:
    """A class name as the noun phrase SAM 3 was trained on: `dining-table` -> `dining table`."""
    return " ".join(label.replace("-", " ").replace("_", " ").lower().split())


@dataclass(frozen=True)
class Sam3Thresholds:
    """What counts as an instance: score (logit x presence), the concept's presence alone, mask pixels."""

    score: float = SCORE_THRESHOLD
    presence: float = PRESENCE_THRESHOLD
    mask: float = MASK_THRESHOLD

    def __post_init__(self) -> None:
        for name in ("score", "presence", "mask"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidInputError(f"the SAM 3 {name} threshold must be in [0, 1], not {getattr(self, name)}")


def _image_processor(model_dir: Path, image_size: int) -> Any:
    """Torch-only preprocessing with the dir's own settings (`preprocessor_config.json`, or the
    `image_processor` of `processor_config.json`), SAM 3's defaults where it gives none."""
    from offline_seg.models.sam_loader import Sam2PilProcessor

    config: dict[str, Any] = {}
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = model_dir / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            config = data.get(key, {}) if key else data
            if config:
                break
    return Sam2PilProcessor.from_config(config, image_size, IMAGE_MEAN, IMAGE_STD)


class Sam3Detector:
    """`Detector` on a local transformers SAM 3 dir, loaded on first use.

    `detect` returns one row per kept instance: pixel xyxy box, score, phrase = label = the prompt's class
    name, and its full-size mask. Text embeddings are cached per label for the detector's lifetime (one run).
    """

    def __init__(
        self,
        model_dir: Path | str,
        thresholds: Sam3Thresholds | None = None,
        device: str = "cpu",
        dtype: object | None = None,
        prompt_batch: int = PROMPT_BATCH,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.thresholds = thresholds or Sam3Thresholds()
        self.device = device
        self.dtype = dtype
        self.prompt_batch = max(1, int(prompt_batch))
        self._model: Any = None
        self._tokenizer: Any = None
        self._images: Any = None
        self._text: dict[str, tuple[Any, Any]] = {}  # label -> (features (T, D), attention mask (T,))

    def load(self) -> Any:
        """The model (tokenizer and image preprocessing alongside), from the local dir only."""
        if self._model is None:
            from transformers import AutoTokenizer, Sam3Model

            from offline_seg.models.hf import check_model_dir

            directory = check_model_dir(self.model_dir, COMPONENT, REQUIRED_FILES)
            logger.info("loading Sam3Model from %s", directory)
            from offline_seg.models.loading import loading

            kwargs = {"dtype": self.dtype} if self.dtype is not None else {}
            with loading(COMPONENT, directory):
                model = Sam3Model.from_pretrained(directory, local_files_only=True, **kwargs)
                self._tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
                self._images = _image_processor(directory, int(model.config.vision_config.backbone_config.image_size))
                self._model = model.to(self.device).eval()
        return self._model

    def clear_text_cache(self) -> None:
        """Forget the cached text embeddings (a long-lived detector whose class list changed)."""
        self._text.clear()

    def text_embeddings(self, labels: Sequence[str]) -> tuple[Any, Any]:
        """(features (N, T, D), mask (N, T)) of `labels`; only labels not seen before go through the text
        encoder, all of them in one call."""
        import torch

        model = self.load()
        new = [label for label in dict.fromkeys(labels) if label not in self._text]
        if new:
            tokens = self._tokenizer([prompt_text(label) for label in new], padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                                     return_tensors="pt").to(self.device)
            with torch.inference_mode():
                features = model.get_text_features(input_ids=tokens["input_ids"],
                                                   attention_mask=tokens["attention_mask"]).pooler_output
            for i, label in enumerate(new):
                self._text[label] = (features[i], tokens["attention_mask"][i])
            logger.debug("encoded %d new SAM 3 prompts (%d cached)", len(new), len(self._text))
        return (torch.stack([self._text[label][0] for label in labels]),
                torch.stack([self._text[label][1] for label in labels]))

    def detect(self, image: Image.Image, labels: Sequence[str]) -> Detections:
        """Every instance of every label, with masks at the image's size; labels are used as given."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        prompts = [label for label in dict.fromkeys(str(label).strip() for label in labels) if label]
        width, height = image.size
        if not prompts:
            return _empty(height, width)
        model = self.load()
        parameter = next(model.parameters())
        pixels = self._images(images=image.convert("RGB"))["pixel_values"].to(parameter.device, parameter.dtype)
        features, mask = self.text_embeddings(prompts)
        found: list[Detections] = []
        with torch.inference_mode():
            vision = model.get_vision_features(pixel_values=pixels)
            for start in range(0, len(prompts), self.prompt_batch):
                batch = prompts[start : start + self.prompt_batch]
                n = len(batch)
                shared = Sam3VisionEncoderOutput(  # one encoding, viewed n times
                    fpn_hidden_states=tuple(t.expand(n, *t.shape[1:]) for t in vision.fpn_hidden_states),
                    fpn_position_encoding=tuple(t.expand(n, *t.shape[1:]) for t in vision.fpn_position_encoding),
                )
                out = model(vision_embeds=shared, attention_mask=mask[start : start + n],
                            text_embeds=BaseModelOutputWithPooling(pooler_output=features[start : start + n]))
                found.extend(self._instances(out, i, label, height, width) for i, label in enumerate(batch))
        detections = _concat(found, height, width)
        logger.info("SAM 3: %d instances of %d prompts", len(detections), len(prompts))
        return detections

    def _instances(self, out: Any, row: int, label: str, height: int, width: int) -> Detections:
        """One prompt's instances, as `post_process_instance_segmentation` keeps them, plus the presence gate."""
        import torch

        presence = out.presence_logits[row].float().sigmoid().reshape(())
        if float(presence) < self.thresholds.presence:
            return _empty(height, width)
        scores = out.pred_logits[row].float().sigmoid() * presence
        keep = scores > self.thresholds.score
        if not bool(keep.any()):
            return _empty(height, width)
        boxes = out.pred_boxes[row][keep].float() * torch.tensor([width, height, width, height], device=scores.device)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        low_res = out.pred_masks[row][keep].float()
        masks = np.concatenate([  # a few masks at a time: full-size float maps of every instance add up
            (torch.nn.functional.interpolate(part[None], size=(height, width), mode="bilinear", align_corners=False)[0]
             .sigmoid() > self.thresholds.mask).cpu().numpy()
            for part in low_res.split(MASK_CHUNK)
        ])
        count = len(masks)
        return Detections(boxes.cpu().numpy(), scores[keep].cpu().numpy(), [label] * count, [label] * count, masks)


def _empty(height: int, width: int) -> Detections:
    return Detections(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), [], [],
                      np.zeros((0, height, width), bool))


def _concat(parts: Sequence[Detections], height: int, width: int) -> Detections:
    parts = [p for p in parts if len(p)]
    if not parts:
        return _empty(height, width)
    return Detections(
        np.concatenate([p.boxes for p in parts]),
        np.concatenate([p.scores for p in parts]),
        [phrase for p in parts for phrase in p.phrases],
        [label for p in parts for label in p.labels],
        np.concatenate([p.masks for p in parts]),
    )


class MaskReuseSegmenter:
    """`Segmenter` for detectors that segment too (SAM 3): the labelled detections' own masks, no model.

    SAM's two-pass point refinement does not apply: the masks are SAM 3's, and `--points` is ignored."""

    def segment(self, image: Image.Image, detections: Detections) -> InstanceMasks:
        width, height = image.size
        kept = detections.labelled()
        if len(kept) == 0:
            return InstanceMasks.empty(height, width)
        if kept.masks is None:
            raise InvalidInputError("these detections carry no masks: use a detector that segments (sam3), "
                                    "or a SAM segmenter")
        return InstanceMasks(masks=kept.masks, boxes=kept.boxes, scores=kept.scores,
                             labels=[str(label) for label in kept.labels])
