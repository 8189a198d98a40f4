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
) -> tuple[Any, Any]:
    """(processor, model in eval mode on `device`) from a local dir; `local_files_only`, never the hub."""
    directory = check_model_dir(model_dir, component, required)
    logger.info("loading %s from %s", model_class.__name__, directory)
    processor = processor_class.from_pretrained(directory, local_files_only=True)
    model = model_class.from_pretrained(directory, local_files_only=True, dtype=dtype)
    model.to(device).eval()
    return processor, model
