"""GPU memory plan: which stages share one card, and in what order they load.

The full-size architectures are built on the meta device (no weights, no memory) from the configs in
the weights dir, or from the default models' configs written out below when a dir has none. Their
parameters are counted per precision, allowances for activations, the LLM's KV cache and the CUDA
context are added, and a residency is chosen: everything resident if it fits, else the subset that
saves the most host-to-GPU traffic per chunk stays resident and the rest load and unload per chunk in
stage-major order (the batch runner runs a whole chunk through one stage before the next).

All figures are estimates for planning, not measurements; the assumptions are the constants below.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from offline_seg.errors import InvalidInputError

logger = logging.getLogger(__name__)

GiB = 1024**3
MiB = 1024**2

# --- assumptions --------------------------------------------------------------------------------
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
QUANTS = ("none", "int8", "int4", "awq", "gptq")
# int8 (bitsandbytes LLM.int8): 1 byte per weight + one fp32 scale per output row.
INT8_ROW_SCALE_BYTES = 4
# int4: 0.5 byte per weight + one fp32 absmax per block of 64 (bitsandbytes nf4 as the transformers
# backend loads it, no double quantization) = 0.5625 byte/param. AWQ/GPTQ with group 128 (fp16 scale +
# 4-bit zero per group) is 0.5195 byte/param, so this is the conservative end of "4-bit".
INT4_BLOCK = 64
INT4_BLOCK_SCALE_BYTES = 4
# awq / gptq: a pre-quantized checkpoint, 4-bit weights in groups of 128 with an fp16 scale and a
# 4-bit zero point per group (vLLM and transformers load them as they are).
GROUP_QUANT_SIZE = 128
GROUP_QUANT_BYTES = 2.5
# A model description's quantization -> the byte arithmetic above (vLLM's in-flight bitsandbytes is
# nf4; fp8 is one byte per weight with per-row scales, like int8).
SPEC_QUANTS = {None: "none", "int8": "int8", "int4": "int4", "bitsandbytes": "int4", "fp8": "int8",
               "awq": "awq", "gptq": "gptq"}
# Weight-only quantizers convert Linear weights only; embeddings, norms, biases and the output head
# (lm_head, tied or not) stay at the compute dtype, and `_keep_in_fp32_modules` stay fp32.

CUDA_CONTEXT_BYTES = GiB // 2  # CUDA context + cuBLAS/cuDNN handles, once per process
# Activation workspace per stage at its input size, batch as the stage runs it, counted at 2 bytes
# per element (doubled for fp32). Order-of-magnitude allowances, rounded up:
TAGGER_WORKSPACE = GiB // 2  # RAM++ Swin-L at 384² for ≤ 4 tiles: 96²×192 stage-1 maps, 144² windows,
#                              4,585 tag queries cross-attending 577 image tokens
CAPTIONER_WORKSPACE = GiB // 2  # BLIP-2 at 224² (257 ViT-g tokens), batch 8, 32 query + ≤ 30 new tokens
DETECTOR_WORKSPACE = GiB  # Grounding DINO at 800×1333: Swin-T 200×334 stage-1 tokens, ~22k multi-scale
#                            encoder tokens × 256 fused with ≤ 256 text tokens, 900 queries
SEGMENTER_BASE_WORKSPACE = GiB // 2  # SAM at 1024²: 64² tokens, neck, prompt decoder for all boxes
SAM_IMAGE_SIZE = 1024  # + global-attention scores and the decomposed rel-pos bias: 2 × heads × tokens²
SAM3_BASE_WORKSPACE = GiB  # SAM 3 at 1008²: 72² ViT tokens, FPN maps up to 288²×256, and per batch of 8 prompts
#                            the DETR encoder/decoder (200 queries) and the mask head's 288² maps
#                            + the ViT's global-attention scores: 2 × heads × tokens² (as for SAM)
LLM_FIXED_WORKSPACE = GiB // 4  # a dequantized Linear, cuBLAS workspace, constrained-decoding masks
# LLM KV cache: 2 (K, V) × layers × kv_heads × head_dim × bytes per token, for `sequences` prompts of
# `context` tokens in flight. Defaults: the transformers backend's batch of 8; 1,024 tokens holds the
# pre-refinement prompt with the COCO-81 list (~650 tokens) + 200 new tokens. The planner halves the
# sequences when the LLM step alone does not fit.
LLM_SEQUENCES = 8
LLM_CONTEXT = 1024
# vLLM: a second process (its own CUDA context) that keeps weights + KV cache for its lifetime and
# claims `gpu_memory_utilization` of the card; the plan says which fraction leaves room for the rest.
VLLM_MAX_MODEL_LEN = 2048  # `llm serve` default; the KV cache holds at least this many tokens

CARDS_GIB = (8, 12, 16, 24)
CHAIN = ("tagger", "captioner", "llm", "detector", "llm", "segmenter")  # stage-major order of one chunk
STEP_NAMES = ("tagger", "captioner", "llm (pre)", "detector", "llm (post)", "segmenter")
# The batch runner's steps (offline_seg.specs.STEPS) as the plan names them.
STEP_LABELS = {"tag": "tagger", "caption": "captioner", "labels": "llm (pre)", "detect": "detector",
               "post_refine": "llm (post)", "segment": "segmenter"}


# --- default full-size configs --------------------------------------------------------------------
def _ram_plus_defaults() -> Any:
    from offline_seg.models.ram_plus import RamPlusConfig

    return RamPlusConfig()  # the official Swin-L/384 checkpoint carries no config


def _blip2_defaults() -> Any:
    from transformers import Blip2Config, OPTConfig

    text = OPTConfig(  # facebook/opt-2.7b
        hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, ffn_dim=10240, vocab_size=50272,
        word_embed_proj_dim=2560, max_position_embeddings=2048, tie_word_embeddings=True,
    )
    return Blip2Config(text_config=text.to_dict(), num_query_tokens=32)  # vision/Q-Former defaults = ViT-g


def _grounding_dino_defaults() -> Any:
    from transformers import GroundingDinoConfig

    return GroundingDinoConfig()  # defaults are grounding-dino-tiny: Swin-T backbone, BERT-base text


SAM_VARIANTS = {  # vision encoders of the official checkpoints; prompt encoder / decoder are shared
    "vit_b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "vit_l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  global_attn_indexes=[5, 11, 17, 23]),
    "vit_h": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                  global_attn_indexes=[7, 15, 23, 31]),
}


def _sam_defaults(variant: str = "vit_h") -> Any:
    from transformers import SamConfig

    return SamConfig(vision_config=dict(SAM_VARIANTS[variant]))


def _sam3_defaults() -> Any:
    from transformers import Sam3Config

    return Sam3Config()  # defaults are facebook/sam3: ViT 1008² (32 layers, 1024 wide), CLIP-L text encoder


def _llama3_8b_defaults() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(  # meta-llama/Meta-Llama-3-8B-Instruct
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192,
        tie_word_embeddings=False,
    )


# --- stage specs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageSpec:
    """One model of the chain and how to build its full-size architecture without weights."""

    name: str  # tagger | captioner | llm | detector | segmenter
    description: str
    source: str  # the config it was built from ("defaults" or a path)
    config: Any
    build: Callable[[Any], Any]  # config -> torch module (called under torch.device("meta"))
    uses: int = 1  # runs per chunk (the LLM serves pre- and post-refinement)


def _build_ram_plus(config: Any) -> Any:
    from offline_seg.models.ram_plus import RamPlus

    return RamPlus(config)


def _build_hf(class_name: str) -> Callable[[Any], Any]:
    def build(config: Any) -> Any:
        import transformers

        if class_name == "AutoModelForCausalLM":
            return transformers.AutoModelForCausalLM.from_config(config)
        return getattr(transformers, class_name)(config)

    return build


def _hf_config(directory: Path) -> Any | None:
    """The config.json of a transformers model dir, read offline; None when there is none."""
    path = directory / "config.json"
    if not path.is_file():
        return None
    from transformers import AutoConfig

    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("quantization_config", None)  # the plan applies its own precision
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise InvalidInputError(f"{path} has no model_type")
    return AutoConfig.for_model(model_type, **data)


def stage_specs(chain: Any) -> list[StageSpec]:
    """The full-size architectures of a `ChainSpec`'s models on the GPU plan, from the configs found at
    their paths (the default models' configs where there are none)."""
    from offline_seg.models.ram_plus import CONFIG_NAME, RamPlusConfig
    from offline_seg.specs import is_sam3

    specs: list[StageSpec] = []
    for model in chain.models:
        if not model.on_gpu_plan:
            logger.info("%s runs off the GPU (%s): not on the plan", model.stage, model.text())
            continue
        path = Path(model.path)
        if model.stage == "tagger":
            file = path / CONFIG_NAME
            config, source = (RamPlusConfig.load(file), str(file)) if file.is_file() else (_ram_plus_defaults(), "defaults")
            spec = StageSpec("tagger", "RAM++ Swin-L" if source == "defaults" else "RAM++", source, config, _build_ram_plus)
        elif model.stage == "captioner":
            spec = _hf_spec("captioner", path, "BLIP-2 OPT-2.7b", _blip2_defaults, "Blip2ForConditionalGeneration")
        elif is_sam3(model):  # detects and segments: the chain has no segmenter then
            spec = _hf_spec("detector", path, "SAM 3", _sam3_defaults, "Sam3Model")
        elif model.stage == "detector":
            spec = _hf_spec("detector", path, "Grounding DINO Swin-T", _grounding_dino_defaults,
                            "GroundingDinoForObjectDetection")
        elif model.stage == "segmenter":
            spec = _sam_spec(path)
        else:
            spec = _llm_spec(path)
        specs.append(replace(spec, uses=max(1, chain.uses(model.stage))))
    return specs


def _llm_spec(path: Path) -> StageSpec:
    """The LLM from a transformers dir's config.json, a GGUF file's metadata, or the default Llama-3-8B."""
    ggufs = [path] if path.suffix == ".gguf" else sorted(path.glob("*.gguf")) if path.is_dir() else []
    if not (path / "config.json").is_file() and len(ggufs) == 1 and ggufs[0].is_file():
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(ggufs[0].parent, gguf_file=ggufs[0].name, local_files_only=True)
        arch = (getattr(config, "architectures", None) or [config.model_type])[0]
        return StageSpec("llm", arch, str(ggufs[0]), config, _build_hf("AutoModelForCausalLM"))
    return _hf_spec("llm", path, "Llama-3-8B", _llama3_8b_defaults, "AutoModelForCausalLM")


def _hf_spec(name: str, directory: Path, label: str, defaults: Callable[[], Any], class_name: str) -> StageSpec:
    config = _hf_config(directory) if directory.is_dir() else None
    if config is None:
        return StageSpec(name, label, "defaults", defaults(), _build_hf(class_name))
    arch = (getattr(config, "architectures", None) or [config.model_type])[0]
    return StageSpec(name, arch, str(directory / "config.json"), config, _build_hf(class_name))


def _sam_spec(target: Path) -> StageSpec:
    """SAM from a transformers dir's config, else the variant named by an official `sam_vit_?_*.pth`."""
    directory = target if target.is_dir() else target.parent
    config = _hf_config(directory) if directory.is_dir() else None
    if config is not None:
        return StageSpec("segmenter", "SAM", str(directory / "config.json"), config, _build_hf("SamModel"))
    candidates = [target] if target.is_file() else sorted(directory.glob("sam_vit_*.pth")) if directory.is_dir() else []
    for path in candidates:
        match = re.search(r"sam_(vit_[bhl])", path.name)
        if match:
            variant = match.group(1)
            return StageSpec("segmenter", f"SAM {variant.replace('_', '-').upper()}", str(path),
                             _sam_defaults(variant), _build_hf("SamModel"))
    return StageSpec("segmenter", "SAM ViT-H", "defaults", _sam_defaults("vit_h"), _build_hf("SamModel"))


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
    return int(float(match.group(1)) * 1024 ** "KMGT".index(unit) * 1024)


@dataclass(frozen=True)
class PlanOptions:
    """Precision and allowance choices of one plan."""

    dtype: str = "fp16"
    llm_quant: str = "int4"
    captioner_quant: str = "none"
    llm_sequences: int = LLM_SEQUENCES
    llm_context: int = LLM_CONTEXT
    llm_backend: str = "transformers"  # or "vllm": a separate process, resident for the whole run
    cuda_context_bytes: int = CUDA_CONTEXT_BYTES
    # Per-stage choices a plan must not change: a model description's explicit dtype / quantization,
    # or a pre-quantized checkpoint's method. (stage, value) pairs.
    fixed_dtype: tuple[tuple[str, str], ...] = ()
    fixed_quant: tuple[tuple[str, str], ...] = ()

    def precision(self, stage: str) -> tuple[str, str]:
        """(dtype, quantization) of a stage."""
        quant = {"llm": self.llm_quant, "captioner": self.captioner_quant}.get(stage, "none")
        return dict(self.fixed_dtype).get(stage, self.dtype), dict(self.fixed_quant).get(stage, quant)

    def unfixed(self) -> PlanOptions:
        """These options with every per-stage choice open again (to name the cheapest change)."""
        return replace(self, fixed_dtype=(), fixed_quant=())


@dataclass(frozen=True)
class StagePlan:
    """One stage's share of the card."""

    name: str
    description: str
    params: int
    precision: str
    weights_bytes: int
    activation_bytes: int  # workspace while it runs (+ KV cache and logits for the LLM)
    resident: bool
    uses: int
    load_order: int  # 1-based: resident stages load once at start, the rest per chunk in chain order

    @property
    def step_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes


@dataclass(frozen=True)
class MemoryPlan:
    """Which stages stay on the GPU, the load order, the peak, and what to change when it does not fit."""

    gpu_bytes: int
    options: PlanOptions
    stages: tuple[StagePlan, ...]
    steps: tuple[str, ...]  # chain steps of one chunk, e.g. ("tagger", ..., "llm (post)", "segmenter")
    peak_bytes: int
    peak_step: str
    fits: bool
    llm_sequences: int  # may be below options.llm_sequences when the LLM step alone did not fit
    suggestions: tuple[str, ...] = ()
    vllm_gpu_memory_utilization: float | None = None

    @property
    def resident_stages(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages if s.resident)

    @property
    def swapped_stages(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages if not s.resident)

    def stage(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.name == name)

    @property
    def verdict(self) -> str:
        gib = f"{self.peak_bytes / GiB:.2f} of {self.gpu_bytes / GiB:.0f} GiB"
        if not self.fits:
            hint = f"; try: {', '.join(self.suggestions)}" if self.suggestions else "; no downgrade makes it fit"
            return f"does NOT fit: peak {gib} at {self.peak_step}{hint}"
        if not self.swapped_stages:
            return f"fits, all resident: peak {gib}"
        return (f"fits with swapping: peak {gib} at {self.peak_step}; "
                f"{', '.join(self.swapped_stages)} load per chunk")


def _stage_sizes(profile_: StageProfile, options: PlanOptions, sequences: int) -> tuple[int, int]:
    dtype, quant = options.precision(profile_.name)
    scale = DTYPE_BYTES[dtype] / 2  # allowances are in 2-byte elements
    weights = profile_.params.weight_bytes(dtype, quant)
    act = int(profile_.workspace_elements * 2 * scale)
    if profile_.name == "llm":
        cache_bytes = 2 if dtype == "fp32" and quant != "none" else DTYPE_BYTES[dtype]  # quantized: 16-bit compute
        tokens = sequences * options.llm_context
        if options.llm_backend == "vllm":  # it refuses to start without room for one full-length sequence
            tokens = max(tokens, VLLM_MAX_MODEL_LEN)
        act = int(profile_.workspace_elements * 2 * cache_bytes / 2)
        act += tokens * (profile_.kv_per_token_elements + profile_.act_per_token_elements) * cache_bytes
        act += sequences * profile_.logits_per_sequence_bytes
    return weights, act


def _peak(sizes: dict[str, tuple[int, int]], resident: frozenset[str], steps: Sequence[tuple[str, str]],
          context: int) -> tuple[int, str]:
    """Peak over the chain: the resident weights + the running step's (weights if swapped) + workspace."""
    base = context + sum(sizes[name][0] for name in resident)
    best, at = base, "start"
    for step, name in steps:
        weights, act = sizes[name]
        value = base + act + (0 if name in resident else weights)
        if value > best:
            best, at = value, step
    return best, at


def _choose(sizes: dict[str, tuple[int, int]], uses: dict[str, int], steps: Sequence[tuple[str, str]], gpu: int,
            context: int,
            forced: frozenset[str]) -> tuple[frozenset[str], int, str]:
    """The resident set that fits and saves the most reloaded bytes per chunk (all 2^n subsets; n ≤ 5)."""
    names = sorted(sizes)
    best: tuple[int, int, frozenset[str], int, str] | None = None
    for r in range(len(names) + 1):
        for subset in itertools.combinations(names, r):
            resident = frozenset(subset) | forced
            peak, at = _peak(sizes, resident, steps, context)
            saved = sum(uses[n] * sizes[n][0] for n in resident)
            key = (peak <= gpu, saved if peak <= gpu else -peak)
            if best is None or key > best[:2]:
                best = (*key, resident, peak, at)
    assert best is not None
    return best[2], best[3], best[4]


def make_plan(profiles: Sequence[StageProfile], gpu_bytes: int, options: PlanOptions | None = None,
              *, steps: Sequence[str] | None = None, suggest: bool = True) -> MemoryPlan:
    """Residency and load order of `profiles` on a card of `gpu_bytes`.

    `steps` are the chain steps that run (names of STEP_NAMES); default: every step of a profiled stage.
    """
    options = options or PlanOptions()
    if options.llm_backend not in ("transformers", "vllm"):
        raise InvalidInputError(f"llm backend must be transformers or vllm, not {options.llm_backend!r}")
    uses = {p.name: p.uses for p in profiles}
    chain = [(step, name) for step, name in zip(STEP_NAMES, CHAIN)
             if name in uses and (steps is None or step in steps)]
    vllm = options.llm_backend == "vllm" and "llm" in uses
    forced = frozenset({"llm"}) if vllm else frozenset()
    context = options.cuda_context_bytes * (2 if vllm else 1)
    requested = max(1, options.llm_sequences)
    candidates = [requested >> i for i in range(requested.bit_length())] if "llm" in uses else [requested]
    attempts = []
    for sequences in candidates:  # halve the LLM's batch only when nothing fits at the requested one
        sizes = {p.name: _stage_sizes(p, options, sequences) for p in profiles}
        if vllm:  # its KV cache and workspace stay allocated for the whole run
            weights, act = sizes["llm"]
            sizes["llm"] = (weights + act, 0)
        attempts.append((sequences, sizes, *_choose(sizes, uses, chain, gpu_bytes, context, forced)))
        if attempts[-1][3] <= gpu_bytes:
            break
    if attempts[-1][3] > gpu_bytes:
        attempts = attempts[:1]  # fewer sequences did not help: report the requested batch
    sequences, sizes, resident, peak, at = attempts[-1]
    order = [p.name for p in profiles if p.name in resident] + [p.name for p in profiles if p.name not in resident]
    stages = []
    for p in profiles:
        dtype, quant = options.precision(p.name)
        weights, act = _stage_sizes(p, options, sequences)
        stages.append(StagePlan(
            name=p.name, description=p.description, params=p.params.total,
            precision=dtype if quant == "none" else f"{quant}/{dtype}",
            weights_bytes=weights, activation_bytes=act, resident=p.name in resident, uses=p.uses,
            load_order=order.index(p.name) + 1,
        ))
    fits = peak <= gpu_bytes
    utilization = None
    if vllm:
        utilization = round(min(0.95, (sizes["llm"][0] + options.cuda_context_bytes) / gpu_bytes + 0.005), 2)
    plan = MemoryPlan(
        gpu_bytes=gpu_bytes, options=options, stages=tuple(stages),
        steps=tuple(step for step, _ in chain), peak_bytes=peak, peak_step=at, fits=fits,
        llm_sequences=sequences, vllm_gpu_memory_utilization=utilization,
    )
    if not fits and suggest:
        plan = replace(plan, suggestions=_downgrades(profiles, gpu_bytes, options.unfixed(), plan.steps))
    return plan


def _downgrades(profiles: Sequence[StageProfile], gpu_bytes: int, options: PlanOptions,
                steps: Sequence[str], *, cuts_only: bool = False) -> tuple[str, ...] | PlanOptions | None:
    """The shortest prefix of the usual precision cuts that makes the plan fit: the flags that say so
    (`()` when none does), or with `cuts_only` the options themselves (None when none does). Stages
    whose precision `options` fixes are not cut."""
    names = {p.name for p in profiles}
    fixed_quant = dict(options.fixed_quant)
    cuts: list[tuple[str, dict[str, Any]]] = []
    if options.dtype == "fp32" and not options.fixed_dtype:
        cuts.append(("--dtype fp16", {"dtype": "fp16"}))
    if "llm" in names and "llm" not in fixed_quant and options.llm_quant not in ("int4", "awq", "gptq"):
        cuts.append(("--llm-quant int4", {"llm_quant": "int4"}))
    if "captioner" in names and "captioner" not in fixed_quant:
        if options.captioner_quant == "none":
            cuts.append(("--captioner-quant int8", {"captioner_quant": "int8"}))
        if options.captioner_quant != "int4":
            cuts.append(("--captioner-quant int4", {"captioner_quant": "int4"}))
    if "llm" in names and options.llm_context > 512:
        cuts.append(("--llm-context 512", {"llm_context": 512}))
    applied: list[str] = []
    current = options
    for label, change in cuts:
        current = replace(current, **change)
        flag = label.split()[0]
        applied = [done for done in applied if done.split()[0] != flag] + [label]  # int4 replaces int8
        if make_plan(profiles, gpu_bytes, current, steps=steps, suggest=False).fits:
            return current if cuts_only else tuple(applied)
    return None if cuts_only else ()


# --- entry points -----------------------------------------------------------------------------------------
class PlanError(InvalidInputError):
    """The configured chain does not fit the card; the message names the cheapest change that would."""


def chain_options(chain: Any, options: PlanOptions | None = None) -> PlanOptions:
    """Plan options for a `ChainSpec`: its LLM backend, and every dtype / quantization its model
    descriptions fix (explicit options, a pre-quantized checkpoint, the device's default dtype)."""
    options = options or PlanOptions()
    fixed_dtype, fixed_quant = [], []
    for model in chain.models:
        if not model.on_gpu_plan:
            continue
        if "dtype" in model.explicit or not model.device.startswith("cuda"):
            fixed_dtype.append((model.stage, model.resolved_dtype))
        method = model.checkpoint_quantization
        if "quantization" in model.explicit:
            fixed_quant.append((model.stage, SPEC_QUANTS[model.quantization]))
        elif method in ("awq", "gptq"):
            fixed_quant.append((model.stage, method))
    llm = chain.model("llm")
    backend = llm.backend if llm is not None and llm.backend == "vllm" else "transformers"
    return replace(options, fixed_dtype=tuple(fixed_dtype), fixed_quant=tuple(fixed_quant), llm_backend=backend)


def plan_chain(chain: Any, gpu_bytes: int | str, options: PlanOptions | None = None) -> MemoryPlan:
    """The plan of a `ChainSpec` as described (no precision chosen for it: see `fit_chain`)."""
    gpu = parse_size(gpu_bytes) if isinstance(gpu_bytes, str) else int(gpu_bytes)
    steps = [STEP_LABELS[step] for step, _ in chain.model_steps]
    return make_plan(profile_all(stage_specs(chain)), gpu, chain_options(chain, options), steps=steps)


def fit_chain(chain: Any, gpu_bytes: int | str, options: PlanOptions | None = None) -> tuple[Any, MemoryPlan]:
    """Choose each model's precision and residency for a card of `gpu_bytes`, and return the `ChainSpec`
    that records them with the plan. The highest precision that fits wins (LLM 4-bit unless told
    otherwise; BLIP-2 fp16, then int8, then int4; a shorter LLM context last); explicit choices stay.
    Raises PlanError naming the cheapest change when nothing fits."""
    gpu = parse_size(gpu_bytes) if isinstance(gpu_bytes, str) else int(gpu_bytes)
    on_cpu = sorted({m.device for m in chain.models if m.on_gpu_plan and not m.device.startswith("cuda")})
    if on_cpu:
        raise InvalidInputError(f"--gpu-mem plans a CUDA card, but the models run on {', '.join(on_cpu)}: "
                                "pass --device cuda, or leave --gpu-mem out (on a CPU every model stays loaded)")
    steps = [STEP_LABELS[step] for step, _ in chain.model_steps]
    profiles = profile_all(stage_specs(chain))
    options = chain_options(chain, options)
    plan = make_plan(profiles, gpu, options, steps=steps, suggest=False)
    if not plan.fits:
        cut = _downgrades(profiles, gpu, options, steps, cuts_only=True)
        if cut is None:
            raise PlanError(_no_fit_message(chain, profiles, gpu, options, steps, plan))
        options = cut
        plan = make_plan(profiles, gpu, options, steps=steps, suggest=False)
    return apply_plan(chain, plan), plan


def _no_fit_message(chain: Any, profiles: Sequence[StageProfile], gpu: int, options: PlanOptions,
                    steps: Sequence[str], plan: MemoryPlan) -> str:
    head = (f"the chain does not fit a {gpu / GiB:.0f} GiB card: peak {plan.peak_bytes / GiB:.2f} GiB at "
            f"{plan.peak_step}, before any image was processed.")
    fixes = _downgrades(profiles, gpu, options.unfixed(), steps)
    if fixes:
        return f"{head} Cheapest change that fits: {', '.join(fixes)} (your explicit precision options prevent it)."
    if any(p.name == "llm" for p in profiles):
        rest = [p for p in profiles if p.name != "llm"]
        others = [s for s in steps if not s.startswith("llm")]
        if not rest or make_plan(rest, gpu, options.unfixed(), steps=others).fits or _downgrades(
                rest, gpu, options.unfixed(), others):
            return (f"{head} Cheapest change that fits: serve the LLM elsewhere (--llm openai:http://HOST:8000/v1, "
                    f"see `offline-seg llm serve`) and cut precision as `offline-seg plan` suggests.")
    return f"{head} No precision cut makes it fit: use a larger card, or --segmenter onnx and fewer stages."


def apply_plan(chain: Any, plan: MemoryPlan) -> Any:
    """`chain` with the plan's dtype, quantization and residency recorded in each model's description
    (explicit user choices are kept), and vLLM's memory share."""
    models = []
    for model in chain.models:
        if not model.on_gpu_plan or model.stage not in {s.name for s in plan.stages}:
            models.append(model)
            continue
        stage = plan.stage(model.stage)
        dtype, quant = plan.options.precision(model.stage)
        changes: dict[str, Any] = {"dtype": dtype, "quantization": None if quant == "none" else quant}
        if model.backend == "vllm":
            method = model.checkpoint_quantization
            changes["quantization"] = method if method in ("awq", "gptq") else (
                "bitsandbytes" if quant == "int4" else "fp8" if quant == "int8" else None)
            changes["gpu_memory_utilization"] = plan.vllm_gpu_memory_utilization
            changes["max_model_len"] = VLLM_MAX_MODEL_LEN
        elif quant in ("awq", "gptq"):
            changes["quantization"] = None  # the checkpoint carries it; transformers loads it as it is
        model = model.with_choices(**changes)
        models.append(replace(model, resident=stage.resident))
    return chain.replace_models(models)


def plan_for(config: Any, gpu_bytes: int | str, options: PlanOptions | None = None) -> MemoryPlan:
    """The plan for a `PipelineConfig` as described: only the models its switches load."""
    from offline_seg.specs import chain_spec

    return plan_chain(chain_spec(config), gpu_bytes, options)


def _gib(value: int) -> str:
    return f"{value / GiB:.2f}"


def format_plan(plan: MemoryPlan) -> str:
    """A readable table of one plan, the load order and the verdict."""
    header = f"{'stage':10} {'model':22} {'params':>14} {'precision':10} {'weights':>8} {'act+kv':>8} " \
             f"{'residency':9} {'load':>4}"
    lines = [f"GPU {plan.gpu_bytes / GiB:.0f} GiB, dtype {plan.options.dtype}, LLM {plan.options.llm_quant} "
             f"({plan.options.llm_backend}, {plan.llm_sequences} seq × {plan.options.llm_context} tokens)",
             header, "-" * len(header)]
    for s in plan.stages:
        residency = "resident" if s.resident else "swapped"
        lines.append(f"{s.name:10} {s.description[:22]:22} {s.params:>14,} {s.precision:10} {_gib(s.weights_bytes):>8} "
                     f"{_gib(s.activation_bytes):>8} {residency:9} {s.load_order:>4}")
    lines.append(f"{'context':10} {'CUDA context':22} {'':>14} {'':10} {'':>8} "
                 f"{_gib(plan.options.cuda_context_bytes):>8}")
    resident = ", ".join(plan.resident_stages) or "none"
    chunk = " → ".join(
        step + ("" if name in plan.resident_stages else " (load, run, free)")
        for step, name in zip(STEP_NAMES, CHAIN) if step in plan.steps
    )
    lines.append(f"load once: {resident}; per chunk: {chunk}")
    if plan.vllm_gpu_memory_utilization is not None:
        lines.append(f"vLLM: --gpu-memory-utilization {plan.vllm_gpu_memory_utilization}")
    lines.append(f"peak {_gib(plan.peak_bytes)} GiB at {plan.peak_step} (weights and act+kv in GiB)")
    lines.append(plan.verdict)
    return "\n".join(lines)


def format_cards(profiles: Sequence[StageProfile], options: PlanOptions,
                 cards_gib: Sequence[float] = CARDS_GIB) -> str:
    """One line per card size: peak, residency, verdict."""
    header = f"{'card':>7} {'peak GiB':>9} {'fits':5} {'llm seq':>7} {'resident':46} swapped / suggestion"
    lines = [header, "-" * len(header)]
    for card in cards_gib:
        plan = make_plan(profiles, parse_size(card), options)
        tail = ", ".join(plan.swapped_stages) or "-"
        if not plan.fits:
            tail = "try: " + (", ".join(plan.suggestions) or "a smaller model")
        lines.append(f"{card:>3g} GiB {_gib(plan.peak_bytes):>9} {'yes' if plan.fits else 'NO':5} {plan.llm_sequences:>7} "
                     f"{', '.join(plan.resident_stages) or '-':46} {tail}")
    return "\n".join(lines)


__all__ = [
    "CARDS_GIB", "MemoryPlan", "ParamCounts", "PlanError", "PlanOptions", "apply_plan", "fit_chain", "plan_chain", "StagePlan", "StageProfile", "StageSpec",
    "count_params", "format_cards", "loaded_weight_bytes", "format_plan", "make_plan", "parse_size", "plan_for", "profile",
    "profile_all", "stage_specs",
]
