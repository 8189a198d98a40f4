"""One description per model of the chain, parsed once.

Every stage's model is written the same way, `kind:PATH?key=value&...` (`--llm`, `--segmenter`; the
vision stages get theirs from the weights dir), and parsed here once into a `ModelSpec`: backend,
path, device, dtype, quantization, residency and the vLLM share. Which of them a run loads, and which
steps it runs, is decided once in offline_seg/chain.py.

Standard library only: the vLLM venv imports this through `offline_seg.llm.registry`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from offline_seg.errors import InvalidInputError

logger = logging.getLogger(__name__)

# Chain order of the models, and of the batch runner's steps with the model each one runs.
MODELS = ("tagger", "captioner", "llm", "detector", "segmenter")
STEPS = ("tag", "caption", "labels", "detect", "post_refine", "segment", "write")
STEP_MODELS = {"tag": "tagger", "caption": "captioner", "labels": "llm", "detect": "detector",
               "post_refine": "llm", "segment": "segmenter"}
# Backends per stage (the first is the default) and the weights-dir component each one reads by default.
BACKENDS: dict[str, tuple[str, ...]] = {
    "tagger": ("ram_plus",),
    "captioner": ("blip2",),
    # vllm_server: a vLLM OpenAI-compatible server that the run starts from vLLM's own venv and stops at its end
    "llm": ("transformers", "vllm_server", "vllm", "openai"),
    # sam3: detects and segments (its masks are final); centernet: closed-set COCO-80 boxes on ONNX Runtime
    "detector": ("grounding_dino", "sam3", "centernet"),
    "segmenter": ("sam", "onnx"),
    "embedder": ("minilm",),  # refinement's sentence embedder: small (90 MB), left out of the memory plan
}
COMPONENTS = {"ram_plus": "ram_plus", "blip2": "blip2", "transformers": "llm", "vllm": "llm", "vllm_server": "llm",
              "grounding_dino": "grounding_dino", "sam": "sam", "onnx": "sam_onnx", "sam3": "sam3",
              "centernet": "centernet",
              "minilm": "embedder"}
_KIND_ALIASES = {"grounding-dino": "grounding_dino", "vllm-server": "vllm_server"}  # CLI spellings
# The LLM on a CUDA device is, unless named otherwise, a vLLM server the run manages: vLLM pins its own torch
# and transformers, so it lives in its own venv (README, "A GPU workstation"); a .gguf file stays with
# transformers (vLLM does not read GGUF).
CUDA_LLM_KIND = "vllm_server"
VLLM_BACKENDS = ("vllm", "vllm_server")
OFF_GPU_BACKENDS = ("onnx", "centernet", "openai")  # ONNX Runtime on the CPU; a server in another process/host
CLOSED_SET_DETECTORS = ("centernet",)  # a fixed vocabulary: no recognition or pre-refinement is needed
DTYPES = ("fp32", "fp16", "bf16")
_DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16", "auto": None, "": None}
# Weight quantization: bitsandbytes int8/int4 in-flight (transformers), or vLLM's own methods.
QUANTIZATIONS = ("int8", "int4", "awq", "gptq", "bitsandbytes", "fp8")
_QUANT_ALIASES = {"8bit": "int8", "4bit": "int4", "nf4": "int4", "none": None, "": None}
# Options each backend takes besides the common fields (checked here, once, for every stage).
BACKEND_OPTIONS: dict[str, tuple[str, ...]] = {
    "transformers": ("batch_size",),
    "vllm": ("tensor_parallel_size", "enforce_eager"),
    # python: the vLLM venv's interpreter; port: 127.0.0.1:PORT (0: any free one); startup_timeout in s;
    # load_format=dummy: random weights, no weight files read (scripts/gpu_check.sh)
    "vllm_server": ("python", "port", "startup_timeout", "enforce_eager", "load_format", "concurrency", "timeout",
                    "retries"),
    "openai": ("model", "constraint", "concurrency", "timeout", "retries", "allow_remote"),
    "blip2": ("batch_size",),
    "ram_plus": ("batch_size",),
    "centernet": ("threshold", "resize", "nms", "agnostic"),
}
# Numeric options and their ranges (type, lowest, highest or None), checked at parse: a bad one stops the run
# before any image instead of failing inside a backend.
_NUMERIC_OPTIONS: dict[str, tuple[type, float, float | None]] = {
    "port": (int, 0, 65535), "startup_timeout": (float, 1e-3, None), "timeout": (float, 1e-3, None),
    "retries": (int, 0, None), "concurrency": (int, 1, None), "batch_size": (int, 1, None),
    "tensor_parallel_size": (int, 1, None), "threshold": (float, 0.0, 1.0), "nms": (float, 0.0, 1.0),
    "agnostic": (float, 0.0, 1.0),
}
COMMON_KEYS = ("device", "dtype", "quantization", "gpu_memory_utilization", "max_model_len")
# Options that say where and how a model runs, not what it answers: left out of a spec's result key.
_PLACEMENT_OPTIONS = ("python", "port", "startup_timeout", "concurrency", "timeout", "retries")


def _normalise(value: str | None, aliases: dict[str, str | None], allowed: tuple[str, ...], what: str) -> str | None:
    """A user's spelling of a choice (e.g. bfloat16, 4bit) as its canonical name; None for the default."""
    if value is None:
        return None
    text = value.strip().lower()
    text = aliases.get(text, text)
    if text is not None and text not in allowed:
        raise InvalidInputError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")
    return text


def normalise_dtype(value: str | None) -> str | None:
    return _normalise(value, _DTYPE_ALIASES, DTYPES, "dtype")


def normalise_quantization(value: str | None) -> str | None:
    return _normalise(value, _QUANT_ALIASES, ("none",) + QUANTIZATIONS, "quantization")


@dataclass(frozen=True)
class ModelSpec:
    """How one stage's model is loaded. `None` for dtype means the loader's default for the device
    (fp32 on a CPU, fp16 on CUDA); `explicit` names the fields the user set, which a plan never changes."""

    stage: str  # tagger | captioner | llm | detector | segmenter
    backend: str
    path: str  # a local file or directory; a URL for `openai`
    device: str = "cpu"
    dtype: str | None = None
    quantization: str | None = None
    resident: bool = True  # False: released after each of its steps in every chunk (a memory plan's choice)
    gpu_memory_utilization: float | None = None  # vLLM only
    max_model_len: int | None = None  # vLLM only
    # vLLM only: the card gpu_memory_utilization is a share of (a plan's --gpu-mem); None: the device's own.
    # vLLM reads its flag as a share of the device's total memory, so the loader converts.
    planned_gpu_bytes: int | None = None
    options: tuple[tuple[str, str], ...] = ()
    explicit: frozenset[str] = field(default_factory=frozenset)

    @property
    def component(self) -> str:
        return COMPONENTS.get(self.backend, self.stage)

    @property
    def on_gpu_plan(self) -> bool:
        """Whether this model's memory is on the card the plan sizes."""
        return self.backend not in OFF_GPU_BACKENDS

    @property
    def option_dict(self) -> dict[str, str]:
        return dict(self.options)

    @property
    def is_vllm(self) -> bool:
        """Served by vLLM (in-process or a server this run manages): its quantization names, its memory share."""
        return self.backend in VLLM_BACKENDS

    def with_options(self, **options: str | None) -> ModelSpec:
        """This spec with backend options set (None removes one), e.g. a server's port."""
        merged = {**self.option_dict, **{k: str(v) for k, v in options.items() if v is not None}}
        for key in (k for k, v in options.items() if v is None):
            merged.pop(key, None)
        return replace(self, options=tuple(sorted(merged.items())))

    @property
    def checkpoint_quantization(self) -> str | None:
        """The method of a pre-quantized checkpoint (`quantization_config.quant_method` in its config.json,
        e.g. awq or gptq), which loaders take as it is; None for a plain checkpoint."""
        config = Path(self.path) / "config.json"
        if self.backend == "openai" or not config.is_file():
            return None
        try:
            method = json.loads(config.read_text(encoding="utf-8")).get("quantization_config", {}).get("quant_method")
        except (ValueError, AttributeError):
            return None
        return str(method).lower() if method else None

    @property
    def resolved_dtype(self) -> str:
        """The dtype it loads in: the chosen one, else fp16 on CUDA and fp32 elsewhere."""
        return self.dtype or ("fp16" if self.device.startswith("cuda") else "fp32")

    def torch_dtype(self) -> Any:
        """`resolved_dtype` as a torch dtype (always explicit: transformers would otherwise take the
        checkpoint's own dtype)."""
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.resolved_dtype]

    def text(self) -> str:
        """The spec in the `kind:PATH?key=value` syntax (with the plan's choices), e.g. for logs."""
        query = {key: value for key, value in (
            ("dtype", self.dtype), ("quantization", self.quantization),
            ("gpu_memory_utilization", self.gpu_memory_utilization), ("max_model_len", self.max_model_len),
        ) if value is not None}
        query.update(self.options)
        return f"{self.backend}:{self.path}" + (f"?{urlencode(query)}" if query else "")

    @property
    def key(self) -> str:
        """What results made with this model are stored under: the spec with its path resolved. Residency,
        device and the vLLM memory share do not change results and are left out."""
        path = self.path if self.backend == "openai" else str(Path(self.path).resolve())
        kept = tuple((k, v) for k, v in self.options if k not in _PLACEMENT_OPTIONS)
        return replace(self, path=path, gpu_memory_utilization=None, planned_gpu_bytes=None, options=kept).text()

    def with_choices(self, **changes: Any) -> ModelSpec:
        """This spec with a plan's choices; fields the user set explicitly are kept."""
        return replace(self, **{k: v for k, v in changes.items() if k not in self.explicit})


def parse_spec(text: str | Path | None, stage: str, weights_dir: Path | str = Path("weights"),
               device: str = "cpu") -> ModelSpec:
    """`kind:PATH?key=value&...`, `kind` (its default path in the weights dir), `kind?options`, or a bare
    `PATH` (the stage's default kind for the device: `default_kind`) -> ModelSpec. Common keys: device, dtype, quantization,
    gpu_memory_utilization, max_model_len; anything else must be an option of that backend."""
    if stage not in BACKENDS:
        raise InvalidInputError(f"unknown stage {stage!r}; stages: {', '.join(MODELS)}")
    kinds = BACKENDS[stage]
    raw = "" if text is None else str(text)
    head, _, query = raw.partition("?")
    kind, colon, target = head.partition(":")
    kind = _KIND_ALIASES.get(kind, kind)
    head = _KIND_ALIASES.get(head, head)
    placed = dict(parse_qsl(query, keep_blank_values=True)).get("device", device)  # `?device=` decides the kind too
    if not colon:
        kind, target = (head, "") if head in kinds or not head else ("", head)
    elif len(kind) == 1:  # a Windows drive letter: a bare path
        kind, target = "", head
    kind = kind or default_kind(stage, placed, target)
    if kind not in kinds:
        raise InvalidInputError(f"unknown {stage} backend {kind!r} in {raw!r}; available: {', '.join(kinds)}")
    if not target:
        if kind == "openai":
            raise InvalidInputError("the openai backend needs a URL, e.g. openai:http://127.0.0.1:8000/v1")
        target = str(Path(weights_dir) / COMPONENTS[kind])
    options = dict(parse_qsl(query, keep_blank_values=True))
    fields: dict[str, Any] = {}
    try:
        if "device" in options:
            fields["device"] = options.pop("device")
        if "dtype" in options:
            fields["dtype"] = normalise_dtype(options.pop("dtype"))
        if "quantization" in options:
            fields["quantization"] = normalise_quantization(options.pop("quantization"))
        if "gpu_memory_utilization" in options:
            share = float(options.pop("gpu_memory_utilization"))
            if not 0.0 < share <= 1.0:
                raise InvalidInputError(f"gpu_memory_utilization must be in (0, 1], not {share}")
            fields["gpu_memory_utilization"] = share
        if "max_model_len" in options:
            fields["max_model_len"] = int(options.pop("max_model_len"))
            if fields["max_model_len"] < 1:
                raise InvalidInputError(f"max_model_len must be at least 1, not {fields['max_model_len']}")
    except ValueError as error:
        if isinstance(error, InvalidInputError):
            raise
        raise InvalidInputError(f"bad option in {stage} spec {raw!r}: {error}") from error
    unknown = sorted(set(options) - set(BACKEND_OPTIONS.get(kind, ())))
    if unknown:
        raise InvalidInputError(f"unknown option(s) {', '.join(unknown)} for the {kind} {stage} backend")
    for key in set(options) & set(_NUMERIC_OPTIONS):
        number, lowest, highest = _NUMERIC_OPTIONS[key]
        try:
            value = number(options[key])
        except ValueError:
            value = None
        if value is None or value < lowest or (highest is not None and value > highest):
            bounds = f"from {lowest:g} to {highest:g}" if highest is not None else f"at least {lowest:g}"
            raise InvalidInputError(f"bad option in {stage} spec {raw!r}: {key} must be "
                                    f"{'a whole number' if number is int else 'a number'} {bounds}, not "
                                    f"{options[key]!r}")
    return ModelSpec(stage=stage, backend=kind, path=target, device=fields.pop("device", device),
                     options=tuple(sorted(options.items())), explicit=frozenset(fields), **fields)


def default_kind(stage: str, device: str = "cpu", target: str = "") -> str:
    """The backend a description without a kind names: the stage's first, but for the LLM on a CUDA device a
    vLLM server the run manages (a `.gguf` file: transformers, which reads it)."""
    if stage == "llm" and device.startswith("cuda") and not target.endswith(".gguf"):
        return CUDA_LLM_KIND
    return BACKENDS[stage][0]


def is_closed_set(spec: ModelSpec | None) -> bool:
    """Whether a detector's description is a closed-set detector (its own fixed class names as phrases)."""
    return spec is not None and spec.backend in CLOSED_SET_DETECTORS


def is_sam3(spec: ModelSpec | None) -> bool:
    """Whether a detector's description is SAM 3 (it detects and segments: no SAM pass, no post-refinement)."""
    return spec is not None and spec.backend == "sam3"


__all__ = ["BACKENDS", "MODELS", "ModelSpec", "STEPS", "STEP_MODELS", "default_kind", "is_closed_set", "is_sam3",
           "parse_spec"]
