"""Oracle labels and boxes from ground truth, on hand-made label maps."""

import numpy as np
import pytest
from PIL import Image

from offline_seg.classes import ClassList
from offline_seg.errors import InvalidInputError
from offline_seg.evaluation.oracle import GroundTruth, boxes_from_ground_truth, labels_from_ground_truth

CLASSES = ClassList.parse("background, cat, dog, car")


def _map() -> np.ndarray:
    m = np.zeros((6, 8), np.int64)
    m[0:2, 0:2] = 1  # cat, 4 px
    m[2, 2] = 1  # touches the first cat diagonally only: same component (8-connected)
    m[4:6, 5:8] = 1  # a second cat, 6 px
    m[0:3, 5:7] = 2  # dog, 6 px
    m[5, 0] = 255  # void
    return m


def test_labels_are_the_present_foreground_classes_in_list_order():
    assert labels_from_ground_truth(_map(), CLASSES) == ["cat", "dog"]
    assert labels_from_ground_truth(np.zeros((3, 3), np.int64), CLASSES) == []


def test_one_box_per_connected_component_with_smaller_objects_scoring_higher():
    found = boxes_from_ground_truth(_map(), CLASSES, min_area=1)
    assert found.labels == ["cat", "cat", "dog"] and found.phrases == found.labels
    np.testing.assert_array_equal(found.boxes, [[0, 0, 2, 2], [5, 4, 7, 5], [5, 0, 6, 2]])
    np.testing.assert_allclose(found.scores, [1 - 5 / 48, 1 - 6 / 48, 1 - 6 / 48])


def test_small_components_are_dropped():
    found = boxes_from_ground_truth(_map(), CLASSES, min_area=6)
    assert found.labels == ["cat", "dog"]
    assert len(boxes_from_ground_truth(_map(), CLASSES, min_area=7)) == 0


def test_ground_truth_maps_dataset_ids_and_checks_size(tmp_path):
    classes = ClassList.from_file(_write(tmp_path / "classes.txt", "0: background\n7: road\n26: car\n"))
    ids = np.array([[0, 7, 26], [26, 255, 3]], np.uint8)  # 3 is not in the list: ignored like void
    Image.fromarray(ids, mode="L").save(tmp_path / "frame.png")
    truth = GroundTruth(tmp_path, classes)
    np.testing.assert_array_equal(truth.class_map("frame", size=(3, 2)), [[0, 1, 2], [2, 255, 255]])
    with pytest.raises(InvalidInputError, match="3x2"):
        truth.class_map("frame", size=(4, 2))
    with pytest.raises(InvalidInputError, match="no ground truth for 'other'"):
        truth.class_map("other")


def _write(path, text):
    path.write_text(text)
    return path
