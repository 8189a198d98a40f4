"""The LLM contract the refiner depends on, modelled on OpenAI-style chat messages."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence, TypedDict

from offline_seg.errors import InvalidInputError


class ChatMessage(TypedDict):
    role: str  # "system" | "user" | "assistant"
    content: str


class LLM(Protocol):
    """Completes a batch of chat conversations.

    With `choices`, every answer must be exactly one of them (backends enforce it by constrained
    decoding or likelihood ranking); without, the reply is free text. Greedy: same input, same output.
    """

    def complete(
        self,
        conversations: Sequence[Sequence[ChatMessage]],
        *,
        choices: Sequence[str] | None = None,
        max_new_tokens: int = 200,
    ) -> list[str]: ...


def load_llm(spec: str | Path, *, device: str = "cpu") -> LLM:
    """Build a backend from a spec such as `transformers:DIR` (a bare path means transformers)."""
    text = str(spec)
    backend, _, target = text.partition(":")
    if not target or len(backend) == 1:  # a bare path (or a Windows drive letter)
        backend, target = "transformers", text
    if backend == "transformers":
        from offline_seg.llm.transformers_backend import TransformersLLM

        return TransformersLLM(Path(target), device=device)
    raise InvalidInputError(f"unknown LLM backend {backend!r} in {text!r}; available: transformers")
