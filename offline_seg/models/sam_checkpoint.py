"""Load SAM from either on-disk format onto transformers' `SamModel` (and SAM-HQ / SAM 2 from transformers dirs).

Users may hold the official segment-anything checkpoints (`sam_vit_h_4b8939.pth`, ...) rather than a
transformers directory, and the segment-anything package (with its torchvision dependency) is not part of
this toolkit. So the official state dict is renamed to transformers' layout on load, and its config is read
off the tensor shapes, which identify every official variant (and any smaller model written the same way).

The renaming is a table of bidirectional rules, so the same table also writes official files
(`hf_to_official`, used by the tiny-model writer and the round-trip tests).

transformers-format dirs dispatch on config.json's `model_type`: `sam` (`SamModel`), `sam_hq` (`SamHQModel`)
and `sam2` (`Sam2Model`). SAM 2's image processor needs torchvision, so without it an equivalent
torch/PIL one (`Sam2PilProcessor`) stands in.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from offline_seg.errors import InvalidInputError, MissingWeightsError

if TYPE_CHECKING:
    import torch
    from transformers import SamConfig, SamModel, SamProcessor

logger = logging.getLogger(__name__)

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


def default_processor(image_size: int = 1024) -> SamProcessor:
    """The standard SAM preprocessing (resize longest side, ImageNet normalise, pad square) for a model size.

    Uses the PIL backend because torchvision is not a dependency of this toolkit.
    """
    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    image_processor = SamImageProcessorPil(
        size={"longest_edge": image_size}, pad_size={"height": image_size, "width": image_size}
    )
    return SamProcessor(image_processor=image_processor)


def find_official_checkpoint(path: Path) -> Path | None:
    """The official `.pth` file that `path` names or holds, if any."""
    path = Path(path)
    if path.is_file() and path.suffix == ".pth":
        return path
    if path.is_dir():
        candidates = sorted(path.glob(OFFICIAL_GLOB))
        if len(candidates) > 1:
            logger.warning("several SAM checkpoints in %s; using %s", path, candidates[0].name)
        return candidates[0] if candidates else None
    return None


def _load_official(checkpoint: Path, device: str, dtype: torch.dtype | None) -> tuple[SamModel, SamProcessor]:
    import torch
    from transformers import SamModel

    logger.info("converting official SAM checkpoint %s", checkpoint)
    official = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(official, dict) and "model" in official and isinstance(official["model"], dict):
        official = official["model"]  # training snapshots wrap the weights
    config = infer_sam_config(official)
    state = official_to_hf(official)
    with torch.device("meta"):  # no time spent on random init of weights we overwrite at once
        model = SamModel(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval(), default_processor(config.vision_config.image_size)


# config.json `model_type` -> (model class, processor class) in transformers.
TRANSFORMERS_SAM_TYPES: dict[str, tuple[str, str]] = {
    "sam": ("SamModel", "SamProcessor"),
    "sam_hq": ("SamHQModel", "SamHQProcessor"),
    "sam2": ("Sam2Model", "Sam2Processor"),
}
# SAM 2 normalises with ImageNet statistics, like SAM.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Sam2PilProcessor:
    """The parts of `Sam2Processor` the segmenter uses, without torchvision.

    transformers' `Sam2ImageProcessor` is torchvision-only; this one does the same preprocessing (squash-resize
    to size x size with antialiased bilinear, rescale, ImageNet-normalise; no padding) and mask
    post-processing (bilinear upsampling to the original size) with torch alone.
    """

    def __init__(
        self,
        size: int = 1024,
        image_mean: tuple[float, ...] = _IMAGENET_MEAN,
        image_std: tuple[float, ...] = _IMAGENET_STD,
        rescale_factor: float = 1 / 255,
    ):
        self.target_size = int(size)
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        self.rescale_factor = float(rescale_factor)

    @classmethod
    def from_config_file(cls, path: Path, default_size: int) -> Sam2PilProcessor:
        """Read size/mean/std from a saved `Sam2ImageProcessor` config, defaults where it says nothing."""
        return cls.from_config(json.loads(path.read_text()) if path.is_file() else {}, default_size)

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any],
        default_size: int,
        default_mean: tuple[float, ...] = _IMAGENET_MEAN,
        default_std: tuple[float, ...] = _IMAGENET_STD,
    ) -> Sam2PilProcessor:
        """From a saved image processor config (SAM 2's or SAM 3's format), defaults where it says nothing."""
        size = config.get("size") or {}
        return cls(
            size=int(size.get("height", default_size)) if isinstance(size, dict) else int(size),
            image_mean=tuple(config.get("image_mean") or default_mean),
            image_std=tuple(config.get("image_std") or default_std),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
        )

    def __call__(self, images: Any = None, return_tensors: str = "pt", **kwargs: Any) -> dict[str, Any]:
        import numpy as np
        import torch
        import torch.nn.functional as F

        if kwargs:
            raise TypeError(f"Sam2PilProcessor takes images only (prompts go to the model), got {sorted(kwargs)}")
        batch = images if isinstance(images, (list, tuple)) else [images]
        pixels, sizes = [], []
        for image in batch:
            array = np.asarray(image.convert("RGB"), dtype=np.float32)
            sizes.append(list(array.shape[:2]))
            tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
            resized = F.interpolate(
                tensor, size=(self.target_size, self.target_size), mode="bilinear", align_corners=False, antialias=True
            )
            resized = resized.round().clamp(0, 255)  # torchvision resizes uint8 images to uint8
            mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
            std = torch.tensor(self.image_std).view(1, 3, 1, 1)
            pixels.append((resized * self.rescale_factor - mean) / std)
        return {"pixel_values": torch.cat(pixels), "original_sizes": torch.tensor(sizes, dtype=torch.long)}

    def post_process_masks(
        self, masks: Any, original_sizes: Any, mask_threshold: float = 0.0, binarize: bool = True, **kwargs: Any
    ) -> list[Any]:
        """Upsample each image's (N, C, h, w) low-res masks to its original size, as `Sam2ImageProcessor` does."""
        import torch.nn.functional as F

        if hasattr(original_sizes, "tolist"):
            original_sizes = original_sizes.tolist()
        out = []
        for i, size in enumerate(original_sizes):
            upsampled = F.interpolate(masks[i], [int(v) for v in size], mode="bilinear", align_corners=False)
            out.append(upsampled > mask_threshold if binarize else upsampled)
        return out


def sam_model_type(model_dir: Path) -> str:
    """The `model_type` of a transformers SAM dir's config.json (`sam` when it names none)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return str(config.get("model_type") or "sam")


def model_image_size(config: Any) -> int:
    """The square input size of any supported SAM config (SAM 2's vision config has none of its own)."""
    size = getattr(config.vision_config, "image_size", None)
    return size if isinstance(size, int) else int(config.prompt_encoder_config.image_size)


def _load_processor(model_dir: Path, model_type: str, processor_class: Any, image_size: int) -> Any:
    """The dir's own processor where it has one and it loads without torchvision, else the standard one."""
    has_config = (model_dir / "preprocessor_config.json").is_file() or (model_dir / "processor_config.json").is_file()
    if has_config:
        try:
            return processor_class.from_pretrained(model_dir, local_files_only=True)
        # transformers raises ValueError (or ImportError) when the saved image processor is torchvision-only,
        # as SAM 2's always is and other dirs' may be.
        except (ImportError, ValueError) as error:
            logger.info("cannot build %s's own processor (%s); using the built-in one", model_dir, error)
    if model_type == "sam2":
        return Sam2PilProcessor.from_config_file(model_dir / "preprocessor_config.json", image_size)
    standard = default_processor(image_size)
    if model_type == "sam_hq":
        from transformers import SamHQProcessor

        return SamHQProcessor(image_processor=standard.image_processor)
    return standard


def _load_transformers(model_dir: Path, device: str, dtype: torch.dtype | None) -> tuple[Any, Any]:
    import transformers

    model_type = sam_model_type(model_dir)
    if model_type not in TRANSFORMERS_SAM_TYPES:
        raise InvalidInputError(
            f"{model_dir} holds a '{model_type}' model; supported SAM model types: {', '.join(TRANSFORMERS_SAM_TYPES)}"
        )
    model_name, processor_name = TRANSFORMERS_SAM_TYPES[model_type]
    logger.info("loading transformers %s from %s", model_name, model_dir)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model_class = getattr(transformers, model_name)
    model = model_class.from_pretrained(model_dir, local_files_only=True, **kwargs).to(device).eval()
    processor_class = getattr(transformers, processor_name)
    processor = _load_processor(model_dir, model_type, processor_class, model_image_size(model.config))
    return model, processor


def load_sam_model(path: Path | str, device: str = "cpu", dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """Load SAM from a transformers dir (SAM, SAM-HQ or SAM 2), a dir holding one `sam_vit_*.pth`, or a `.pth`.

    Returns (model, processor). A transformers dir wins when a directory holds both.
    """
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return _load_transformers(path, device, dtype)
    checkpoint = find_official_checkpoint(path)
    if checkpoint is not None:
        return _load_official(checkpoint, device, dtype)
    missing = path if path.suffix == ".pth" or not path.is_dir() else path / "config.json"
    raise MissingWeightsError(missing, component="sam")
