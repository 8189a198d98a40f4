"""The settings of one run (`PipelineConfig`), checked when they are made: before any model loads.

The switches reproduce the paper's Table-3 ablations; `chain_spec` (offline_seg/chain.py) reads them to decide
which steps run and which models load.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from offline_seg.classes import ClassList, ensure_names
from offline_seg.errors import InvalidInputError
from offline_seg.gpus import check_device
from offline_seg.io.outputs import MAX_CLASSES
from offline_seg.llm.cache import default_cache_dir
from offline_seg.specs import ModelSpec, is_sam3, parse_spec
from offline_seg.stages.points import STRATEGIES
from offline_seg.stages.sam3 import MASK_THRESHOLD, PRESENCE_THRESHOLD, SCORE_THRESHOLD, Sam3Thresholds
from offline_seg.stages.segmenter import resolve_point_prompt
from offline_seg.stages.shortlist import DEFAULT_REFINER, MIN_HYBRID_LLM_PARAMS, REFINER_MODES, resolve_mode
from offline_seg.weights import DEFAULT_WEIGHTS_DIR

logger = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """Settings of one run. The switches reproduce the paper's Table-3 ablations."""

    classes: ClassList = field(default_factory=lambda: ClassList.preset("voc"))
    weights_dir: Path = DEFAULT_WEIGHTS_DIR
    device: str = "cpu"
    use_caption: bool = True  # False: "w/o BLIP-2"
    pre_refine: bool = True  # False: "w/o pre-refinement" (tags go straight to the detector)
    post_refine: bool = True  # False: "w/o post-refinement" (phrases used as-is, unknown dropped)
    num_points: int | None = None  # 0: "w/o points" (box-only SAM); None: the segmenter backend's default
    point_strategy: str | None = None  # paper, spread, gated or mask; None: the segmenter backend's default
    labels: tuple[str, ...] | None = None  # given labels instead of recognition + pre-refinement
    box_threshold: float = 0.18
    text_threshold: float = 0.15
    nms_iou: float = 0.8
    llm: str | None = None  # backend spec, e.g. "transformers:DIR"; default: <weights>/llm
    segmenter: str | None = None  # "sam" (default, <weights>/sam), "sam:PATH", "onnx" (<weights>/sam_onnx), "onnx:DIR"
    gpu_mem: str | None = None  # plan for a GPU of this size: it picks each model's precision and residency
    captioner_quant: str | None = None  # BLIP-2 none/int8/int4 (bitsandbytes); None: the plan's choice
    oracle_labels: bool = False  # labels from the ground truth ("ground-truth labels" row)
    oracle_boxes: bool = False  # boxes from the ground truth's connected components (isolates the segmenter)
    ground_truth_dir: Path | None = None  # label maps matched by image file stem, in dataset ids
    gt_box_expand: float = 0.0  # oracle boxes: each side out by this share of the box's width/height
    gt_box_jitter: float = 0.0  # oracle boxes: each side shifted by up to ± this share, seeded by `seed`
    seed: int = 0
    constrained: bool = True  # post-refinement answers are forced to be class-list members
    prompts_dir: Path | None = None
    # Post-refinement answers kept across runs (per model, class list, prompt, mode); None: no disk cache.
    phrase_cache_dir: Path | None = field(default_factory=default_cache_dir)
    # "hybrid" (embedding + LLM on a shortlist), "embed" (no LLM), "llm" (paper); "auto": hybrid on CUDA or with
    # `llm` named, unless that LLM is too small to help (stages/shortlist.py `resolve_mode`), else embed
    refiner: str = DEFAULT_REFINER
    embedder: str | None = None  # sentence-embedding model dir; default: <weights>/embedder
    examples: int = 0  # few-shot examples for pre-refinement (the paper's supplementary), from `examples_from`
    examples_from: Path | None = None  # an annotated set: images + ground-truth label maps
    min_labels: int = 0  # > 0: the pre-refinement prompt asks for at least this many labels (dense street lists)
    # "grounding-dino" (default: boxes, then SAM) or "sam3" / "sam3:DIR" (<weights>/sam3): SAM 3 detects and
    # segments each label as a concept prompt; no post-refinement, no SAM pass, num_points does not apply.
    detector: str | None = None
    sam3_score_threshold: float = SCORE_THRESHOLD  # defaults: SAM 3's own post-processing
    sam3_presence_threshold: float = PRESENCE_THRESHOLD
    sam3_mask_threshold: float = MASK_THRESHOLD
    # Where the chain runs, which decides its memory plan: "local" (stage-major, models loaded and freed per
    # chunk as the plan says) or "ray" (every model loaded at once, each in its own actor process).
    engine: str = "local"
    # A closed-set detector (centernet) that cannot find some class of the list: an error instead of a warning.
    require_all_classes: bool = False

    def __post_init__(self) -> None:
        self.weights_dir = Path(self.weights_dir)
        check_device(self.device)
        if self.engine not in ("local", "ray"):
            raise InvalidInputError(f"unknown engine {self.engine!r}; choose local or ray")
        backend = parse_spec(self.segmenter, "segmenter", self.weights_dir, self.device).backend
        self.point_strategy, self.num_points = resolve_point_prompt(backend, self.point_strategy, self.num_points)
        if self.point_strategy not in STRATEGIES:
            raise InvalidInputError(f"unknown point strategy {self.point_strategy!r}; "
                                    f"use one of: {', '.join(STRATEGIES)}")
        if self.num_points < 0:
            raise ValueError("num_points must be >= 0")
        if is_sam3(self.detector_spec):
            self.sam3_thresholds()  # checks them
            if self.segmenter is not None or self.oracle_boxes:
                raise InvalidInputError("SAM 3 makes its own masks: --segmenter and --boxes gt do not combine "
                                        "with --detector sam3")
        if self.ground_truth_dir is not None:
            self.ground_truth_dir = Path(self.ground_truth_dir)
        if self.refiner not in REFINER_MODES:
            raise InvalidInputError(f"unknown refiner {self.refiner!r}; choose one of {', '.join(REFINER_MODES)}")
        if self.examples and (self.examples_from is None or self.refiner_mode == "embed"):
            raise InvalidInputError("few-shot examples need --examples-from DIR and an LLM (not --refiner embed; "
                                    "--refiner auto does not ask an LLM under 1 B parameters: name --refiner hybrid)")
        if len(self.classes) > MAX_CLASSES:
            raise InvalidInputError(f"{len(self.classes)} classes do not fit the class-map PNG (at most "
                                    f"{MAX_CLASSES}, the background included)")
        if self.labels is not None:  # found before any model loads, not once per image
            ensure_names(self.labels, self.classes)

    @cached_property
    def refiner_mode(self) -> str:
        """The refiner mode this run uses (`auto` resolved by device, by whether `--llm` was given and by the
        LLM's size), resolved once."""
        parameters: list[int | None] = []

        def llm_parameters() -> int | None:
            from offline_seg.plan import llm_parameters as count

            parameters.append(count(parse_spec(self.llm, "llm", self.weights_dir, self.device)))
            return parameters[-1]

        mode = resolve_mode(self.refiner, self.device, llm_given=self.llm is not None, llm_parameters=llm_parameters)
        if self.refiner == "auto" and mode == "embed" and parameters:
            logger.warning("the LLM has %.3g M parameters, fewer than %.3g B: --refiner auto refines with the "
                           "embedding alone (measured: a small LLM's answers lose to it); --refiner hybrid asks the "
                           "LLM anyway",
                           parameters[-1] / 1e6, MIN_HYBRID_LLM_PARAMS / 1e9)
        return mode

    def summary(self) -> dict[str, object]:
        """JSON-friendly settings, written next to every result."""
        data = asdict(self)
        data["classes"] = self.classes.name
        data["class_ids"] = list(self.classes.ids)  # dataset ids, for exports of the run
        data["weights_dir"] = str(self.weights_dir)
        data["prompts_dir"] = str(self.prompts_dir) if self.prompts_dir else None
        data["ground_truth_dir"] = str(self.ground_truth_dir) if self.ground_truth_dir else None
        data["phrase_cache_dir"] = str(self.phrase_cache_dir) if self.phrase_cache_dir else None
        data["examples_from"] = str(self.examples_from) if self.examples_from else None
        return data

    @property
    def detector_spec(self) -> ModelSpec:
        """The detector's description (`--detector`, parsed like every stage's model)."""
        return parse_spec(self.detector, "detector", self.weights_dir, self.device)

    def sam3_thresholds(self) -> Sam3Thresholds:
        return Sam3Thresholds(self.sam3_score_threshold, self.sam3_presence_threshold, self.sam3_mask_threshold)
