"""What a model takes on the card: its parameters counted by how quantizers and dtypes treat them, the
bytes a loaded model really holds, and its activation allowances."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from offline_seg.errors import InvalidInputError
from offline_seg.plan.allowances import (
    CAPTIONER_WORKSPACE, DETECTOR_WORKSPACE, DTYPE_BYTES, GROUP_QUANT_BYTES, GROUP_QUANT_SIZE, GiB, INT4_BLOCK,
    INT4_BLOCK_SCALE_BYTES, INT8_ROW_SCALE_BYTES, LLM_FIXED_WORKSPACE, QUANTS, SAM3_BASE_WORKSPACE,
    SAM_IMAGE_SIZE, SEGMENTER_BASE_WORKSPACE, TAGGER_WORKSPACE,
)
from offline_seg.plan.architectures import StageSpec, _llm_spec

if TYPE_CHECKING:
    from offline_seg.specs import ModelSpec

logger = logging.getLogger(__name__)


# --- counting -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamCounts:
    """Parameters of one model split by how a weight-only quantizer and a dtype treat them."""

    total: int
    quantizable: int  # Linear weights other than the output head
    quantizable_rows: int  # their output rows (int8 keeps one scale per row)
    keep_fp32: int = 0  # `_keep_in_fp32_modules`: fp32 under an fp16 load, never quantized

    def weight_bytes(self, dtype: str = "fp16", quant: str = "none") -> int:
        """Bytes of the weights on the GPU at `dtype` with `quant` applied to the quantizable part."""
        if dtype not in DTYPE_BYTES:
            raise InvalidInputError(f"dtype must be one of {sorted(DTYPE_BYTES)}, not {dtype!r}")
        if quant not in QUANTS:
            raise InvalidInputError(f"quantization must be one of {QUANTS}, not {quant!r}")
        width = DTYPE_BYTES[dtype]
        fp32_kept = self.keep_fp32 * (4 if dtype == "fp16" else width)
        other = self.total - self.keep_fp32
        if quant == "none":
            return fp32_kept + other * width
        rest = (other - self.quantizable) * width
        if quant == "int8":
            quantized = self.quantizable + INT8_ROW_SCALE_BYTES * self.quantizable_rows
        elif quant in ("awq", "gptq"):
            quantized = self.quantizable // 2 + int(GROUP_QUANT_BYTES * -(-self.quantizable // GROUP_QUANT_SIZE))
        else:
            quantized = self.quantizable // 2 + INT4_BLOCK_SCALE_BYTES * -(-self.quantizable // INT4_BLOCK)
        return fp32_kept + rest + quantized


def count_params(model: Any) -> ParamCounts:
    """Split a (meta) model's parameters, each shared parameter once."""
    from torch import nn

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ()) | set(
        getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    quantizable: dict[int, bool] = {}
    rows: dict[int, int] = {}
    fp32: set[int] = set()
    sizes: dict[int, int] = {}
    for module_name, module in model.named_modules():
        parts = module_name.split(".")
        in_keep = any(part in keep for part in parts)
        for param_name, param in module.named_parameters(recurse=False):
            pid = id(param)
            sizes[pid] = param.numel()
            ok = isinstance(module, nn.Linear) and param_name == "weight" and module is not head and not in_keep
            quantizable[pid] = quantizable.get(pid, True) and ok  # a parameter shared with e.g. an Embedding is not
            if ok:
                rows[pid] = module.out_features
            if in_keep:
                fp32.add(pid)
    return ParamCounts(
        total=sum(sizes.values()),
        quantizable=sum(sizes[p] for p, q in quantizable.items() if q),
        quantizable_rows=sum(rows[p] for p, q in quantizable.items() if q),
        keep_fp32=sum(sizes[p] for p in fp32),
    )


def llm_parameters(model: ModelSpec) -> int | None:
    """Parameters of a local LLM, from the config its files carry (a transformers dir's config.json or a GGUF
    file's metadata), counted on the meta device (no weights read); None for a served model (`openai`), for
    files that are not there (the loader names them) and for a config that cannot be read (the loader says
    why). `--refiner auto` reads it: an LLM too small to help is not asked (stages/shortlist.py)."""
    if model.backend == "openai":
        return None
    path = Path(model.path)
    gguf = path.suffix == ".gguf" and path.is_file() or path.is_dir() and len(list(path.glob("*.gguf"))) == 1
    if not ((path / "config.json").is_file() or gguf):
        return None
    import torch

    try:
        spec = _llm_spec(path)
        with torch.device("meta"):
            return count_params(spec.build(spec.config)).total
    except (OSError, ValueError) as error:
        logger.warning("cannot count the parameters of the LLM in %s: %s", path, error)
        return None


def loaded_weight_bytes(model: Any) -> int:
    """Bytes a loaded model's weights take, each shared parameter once: its storage, plus what
    bitsandbytes keeps beside a quantized weight (int4 block absmax, int8 row scales). The figure the
    plan's `ParamCounts.weight_bytes` predicts; the footprint tests and scripts/bench_gpu.py compare them."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel() * param.element_size()
        state = getattr(param, "quant_state", None)
        extras = [getattr(state, "absmax", None), getattr(param, "SCB", None)]
        total += sum(t.numel() * t.element_size() for t in extras if t is not None)
    return total


@dataclass(frozen=True)
class StageProfile:
    """What one stage needs, independent of the card: parameters and dtype-free allowances."""

    name: str
    description: str
    source: str
    params: ParamCounts
    uses: int
    workspace_elements: int  # activation workspace, in 2-byte elements (fixed part)
    kv_per_token_elements: int = 0  # LLM only: K and V of one token, all layers
    act_per_token_elements: int = 0  # LLM only: prefill activations of one token in the widest layer
    logits_per_sequence_bytes: int = 0  # LLM only: fp32 logits of the last position (+ a processor copy)


def _workspace(spec: StageSpec) -> int:
    """Fixed activation allowance in 2-byte elements (see the constants at the top)."""
    if spec.name == "tagger":
        return TAGGER_WORKSPACE // 2
    if spec.name == "captioner":
        return CAPTIONER_WORKSPACE // 2
    if spec.name == "detector" and spec.config.model_type == "sam3":
        vision = spec.config.vision_config.backbone_config
        tokens = (vision.image_size // vision.patch_size) ** 2
        return SAM3_BASE_WORKSPACE // 2 + 2 * vision.num_attention_heads * tokens**2
    if spec.name == "detector":
        return DETECTOR_WORKSPACE // 2
    if spec.name == "segmenter":
        vision = spec.config.vision_config
        tokens = (SAM_IMAGE_SIZE // vision.patch_size) ** 2
        return SEGMENTER_BASE_WORKSPACE // 2 + 2 * vision.num_attention_heads * tokens**2
    return LLM_FIXED_WORKSPACE // 2


def profile(spec: StageSpec) -> StageProfile:
    """Build `spec` on the meta device and count it; cheap (no memory), ~0.1–0.5 s per model."""
    import torch

    with torch.device("meta"):
        model = spec.build(spec.config)
    params = count_params(model)
    logger.info("%s: %s, %d params (%s)", spec.name, spec.description, params.total, spec.source)
    extra: dict[str, int] = {}
    if spec.name == "llm":
        text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        intermediate = getattr(text, "intermediate_size", None) or 4 * text.hidden_size
        extra = dict(
            kv_per_token_elements=2 * text.num_hidden_layers * kv_heads * head_dim,
            act_per_token_elements=3 * intermediate + 4 * text.hidden_size,
            logits_per_sequence_bytes=2 * 4 * text.vocab_size,
        )
    return StageProfile(spec.name, spec.description, spec.source, params, spec.uses, _workspace(spec), **extra)


def profile_all(specs: Sequence[StageSpec]) -> list[StageProfile]:
    return [profile(spec) for spec in specs]


# --- planning -------------------------------------------------------------------------------------------
def parse_size(text: str | int | float) -> int:
    """'8GiB', '8 GB', '7680MiB', '8' (GiB) -> bytes. GB is read as GiB: cards are sold in binary GB."""
    if isinstance(text, (int, float)):
        return int(text * GiB)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?|[kmgt]i?b?)?\s*", str(text))
    if not match:
        raise InvalidInputError(f"cannot read a memory size from {text!r}; e.g. 8GiB, 12GB, 7680MiB")
    unit = (match.group(2) or "G")[0].upper()
    size = int(float(match.group(1)) * 1024 ** "KMGT".index(unit) * 1024)
    if size <= 0:
        raise InvalidInputError(f"a memory size must be more than 0, not {text!r}; e.g. 8GiB")
    return size


