"""GGUF → safetensors HF directory, for servers without a GGUF loader (vLLM's CPU build)."""

from __future__ import annotations

import logging
from pathlib import Path

from offline_seg.errors import InvalidInputError, MissingWeightsError
from offline_seg.io.guards import new_or_empty

logger = logging.getLogger(__name__)


def gguf_to_hf(gguf: Path, out_dir: Path, *, dtype: str = "bfloat16") -> Path:
    """Write `out_dir` (config, tokenizer, safetensors) from a GGUF file, de-quantised to `dtype`.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the weights are moved into a
    model rebuilt from the config without its GGUF `quantization_config`.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf, out_dir = Path(gguf), Path(out_dir)
    if not gguf.is_file():
        raise MissingWeightsError(gguf, component="llm")
    with open(gguf, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise InvalidInputError(f"{gguf} is not a GGUF file (it does not start with the GGUF magic bytes)")
    if not new_or_empty(out_dir):
        raise InvalidInputError(f"{out_dir} is not an empty folder: the converted model is written only into a new "
                                "or empty one")
    torch_dtype = getattr(torch, dtype)
    logger.info("converting %s to %s (%s)", gguf, out_dir, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise InvalidInputError(f"cannot read the model in {gguf} ({type(error).__name__}: {error}); is it a "
                                "complete GGUF of an architecture transformers reads (e.g. Llama)?") from None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
