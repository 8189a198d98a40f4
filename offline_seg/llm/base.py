"""The LLM contract the refiner depends on, modelled on OpenAI-style chat messages.

This module imports nothing heavy (no torch, no transformers), so the vLLM venv, which pins an older
transformers, can import it too.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass, field
from typing import Protocol, Sequence, TypedDict, Union
from urllib.parse import parse_qsl

from offline_seg.errors import InvalidInputError


class ChatMessage(TypedDict):
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class Choice:
    """The answer is exactly one of `options`."""

    options: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))
        if not self.options:
            raise InvalidInputError("a choice constraint needs at least one option")


@dataclass(frozen=True)
class LabelList:
    """The answer is one or more distinct `options` joined by `separator`, e.g. `cat, dog`."""

    options: tuple[str, ...]
    separator: str = ", "

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))
        if not self.options:
            raise InvalidInputError("a label-list constraint needs at least one option")
        mark = self.separator.strip() or self.separator
        clashing = [option for option in self.options if mark in option]
        if clashing:
            raise InvalidInputError(f"labels {clashing!r} contain the list separator {self.separator!r}")

    def split(self, text: str) -> list[str]:
        """The members of `text` in order, without repeats; anything else (a cut-off tail) is dropped."""
        known = set(self.options)
        items: list[str] = []
        for item in text.split(self.separator.strip() or self.separator):
            item = item.strip()
            if item in known and item not in items:
                items.append(item)
        return items


Constraint = Union[Choice, LabelList]


@dataclass
class LLMStats:
    """Traffic counters of one backend, for benchmarks and logs. Thread-safe increments."""

    calls: int = 0  # `complete` invocations
    requests: int = 0  # conversations answered
    prompt_tokens: int = 0
    completion_tokens: int = 0
    invalid: int = 0  # constrained answers that were not valid (only possible without server-side constraints)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + int(value))

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "calls": self.calls,
                "requests": self.requests,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "invalid": self.invalid,
            }


class LLM(Protocol):
    """Completes a batch of chat conversations, greedily: same input, same output.

    `choices=[...]` is shorthand for `constraint=Choice(...)`. With a constraint, backends that can
    constrain decoding return only valid answers (one option, or a list of options joined by the
    separator); a backend that cannot (an OpenAI server without a grammar dialect) returns the raw
    reply, counts it in `stats.invalid`, and the caller's parser drops it. Without, free text.
    """

    def complete(
        self,
        conversations: Sequence[Sequence[ChatMessage]],
        *,
        choices: Sequence[str] | None = None,
        constraint: Constraint | None = None,
        max_new_tokens: int = 200,
    ) -> list[str]: ...


def resolve_constraint(choices: Sequence[str] | None, constraint: Constraint | None) -> Constraint | None:
    """One constraint from the two ways of asking for one."""
    if choices is not None and constraint is not None:
        raise InvalidInputError("give choices or constraint, not both")
    return Choice(tuple(choices)) if choices is not None else constraint


def accepts_constraint(llm: object) -> bool:
    """Whether `llm.complete` takes `constraint=` (LLM objects written against the first protocol do not)."""
    try:
        parameters = inspect.signature(llm.complete).parameters  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return False
    return "constraint" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def split_options(target: str) -> tuple[str, dict[str, str]]:
    """`DIR?key=value&...` → (`DIR`, {key: value}); how backend options ride inside one `--llm` string."""
    base, mark, query = target.partition("?")
    if not mark:
        return target, {}
    return base, dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False))
