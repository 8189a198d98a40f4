import numpy as np
import pytest

from offline_seg.classes import ClassList
from offline_seg.stages.composer import compose
from offline_seg.types import InstanceMasks

CLASSES = ClassList.parse("background, cat, dog, sofa")


def _instances(masks, scores, labels):
    masks = np.array(masks, dtype=bool)
    return InstanceMasks(masks, np.zeros((len(labels), 4)), np.array(scores), labels)


def test_higher_score_wins_overlap_and_rest_is_background():
    a = [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
    b = [[0, 1, 1], [0, 1, 1], [0, 0, 0]]
    result = compose(_instances([a, b], [0.3, 0.9], ["cat", "dog"]), CLASSES, 3, 3)
    assert result.tolist() == [[1, 2, 2], [1, 2, 2], [0, 0, 0]]
    result = compose(_instances([a, b], [0.9, 0.3], ["cat", "dog"]), CLASSES, 3, 3)
    assert result.tolist() == [[1, 1, 2], [1, 1, 2], [0, 0, 0]]


def test_equal_scores_go_to_the_earlier_detection():
    a = [[1, 1]]
    b = [[0, 1]]
    result = compose(_instances([a, b], [0.5, 0.5], ["sofa", "dog"]), CLASSES, 1, 2)
    assert result.tolist() == [[3, 3]]


def test_no_instances_is_all_background():
    assert compose(InstanceMasks.empty(2, 3), CLASSES, 2, 3).tolist() == [[0, 0, 0], [0, 0, 0]]


def test_mask_size_mismatch_is_an_error():
    with pytest.raises(ValueError):
        compose(_instances([[[1]]], [1.0], ["cat"]), CLASSES, 2, 2)
