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

Only inference is implemented (no losses, no text encoder).
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

from offline_seg.errors import MissingWeightsError, OfflineSegError

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


# --- Swin transformer --------------------------------------------------------------------------


def _relative_position_index(window: int, device: torch.device | None = None) -> torch.Tensor:
    """(W*W, W*W) index into the (2W-1)^2 bias table, as in Swin (row offset * (2W-1) + col offset)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return (rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]).to(device)


def _window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def _window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, window * window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def _shift_attention_mask(resolution: int, window: int, shift: int, device: torch.device | None) -> torch.Tensor:
    """(nW, N, N) additive mask (0 / -100) keeping shifted windows from mixing wrapped-around regions."""
    region = torch.zeros(1, resolution, resolution, 1)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for ws in cuts:
            region[:, hs, ws, :] = label
            label += 1
    ids = _window_partition(region, window).squeeze(-1)  # nW, N
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return torch.where(diff != 0, -100.0, 0.0).to(device)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        # derived from `window` alone: recomputed rather than loaded (the official file stores it)
        self.register_buffer("relative_position_index", _relative_position_index(window), persistent=False)

    def reset_buffers(self, device: torch.device | None = None) -> None:
        self.relative_position_index = _relative_position_index(self.window, device)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask.to(attn.dtype)[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(x)


class SwinBlock(nn.Module):
    """(Shifted-)window attention + MLP, pre-norm residual."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        if resolution <= window:  # window covers the whole map: no partition, no shift (as upstream)
            window, shift = resolution, 0
        self.resolution = resolution
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", self._mask(None), persistent=False)

    def _mask(self, device: torch.device | None) -> torch.Tensor | None:
        return _shift_attention_mask(self.resolution, self.window, self.shift, device) if self.shift else None

    def reset_buffers(self, device: torch.device | None = None) -> None:
        self.attn_mask = self._mask(device)
        self.attn.reset_buffers(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        r = self.resolution
        shortcut = x
        x = self.norm1(x).view(b, r, r, c)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(_window_partition(x, self.window), mask=self.attn_mask)
        x = _window_reverse(windows, self.window, r, r)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + x.reshape(b, length, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token with twice the channels."""

    def __init__(self, dim: int, resolution: int):
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        r = self.resolution
        x = x.view(b, r, r, c)
        # channel order (0,0), (1,0), (0,1), (1,1) as in Swin: the checkpoint's reduction depends on it
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    def __init__(self, dim: int, resolution: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 downsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim, resolution) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinTransformer(nn.Module):
    """Swin backbone returning (B, 1 + L, C): the mean token first, then the last stage's tokens."""

    def __init__(self, config: RamPlusConfig):
        super().__init__()
        self.image_size = config.image_size
        self.patch_embed = PatchEmbed(config.patch_size, config.embed_dim)
        resolution = config.image_size // config.patch_size
        stages = len(config.depths)
        self.layers = nn.ModuleList()
        for i in range(stages):
            self.layers.append(
                SwinStage(
                    dim=config.embed_dim * 2**i,
                    resolution=resolution // 2**i,
                    depth=config.depths[i],
                    num_heads=config.num_heads[i],
                    window=config.window_size,
                    mlp_ratio=config.mlp_ratio,
                    downsample=i < stages - 1,
                )
            )
        self.norm = nn.LayerNorm(config.vision_width)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} input, got {tuple(pixel_values.shape)}")
        x = self.patch_embed(pixel_values)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)


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


# --- checkpoint I/O ---------------------------------------------------------------------------


def _interpolate_bias_table(table: torch.Tensor, target_rows: int, name: str) -> torch.Tensor:
    """Resize a (S*S, heads) relative-position table to (T*T, heads) bicubically.

    Upstream uses a geometric-progression scipy interp2d (removed from scipy); bicubic on the grid
    is the common replacement. The official 384 checkpoint already has window 12, so it never hits this.
    """
    src = int(round(math.sqrt(table.shape[0])))
    dst = int(round(math.sqrt(target_rows)))
    if src * src != table.shape[0] or dst * dst != target_rows:
        raise OfflineSegError(f"{name}: relative position table rows {table.shape[0]} are not a square")
    logger.info("interpolating %s from %dx%d to %dx%d", name, src, src, dst, dst)
    grid = table.float().T.reshape(1, table.shape[1], src, src)
    grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=True)
    return grid.reshape(table.shape[1], dst * dst).T.contiguous().to(table.dtype)


def fix_state_dict(state_dict: dict[str, torch.Tensor], model: RamPlus) -> dict[str, torch.Tensor]:
    """Upstream's fix-ups: `vision_multi` -> `tagging_head`, drop derived buffers, resize bias tables."""
    expected = model.state_dict()
    fixed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith("vision_multi."):
            key = "tagging_head." + key.removeprefix("vision_multi.")
        if key.endswith(".relative_position_index") or key.endswith(".attn_mask"):
            continue
        if key.endswith("relative_position_bias_table") and key in expected:
            rows = expected[key].shape[0]
            if value.shape[0] != rows:
                value = _interpolate_bias_table(value, rows, key)
        fixed[key] = value
    return fixed


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict):
        raise OfflineSegError(f"{path} is not a RAM++ checkpoint (expected a dict with a 'model' state dict)")
    return checkpoint


def load_ram_plus(
    path: Path | str,
    config: RamPlusConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = torch.float32,
) -> RamPlus:
    """Build RAM++ and load an official-format checkpoint into it, every parameter required.

    The config comes from `config`, else a `ram_plus_config.json` beside the file (tiny models),
    else the official defaults. Keys the inference model has no use for are dropped with a log line.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(path, component="ram_plus")
    if config is None:
        config_file = path.parent / CONFIG_NAME
        config = RamPlusConfig.load(config_file) if config_file.is_file() else RamPlusConfig()
    state_dict = _read_checkpoint(path)

    with torch.device("meta"):  # no 1.3 GB random init only to be overwritten
        model = RamPlus(config)
    state_dict = fix_state_dict(state_dict, model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing:
        raise OfflineSegError(
            f"{path} does not fit the RAM++ config ({len(missing)} missing keys, e.g. {missing[:3]}); "
            f"is it a RAM++ checkpoint of this size?"
        )
    if unexpected:
        logger.info("RAM++: dropped %d checkpoint keys not used for inference (e.g. %s)", len(unexpected),
                    unexpected[:3])
        for key in unexpected:
            del state_dict[key]
    mismatched = [k for k in expected if tuple(expected[k].shape) != tuple(state_dict[k].shape)]
    if mismatched:
        key = mismatched[0]
        raise OfflineSegError(
            f"{path}: shape of {key} is {tuple(state_dict[key].shape)}, the config expects "
            f"{tuple(expected[key].shape)} ({len(mismatched)} mismatched tensors)"
        )
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.reset_buffers()  # the derived buffers are still on the meta device
    if dtype is not None:
        model.to(device=device, dtype=dtype)
    else:
        model.to(device=device)
    model.class_threshold = model.class_threshold.float()
    model.eval()
    logger.info("loaded RAM++ (%d tags) from %s", config.num_tags, path)
    return model


def official_state_dict(model: RamPlus) -> dict[str, torch.Tensor]:
    """The state dict as the official file stores it: `vision_multi.` prefix, Swin buffers included."""
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("tagging_head."):
            key = "vision_multi." + key.removeprefix("tagging_head.")
        state[key] = value.detach().cpu().contiguous()
    for name, module in model.visual_encoder.named_modules():
        if isinstance(module, SwinBlock):
            prefix = f"visual_encoder.{name}."
            state[prefix + "attn.relative_position_index"] = _relative_position_index(module.window)
            if module.shift:
                state[prefix + "attn_mask"] = _shift_attention_mask(module.resolution, module.window, module.shift,
                                                                    None)
    return state


def save_ram_plus(model: RamPlus, path: Path | str) -> Path:
    """Write `{'model': state_dict}` like the official file (plus a config json if not official size)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": official_state_dict(model)}, path)
    if model.config != RamPlusConfig():
        model.config.save(path.parent / CONFIG_NAME)
    return path
