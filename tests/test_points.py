"""Point strategies on synthetic logits: exact picks, what each feeds the second pass, what each keeps."""

from __future__ import annotations

import numpy as np
import pytest

from offline_seg.stages.points import (
    STRATEGIES,
    gated,
    keep_second,
    mask,
    paper,
    spread,
    spread_points,
    top_n_points,
)
from offline_seg.types import SamPrediction


def _xy(points: np.ndarray) -> list[tuple[float, float]]:
    return [tuple(p) for p in points.tolist()]


def _prediction(logits: np.ndarray, iou: list[float], low_res_value: float = 0.0) -> SamPrediction:
    logits = np.asarray(logits, np.float32)
    return SamPrediction(logits, np.asarray(iou, np.float32), np.full((len(logits), 4, 4), low_res_value, np.float32))


class _Decoder:
    """A second pass that records its prompts and answers with fixed logits and IoUs."""

    def __init__(self, answer: SamPrediction):
        self.answer = answer
        self.calls: list[tuple[np.ndarray | None, np.ndarray | None]] = []

    def __call__(self, points, mask_input):
        self.calls.append((points, mask_input))
        return self.answer


def _peaks() -> np.ndarray:
    """One 20x20 map: positive inside [2, 17]², two close peaks, two far ones, a hotter pixel outside the box."""
    logit = np.full((20, 20), -1.0, np.float32)
    logit[2:18, 2:18] = 0.5
    logit[5, 5], logit[5, 6], logit[15, 15], logit[15, 5] = 9.0, 8.0, 7.0, 6.0  # [row, column]
    logit[0, 0] = 20.0  # outside the box: never a candidate
    return logit[None]


BOX = np.array([[2, 2, 17, 17]], np.float32)  # shorter side 15


def test_spread_points_are_greedy_by_logit_inside_box_and_mask_and_keep_their_distance():
    (points,) = spread_points(_peaks(), BOX, 3, spacing=0.2)  # radius 3: (6, 5) is 1 px from (5, 5)
    assert _xy(points) == [(5, 5), (15, 15), (5, 15)]
    (points,) = spread_points(_peaks(), BOX, 4, spacing=0.2)
    # then the 0.5 plateau, first in row-major order that is 3 px or more from every pick
    assert _xy(points) == [(5, 5), (15, 15), (5, 15), (2, 2)]
    (close,) = spread_points(_peaks(), BOX, 2, spacing=0.05)  # radius 0.75: neighbours allowed
    assert _xy(close) == [(5, 5), (6, 5)]
    assert points.dtype == np.float32


def test_spread_points_minimum_distance_holds_on_random_maps():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 40, 50)).astype(np.float32) + 1.0
    boxes = np.array([[0, 0, 49, 39], [10, 5, 30, 35], [20, 10, 45, 20]], np.float32)
    for points, box, logit in zip(spread_points(logits, boxes, 12, spacing=0.2), boxes, logits):
        radius = 0.2 * min(box[2] - box[0], box[3] - box[1])
        distinct = np.unique(points, axis=0)
        gaps = np.linalg.norm(distinct[:, None] - distinct[None], axis=-1)[np.triu_indices(len(distinct), 1)]
        assert (gaps >= radius).all()
        assert all(logit[int(y), int(x)] > 0 for x, y in distinct)  # inside the first mask
        assert ((distinct >= box[:2]) & (distinct <= box[2:])).all()  # inside the box
        best = np.where(logit > 0, logit, -np.inf)[int(box[1]):int(box[3]) + 1, int(box[0]):int(box[2]) + 1]
        y, x = np.unravel_index(best.argmax(), best.shape)
        assert _xy(points[:1]) == [(x + box[0], y + box[1])]  # the first pick is the best candidate


def test_spread_points_pad_with_the_first_pick_and_fall_back_to_the_box():
    (points,) = spread_points(_peaks(), BOX, 5, spacing=10.0)  # one pick suppresses the whole box
    assert _xy(points) == [(5, 5)] * 5
    negative = np.full((1, 6, 6), -3.0, np.float32)
    negative[0, 4, 1] = -1.0  # no positive pixel: the box's highest pixel
    (points,) = spread_points(negative, np.array([[0, 0, 5, 5]], np.float32), 1)
    assert _xy(points) == [(1, 4)]
    assert [p.shape for p in spread_points(negative, np.array([[0, 0, 5, 5]], np.float32), 0)] == [(0, 2)]


def test_paper_and_spread_feed_their_points_and_no_mask():
    first = _prediction(_peaks(), [0.9])
    for strategy, expected in ((paper, top_n_points(_peaks(), 3)), (spread, spread_points(_peaks(), BOX, 3))):
        decode = _Decoder(_prediction(np.ones((1, 20, 20)), [0.5]))
        refined = strategy(first, BOX, 3, decode)
        ((points, mask_input),) = decode.calls
        assert mask_input is None
        np.testing.assert_array_equal(points, np.stack(expected))
        assert all(np.array_equal(a, b) for a, b in zip(refined.points, expected))
        assert refined.prediction is decode.answer  # no gate: the second pass is the result


def test_gated_keeps_the_first_pass_where_the_second_predicts_a_lower_iou():
    logits = np.stack([_peaks()[0]] * 3)
    first = _prediction(logits, [0.6, 0.8, 0.7], low_res_value=-1.0)
    second = _prediction(-logits, [0.5, 0.9, 0.7], low_res_value=2.0)  # lower, higher, equal
    decode = _Decoder(second)
    refined = gated(first, np.repeat(BOX, 3, axis=0), 2, decode)
    assert keep_second(first, second).tolist() == [False, True, True]
    np.testing.assert_array_equal(refined.prediction.logits, [logits[0], -logits[1], -logits[2]])
    np.testing.assert_array_equal(refined.prediction.iou, np.float32([0.6, 0.9, 0.7]))
    assert refined.prediction.low_res[:, 0, 0].tolist() == [-1.0, 2.0, 2.0]
    paper_points = top_n_points(logits, 2)
    assert refined.points[0].shape == (0, 2)  # the box-only mask was kept: no points prompted it
    assert _xy(refined.points[1]) == _xy(paper_points[1]) and _xy(refined.points[2]) == _xy(paper_points[2])
    ((points, mask_input),) = decode.calls
    assert mask_input is None and np.array_equal(points, np.stack(paper_points))


def test_mask_feeds_the_first_low_res_logits_back_with_the_paper_points():
    first = _prediction(_peaks(), [0.9], low_res_value=3.0)
    decode = _Decoder(_prediction(np.ones((1, 20, 20)), [0.1]))
    refined = mask(first, BOX, 4, decode)
    ((points, mask_input),) = decode.calls
    assert mask_input is first.low_res
    np.testing.assert_array_equal(points, np.stack(top_n_points(_peaks(), 4)))
    assert refined.prediction is decode.answer


def test_strategy_names():
    assert list(STRATEGIES) == ["paper", "spread", "gated", "mask"]


@pytest.mark.parametrize("bad", [np.zeros((4, 4)), np.zeros((1, 2, 3, 4))])
def test_spread_points_rejects_non_stacked_maps(bad):
    with pytest.raises(ValueError):
        spread_points(bad, BOX, 1)
