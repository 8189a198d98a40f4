"""Which backend an LLM description names, built: the one place that knows every backend, so the interface
(`offline_seg.llm.base`) depends on none of them. Backends are imported only when chosen."""

from __future__ import annotations

from pathlib import Path

from offline_seg.errors import InvalidInputError
from offline_seg.llm.base import LLM
from offline_seg.specs import ModelSpec


def _flag(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


def load_llm(spec: str | Path | ModelSpec, *, device: str = "cpu") -> LLM:
    """Build a backend from its description: a `ModelSpec`, or the `kind:PATH?key=value` text
    `offline_seg.specs.parse_spec` reads: `transformers:DIR_OR_GGUF` (a bare path on a CPU), `vllm_server:DIR`
    (a server this process starts and stops; a bare path on CUDA), `vllm:DIR` (in-process),
    `openai:http://127.0.0.1:8000/v1`, e.g. `vllm:DIR?gpu_memory_utilization=0.4&quantization=awq`."""
    from offline_seg.specs import parse_spec

    model = spec if isinstance(spec, ModelSpec) else parse_spec(str(spec), "llm", device=device)
    options = model.option_dict
    try:
        if model.backend == "transformers":
            from offline_seg.llm.transformers_backend import TransformersLLM

            return TransformersLLM(Path(model.path), device=model.device, quantization=model.quantization,
                                   batch_size=int(options.get("batch_size", 8)), dtype=model.torch_dtype())
        if model.backend == "vllm_server":
            from offline_seg.llm.vllm_server_backend import ManagedVllmLLM

            return ManagedVllmLLM(model)
        if model.backend == "vllm":
            from offline_seg.llm.vllm_backend import VllmLLM

            # vLLM quantizes a plain checkpoint to 4 bits in flight with bitsandbytes
            kwargs: dict[str, object] = {"quantization": {"int4": "bitsandbytes"}.get(model.quantization or "",
                                                                                       model.quantization)}
            if model.dtype is not None:
                kwargs["dtype"] = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[model.dtype]
            if model.gpu_memory_utilization is not None:
                from offline_seg.llm.serve import device_share

                kwargs["gpu_memory_utilization"] = device_share(model.gpu_memory_utilization,
                                                                model.planned_gpu_bytes, model.device)
            if model.max_model_len is not None:
                kwargs["max_model_len"] = model.max_model_len
            if "tensor_parallel_size" in options:
                kwargs["tensor_parallel_size"] = int(options["tensor_parallel_size"])
            if "enforce_eager" in options:
                kwargs["enforce_eager"] = _flag(options["enforce_eager"])
            return VllmLLM(Path(model.path), **kwargs)  # type: ignore[arg-type]
        from offline_seg.llm.openai_backend import OpenAILLM

        kwargs = {}
        for key, cast in (("model", str), ("constraint", str), ("concurrency", int), ("timeout", float),
                          ("retries", int), ("allow_remote", _flag)):
            if key in options:
                kwargs[key] = cast(options[key])
        return OpenAILLM(model.path, **kwargs)  # type: ignore[arg-type]
    except ValueError as error:
        if isinstance(error, InvalidInputError):
            raise
        raise InvalidInputError(f"bad option in LLM spec {model.text()!r}: {error}") from error


