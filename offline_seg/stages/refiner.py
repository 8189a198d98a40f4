"""Pre- and post-refinement: the LLM turns recognition text into class-list labels, and maps each
detected phrase onto exactly one label. Parsing keeps only members of the class list."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

from offline_seg.classes import ClassList, parse_label_list, parse_single_label
from offline_seg.errors import InvalidInputError
from offline_seg.llm.base import LLM, ChatMessage, LabelList, accepts_constraint
from offline_seg.llm.cache import PhraseCache
from offline_seg.types import Recognition
from offline_seg.textfiles import read_text

logger = logging.getLogger(__name__)

PRE_REFINE_USER = "Here are input caption tags and text: {text}"


@dataclass(frozen=True)
class PromptTemplates:
    """System prompts with a `{labels}` slot, filled with the class list joined by `, `."""

    pre_refine: str
    post_refine: str

    @classmethod
    def load(cls, directory: Path | None = None) -> PromptTemplates:
        """The paper's templates shipped with the package, or `pre_refine.txt`/`post_refine.txt` from a dir."""
        if directory is None:
            root = resources.files("offline_seg.prompts")
            return cls(
                (root / "pre_refine.txt").read_text(encoding="utf-8"),
                (root / "post_refine.txt").read_text(encoding="utf-8"),
            )
        directory = Path(directory)
        texts = []
        for name in ("pre_refine.txt", "post_refine.txt"):
            path = directory / name
            if not path.is_file():
                raise InvalidInputError(f"prompt template not found: {path}")
            texts.append(read_text(path, "the prompt template"))
        return cls(*texts)

    def system(self, template: str, classes: ClassList) -> str:
        return template.replace("{labels}", ", ".join(classes.names)).strip()


NONE_OF_THESE = "none of these"


@dataclass
class PostRefinement:
    """Per phrase, the label it maps to (None: dropped) and the raw replies of the LLM calls made."""

    labels: list[str | None]
    replies: dict[str, str] = field(default_factory=dict)


class Refiner:
    """LLM refinement against one class list.

    Constrained (the default), pre-refinement may only answer a list of foreground labels and
    post-refinement exactly one label; unconstrained, replies are free text parsed as the paper does.
    Post-refinement answers are cached per phrase for the refiner's lifetime, and across runs in
    `phrase_cache` (see `Refiner.open_phrase_cache`), so a repeated phrase costs one call ever.
    """

    def __init__(
        self,
        llm: LLM,
        classes: ClassList,
        templates: PromptTemplates | None = None,
        *,
        constrained: bool = True,
        max_new_tokens: int = 200,
        phrase_cache: PhraseCache | None = None,
    ) -> None:
        self.llm = llm
        self.classes = classes
        self.templates = templates or PromptTemplates.load()
        self.constrained = constrained
        self.max_new_tokens = max_new_tokens
        self.phrase_cache = phrase_cache
        self._phrase_cache: dict[str, str | None] = {}
        # An LLM object written against the first protocol (choices only) gets free-text pre-refinement.
        self._list_constraint = constrained and accepts_constraint(llm)
        if constrained and not self._list_constraint:
            logger.warning("%s.complete takes no constraint=: pre-refinement replies are parsed as free text",
                           type(llm).__name__)

    @classmethod
    def open_phrase_cache(
        cls, directory: Path, llm: LLM, classes: ClassList, templates: PromptTemplates | None = None,
        *, constrained: bool = True,
    ) -> PhraseCache | None:
        """The persistent cache for this model, class list, prompt and mode; None when the LLM does not
        say which model it is (an injected object), since answers of another model must not be reused."""
        identity = getattr(llm, "identity", None)
        if not identity:
            return None
        templates = templates or PromptTemplates.load()
        return PhraseCache.open(
            directory, model=str(identity), labels=classes.names,
            prompt=templates.system(templates.post_refine, classes),
            mode="constrained" if constrained else "free",
        )

    def pre_refine_messages(self, recognition: Recognition) -> list[ChatMessage]:
        return [
            {"role": "system", "content": self.templates.system(self.templates.pre_refine, self.classes)},
            {"role": "user", "content": PRE_REFINE_USER.format(text=recognition.text)},
        ]

    def post_refine_messages(self, phrase: str) -> list[ChatMessage]:
        return [
            {"role": "system", "content": self.templates.system(self.templates.post_refine, self.classes)},
            {"role": "user", "content": phrase},
        ]

    def pre_refine(self, recognitions: Sequence[Recognition]) -> list[tuple[list[str], str]]:
        """For each image, the foreground labels the LLM names and its raw reply (one batched call)."""
        constraint = self.pre_refine_constraint() if self._list_constraint else None
        extra = {"constraint": constraint} if constraint else {}
        replies = self.llm.complete(
            [self.pre_refine_messages(r) for r in recognitions], max_new_tokens=self.max_new_tokens, **extra
        )
        results = []
        for reply in replies:
            # A constrained reply is split with the constraint's own separator, so "salt and pepper" stays
            # one label; a reply outside the constraint falls back to the free-text parser.
            members = constraint.split(reply) if constraint else []
            named = members or parse_label_list(reply, self.classes)
            labels = [label for label in named if label not in (self.classes.background, NONE_OF_THESE)]
            results.append((labels, reply))
        return results

    def pre_refine_constraint(self) -> LabelList:
        """The foreground labels, or "none of these" (then the detector is not called), so a scene
        without any class of the list is not forced to name one."""
        extra = (NONE_OF_THESE,) if self.classes.match(NONE_OF_THESE) is None else ()
        return LabelList(self.classes.foreground + extra)

    def post_refine(self, phrases: Sequence[str]) -> PostRefinement:
        """Map phrases to labels: members of the list map to themselves without a call; the distinct
        unknown phrases go to the LLM in one batch; background answers drop the detection."""
        return self.post_refine_batch([phrases])[0]

    def post_refine_batch(self, phrase_lists: Sequence[Sequence[str]]) -> list[PostRefinement]:
        """`post_refine` for a chunk of images: the distinct unknown phrases of all of them go to the
        LLM in one call. Each image's `replies` holds the calls its own phrases caused."""
        unknown: list[str] = []
        for phrases in phrase_lists:
            for phrase in phrases:
                if self.classes.match(phrase) is not None or phrase in self._phrase_cache or phrase in unknown:
                    continue
                if self.phrase_cache is not None and phrase in self.phrase_cache:
                    self._phrase_cache[phrase] = self.phrase_cache[phrase]
                    continue
                unknown.append(phrase)
        replies: dict[str, str] = {}
        if unknown:
            answers = self.llm.complete(
                [self.post_refine_messages(p) for p in unknown],
                choices=list(self.classes.names) if self.constrained else None,
                max_new_tokens=20,
            )
            for phrase, answer in zip(unknown, answers):
                replies[phrase] = answer
                label = parse_single_label(answer, self.classes)
                self._phrase_cache[phrase] = label
                if self.phrase_cache is not None:
                    self.phrase_cache.put(phrase, label)
                logger.debug("post-refine %r -> %r", phrase, answer)
            if self.phrase_cache is not None:
                self.phrase_cache.save()
        return [
            PostRefinement([self._label_of(p) for p in phrases], {p: replies[p] for p in phrases if p in replies})
            for phrases in phrase_lists
        ]

    def _label_of(self, phrase: str) -> str | None:
        label = self.classes.match(phrase)
        if label is None:
            label = self._phrase_cache.get(phrase)
        return None if label == self.classes.background else label


def labels_without_llm(phrases: Sequence[str], classes: ClassList) -> list[str | None]:
    """The 'no post-refinement' ablation: phrases that name a foreground label keep it, others drop."""
    labels = [classes.match(phrase) for phrase in phrases]
    return [None if label == classes.background else label for label in labels]
