"""The paper's optional few-shot examples for pre-refinement (its supplementary material), and the hint for
dense street lists. From an annotated set: recognise N sampled images, take their ground-truth labels, let
the LLM explain each input → output pair, and append those explanations to the pre-refinement system
prompt; labels present in every example's ground truth are added to every image's labels."""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from offline_seg.classes import ClassList
from offline_seg.errors import InvalidInputError
from offline_seg.llm.base import LLM
from offline_seg.types import Recognition

logger = logging.getLogger(__name__)

# Where an annotated set keeps its label maps, beside its images (VOC, Cityscapes, plain layouts).
GROUND_TRUTH_DIRS = ("SegmentationClass", "gtFine", "gt", "labels", "annotations")

EXPLAIN_SYSTEM = (
    "You will receive the caption tags and text of an image (the input) and the labels that are truly in it "
    "(the output), chosen from the label list: \"{labels}\".\n"
    "Explain briefly how the input leads to the output:\n"
    "- Skip terms that appear in both lists.\n"
    "- For each input term that does not appear in the output, say in one short sentence why it maps to an "
    "output label or is left out.\n"
    "- For each output label that no input term names, say in one short sentence what in the scene implies it.\n"
    "Do not repeat the lists. At most five sentences."
)
EXPLAIN_USER = "Input: {text}\nOutput: {labels}"
EXAMPLES_HEADER = "Examples (inputs, correct outputs and why):"
DENSE_HINT = "- The final list should contain at least {count} labels."


@dataclass(frozen=True)
class Example:
    recognition: Recognition
    labels: tuple[str, ...]
    explanation: str


def find_ground_truth_dir(root: Path) -> Path:
    """The label-map folder of an annotated set root (e.g. VOC's `SegmentationClass`)."""
    for name in GROUND_TRUTH_DIRS:
        if (Path(root) / name).is_dir():
            return Path(root) / name
    raise InvalidInputError(f"no ground-truth folder ({', '.join(GROUND_TRUTH_DIRS)}) under {root} for --examples-from")


def sample_images(images: Sequence[Path], count: int, seed: int = 0) -> list[Path]:
    """`count` images drawn without replacement, the same ones for the same seed."""
    if count > len(images):
        raise InvalidInputError(f"--examples {count} but the annotated set has {len(images)} images")
    return sorted(random.Random(seed).sample(list(images), count))


def explain(llm: LLM, classes: ClassList, recognitions: Sequence[Recognition],
            labels: Sequence[Sequence[str]], max_new_tokens: int = 120) -> list[Example]:
    """One batched LLM call: a short explanation of each input → ground-truth output pair."""
    system = EXPLAIN_SYSTEM.replace("{labels}", ", ".join(classes.names))
    conversations = [
        [{"role": "system", "content": system},
         {"role": "user", "content": EXPLAIN_USER.format(text=r.text, labels=", ".join(found))}]
        for r, found in zip(recognitions, labels)
    ]
    replies = llm.complete(conversations, max_new_tokens=max_new_tokens) if conversations else []
    return [Example(r, tuple(found), reply.strip()) for r, found, reply in zip(recognitions, labels, replies)]


def examples_text(examples: Sequence[Example]) -> str:
    """The block appended to the pre-refinement system prompt."""
    blocks = [EXAMPLES_HEADER]
    for number, example in enumerate(examples, 1):
        blocks.append(f"Example {number}.\nInput: {example.recognition.text}\nOutput: {', '.join(example.labels)}\n"
                      f"Why: {example.explanation}")
    return "\n\n".join(blocks)


def common_labels(examples: Sequence[Example]) -> list[str]:
    """Labels in every example's ground truth (e.g. road, sky on street scenes), in the first one's order."""
    if not examples:
        return []
    shared = set(examples[0].labels).intersection(*(set(e.labels) for e in examples[1:]))
    return [label for label in examples[0].labels if label in shared]


def with_additions(templates, *, examples: Sequence[Example] = (), min_labels: int = 0):
    """`PromptTemplates` whose pre-refinement prompt carries the dense-list hint and the examples."""
    text = templates.pre_refine.rstrip()
    if min_labels > 0:
        text += "\n" + DENSE_HINT.format(count=min_labels)
    if examples:
        text += "\n\n" + examples_text(examples)
    return dataclasses.replace(templates, pre_refine=text + "\n")


def build_examples(root: Path, count: int, classes: ClassList, llm: LLM,
                   recognize: Callable[[Path], Recognition], seed: int = 0) -> list[Example]:
    """Sample `count` annotated images under `root`, recognise them, read their ground-truth labels and
    let the LLM explain each pair."""
    from offline_seg.io.inputs import find_images
    from offline_seg.stages.oracle import GroundTruth, labels_from_ground_truth

    ground_truth = GroundTruth(find_ground_truth_dir(root), classes)
    _, images = find_images(Path(root))
    chosen = sample_images(images, count, seed)
    recognitions = [recognize(path) for path in chosen]
    labels = [labels_from_ground_truth(ground_truth.class_map(path.stem), classes) for path in chosen]
    examples = explain(llm, classes, recognitions, labels)
    logger.info("few-shot examples from %s: %s", root, [path.name for path in chosen])
    return examples
