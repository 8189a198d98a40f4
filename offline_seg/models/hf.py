"""Loading a transformers model + processor pair from a local directory, and nothing else."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from offline_seg.errors import MissingWeightsError

logger = logging.getLogger(__name__)


def check_model_dir(model_dir: Path, component: str, required: Sequence[str]) -> Path:
    """The directory if every required file (glob patterns allowed) is there, else MissingWeightsError
    naming the first missing one, so the user knows what to fetch."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise MissingWeightsError(model_dir / required[0], component=component)
    for pattern in required:
        if not any(p.is_file() for p in model_dir.glob(pattern)):
            raise MissingWeightsError(model_dir / pattern, component=component)
    return model_dir


def load_local_pretrained(
    model_dir: Path,
    component: str,
    required: Sequence[str],
    model_class: Any,
    processor_class: Any,
    *,
    device: str = "cpu",
    dtype: object | None = None,
    quantization: str | None = None,
) -> tuple[Any, Any]:
    """(processor, model in eval mode on `device`) from a local dir; `local_files_only`, never the hub.
    `quantization` int8/int4 loads the Linear weights with bitsandbytes."""
    from offline_seg.models.loading import loading

    directory = check_model_dir(model_dir, component, required)
    logger.info("loading %s from %s (%s, %s)", model_class.__name__, directory, dtype, quantization or "no quantization")
    bits = bitsandbytes_config(quantization, dtype)
    with loading(component, directory):
        processor = processor_class.from_pretrained(directory, local_files_only=True)
        extra: dict[str, Any] = {} if bits is None else {"quantization_config": bits, "device_map": device}
        model = model_class.from_pretrained(directory, local_files_only=True, dtype=dtype, **extra)
        if bits is None:
            model.to(device)
        model.eval()
    return processor, model


def bitsandbytes_config(quantization: str | None, dtype: object | None = None) -> Any:
    """The transformers `BitsAndBytesConfig` of a model description's int8 / int4 (nf4, blocks of 64, no
    double quantization: what the memory plan counts); None when nothing is quantized in flight."""
    if quantization not in ("int8", "int4"):
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        from offline_seg.errors import OfflineSegError

        raise OfflineSegError(f"{quantization} weights need bitsandbytes: pip install 'offline_seg[gpu]'") from error
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,
                              bnb_4bit_compute_dtype=dtype)
