"""Composition: instance masks → one class-index map."""

from __future__ import annotations

import numpy as np

from offline_seg.classes import ClassList
from offline_seg.types import InstanceMasks


def instance_map(instances: InstanceMasks, height: int, width: int) -> np.ndarray:
    """Which instance each pixel shows (-1: none): where masks overlap the higher detection score wins (on
    equal scores, the earlier detection). The class map and the instance exports both follow it."""
    winner = np.full((height, width), -1, dtype=np.int32)
    if len(instances) == 0:
        return winner
    if instances.masks.shape[1:] != (height, width):
        raise ValueError(f"masks are {instances.masks.shape[1:]}, expected {(height, width)}")
    # Paint low to high so later (higher-scored) masks overwrite; lexsort's last key is the primary one.
    order = np.lexsort((-np.arange(len(instances)), instances.scores))
    for i in order:
        winner[instances.masks[i]] = i
    return winner


def compose(instances: InstanceMasks, classes: ClassList, height: int, width: int) -> np.ndarray:
    """Paint each mask's class index where its instance wins (`instance_map`). Pixels no mask covers are
    background (index 0)."""
    class_map = np.zeros((height, width), dtype=np.uint8 if len(classes) <= 256 else np.int32)
    winner = instance_map(instances, height, width)
    indices = np.array([classes.index(label) for label in instances.labels] or [0], dtype=class_map.dtype)
    painted = winner >= 0
    class_map[painted] = indices[winner[painted]]
    return class_map
