"""A closed-set detector's vocabulary on the class list: which of its classes can become which label.

A closed-set detector (CenterNet's 80 COCO classes) names every box with one of its own class names. Those
names reach the class list through post-refinement, decided once per run for the whole vocabulary (the
same refiner as every phrase: exact name, sentence embedding, or the LLM), so `airplane` becomes VOC's
`aeroplane`, `tv` its `monitor`, `couch` its `sofa`.

Two rules come from the detector being closed-set. A label that one of its classes names outright belongs
to that class alone: the detector has its own `dog`, so its `hot dog` is not a dog, whatever the words'
nearness says; likewise `truck` is not VOC's `car`, `cup` not its `bottle`. And most of a fixed vocabulary is
usually outside the list (60 of COCO's 80 classes for VOC), so a name the sentence embedding labels without
deciding it (the refiner's own `accept`/`margin`: where hybrid mode would ask the LLM) is not guessed: on VOC
the embedding alone would make `umbrella` and `kite` aeroplanes and `keyboard`, `microwave`, `clock` monitors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

from offline_seg.classes import ClassList
from offline_seg.errors import InvalidInputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Vocabulary:
    """Detector class name -> class-list label (None: the class has no label and its boxes are dropped),
    with how each was decided (`exact`, the refiner's own description, or `owned by <class>`)."""

    labels: Mapping[str, str | None]
    reasons: Mapping[str, str]
    classes: ClassList

    def label(self, name: str, allowed: Sequence[str] | None = None) -> str | None:
        """The label of a detector class, or None when it has none or its label is not `allowed`."""
        label = self.labels.get(name)
        return None if label is None or (allowed is not None and label not in allowed) else label

    @property
    def uncovered(self) -> list[str]:
        """Foreground labels no detector class can become: this detector never finds them."""
        covered = {label for label in self.labels.values() if label is not None}
        return [label for label in self.classes.foreground if label not in covered]

    def describe(self) -> str:
        """`label <- class, class` lines for the log."""
        by_label: dict[str, list[str]] = {}
        for name, label in self.labels.items():
            if label is not None:
                by_label.setdefault(label, []).append(name if label == name else f"{name} ({self.reasons[name]})")
        return "; ".join(f"{label} <- {', '.join(names)}" for label, names in by_label.items())


def build_vocabulary(names: Sequence[str], refined: Sequence[str | None], classes: ClassList,
                     reasons: Mapping[str, str] | None = None, undecided: Mapping[str, str] | None = None
                     ) -> Vocabulary:
    """The vocabulary from post-refinement's answer for each detector class name (`refined[i]` for
    `names[i]`), with the ownership rule applied; `undecided` (name -> why) are dropped."""
    reasons = dict(reasons or {})
    undecided = dict(undecided or {})
    owners = {}
    for name in names:
        exact = classes.match(name)
        if exact is not None and exact != classes.background:
            owners[exact] = name
    labels: dict[str, str | None] = {}
    why: dict[str, str] = {}
    for name, label in zip(names, refined):
        if label == classes.background:
            label = None
        owner = owners.get(label) if label is not None else None
        if owner is not None and owner != name:
            labels[name], why[name] = None, f"not {label}: owned by {owner}"
        elif label is not None and name in undecided:
            labels[name], why[name] = None, f"not {label}: {undecided[name]}"
        else:
            labels[name] = label
            why[name] = "exact" if label is not None and classes.match(name) == label else reasons.get(name, "refined")
    vocabulary = Vocabulary(labels, why, classes)
    logger.info("detector vocabulary on %s: %s", classes.name, vocabulary.describe())
    return vocabulary


def undecided_by_embedding(refiner: object, names: Sequence[str], reasons: Mapping[str, str]) -> dict[str, str]:
    """The names the sentence embedding labelled (`embed:` decisions) without deciding them: top similarity
    below the refiner's `accept`, or within its `margin` of the runner-up; name -> why."""
    embeddings, settings = getattr(refiner, "embeddings", None), getattr(refiner, "settings", None)
    guessed = [name for name in names if str(reasons.get(name, "")).startswith("embed:")]
    if embeddings is None or settings is None or not guessed:
        return {}
    found = {}
    for name, ranking in zip(guessed, embeddings.ranked(guessed)):
        top, runner_up = ranking[0][1], (ranking[1][1] if len(ranking) > 1 else -1.0)
        if top < settings.accept or top - runner_up < settings.margin:
            found[name] = f"the embedding did not decide ({top:.2f}, runner-up {runner_up:.2f})"
    return found


def check_coverage(vocabulary: Vocabulary, required: bool = False) -> None:
    """Name the classes of the list the detector can never find: a warning, or (`required`) an error."""
    missing = vocabulary.uncovered
    if not missing:
        return
    message = (f"the detector has no class that becomes {', '.join(missing)} ({len(missing)} of "
               f"{len(vocabulary.classes.foreground)} classes of the list): they will never be segmented")
    if required:
        raise InvalidInputError(message + " (drop --require-all-classes to run anyway)")
    logger.warning("%s", message)
