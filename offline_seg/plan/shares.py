"""Shares of a card for processes that hold their model for the whole run (the Ray engine's actors, a vLLM
server): the fraction each asks for, and how many cards a set of them takes."""

from __future__ import annotations

import math
from typing import Iterable

# Ray keeps fractional resources to 1e-4; a share is rounded up to this step, never down, so a process never
# asks for less of a card than it takes.
GPU_STEP = 0.001


def share_of(nbytes: int, gpu_bytes: int) -> float:
    """The fraction of a card of `gpu_bytes` that `nbytes` take, rounded up to GPU_STEP."""
    steps = math.ceil(nbytes / gpu_bytes / GPU_STEP - 1e-9)
    return round(steps * GPU_STEP, 3)


def pack(shares: Iterable[float]) -> list[list[float]]:
    """The shares of a set of processes packed onto cards, first-fit decreasing, each card at most 1.0 (as Ray
    places fractional GPU requests: each within one card)."""
    cards: list[list[float]] = []
    for share in sorted(shares, reverse=True):
        for card in cards:
            if sum(card) + share <= 1.0 + 1e-9:
                card.append(share)
                break
        else:
            cards.append([share])
    return cards


def cards_needed(shares: Iterable[float]) -> int:
    """How many cards a set of processes with these shares packs onto."""
    return len(pack(shares))
