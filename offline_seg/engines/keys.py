"""What each step's stored result depends on, declared once, and the keys built from those declarations.

Each step declares the configuration fields it reads, the models it runs and the per-image inputs it opens
besides the image (the ground-truth file of oracle modes). Its key hashes the *content* of each: a model by
its description with the dtype resolved for the device and its files' identity in place of its path, the
prompts by their text, the few-shot examples by the bytes of the chosen images and label maps, a class list
by its names and dataset ids, a ground-truth map by its bytes; chained with the keys of the steps it reads
from. `tests/test_keys.py` records which configuration fields each step really touches and fails when one
is not declared here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from offline_seg.io.store import settings_key
from offline_seg.errors import InvalidInputError, OfflineSegError
from offline_seg.specs import ModelSpec

if TYPE_CHECKING:
    from offline_seg.pipeline import Pipeline
    from offline_seg.steps import Item

logger = logging.getLogger(__name__)

# Fields read to build the models' descriptions (`ChainSpec`): they reach a key as the models' identities.
MODEL_FIELDS = frozenset({"weights_dir", "device", "llm", "segmenter", "detector", "embedder", "captioner_quant",
                          "gpu_mem", "engine"})  # engine: the Ray plan may choose other precisions
# Fields read that cannot change a value: where post-refinement answers are kept across runs (an answer is
# cached under the model, class list, prompt and mode that made it, so it is the answer the model gives).
NEUTRAL_FIELDS = frozenset({"phrase_cache_dir"})


@dataclass(frozen=True)
class Reads:
    """What one step reads besides the values of the steps it follows."""

    after: tuple[str, ...] = ()  # the steps whose values it reads
    fields: tuple[str, ...] = ()  # PipelineConfig fields (model fields excepted: see `models`)
    models: tuple[str, ...] = ()  # the chain's models it runs (and the refiner's embedder)
    per_image: tuple[str, ...] = ()  # inputs opened per image: "gt" (the image's ground-truth map)


_REFINING = ("classes", "constrained", "refiner", "prompts_dir", "examples", "examples_from", "min_labels")
READS: dict[str, Reads] = {
    "tag": Reads(models=("tagger",)),
    "caption": Reads(fields=("use_caption",), models=("captioner",)),
    "labels": Reads(after=("tag", "caption"), fields=("labels", "oracle_labels", "oracle_boxes", "pre_refine",
                                                       "ground_truth_dir", *_REFINING),
                    models=("llm", "embedder"), per_image=("gt",)),
    "detect": Reads(after=("labels",), fields=("classes", "oracle_boxes", "ground_truth_dir", "box_threshold",
                                                "text_threshold", "nms_iou", "gt_box_expand", "gt_box_jitter", "seed",
                                                "sam3_score_threshold", "sam3_presence_threshold",
                                                "sam3_mask_threshold"),
                    models=("detector",), per_image=("gt",)),
    "post_refine": Reads(after=("detect",), fields=("post_refine", *_REFINING), models=("llm", "embedder")),
    "segment": Reads(after=("post_refine",), fields=("num_points", "point_strategy"), models=("segmenter",)),
    # The record's `settings` are informational (what the run was asked); the class map, the record's
    # classes and the dataset ids the exports read are the class list's.
    "write": Reads(after=("segment",), fields=("classes",)),
}


def field_identity(pipeline: Pipeline, name: str) -> Any:
    """A configuration field as it enters a key: its content where it names files."""
    c = pipeline.config
    value = getattr(c, name)
    if name == "classes":
        return [list(value.names), list(value.ids)]
    if name == "refiner":
        return c.refiner_mode  # auto, resolved for the device
    if name == "point_strategy":
        return value if c.num_points else "box-only"  # box-only results are shared by every strategy
    if name == "prompts_dir":
        from offline_seg.stages.refiner import PromptTemplates

        templates = PromptTemplates.load(value)
        return settings_key(templates.pre_refine, templates.post_refine)
    if name == "examples_from":
        return examples_identity(pipeline) if c.examples else None
    if name == "ground_truth_dir":
        return None  # per image: the bytes of each image's own map (`item_inputs`)
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)


def examples_identity(pipeline: Pipeline) -> str:
    """The bytes of the few-shot images and label maps the examples are drawn from."""
    from offline_seg.stages.oracle import GroundTruth
    from offline_seg.io.inputs import find_images, sha256_file
    from offline_seg.stages.examples import find_ground_truth_dir, sample_images

    c = pipeline.config
    root = Path(c.examples_from)
    truth = GroundTruth(find_ground_truth_dir(root), c.classes)
    chosen = sample_images(find_images(root)[1], c.examples, 0)
    return settings_key([(sha256_file(path), sha256_file(truth.path_for(path.stem))) for path in chosen])


def model_identity_of(pipeline: Pipeline, stage: str) -> str:
    """A model as it enters a key: its description with the dtype resolved for its device and the identity
    of its files in place of its path (device, residency and vLLM's memory share change no result)."""
    from offline_seg.weights import model_identity

    if stage == "embedder":
        spec = pipeline.model_spec("embedder") if pipeline.uses_embedder else None
    else:
        spec = pipeline.chain.model(stage)
    if spec is None:
        return "none"
    if spec.stage == "llm":
        return llm_identity(spec)  # its backend names its dtype and quantization
    return replace(spec, path=model_identity(Path(spec.path)), device="", resident=True, dtype=spec.resolved_dtype,
                   gpu_memory_utilization=None, explicit=frozenset()).text()


def llm_identity(spec: ModelSpec) -> str:
    """The LLM backend's own identity (as the phrase cache uses it): its files and loading options for a
    local model, the served model's name for a server (if the server cannot be asked now, its URL)."""
    from offline_seg.llm.registry import load_llm

    try:
        return str(load_llm(spec).identity)  # builds the client only: nothing is loaded
    except InvalidInputError:
        raise  # a description no run can use (a remote host refused, not a URL): the run stops at once
    except OfflineSegError as error:
        logger.warning("cannot ask %s which model it serves (%s); keying its results by the spec", spec.path, error)
        return spec.text()


class StepKeys:
    """The key of every step of a pipeline's chain: run-wide parts computed once, per-image inputs per item."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.steps = tuple(pipeline.chain.steps)
        models: dict[str, str] = {}
        self.base: dict[str, str] = {}
        for step in self.steps:
            reads = READS[step]
            for stage in reads.models:
                if stage not in models:
                    models[stage] = model_identity_of(pipeline, stage)
            fields = {name: field_identity(pipeline, name) for name in reads.fields}
            self.base[step] = settings_key(step, [self.base[s] for s in self.parents(step)], fields,
                                           [models[m] for m in reads.models])

    def parents(self, step: str) -> list[str]:
        """The steps of this chain whose values `step` reads (through the steps the chain leaves out)."""
        found: list[str] = []
        for parent in READS[step].after:
            found += [parent] if parent in self.steps else self.parents(parent)
        return found

    def per_image(self, step: str) -> tuple[str, ...]:
        """The per-image inputs `step` depends on, its own and those of the steps before it."""
        names = set(READS[step].per_image)
        for parent in self.parents(step):
            names |= set(self.per_image(parent))
        return tuple(sorted(names))

    def __getitem__(self, step: str) -> str:
        """The run-wide part of a step's key (the whole key when no per-image input applies)."""
        return self.base[step]

    def key(self, step: str, item: Item) -> str:
        """The key of `step`'s value for `item`: the run-wide part and the item's own inputs."""
        inputs = self.item_inputs(item, self.per_image(step))
        return self.base[step] if not inputs else settings_key(self.base[step], inputs)

    def item_inputs(self, item: Item, names: tuple[str, ...]) -> dict[str, str]:
        readers: dict[str, Callable[[Item], str | None]] = {"gt": self._ground_truth_hash}
        values = {name: readers[name](item) for name in names}
        return {name: value for name, value in values.items() if value is not None}

    def _ground_truth_hash(self, item: Item) -> str | None:
        """The bytes of the image's ground-truth map, when the chain reads ground truth."""
        chain = self.pipeline.chain
        directory = self.pipeline.config.ground_truth_dir
        if directory is None or (chain.labels_from != "gt" and chain.boxes_from != "gt"):
            return None
        from offline_seg.stages.oracle import GroundTruth
        from offline_seg.io.inputs import sha256_file

        try:
            return sha256_file(GroundTruth(directory, self.pipeline.config.classes).path_for(item.stem))
        except (InvalidInputError, OSError):
            return "absent"  # the step itself fails this image with the reason

    def as_dict(self) -> dict[str, str]:
        return dict(self.base)


def stage_keys(pipeline: Pipeline) -> dict[str, str]:
    """Each step's run-wide key, chained through the steps it reads from."""
    return StepKeys(pipeline).as_dict()
