"""RAM++ checkpoint I/O: the official `ram_plus_swin_large_14m.pth` format read into `RamPlus` (every
parameter required, upstream's key fix-ups applied) and written back (tiny test models)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from offline_seg.errors import MissingWeightsError, OfflineSegError
from offline_seg.models.ram_plus import CONFIG_NAME, RamPlus, RamPlusConfig
from offline_seg.models.swin import SwinBlock, relative_position_index, shift_attention_mask

logger = logging.getLogger(__name__)


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
            state[prefix + "attn.relative_position_index"] = relative_position_index(module.window)
            if module.shift:
                state[prefix + "attn_mask"] = shift_attention_mask(module.resolution, module.window, module.shift,
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
