"""Point strategies for SAM's second pass: how the first pass's prediction becomes the second's prompt.

Each strategy is a small function `(first, boxes, n, decode) -> Refined`: `first` is the box-only
prediction, `decode(points, mask_input)` runs the decoder again on the same boxes (and the same image
embedding). n = 0 never reaches a strategy: it is box only, the paper's "w/o points" ablation.

- `paper`: the reference's rule, the n highest pixels of the jointly 0–255-normalised maps.
- `spread`: the highest logits inside the first mask and the box, at least `SPREAD_SPACING` × the box's
  shorter side apart, so that the points cover the object instead of clustering on its most confident part.
- `gated`: the paper's points, but a box keeps its first mask unless SAM's own predicted IoU of the second is
  at least as high: the second pass can only replace a mask SAM itself rates no better.
- `mask`: SAM's iterative refinement: the first pass's low-resolution logits go back in as `mask_input`,
  with the paper's points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from offline_seg.types import SamPrediction

# (points (N, n, 2) pixel xy or None, mask_input (N, h, w) low-res logits or None) -> prediction, same boxes
Decode = Callable[[np.ndarray | None, np.ndarray | None], SamPrediction]
# Minimum distance between `spread` points, as a share of the box's shorter side.
SPREAD_SPACING = 0.15


@dataclass
class Refined:
    """The second pass's outcome: the prediction kept per box and the points it was prompted with."""

    prediction: SamPrediction
    points: list[np.ndarray]  # per box (n, 2) float32 xy; (0, 2) where a box kept its box-only mask


def normalise_jointly(logits: np.ndarray) -> np.ndarray:
    """Map all of an image's logit maps together onto 0–255 as uint8 (round to nearest, half to even).

    Joint, not per map: a box whose map is weak overall ends up with low, often tied, values, as in the
    reference. Constant input (max == min) gives all zeros.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.size == 0:
        return np.zeros(logits.shape, np.uint8)
    low, high = float(logits.min()), float(logits.max())
    if high <= low:
        return np.zeros(logits.shape, np.uint8)
    return np.rint((logits - low) * (255.0 / (high - low))).astype(np.uint8)


def top_n_points(logits: np.ndarray, n: int) -> list[np.ndarray]:
    """The n highest pixels of each (H, W) map in `logits` (N, H, W), as (n, 2) float32 xy arrays.

    Follows the reference loop exactly: quantise all maps jointly to uint8 0–255 (`normalise_jointly`),
    then n times take the argmax of each map and set that pixel to 0. Ties go to the first pixel in
    row-major order (numpy's argmax). When a map has no non-zero pixel left, further picks land on its
    first zero pixel in row-major order, which may repeat an earlier pick, as the reference does.
    x is the column, y the row.
    """
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"expected (N, H, W) logits, got shape {logits.shape}")
    count, height, width = logits.shape
    if n <= 0 or count == 0:
        return [np.zeros((0, 2), np.float32) for _ in range(count)]
    if height * width == 0:
        raise ValueError("cannot pick points from empty maps")
    flat = normalise_jointly(logits).reshape(count, -1)
    rows = np.arange(count)
    picks = np.empty((count, n), dtype=np.int64)
    for k in range(n):
        index = flat.argmax(axis=1)
        picks[:, k] = index
        flat[rows, index] = 0
    ys, xs = np.divmod(picks, width)
    return [np.stack([xs[i], ys[i]], axis=1).astype(np.float32) for i in range(count)]


def spread_points(logits: np.ndarray, boxes: np.ndarray, n: int, spacing: float = SPREAD_SPACING) -> list[np.ndarray]:
    """Per map, n points by greedy suppression: the highest remaining logit inside the box and the
    first mask (logit > 0), then every pixel closer than `spacing` × the box's shorter side is excluded.

    When no candidate is left before n picks, the remaining picks repeat the first one, so every box gets
    exactly n points (the backends take equal counts). A map with no positive pixel in its box uses the
    box's pixels. Ties go to the first pixel in row-major order; x is the column, y the row.
    """
    logits = np.asarray(logits, np.float32)
    if logits.ndim != 3:
        raise ValueError(f"expected (N, H, W) logits, got shape {logits.shape}")
    count, height, width = logits.shape
    if n <= 0:
        return [np.zeros((0, 2), np.float32) for _ in range(count)]
    ys, xs = np.mgrid[0:height, 0:width]
    result = []
    for logit, box in zip(logits, np.asarray(boxes, np.float32).reshape(-1, 4)):
        x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
        x1, y1 = min(width - 1, int(np.ceil(box[2]))), min(height - 1, int(np.ceil(box[3])))
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
        candidates = inside & (logit > 0) if (inside & (logit > 0)).any() else inside
        if not candidates.any():  # a box outside the image: its nearest pixel
            candidates = np.zeros_like(inside)
            candidates[min(max(y0, 0), height - 1), min(max(x0, 0), width - 1)] = True
        radius = spacing * max(1.0, min(float(box[2] - box[0]), float(box[3] - box[1])))
        scores = np.where(candidates, logit, -np.inf)
        picks: list[tuple[int, int]] = []
        while len(picks) < n and np.isfinite(scores.max()):
            y, x = np.unravel_index(int(scores.argmax()), scores.shape)
            picks.append((int(x), int(y)))
            scores[(xs - x) ** 2 + (ys - y) ** 2 < radius**2] = -np.inf
        picks += [picks[0]] * (n - len(picks))
        result.append(np.asarray(picks, np.float32))
    return result


def paper(first: SamPrediction, boxes: np.ndarray, n: int, decode: Decode) -> Refined:
    """The reference: box + the n top points of the jointly normalised first-pass maps."""
    points = top_n_points(first.logits, n)
    return Refined(decode(np.stack(points), None), points)


def spread(first: SamPrediction, boxes: np.ndarray, n: int, decode: Decode) -> Refined:
    """Box + n high-logit points kept apart in proportion to the box (`spread_points`)."""
    points = spread_points(first.logits, boxes, n)
    return Refined(decode(np.stack(points), None), points)


def keep_second(first: SamPrediction, second: SamPrediction) -> np.ndarray:
    """Per box: True where SAM predicts the second mask at least as good as the first (ties go to it)."""
    return np.asarray(second.iou) >= np.asarray(first.iou)


def gated(first: SamPrediction, boxes: np.ndarray, n: int, decode: Decode) -> Refined:
    """The paper's second pass where SAM's own IoU prediction does not drop, else the box-only mask."""
    second = paper(first, boxes, n, decode)
    keep = keep_second(first, second.prediction)
    points = [p if k else np.zeros((0, 2), np.float32) for p, k in zip(second.points, keep)]
    return Refined(first.select(keep, second.prediction), points)


def mask(first: SamPrediction, boxes: np.ndarray, n: int, decode: Decode) -> Refined:
    """SAM's iterative refinement: box + the paper's points + the first pass's low-res logits as mask_input."""
    points = top_n_points(first.logits, n)
    return Refined(decode(np.stack(points), first.low_res), points)


STRATEGIES: dict[str, Callable[[SamPrediction, np.ndarray, int, Decode], Refined]] = {
    "paper": paper,
    "spread": spread,
    "gated": gated,
    "mask": mask,
}
