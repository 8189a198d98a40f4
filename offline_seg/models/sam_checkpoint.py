"""SAM's official checkpoint format, translated to and from transformers' `SamModel` layout.

Users may hold the official segment-anything checkpoints (`sam_vit_h_4b8939.pth`, ...) rather than a
transformers directory, and the segment-anything package (with its torchvision dependency) is not part of
this toolkit. So the official state dict is renamed to transformers' layout on load, and its config is read
off the tensor shapes, which identify every official variant (and any smaller model written the same way).

The renaming is a table of bidirectional rules, so the same table also writes official files
(`hf_to_official`, used by the tiny-model writer and the round-trip tests).

Loading either format onto a model is models/sam_loader.py.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from transformers import SamConfig

OFFICIAL_GLOB = "sam_vit_*.pth"

# Official ViT variants: hidden size -> (depth, heads, global attention blocks). Shapes alone would also
# give depth and heads (via the rel-pos head dim); the table documents and cross-checks them.
KNOWN_VITS: dict[int, tuple[int, int, list[int]]] = {
    768: (12, 12, [2, 5, 8, 11]),  # ViT-B
    1024: (24, 16, [5, 11, 17, 23]),  # ViT-L
    1280: (32, 16, [7, 15, 23, 31]),  # ViT-H
}
# The mask decoder's attention head count is not visible in any shape; every official SAM uses 8.
MASK_DECODER_HEADS = 8

# Buffers that some official checkpoints carry but transformers keeps in the image processor.
_DROPPED_OFFICIAL = ("pixel_mean", "pixel_std")
# transformers ties this copy to prompt_encoder.shared_embedding.positional_embedding.
_TIED_HF = "shared_image_embedding.positional_embedding"
_PE_HF = "prompt_encoder.shared_embedding.positional_embedding"

# (official, transformers) key patterns. `{i}` is a block index, `{rest}` the remaining dotted suffix.
# Order matters only in that the first matching rule wins; the patterns do not overlap.
_RULES: list[tuple[str, str]] = [
    # image encoder
    ("image_encoder.patch_embed.proj.{rest}", "vision_encoder.patch_embed.projection.{rest}"),
    ("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    ("image_encoder.blocks.{i}.norm1.{rest}", "vision_encoder.layers.{i}.layer_norm1.{rest}"),
    ("image_encoder.blocks.{i}.norm2.{rest}", "vision_encoder.layers.{i}.layer_norm2.{rest}"),
    ("image_encoder.blocks.{i}.attn.{rest}", "vision_encoder.layers.{i}.attn.{rest}"),
    ("image_encoder.blocks.{i}.mlp.{rest}", "vision_encoder.layers.{i}.mlp.{rest}"),
    ("image_encoder.neck.0.{rest}", "vision_encoder.neck.conv1.{rest}"),
    ("image_encoder.neck.1.{rest}", "vision_encoder.neck.layer_norm1.{rest}"),
    ("image_encoder.neck.2.{rest}", "vision_encoder.neck.conv2.{rest}"),
    ("image_encoder.neck.3.{rest}", "vision_encoder.neck.layer_norm2.{rest}"),
    # prompt encoder
    ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", _PE_HF),
    ("prompt_encoder.point_embeddings.{i}.{rest}", "prompt_encoder.point_embed.{i}.{rest}"),
    ("prompt_encoder.not_a_point_embed.{rest}", "prompt_encoder.not_a_point_embed.{rest}"),
    ("prompt_encoder.no_mask_embed.{rest}", "prompt_encoder.no_mask_embed.{rest}"),
    ("prompt_encoder.mask_downscaling.0.{rest}", "prompt_encoder.mask_embed.conv1.{rest}"),
    ("prompt_encoder.mask_downscaling.1.{rest}", "prompt_encoder.mask_embed.layer_norm1.{rest}"),
    ("prompt_encoder.mask_downscaling.3.{rest}", "prompt_encoder.mask_embed.conv2.{rest}"),
    ("prompt_encoder.mask_downscaling.4.{rest}", "prompt_encoder.mask_embed.layer_norm2.{rest}"),
    ("prompt_encoder.mask_downscaling.6.{rest}", "prompt_encoder.mask_embed.conv3.{rest}"),
    # mask decoder (its MLPs are handled by _mlp_rule, their layer numbering depends on depth)
    ("mask_decoder.iou_token.{rest}", "mask_decoder.iou_token.{rest}"),
    ("mask_decoder.mask_tokens.{rest}", "mask_decoder.mask_tokens.{rest}"),
    ("mask_decoder.transformer.layers.{i}.norm{n}.{rest}", "mask_decoder.transformer.layers.{i}.layer_norm{n}.{rest}"),
    ("mask_decoder.transformer.layers.{i}.self_attn.{rest}", "mask_decoder.transformer.layers.{i}.self_attn.{rest}"),
    (
        "mask_decoder.transformer.layers.{i}.cross_attn_token_to_image.{rest}",
        "mask_decoder.transformer.layers.{i}.cross_attn_token_to_image.{rest}",
    ),
    (
        "mask_decoder.transformer.layers.{i}.cross_attn_image_to_token.{rest}",
        "mask_decoder.transformer.layers.{i}.cross_attn_image_to_token.{rest}",
    ),
    ("mask_decoder.transformer.layers.{i}.mlp.{rest}", "mask_decoder.transformer.layers.{i}.mlp.{rest}"),
    (
        "mask_decoder.transformer.final_attn_token_to_image.{rest}",
        "mask_decoder.transformer.final_attn_token_to_image.{rest}",
    ),
    ("mask_decoder.transformer.norm_final_attn.{rest}", "mask_decoder.transformer.layer_norm_final_attn.{rest}"),
    ("mask_decoder.output_upscaling.0.{rest}", "mask_decoder.upscale_conv1.{rest}"),
    ("mask_decoder.output_upscaling.1.{rest}", "mask_decoder.upscale_layer_norm.{rest}"),
    ("mask_decoder.output_upscaling.3.{rest}", "mask_decoder.upscale_conv2.{rest}"),
]

_PLACEHOLDERS = {"i": r"(?P<i>\d+)", "n": r"(?P<n>\d+)", "rest": r"(?P<rest>[A-Za-z0-9_.]+)"}


def _compile(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", pattern)
    regex = "".join(_PLACEHOLDERS[p] if k % 2 else re.escape(p) for k, p in enumerate(parts))
    return re.compile(regex + r"\Z")


_COMPILED = [(_compile(official), official, _compile(hf), hf) for official, hf in _RULES]

# Official MLP (`layers.0..d-1`) <-> transformers SamFeedForward (`proj_in`, `layers.0..d-3`, `proj_out`).
_MLP_OFFICIAL = re.compile(
    r"(?P<head>mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.(?P<j>\d+)\.(?P<rest>\w+)\Z"
)
_MLP_HF = re.compile(
    r"(?P<head>mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\."
    r"(?P<part>proj_in|proj_out|layers\.(?P<j>\d+))\.(?P<rest>\w+)\Z"
)


def _translate(key: str, to_hf: bool) -> str | None:
    for official_re, official, hf_re, hf in _COMPILED:
        source, target = (official_re, hf) if to_hf else (hf_re, official)
        match = source.match(key)
        if match:
            return target.format(**match.groupdict())
    return None


def _mlp_depths(keys: Any, pattern: re.Pattern[str], to_hf: bool) -> dict[str, int]:
    """Number of linear layers of each decoder MLP, counted from its keys."""
    layers: dict[str, set[str]] = {}
    for key in keys:
        match = pattern.match(key)
        if match:
            layers.setdefault(match["head"], set()).add(match["j"] if to_hf else match["part"])
    return {head: len(parts) for head, parts in layers.items()}


def official_to_hf(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Rename an official segment-anything state dict to transformers' `SamModel` keys.

    Raises ValueError on keys that belong to no SAM module, so a wrong checkpoint (SAM 2, HQ-SAM, a
    training snapshot) fails loudly instead of loading half its weights.
    """
    depths = _mlp_depths(state_dict, _MLP_OFFICIAL, to_hf=True)
    out: dict[str, Any] = {}
    unknown = []
    for key, value in state_dict.items():
        if key in _DROPPED_OFFICIAL:
            continue
        mlp = _MLP_OFFICIAL.match(key)
        if mlp:
            j, depth = int(mlp["j"]), depths[mlp["head"]]
            part = "proj_in" if j == 0 else "proj_out" if j == depth - 1 else f"layers.{j - 1}"
            out[f"{mlp['head']}.{part}.{mlp['rest']}"] = value
            continue
        new = _translate(key, to_hf=True)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"not an official SAM checkpoint: {len(unknown)} unknown keys, e.g. {unknown[:3]}")
    if _PE_HF in out:
        out[_TIED_HF] = out[_PE_HF]
    return out


def hf_to_official(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `official_to_hf`: transformers `SamModel` keys to official segment-anything keys."""
    state = dict(state_dict)
    tied = state.pop(_TIED_HF, None)
    if _PE_HF not in state and tied is not None:  # safetensors files keep only one of the tied pair
        state[_PE_HF] = tied
    depths = _mlp_depths(state, _MLP_HF, to_hf=False)
    out: dict[str, Any] = {}
    unknown = []
    for key, value in state.items():
        mlp = _MLP_HF.match(key)
        if mlp:
            depth = depths[mlp["head"]]
            part = mlp["part"]
            j = 0 if part == "proj_in" else depth - 1 if part == "proj_out" else int(mlp["j"]) + 1
            out[f"{mlp['head']}.layers.{j}.{mlp['rest']}"] = value
            continue
        new = _translate(key, to_hf=False)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"not a transformers SamModel state dict: {len(unknown)} unknown keys, e.g. {unknown[:3]}")
    return out


def _count(keys: Any, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := regex.match(k))})


def infer_sam_config(official_state_dict: Mapping[str, Any]) -> SamConfig:
    """Build the `SamConfig` of an official-format state dict from its tensor shapes.

    Everything but the mask decoder's head count (8 in every official model) is visible in the shapes:
    the rel-pos tables give the head dim and, by their length, which blocks attend globally
    (length 2*grid-1) versus in windows (2*window-1).
    """
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    sd = official_state_dict
    keys = list(sd)

    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise ValueError(f"not an official SAM checkpoint: no '{key}'")
        return tuple(sd[key].shape)

    hidden, channels, patch, _ = shape("image_encoder.patch_embed.proj.weight")
    depth = _count(keys, r"image_encoder\.blocks\.(\d+)\.")
    mlp_dim = shape("image_encoder.blocks.0.mlp.lin1.weight")[0]
    output_channels = shape("image_encoder.neck.0.weight")[0]
    use_abs_pos = "image_encoder.pos_embed" in sd
    use_rel_pos = "image_encoder.blocks.0.attn.rel_pos_h" in sd
    qkv_bias = "image_encoder.blocks.0.attn.qkv.bias" in sd
    # Without an absolute position table nothing records the input size; SAM's is 1024.
    grid = shape("image_encoder.pos_embed")[1] if use_abs_pos else 1024 // patch
    image_size = grid * patch

    if hidden in KNOWN_VITS and KNOWN_VITS[hidden][0] == depth:
        _, heads, global_indexes = KNOWN_VITS[hidden]
        window = 14
    elif use_rel_pos:
        head_dim = shape("image_encoder.blocks.0.attn.rel_pos_h")[1]
        heads = hidden // head_dim
        lengths = [shape(f"image_encoder.blocks.{b}.attn.rel_pos_h")[0] for b in range(depth)]
        global_indexes = [b for b, n in enumerate(lengths) if n == 2 * grid - 1]
        windowed = [n for n in lengths if n != 2 * grid - 1]
        window = (windowed[0] + 1) // 2 if windowed else 14
    else:
        raise ValueError("cannot infer heads and attention windows of a non-standard SAM without rel-pos tables")

    decoder_hidden = shape("mask_decoder.iou_token.weight")[1]
    num_mask_tokens = shape("mask_decoder.mask_tokens.weight")[0]
    iou_depth = _count(keys, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.")
    iou_hidden = shape("mask_decoder.iou_prediction_head.layers.0.weight")[0]
    downsample = decoder_hidden // shape("mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight")[0]
    vision = SamVisionConfig(
        hidden_size=hidden,
        output_channels=output_channels,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        num_channels=channels,
        image_size=image_size,
        patch_size=patch,
        qkv_bias=qkv_bias,
        mlp_dim=mlp_dim,
        use_abs_pos=use_abs_pos,
        use_rel_pos=use_rel_pos,
        window_size=window,
        global_attn_indexes=global_indexes,
        num_pos_feats=shape("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix")[1],
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=decoder_hidden,
        image_size=image_size,
        patch_size=patch,
        mask_input_channels=shape("prompt_encoder.mask_downscaling.3.weight")[0],
        num_point_embeddings=_count(keys, r"prompt_encoder\.point_embeddings\.(\d+)\."),
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=decoder_hidden,
        mlp_dim=shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        num_hidden_layers=_count(keys, r"mask_decoder\.transformer\.layers\.(\d+)\."),
        num_attention_heads=MASK_DECODER_HEADS,
        attention_downsample_rate=downsample,
        num_multimask_outputs=num_mask_tokens - 1,
        iou_head_depth=iou_depth,
        iou_head_hidden_dim=iou_hidden,
    )
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
