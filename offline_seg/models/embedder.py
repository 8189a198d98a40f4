"""A sentence-embedding model (all-MiniLM-L6-v2 by default) read with transformers alone: `AutoModel`,
mean pooling over the attention mask, L2 normalisation. That is what sentence-transformers does for
this model family, without its dependency tree; cosine similarity is then a dot product."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from offline_seg.errors import InvalidInputError, MissingWeightsError
from offline_seg.specs import ModelSpec

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("config.json", "tokenizer.json")


class SentenceEmbedder:
    """Unit-length text embeddings from a local sentence-transformers / HF directory; loads on first use.

    `identity` names the model files, so caches of embeddings or answers are keyed by it.
    """

    def __init__(self, model_dir: Path, *, device: str = "cpu", batch_size: int = 64, max_length: int = 128) -> None:
        self.model_dir = Path(model_dir)
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self._model = None
        self._tokenizer = None
        self._pooling = "mean"
        self._memo: dict[str, np.ndarray] = {}

    @property
    def identity(self) -> str:
        weights = sorted(self.model_dir.glob("*.safetensors")) or sorted(self.model_dir.glob("*.bin"))
        stamp = ":".join(str(p.stat().st_size) for p in weights)
        return f"embedder:{self.model_dir.resolve()}:{stamp}"

    def _load(self) -> None:
        if self._model is not None:
            return
        if not self.model_dir.is_dir():
            raise MissingWeightsError(self.model_dir, component="embedder")
        for name in REQUIRED_FILES:
            if not (self.model_dir / name).is_file():
                raise MissingWeightsError(self.model_dir / name, component="embedder")
        from transformers import AutoModel, AutoTokenizer

        from offline_seg.models.loading import loading

        with loading("embedder", self.model_dir):
            self._pooling = _pooling_mode(self.model_dir)
            logger.info("loading sentence embedder from %s (%s pooling)", self.model_dir, self._pooling)
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            model = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
            model.to(self.device)
            model.eval()
        self._model = model

    @property
    def dimension(self) -> int:
        self._load()
        return int(self._model.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit length; repeated texts are embedded once."""
        texts = [str(t) for t in texts]
        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if missing:
            self._load()
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start : start + self.batch_size]
                for text, vector in zip(chunk, self._embed(chunk)):
                    self._memo[text] = vector
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self._memo[t] for t in texts])

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        batch = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {key: value.to(self.device) for key, value in batch.items()}
        with torch.inference_mode():
            hidden = self._model(**batch).last_hidden_state.float()
        if self._pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu().numpy().astype(np.float32)


def _pooling_mode(model_dir: Path) -> str:
    """`mean` or `cls` from a sentence-transformers `1_Pooling/config.json`; mean when there is none."""
    path = model_dir / "1_Pooling" / "config.json"
    if not path.is_file():
        return "mean"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise InvalidInputError(f"unreadable pooling config {path}: {error}") from error
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_mean_tokens", True):
        return "mean"
    raise InvalidInputError(f"{path}: only mean or CLS pooling is supported")


def load_embedder(spec: ModelSpec) -> SentenceEmbedder:
    """The embedder a `ModelSpec` describes (`offline_seg.specs.parse_spec(..., "embedder")`: a model directory,
    by default the weights dir's `embedder` entry)."""
    return SentenceEmbedder(Path(spec.path), device=spec.device)
