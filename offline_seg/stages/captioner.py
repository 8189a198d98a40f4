"""Image captioning: BLIP-2's caption joins the tagger's tags as the text the pre-refinement LLM reads.

BLIP-2 runs through transformers (`Blip2ForConditionalGeneration` + `Blip2Processor`) from a local
directory; decoding is greedy so the same image always gives the same caption.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

from PIL import Image

from offline_seg.models.hf import load_local_pretrained

logger = logging.getLogger(__name__)

COMPONENT = "blip2"
REQUIRED_FILES = ("config.json", "*.safetensors", "preprocessor_config.json")


@runtime_checkable
class Captioner(Protocol):
    """Anything that describes an image in one sentence."""

    def caption(self, image: Image.Image) -> str:
        ...


class Blip2Captioner:
    """Unconditional BLIP-2 captions (no text prompt), loaded on first use."""

    def __init__(
        self,
        model_dir: Path | str,
        max_new_tokens: int = 30,
        device: str = "cpu",
        dtype: object | None = None,
        batch_size: int = 8,
        quantization: str | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.quantization = quantization  # int8 / int4: bitsandbytes, as a memory plan decides
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self._model = None
        self._processor = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        self._processor, self._model = load_local_pretrained(
            self.model_dir, COMPONENT, REQUIRED_FILES, Blip2ForConditionalGeneration, Blip2Processor,
            device=self.device, dtype=self.dtype, quantization=self.quantization,
        )

    def caption(self, image: Image.Image) -> str:
        """One caption for one image."""
        return self.caption_batch([image])[0]

    @property
    def model(self):
        """The loaded torch model (loads it on first use)."""
        self._load()
        return self._model

    def caption_batch(self, images: Sequence[Image.Image]) -> list[str]:
        """Captions for several images, `batch_size` at a time."""
        captions: list[str] = []
        for start in range(0, len(images), self.batch_size):
            captions.extend(self._caption_chunk(images[start : start + self.batch_size]))
        return captions

    def _caption_chunk(self, images: Sequence[Image.Image]) -> list[str]:
        import torch

        if not images:
            return []
        self._load()
        model, processor = self._model, self._processor
        pixel_values = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(model.device, dtype=model.dtype)
        # The prompt generate() builds itself: one <image> slot per query token, then BOS.
        config = model.config
        prompt = [config.image_token_index] * config.num_query_tokens + [config.text_config.bos_token_id]
        input_ids = torch.tensor([prompt] * len(images), dtype=torch.long, device=model.device)
        # BLIP-2's generate() hands over to the language model, which would otherwise ignore the
        # directory's generation_config.json (e.g. the real model's newline end token).
        generation_config = copy.deepcopy(model.generation_config)
        generation_config.update(do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens)
        with torch.inference_mode():
            generated = model.generate(
                pixel_values=pixel_values,
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=generation_config,
            )
        # Decoder-only LMs return the prompt followed by the new tokens; keep only the new ones.
        if generated.shape[1] >= input_ids.shape[1] and torch.equal(generated[:, : input_ids.shape[1]], input_ids):
            generated = generated[:, input_ids.shape[1] :]
        texts = processor.batch_decode(generated, skip_special_tokens=True)
        captions = [" ".join(text.split()) for text in texts]
        logger.info("captions: %s", captions)
        return captions
