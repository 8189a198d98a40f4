"""A tiny random RAM++ saved exactly like the official checkpoint (same file name, `vision_multi` keys).

Its tags are meaningless, but the thresholds are chosen so every image gets a few (the demo and the
pipeline tests need non-empty tags) and never all of them.
"""

from __future__ import annotations

import math
from pathlib import Path

# VOC-ish words, so the tiny chain's pre-refinement has something to map onto the class list
TAGS = (
    "person", "man", "woman", "dog", "cat", "car", "bicycle", "bird", "boat", "bottle",
    "chair", "sofa", "table", "plant", "horse", "grass", "sky", "tree", "road", "building",
)  # fmt: skip
ALWAYS = ("person", "dog", "sofa", "grass", "sky")  # threshold below the lowest reachable probability
SOMETIMES = ("man", "cat", "car", "table", "plant")  # threshold 0.5: depends on the image
MAX_LOGIT = 1.5  # |fc logit| is bounded by this, so probabilities stay within sigmoid(±1.5) = [0.18, 0.82]


def _tags(count: int) -> tuple[str, ...]:
    """TAGS, padded with never-firing fillers to `count` (a full-size model has 4,585 tags)."""
    return TAGS + tuple(f"tag{i}" for i in range(len(TAGS), count))


def _thresholds(tags: tuple[str, ...] = TAGS) -> list[float]:
    return [0.1 if tag in ALWAYS else 0.5 if tag in SOMETIMES else 0.9 for tag in tags]


def write(model_dir: Path, seed: int = 0, config=None) -> Path:
    """Write the checkpoint, its config json (not for the official size), the tag list and the thresholds;
    return the checkpoint. `config`: another RamPlusConfig than the tiny one, e.g. the official size with
    random weights (scripts/gpu_check.sh); the same few tags fire whatever the size."""
    import torch

    from offline_seg.models.ram_plus import CHECKPOINT_NAME, CONFIG_NAME, RamPlus, RamPlusConfig
    from offline_seg.models.ram_plus_checkpoint import save_ram_plus

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    config = config or RamPlusConfig.tiny(num_tags=len(TAGS), num_descriptions=4)
    tags = _tags(config.num_tags)
    (model_dir / CONFIG_NAME).unlink(missing_ok=True)
    generator = torch.Generator().manual_seed(seed)
    model = RamPlus(config)
    with torch.no_grad():
        model.init_weights(generator)
        # CLIP-like unit-norm description embeddings
        embed = torch.randn(model.label_embed.shape, generator=generator)
        model.label_embed.copy_(embed / embed.norm(dim=-1, keepdim=True))
        # The head ends in a unit LayerNorm, so its output norm is <= sqrt(hidden); a weight of norm
        # MAX_LOGIT / sqrt(hidden) and no bias bound every logit by MAX_LOGIT whatever the image.
        weight = torch.randn(model.fc.weight.shape, generator=generator)
        model.fc.weight.copy_(weight / weight.norm() * MAX_LOGIT / math.sqrt(config.hidden_size))
        model.fc.bias.zero_()

    checkpoint = save_ram_plus(model, model_dir / CHECKPOINT_NAME)
    (model_dir / "ram_tag_list.txt").write_text("\n".join(tags) + "\n", encoding="utf-8")
    (model_dir / "ram_tag_list_threshold.txt").write_text(
        "\n".join(f"{t:g}" for t in _thresholds(tags)) + "\n", encoding="utf-8"
    )
    return checkpoint
