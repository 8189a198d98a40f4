"""Tiny randomly initialised models of the real architectures, saved in the real on-disk formats.

They exercise every loader without real weights (tests, benchmarks, `offline-seg demo`). Their tags,
boxes and masks are meaningless by construction.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from offline_seg.weights import WeightsDir

# manifest key -> module under offline_seg.tiny that has `write(model_dir, seed)`
WRITERS = {
    "ram_plus": "ram_plus",
    "blip2": "blip2",
    "grounding_dino": "grounding_dino",
    "sam": "sam",
    "llm": "llama",
    "embedder": "minilm",
    "sam3": "sam3",
}


def make_tiny_weights(root: Path, seed: int = 0, components: tuple[str, ...] | None = None) -> WeightsDir:
    """Write a complete weights dir of tiny models (and its lock file) under `root`."""
    root = Path(root)
    for key in components or tuple(WRITERS):
        module = importlib.import_module(f"offline_seg.tiny.{WRITERS[key]}")
        module.write(root / key, seed=seed)
    weights = WeightsDir(root)
    weights.write_lock()
    return weights
