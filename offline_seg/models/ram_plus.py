"""RAM++ (Recognize Anything Plus, Huang et al. 2023) image tagger, written in-project.

The upstream package (`recognize-anything`) is not on PyPI and breaks on transformers 5, so the
architecture is re-implemented here in plain torch. Module and parameter names follow the official
checkpoint `ram_plus_swin_large_14m.pth`, so it loads with every weight accounted for:

    visual_encoder   Swin-L/384 (patch 4, window 12); output = [avg-pooled token, patch tokens]
    image_proj       Linear(1536 -> 512) into the CLIP space of `label_embed`
    label_embed      (num_tags * 51, 512) CLIP embeddings of 51 LLM descriptions per tag
    reweight_scale   log temperature of the image-to-description softmax
    wordvec_proj     Linear(512 -> 768) + ReLU: one query per tag
    tagging_head     2-layer BERT-style decoder with cross-attention only (Query2Label style)
    fc               Linear(768 -> 1): one logit per tag

Only inference is implemented (no losses, no text encoder). The Swin backbone is models/swin.py; reading and
writing the official checkpoint, models/ram_plus_checkpoint.py.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from offline_seg.models.swin import SwinBlock, SwinTransformer, WindowAttention

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "ram_plus_swin_large_14m.pth"
CONFIG_NAME = "ram_plus_config.json"  # only written for non-official (e.g. tiny) models
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class RamPlusConfig:
    """Architecture hyper-parameters; the defaults are the official Swin-L/384 RAM++."""

    image_size: int = 384
    patch_size: int = 4
    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: float = 4.0
    clip_dim: int = 512  # width of label_embed / image_proj output / decoder key-value input
    num_tags: int = 4585
    num_descriptions: int = 51
    hidden_size: int = 768
    num_decoder_layers: int = 2
    num_decoder_heads: int = 4
    intermediate_size: int = 3072
    decoder_layer_norm_eps: float = 1e-12
    threshold: float = 0.68  # upstream default when no per-tag threshold is given

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        if len(self.depths) != len(self.num_heads):
            raise ValueError("depths and num_heads must have the same length")

    @property
    def vision_width(self) -> int:
        """Channels of the last Swin stage (1536 for Swin-L)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @classmethod
    def tiny(cls, num_tags: int = 20, num_descriptions: int = 4) -> RamPlusConfig:
        """A few-hundred-thousand-parameter model for tests: every code path, nothing learned."""
        return cls(
            image_size=64,
            patch_size=4,
            embed_dim=16,
            depths=(2, 2, 2, 2),
            num_heads=(1, 2, 4, 8),
            window_size=4,
            clip_dim=32,
            num_tags=num_tags,
            num_descriptions=num_descriptions,
            hidden_size=48,
            num_decoder_layers=2,
            num_decoder_heads=2,
            intermediate_size=96,
        )

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["depths"] = list(self.depths)
        data["num_heads"] = list(self.num_heads)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> RamPlusConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("ignoring unknown RAM++ config keys: %s", unknown)
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> RamPlusConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# --- tagging head (BERT layers with cross-attention only) ---------------------------------------


class CrossAttentionCore(nn.Module):
    """Queries from the tag embeddings, keys/values from the image tokens (named like BertSelfAttention)."""

    def __init__(self, hidden: int, encoder_width: int, num_heads: int):
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of {num_heads} heads")
        self.num_heads = num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(encoder_width, hidden)
        self.value = nn.Linear(encoder_width, hidden)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, encoder: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(hidden)), self._heads(self.key(encoder)), self._heads(self.value(encoder))
        out = F.scaled_dot_product_attention(q, k, v)  # encoder mask is all ones upstream: no mask
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d)


class AddNorm(nn.Module):
    """dense -> residual -> LayerNorm (BertSelfOutput / BertOutput)."""

    def __init__(self, in_dim: int, hidden: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(in_dim, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class CrossAttention(nn.Module):
    def __init__(self, hidden: int, encoder_width: int, num_heads: int, eps: float):
        super().__init__()
        self.self = CrossAttentionCore(hidden, encoder_width, num_heads)
        self.output = AddNorm(hidden, hidden, eps)

    def forward(self, hidden: torch.Tensor, encoder: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, encoder), hidden)


class Intermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class DecoderLayer(nn.Module):
    """BertLayer in upstream's 'tagging' mode: the self-attention is deleted, only cross-attention + FFN."""

    def __init__(self, config: RamPlusConfig):
        super().__init__()
        eps = config.decoder_layer_norm_eps
        self.crossattention = CrossAttention(config.hidden_size, config.clip_dim, config.num_decoder_heads, eps)
        self.intermediate = Intermediate(config.hidden_size, config.intermediate_size)
        self.output = AddNorm(config.intermediate_size, config.hidden_size, eps)

    def forward(self, hidden: torch.Tensor, encoder: torch.Tensor) -> torch.Tensor:
        attended = self.crossattention(hidden, encoder)
        return self.output(self.intermediate(attended), attended)


class DecoderStack(nn.Module):
    def __init__(self, config: RamPlusConfig):
        super().__init__()
        self.layer = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_decoder_layers))


class TaggingHead(nn.Module):
    """BertModel without embeddings or pooler: `encoder.layer.N.*` keys, as in the checkpoint."""

    def __init__(self, config: RamPlusConfig):
        super().__init__()
        self.encoder = DecoderStack(config)

    def forward(self, queries: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder.layer:
            queries = layer(queries, image_embeds)
        return queries


# --- RAM++ ------------------------------------------------------------------------------------


class RamPlus(nn.Module):
    """RAM++ inference: pixels (B, 3, S, S), ImageNet-normalised -> per-tag probabilities (B, num_tags)."""

    def __init__(self, config: RamPlusConfig | None = None):
        super().__init__()
        self.config = config = config or RamPlusConfig()
        self.visual_encoder = SwinTransformer(config)
        self.image_proj = nn.Linear(config.vision_width, config.clip_dim)
        self.label_embed = nn.Parameter(torch.zeros(config.num_tags * config.num_descriptions, config.clip_dim))
        self.reweight_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        # upstream: Identity when the decoder is as wide as CLIP (no wordvec_proj.* keys then)
        self.wordvec_proj = (
            nn.Linear(config.clip_dim, config.hidden_size) if config.hidden_size != config.clip_dim else nn.Identity()
        )
        self.tagging_head = TaggingHead(config)
        self.fc = nn.Linear(config.hidden_size, 1)
        self.register_buffer("class_threshold", torch.full((config.num_tags,), config.threshold), persistent=False)

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Random init as upstream (truncated normal 0.02, zero bias, unit LayerNorm); for tiny models."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, WindowAttention):
                nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02, a=-0.04, b=0.04,
                                      generator=generator)

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute the derived buffers (position indices, shift masks), e.g. after a meta-device build."""
        device = torch.device(device) if device is not None else None
        for module in self.modules():
            if isinstance(module, SwinBlock):
                module.reset_buffers(device)
        self.class_threshold = torch.full((self.config.num_tags,), self.config.threshold, device=device)

    def set_thresholds(self, thresholds: torch.Tensor | list[float]) -> None:
        values = torch.as_tensor(thresholds, dtype=torch.float32, device=self.fc.weight.device)
        if values.shape != (self.config.num_tags,):
            raise ValueError(f"expected {self.config.num_tags} thresholds, got {tuple(values.shape)}")
        self.class_threshold = values

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, num_tags) tag logits."""
        cfg = self.config
        image_embeds = self.image_proj(self.visual_encoder(pixel_values))  # B, 1+L, clip
        cls = F.normalize(image_embeds[:, 0], dim=-1)
        # each tag's query is its descriptions' embeddings weighted by their similarity to this image
        descriptions = self.label_embed.view(cfg.num_tags, cfg.num_descriptions, cfg.clip_dim).to(cls.dtype)
        weights = (self.reweight_scale.exp() * torch.einsum("bc,tdc->btd", cls, descriptions)).softmax(dim=-1)
        tag_embed = torch.einsum("btd,tdc->btc", weights, descriptions)
        queries = F.relu(self.wordvec_proj(tag_embed))
        hidden = self.tagging_head(queries, image_embeds)
        return self.fc(hidden).squeeze(-1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(pixel_values).float())

    @torch.no_grad()
    def predict(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, num_tags) booleans: probability above the per-tag threshold (strict, as upstream)."""
        return self(pixel_values) > self.class_threshold.to(pixel_values.device)
