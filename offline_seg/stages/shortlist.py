"""Refinement that is right on a small local model: exact match first, then the nearest labels by a
sentence embedding, and the LLM only where the embedding is not decisive, choosing among a short,
constrained list (top-k labels plus background) instead of the whole class list.

Modes (`--refiner`): `llm` is the paper's pure-LLM path (`stages.refiner.Refiner`); `embed` uses no
LLM at all; `hybrid` asks the LLM only about the undecided phrases and candidates; `auto` (the default) is one
of the last two (`resolve_mode`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from offline_seg.classes import ClassList, label_key, parse_label_list, parse_single_label
from offline_seg.llm.base import LabelList, accepts_constraint
from offline_seg.stages.refiner import PostRefinement, Refiner
from offline_seg.types import Recognition

logger = logging.getLogger(__name__)

REFINER_MODES = ("auto", "hybrid", "embed", "llm")
TEMPLATE = "a photo of a {}"  # how a label or phrase is put to the embedder (measured: README)
DEFAULT_REFINER = "auto"  # hybrid where an LLM is fast or named and big enough, else embed (`resolve_mode`)
# `auto` asks no LLM with fewer parameters. Measured on the dev set (scripts/refine_llm_answers.py and
# refine_cli.py, README): SmolLM2-135M picks the right label of the embedding's top 3 for 48-52 % of the positives,
# where the embedding's top 1 is right for 71-89 %: hybrid with it falls below the "a photo of a" nearest label at
# 10 % negatives on every preset. Larger LLMs (the default Llama-3-8B) were not measured here: the bound sits
# between that one measured model and the default one.
MIN_HYBRID_LLM_PARAMS = 1_000_000_000


def resolve_mode(mode: str, device: str, llm_given: bool = False,
                 llm_parameters: Callable[[], int | None] = lambda: None) -> str:
    """`auto` → `hybrid` where an LLM is fast (a CUDA device) or was named explicitly (`--llm`: the user wants
    it asked), unless it is known to be too small to help (`llm_parameters()`, read only then, below
    `MIN_HYBRID_LLM_PARAMS`; None: unknown, e.g. a served model); else `embed`: measured on CPU, the small LLM
    that fits there never beat the embedding, and loading a large one costs minutes."""
    if mode != "auto":
        return mode
    if not (device.startswith("cuda") or llm_given):
        return "embed"
    parameters = llm_parameters()
    return "embed" if parameters is not None and parameters < MIN_HYBRID_LLM_PARAMS else "hybrid"

# Caption words that never name a class: left out of the embedding candidates.
_STOPWORDS = frozenset(
    "a an the and or of in on at to with without by for from into onto over under near next up down its it is "
    "are was were be been being this that these those there their his her him she he they them some two three "
    "four many several one other another while as very top front back side left right middle background "
    "image picture photo view close shot scene large small big little old new white black red blue green "
    "yellow brown gray grey orange pink purple sitting standing walking holding looking parked "
    "riding playing lying waiting taking driving flying eating grazing perched arriving".split()
)


class Embedder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class ShortlistSettings:
    """Where the embedding decides alone. Cosine similarities of all-MiniLM-L6-v2 with both texts put as
    "a photo of a …"; `reject` and `tie` were chosen by 5-fold cross-validation on the 1033-phrase dev set
    (scripts/refine_cv.py on a grid of 0.0125 / 0.0025 steps, README "Refinement modes"): the best rule that stays
    at or above the nearest label of either wording (bare, "a photo of a") on every preset, also had negatives
    been only 10 % of the phrases; every training part of the folds chose this same rule."""

    accept: float = 0.6  # top-1 similarity from which the embedding decides ...
    margin: float = 0.1  # ... when the runner-up is this far behind
    reject: float = 0.5375  # below this top-1 similarity the phrase is nothing of the list (background)
    # A phrase as close to its runner-up as this points at no label in particular: background (a lion is
    # as near to cat as to dog). Measured: asked, SmolLM2-135M answers background on 6 % of the negatives
    # this rule rejects (dev set).
    tie: float = 0.0175
    top_k: int = 3  # labels the LLM chooses among (plus background)
    candidate: float = 0.7  # pre-refinement: a tag/caption term this close to a label proposes it


def label_text(label: str) -> str:
    """The words a label stands for, as a sentence embedder reads them (`dining-table` → `dining table`)."""
    return re.sub(r"[-_]+", " ", label).strip()


class LabelEmbeddings:
    """The foreground labels of a class list as unit vectors, with optional per-label descriptions
    (`label → text`, e.g. synonyms) embedded in place of the bare name."""

    def __init__(self, embedder: Embedder, classes: ClassList, descriptions: Mapping[str, str] | None = None,
                 template: str = TEMPLATE):
        self.embedder = embedder
        self.classes = classes
        self.template = template
        self.labels = list(classes.foreground)
        descriptions = descriptions or {}
        self.vectors = embedder.encode([template.format(descriptions.get(label, label_text(label)))
                                        for label in self.labels])

    def similarities(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), len(foreground)) cosine similarities."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.embedder.encode([self.template.format(label_text(t)) for t in texts]) @ self.vectors.T

    def ranked(self, texts: Sequence[str]) -> list[list[tuple[str, float]]]:
        """Per text, every foreground label with its similarity, best first."""
        scores = self.similarities(texts)
        order = np.argsort(-scores, axis=1, kind="stable")
        return [[(self.labels[j], float(row[j])) for j in idx] for row, idx in zip(scores, order)]


@dataclass
class Decision:
    """How one phrase was labelled: `label` (None: background, dropped), by which `source`, and the
    shortlist the LLM saw (empty when it was not asked)."""

    label: str | None
    source: str  # "exact" | "embed" | "llm" | "reject"
    shortlist: tuple[str, ...] = ()


@dataclass
class GuidedRefiner:
    """Exact match → embedding → (hybrid) constrained LLM over a shortlist; the same interface as
    `Refiner` (`pre_refine`, `post_refine`, `post_refine_batch`), so the pipeline takes either.

    `llm_refiner` is None in `embed` mode: nothing asks an LLM then.
    """

    embeddings: LabelEmbeddings
    llm_refiner: Refiner | None = None
    settings: ShortlistSettings = field(default_factory=ShortlistSettings)
    _decided: dict[str, Decision] = field(default_factory=dict, repr=False)

    @property
    def classes(self) -> ClassList:
        return self.embeddings.classes

    @property
    def mode(self) -> str:
        return "hybrid" if self.llm_refiner is not None else "embed"

    # --- post-refinement ------------------------------------------------------------------------
    def decide(self, phrases: Sequence[str]) -> dict[str, Decision]:
        """A decision for every distinct phrase (one embedding batch, one LLM call per distinct shortlist)."""
        s = self.settings
        todo = [p for p in dict.fromkeys(phrases) if p not in self._decided]
        pending: dict[str, tuple[str, ...]] = {}
        unknown = []
        for phrase in todo:
            exact = self.classes.match(phrase)
            if exact is not None:
                self._decided[phrase] = Decision(None if exact == self.classes.background else exact, "exact")
            else:
                unknown.append(phrase)
        for phrase, ranking in zip(unknown, self.embeddings.ranked(unknown)):
            (best, top), runner_up = ranking[0], (ranking[1][1] if len(ranking) > 1 else -1.0)
            tied = top - runner_up < s.tie
            if top < s.reject or tied:
                self._decided[phrase] = Decision(None, "reject")
            elif self.llm_refiner is None or (top >= s.accept and top - runner_up >= s.margin):
                self._decided[phrase] = Decision(best, "embed")
            else:
                pending[phrase] = tuple(label for label, _ in ranking[: s.top_k])
        if pending:
            self._ask_llm(pending)
        return {p: self._decided[p] for p in phrases}

    def _ask_llm(self, pending: dict[str, tuple[str, ...]]) -> None:
        """One constrained call per distinct shortlist; background is always a choice (a negative answer).
        Unconstrained (`--unconstrained`), the undecided phrases go in one free-text call with the paper's
        prompt over the whole list, parsed as the paper does."""
        assert self.llm_refiner is not None
        background = self.classes.background
        if not self.llm_refiner.constrained:
            phrases = list(pending)
            answers = self.llm_refiner.llm.complete([self.llm_refiner.post_refine_messages(p) for p in phrases],
                                                    max_new_tokens=20)
            for phrase, answer in zip(phrases, answers):
                label = parse_single_label(answer, self.classes)
                self._decided[phrase] = Decision(None if label == background else label, "llm", pending[phrase])
                logger.debug("post-refine (free text) %r -> %r", phrase, answer)
            return
        groups: dict[tuple[str, ...], list[str]] = {}
        for phrase, shortlist in pending.items():
            groups.setdefault(shortlist, []).append(phrase)
        for shortlist, phrases in groups.items():
            options = [*shortlist, background]
            answers = self.llm_refiner.llm.complete(
                [self.llm_refiner.post_refine_messages(p) for p in phrases], choices=options, max_new_tokens=20
            )
            for phrase, answer in zip(phrases, answers):
                label = self.classes.match(answer.strip())
                label = label if label in shortlist else None
                self._decided[phrase] = Decision(label, "llm", shortlist)
                logger.debug("post-refine %r among %s -> %r", phrase, options, answer)

    def post_refine(self, phrases: Sequence[str]) -> PostRefinement:
        return self.post_refine_batch([phrases])[0]

    def post_refine_batch(self, phrase_lists: Sequence[Sequence[str]]) -> list[PostRefinement]:
        """Labels per image; `replies` says, per phrase that needed more than an exact match, how it was
        decided (`embed:<label>`, `llm:<label> of a|b|c`, `reject`)."""
        decisions = self.decide([p for phrases in phrase_lists for p in phrases])
        results = []
        for phrases in phrase_lists:
            replies = {p: _describe(decisions[p]) for p in phrases if decisions[p].source != "exact"}
            results.append(PostRefinement([decisions[p].label for p in phrases], replies))
        return results

    # --- pre-refinement -------------------------------------------------------------------------
    def candidates(self, recognition: Recognition) -> tuple[list[str], list[str]]:
        """(labels named outright in the tags or caption, further labels some term embeds close to).

        Labels are found in each tag and in the caption on their own, never across the joined text: tags
        `hot` and `dog` name `dog`, not `hot-dog`; a tag `teddy` and a caption "a bear on a bench" name
        `bear`, not `teddy-bear`."""
        named: list[str] = []
        for text in [*recognition.tags, recognition.caption or ""]:
            named += [label for label in self.classes.find_all(text)
                      if label != self.classes.background and label not in named]
        # A term that names a label exactly was found above (or was part of a longer label there: the `dog`
        # of "hot dog"), so only the others go to the embedding.
        terms = [t for t in caption_terms(recognition) if self.classes.match(t) is None]
        close: list[str] = []
        if terms:
            for term, ranking in zip(terms, self.embeddings.ranked(terms)):
                label, score = ranking[0]
                if (score >= self.settings.candidate and label not in named and label not in close
                        and not _modifier_of(term, label)):
                    close.append(label)
        return named, close

    def pre_refine(self, recognitions: Sequence[Recognition]) -> list[tuple[list[str], str]]:
        """Per image: the labels named outright, plus the embedding's candidates (embed mode) or those
        of them the LLM confirms, constrained to the candidates (hybrid). The reply says which was which."""
        found = [self.candidates(r) for r in recognitions]
        confirmed: dict[int, list[str]] = {}
        asked = [i for i, (_, close) in enumerate(found) if close]
        if self.llm_refiner is not None and asked:
            confirmed = self._confirm(recognitions, found, asked)
        results = []
        for index, (named, close) in enumerate(found):
            extra = confirmed.get(index, close) if self.llm_refiner is not None else close
            labels = [label for label in self.classes.foreground if label in named or label in extra]
            reply = f"named: {', '.join(named)}; candidates: {', '.join(close)}; kept: {', '.join(labels)}"
            results.append((labels, reply))
        return results

    def _confirm(self, recognitions, found, asked) -> dict[int, list[str]]:
        """Ask the LLM, with the paper's prompt, to answer a list of each image's candidates (named labels
        included, so it sees the whole scene); a candidate it leaves out is dropped. One call for the whole
        chunk: constrained, the answer may hold any label some image of the chunk offers (a constraint is one
        per call), and each image keeps only its own candidates; `--unconstrained` sends no constraint."""
        llm_refiner = self.llm_refiner
        assert llm_refiner is not None
        offered = {label for index in asked for label in (*found[index][0], *found[index][1])}
        options = tuple(label for label in self.classes.foreground if label in offered)
        constrained = llm_refiner.constrained and accepts_constraint(llm_refiner.llm)
        extra = {"constraint": LabelList(options)} if constrained else {}
        replies = llm_refiner.llm.complete(
            [llm_refiner.pre_refine_messages(recognitions[index]) for index in asked],
            max_new_tokens=llm_refiner.max_new_tokens, **extra,
        )
        confirmed: dict[int, list[str]] = {}
        for index, reply in zip(asked, replies):
            items = re.split(r"[,\n]", reply) if constrained else parse_label_list(reply, self.classes)
            said = {self.classes.match(item) for item in items}
            confirmed[index] = [label for label in found[index][1] if label in said]
        return confirmed


def _modifier_of(term: str, label: str) -> bool:
    """Whether `term` is a leading part of a longer label (`hot` of `hot-dog`, `teddy` of `teddy-bear`): such
    a word alone does not name the label, though it embeds close to it; the head word (`ball` of
    `sports-ball`) does."""
    words, label_words = label_key(term).split(), label_key(label).split()
    n = len(words)
    return 0 < n < len(label_words) and any(label_words[i:i + n] == words for i in range(len(label_words) - n))


def _describe(decision: Decision) -> str:
    if decision.source == "llm":
        return f"llm:{decision.label or 'background'} of {'|'.join(decision.shortlist)}"
    return "reject" if decision.source == "reject" else f"embed:{decision.label}"


def caption_terms(recognition: Recognition) -> list[str]:
    """The tags, and the caption's content words and two-word phrases (`traffic light`), lower case."""
    terms = [tag.strip().lower() for tag in recognition.tags if tag.strip()]
    if recognition.caption:
        words = re.sub(r"[^a-z0-9\- ]+", " ", recognition.caption.lower()).split()
        content = [w if w not in _STOPWORDS else None for w in words]
        terms += [w for w in content if w]
        terms += [f"{a} {b}" for a, b in zip(content, content[1:]) if a and b]
    return [t for t in dict.fromkeys(terms) if label_key(t)]
