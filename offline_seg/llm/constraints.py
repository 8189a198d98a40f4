"""Constraint machinery without torch: a token automaton for label lists (transformers backend) and
the regex / GBNF texts that servers take (vLLM structured outputs, llama.cpp grammars)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from offline_seg.llm.base import Choice, Constraint, LabelList

_REGEX_SPECIAL = re.compile(r"([.^$*+?()\[\]{}|\\/])")


def regex_literal(text: str) -> str:
    """Escape only what is special, since server-side regex engines (xgrammar, outlines) differ on `\\-`."""
    return _REGEX_SPECIAL.sub(r"\\\1", text)


def constraint_regex(constraint: Constraint) -> str:
    """`(a|b)` for a choice, `(a|b)(, (a|b))*` for a label list."""
    alternatives = "(" + "|".join(regex_literal(option) for option in constraint.options) + ")"
    if isinstance(constraint, Choice):
        return alternatives
    # At most every label once: the repeat bound also ends a reply that a small model would loop on.
    return f"{alternatives}({regex_literal(constraint.separator)}{alternatives}){{0,{len(constraint.options) - 1}}}"


def _gbnf_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def constraint_gbnf(constraint: Constraint) -> str:
    """A llama.cpp GBNF grammar for the constraint."""
    label = " | ".join(_gbnf_string(option) for option in constraint.options)
    if isinstance(constraint, Choice):
        return f"root ::= {label}\n"
    return f"root ::= label ({_gbnf_string(constraint.separator)} label)*\nlabel ::= {label}\n"


def validate(answer: str, constraint: Constraint, *, truncated: bool = False) -> str | None:
    """The canonical valid form of a server's answer (exact option text, list items deduplicated),
    or None when it is not valid. Case and surrounding space are forgiven, and in a list cut off by
    the token limit (`truncated`) the partial last item, nothing else."""
    by_lower = {option.lower(): option for option in constraint.options}
    if isinstance(constraint, Choice):
        return by_lower.get(answer.strip().lower())
    mark = constraint.separator.strip() or constraint.separator
    items: list[str] = []
    parts = answer.split(mark)
    for position, item in enumerate(parts):
        option = by_lower.get(item.strip().lower())
        if option is None:
            if truncated and position == len(parts) - 1 and position > 0:
                break
            return None
        if option not in items:
            items.append(option)
    return constraint.separator.join(items) if items else None


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    labels: set[str] = field(default_factory=set)  # every label whose tokens pass through here
    label: str | None = None  # the label whose tokens end here


def _trie(sequences: dict[str, list[int]]) -> _Node:
    root = _Node()
    for label, tokens in sequences.items():
        if not tokens:
            continue
        node = root
        node.labels.add(label)
        for token in tokens:
            node = node.children.setdefault(token, _Node())
            node.labels.add(label)
        node.label = label
    return root


@dataclass(frozen=True)
class ListState:
    node: _Node
    used: frozenset[str] = frozenset()
    done: bool = False


class LabelListAutomaton:
    """Which next tokens keep a reply inside `label(, label)*` with no label repeated.

    Built from each label's canonical token sequence as the first item and of `separator + label` as a
    later item; after a complete label the reply may end (any of `end_ids`) or start the next item.
    """

    def __init__(self, constraint: LabelList, encode: Callable[[str], list[int]], end_ids: Iterable[int]) -> None:
        self.constraint = constraint
        self.end_ids = frozenset(int(i) for i in end_ids)
        self.first = _trie({label: encode(label) for label in constraint.options})
        self.rest = _trie({label: encode(constraint.separator + label) for label in constraint.options})

    def start(self) -> ListState:
        return ListState(self.first)

    def allowed(self, state: ListState) -> set[int] | None:
        """Allowed token ids, or None once the reply has ended (no constraint on padding)."""
        if state.done:
            return None
        allowed = {token for token, child in state.node.children.items() if child.labels - state.used}
        if state.node.label is not None:
            allowed |= self.end_ids
            used = state.used | {state.node.label}
            allowed |= {token for token, child in self.rest.children.items() if child.labels - used}
        return allowed

    def advance(self, state: ListState, token: int) -> ListState:
        if state.done:
            return state
        child = state.node.children.get(token)
        if child is not None:
            return ListState(child, state.used)
        if state.node.label is not None:
            if token in self.end_ids:
                return ListState(state.node, state.used, done=True)
            nxt = self.rest.children.get(token)
            if nxt is not None:
                return ListState(nxt, state.used | {state.node.label})
        raise ValueError(f"token {token} is not allowed here")  # the logits mask makes this unreachable


def option_lengths(options: Sequence[str], encode: Callable[[str], list[int]]) -> int:
    """Most tokens any option takes: the `max_tokens` a choice needs."""
    return max(len(encode(option)) for option in options)
