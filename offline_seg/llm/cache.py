"""A phrase → label cache that survives runs: detected phrases repeat across images and datasets, and
each repeat would otherwise cost an LLM call. One JSON file per (model, class list, prompt, mode)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Mapping

from offline_seg.io.atomic import write_atomically
from offline_seg.io.store import settings_key

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "offline_seg" / "phrases"


class PhraseCache:
    """Answers (a label, or None for "dropped") by phrase; `save` writes atomically, so a crash mid-run
    leaves the previous file intact and two runs sharing a file lose at most each other's new entries."""

    def __init__(self, path: Path, meta: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.meta = dict(meta or {})
        self._answers: dict[str, str | None] = {}
        self._dirty = False
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._answers = {str(k): (None if v is None else str(v)) for k, v in data["answers"].items()}
            except (OSError, ValueError, KeyError, AttributeError) as error:
                logger.warning("ignoring unreadable phrase cache %s (%s)", self.path, error)

    @classmethod
    def open(cls, directory: Path, *, model: str, labels: Iterable[str], prompt: str, mode: str) -> PhraseCache:
        """The cache file for this model, class list, post-refinement prompt and decoding mode."""
        label_text = "\n".join(labels)
        key = settings_key(model, label_text, prompt, mode)
        meta = {"model": model, "labels": settings_key(label_text), "prompt": settings_key(prompt), "mode": mode}
        return cls(Path(directory) / f"{key}.json", meta)

    def __contains__(self, phrase: str) -> bool:
        return phrase in self._answers

    def __getitem__(self, phrase: str) -> str | None:
        return self._answers[phrase]

    def __len__(self) -> int:
        return len(self._answers)

    def put(self, phrase: str, label: str | None) -> None:
        if self._answers.get(phrase, ...) != label:
            self._answers[phrase] = label
            self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"meta": self.meta, "answers": self._answers}, indent=1, sort_keys=True)
        write_atomically(self.path, lambda target: target.write_text(text, encoding="utf-8"))
        self._dirty = False
