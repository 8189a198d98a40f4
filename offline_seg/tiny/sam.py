"""Tiny random SAM-family models (~0.1M parameters, 128-px input) for tests and smoke runs.

`write` and `write_official` build the same SAM weights from the same seed, so tests can check that the
official-checkpoint converter reproduces the transformers model exactly. `write_hq` and `write_sam2` write
SAM-HQ (`SamHQModel`) and SAM 2 (`Sam2Model`) in transformers' on-disk format, to exercise the loader's
`model_type` dispatch and each variant's prompt path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch
    from transformers import Sam2Model, SamHQModel, SamModel

IMAGE_SIZE = 128  # 8x8 patch grid: windowed blocks (window 4) differ in shape from the global one
OFFICIAL_NAME = "sam_vit_t_tiny.pth"  # matches the loader's `sam_vit_*.pth` glob
HIDDEN = 32


def _vision_kwargs() -> dict:
    """The tiny ViT shared by SAM and SAM-HQ."""
    return dict(
        hidden_size=HIDDEN,
        output_channels=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=16,
        mlp_dim=64,
        window_size=4,
        global_attn_indexes=[1],
        num_pos_feats=HIDDEN // 2,  # the official layout ties this to the prompt width
    )


def _prompt_kwargs() -> dict:
    return dict(hidden_size=HIDDEN, image_size=IMAGE_SIZE, patch_size=16, mask_input_channels=8)


def _decoder_kwargs() -> dict:
    return dict(hidden_size=HIDDEN, mlp_dim=64, num_hidden_layers=2, num_attention_heads=8, iou_head_hidden_dim=HIDDEN)


def build(seed: int = 0) -> SamModel:
    """The tiny model, with weights drawn wide enough that its mask logits vary visibly in sign."""
    import torch
    from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

    config = SamConfig(
        vision_config=SamVisionConfig(**_vision_kwargs()),
        prompt_encoder_config=SamPromptEncoderConfig(**_prompt_kwargs()),
        mask_decoder_config=SamMaskDecoderConfig(**_decoder_kwargs()),
    )
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    # transformers initialises the vision tower near zero (range 1e-10), which makes every logit ~0;
    # redraw non-norm weights so masks have structure (still meaningless).
    return _redraw(model, seed, lambda name: "layer_norm" in name or name == _TIED)


_TIED = "shared_image_embedding.positional_embedding"  # a copy of the prompt encoder's table


def _redraw(model: torch.nn.Module, seed: int, keep: Callable[[str], bool]) -> torch.nn.Module:
    """Redraw every parameter not kept as N(0, 0.2^2) in `named_parameters` order, then re-tie."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if keep(name):
                continue
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
        model.tie_weights()
    return model


def _is_norm(model: torch.nn.Module) -> Callable[[str], bool]:
    """Whether a parameter name belongs to a LayerNorm (any subclass) of `model`, or is the tied table."""
    import torch

    norms = {f"{module_name}.{p}" for module_name, module in model.named_modules()
             if isinstance(module, torch.nn.LayerNorm) for p in ("weight", "bias")}
    return lambda name: name in norms or name == _TIED


def build_hq(seed: int = 0) -> SamHQModel:
    """A tiny SAM-HQ: the tiny SAM's shapes plus the HQ token path (fed by the one global block's output)."""
    import torch
    from transformers import (
        SamHQConfig,
        SamHQMaskDecoderConfig,
        SamHQModel,
        SamHQPromptEncoderConfig,
        SamHQVisionConfig,
    )

    config = SamHQConfig(
        vision_config=SamHQVisionConfig(**_vision_kwargs()),
        prompt_encoder_config=SamHQPromptEncoderConfig(**_prompt_kwargs()),
        # vit_dim: width of the ViT features the HQ path compresses
        mask_decoder_config=SamHQMaskDecoderConfig(**_decoder_kwargs(), vit_dim=HIDDEN),
    )
    torch.manual_seed(seed)
    model = SamHQModel(config).eval()
    return _redraw(model, seed, _is_norm(model))


def build_sam2(seed: int = 0) -> Sam2Model:
    """A tiny SAM 2: a 4-stage Hiera (32/16/8/4 grids at 128 px) with an FPN feeding the decoder's 3 levels."""
    import torch
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2Model,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    dims = [8, 16, 32, 64]
    backbone = Sam2HieraDetConfig(
        hidden_size=dims[0],
        num_attention_heads=1,
        image_size=[IMAGE_SIZE, IMAGE_SIZE],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=dims,
        num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[4, 4, 4, 4],
        # Not the first block of a stage: Hiera's pooling blocks need a window.
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[4, 4],
    )
    grids = [[IMAGE_SIZE // 4 >> level] * 2 for level in range(3)]  # 32, 16, 8
    config = Sam2Config(
        vision_config=Sam2VisionConfig(
            backbone_config=backbone,
            backbone_channel_list=dims[::-1],
            backbone_feature_sizes=grids,
            fpn_hidden_size=HIDDEN,
        ),
        prompt_encoder_config=Sam2PromptEncoderConfig(**_prompt_kwargs()),
        mask_decoder_config=Sam2MaskDecoderConfig(**_decoder_kwargs()),
    )
    torch.manual_seed(seed)
    model = Sam2Model(config).eval()
    return _redraw(model, seed, _is_norm(model))


def _processor():
    from offline_seg.models.sam_loader import default_processor

    return default_processor(IMAGE_SIZE)


def _write_with_sam_processor(model: torch.nn.Module, model_dir: Path) -> Path:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir)
    _processor().image_processor.save_pretrained(model_dir)  # flat preprocessor_config.json
    return model_dir


def write(model_dir: Path, seed: int = 0) -> Path:
    """Write config.json, model.safetensors and preprocessor_config.json under `model_dir`."""
    return _write_with_sam_processor(build(seed), model_dir)


def write_hq(model_dir: Path, seed: int = 0) -> Path:
    """Write the tiny SAM-HQ (config.json with model_type "sam_hq", model.safetensors, preprocessor_config.json);
    SAM-HQ preprocesses exactly like SAM."""
    return _write_with_sam_processor(build_hq(seed), model_dir)


def write_sam2(model_dir: Path, seed: int = 0) -> Path:
    """Write the tiny SAM 2 (config.json with model_type "sam2", model.safetensors, preprocessor_config.json).

    The preprocessor config is written by hand in `Sam2ImageProcessor`'s format, since that class cannot
    be built without torchvision.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    build_sam2(seed).save_pretrained(model_dir)
    write_squash_preprocessor(model_dir, "Sam2", IMAGE_SIZE, IMAGE_SIZE // 4, [0.485, 0.456, 0.406],
                              [0.229, 0.224, 0.225])
    return model_dir


def write_squash_preprocessor(model_dir: Path, family: str, size: int, mask_size: int, mean: list[float],
                              std: list[float]) -> Path:
    """preprocessor_config.json in the format of `<family>ImageProcessor` (SAM 2, SAM 3: squash-resize to a
    square, no padding), written by hand because those classes cannot be built without torchvision."""
    preprocessor = {
        "image_processor_type": f"{family}ImageProcessor",
        "processor_class": f"{family}Processor",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "mask_size": {"height": mask_size, "width": mask_size},
        "resample": 2,  # bilinear
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
        "do_convert_rgb": True,
    }
    path = Path(model_dir) / "preprocessor_config.json"
    path.write_text(json.dumps(preprocessor, indent=2) + "\n")
    return path


def write_official(path: Path, seed: int = 0) -> Path:
    """Write the same tiny model as an official segment-anything state dict.

    `path` is a `.pth` file, or a directory that receives `sam_vit_t_tiny.pth`.
    """
    import torch

    from offline_seg.models.sam_checkpoint import hf_to_official

    path = Path(path)
    if path.suffix != ".pth":
        path = path / OFFICIAL_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    state = hf_to_official(build(seed).state_dict())
    torch.save({k: v.detach().clone().contiguous() for k, v in state.items()}, path)
    return path
