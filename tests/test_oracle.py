"""Oracle labels and boxes from ground truth, on hand-made label maps."""

import numpy as np
import pytest
from PIL import Image

from offline_seg.classes import ClassList
from offline_seg.errors import InvalidInputError
from offline_seg.stages.oracle import GroundTruth, boxes_from_ground_truth, labels_from_ground_truth, loosen_boxes
from offline_seg.types import Detections

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


def _tight() -> Detections:
    return Detections(np.array([[10, 20, 30, 60], [0, 0, 99, 49]], np.float32), np.float32([0.9, 0.8]),
                      ["cat", "dog"], ["cat", "dog"])


def test_loosen_boxes_expands_each_side_by_a_share_of_the_box_and_clips_to_the_image():
    loose = loosen_boxes(_tight(), (100, 50), expand=0.15)
    # 20 x 40 box: 3 px out left/right, 6 px up/down; the full-image box stays clipped to the pixel grid
    np.testing.assert_allclose(loose.boxes, [[7, 14, 33, 49], [0, 0, 99, 49]])
    assert loose.labels == ["cat", "dog"] and np.array_equal(loose.scores, _tight().scores)
    inside = loosen_boxes(_tight(), (200, 200), expand=0.15)
    np.testing.assert_allclose(inside.boxes[0], [7, 14, 33, 66])
    np.testing.assert_array_equal(loosen_boxes(_tight(), (100, 50)).boxes, _tight().boxes)


def test_loosen_boxes_jitter_is_bounded_seeded_and_differs_per_image():
    tight = Detections(np.array([[100, 100, 200, 300]] * 50, np.float32), np.ones(50, np.float32),
                       ["cat"] * 50, ["cat"] * 50)
    a = loosen_boxes(tight, (1000, 1000), jitter=0.1, seed=3, key="img_1")
    shift = a.boxes - tight.boxes
    assert (np.abs(shift) <= np.float32([10, 20, 10, 20]) + 1e-4).all()  # ±10 % of width / height per side
    assert np.abs(shift).max() > 5 and len(np.unique(shift[:, 0])) == 50  # really random
    np.testing.assert_array_equal(a.boxes, loosen_boxes(tight, (1000, 1000), jitter=0.1, seed=3, key="img_1").boxes)
    assert not np.array_equal(a.boxes, loosen_boxes(tight, (1000, 1000), jitter=0.1, seed=4, key="img_1").boxes)
    assert not np.array_equal(a.boxes, loosen_boxes(tight, (1000, 1000), jitter=0.1, seed=3, key="img_2").boxes)
    clipped = loosen_boxes(_tight(), (100, 50), expand=0.5, jitter=0.4, seed=0).boxes
    assert (clipped >= 0).all() and (clipped[:, [0, 2]] <= 99).all() and (clipped[:, [1, 3]] <= 49).all()
    assert (clipped[:, 2:] >= clipped[:, :2]).all()
    with pytest.raises(InvalidInputError):
        loosen_boxes(_tight(), (100, 50), expand=-0.1)
