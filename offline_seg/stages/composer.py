"""Composition: instance masks → one class-index map."""

from __future__ import annotations

import numpy as np

from offline_seg.classes import ClassList
from offline_seg.types import InstanceMasks, instance_map


def compose(instances: InstanceMasks, classes: ClassList, height: int, width: int) -> np.ndarray:
    """Paint each mask's class index where its instance wins (`instance_map`). Pixels no mask covers are
    background (index 0)."""
    class_map = np.zeros((height, width), dtype=np.uint8 if len(classes) <= 256 else np.int32)
    winner = instance_map(instances, height, width)
    indices = np.array([classes.index(label) for label in instances.labels] or [0], dtype=class_map.dtype)
    painted = winner >= 0
    class_map[painted] = indices[winner[painted]]
    return class_map
