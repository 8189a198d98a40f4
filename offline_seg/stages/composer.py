"""Composition: instance masks → one class-index map."""

from __future__ import annotations

import numpy as np

from offline_seg.classes import ClassList
from offline_seg.types import InstanceMasks


def compose(instances: InstanceMasks, classes: ClassList, height: int, width: int) -> np.ndarray:
    """Paint each mask's class index; where masks overlap the higher detection score wins (on equal
    scores, the earlier detection). Pixels no mask covers are background (index 0)."""
    class_map = np.zeros((height, width), dtype=np.uint8 if len(classes) <= 256 else np.int32)
    if len(instances) == 0:
        return class_map
    if instances.masks.shape[1:] != (height, width):
        raise ValueError(f"masks are {instances.masks.shape[1:]}, expected {(height, width)}")
    # Paint low to high so later (higher-scored) masks overwrite; lexsort's last key is the primary one.
    order = np.lexsort((-np.arange(len(instances)), instances.scores))
    for i in order:
        class_map[instances.masks[i]] = classes.index(instances.labels[i])
    return class_map
