"""A tiny random SAM (~0.1M parameters, 128-px input) in transformers format or as an official `.pth`.

Both writers build the same weights from the same seed, so tests can check that the official-checkpoint
converter reproduces the transformers model exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import SamModel

IMAGE_SIZE = 128  # 8x8 patch grid: windowed blocks (window 4) differ in shape from the global one
OFFICIAL_NAME = "sam_vit_t_tiny.pth"  # matches the loader's `sam_vit_*.pth` glob


def build(seed: int = 0) -> SamModel:
    """The tiny model, with weights drawn wide enough that its mask logits vary visibly in sign."""
    import torch
    from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

    hidden = 32
    config = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=hidden,
            output_channels=hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=16,
            mlp_dim=64,
            window_size=4,
            global_attn_indexes=[1],
            num_pos_feats=hidden // 2,  # the official layout ties this to the prompt width
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=hidden, image_size=IMAGE_SIZE, patch_size=16, mask_input_channels=8
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=hidden, mlp_dim=64, num_hidden_layers=2, num_attention_heads=8, iou_head_hidden_dim=hidden
        ),
    )
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    # transformers initialises the vision tower near zero (range 1e-10), which makes every logit ~0;
    # redraw non-norm weights so masks have structure (still meaningless).
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name or name == "shared_image_embedding.positional_embedding":
                continue
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
        model.tie_weights()
    return model


def _processor():
    from offline_seg.models.sam_checkpoint import default_processor

    return default_processor(IMAGE_SIZE)


def write(model_dir: Path, seed: int = 0) -> Path:
    """Write config.json, model.safetensors and preprocessor_config.json under `model_dir`."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    build(seed).save_pretrained(model_dir)
    _processor().image_processor.save_pretrained(model_dir)  # flat preprocessor_config.json
    return model_dir


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
