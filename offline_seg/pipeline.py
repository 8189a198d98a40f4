"""The chain: recognize → pre-refine → detect → post-refine → segment → compose.

`Pipeline` owns no global state: each stage is built from the weights dir on first use (or injected,
which is how stages are swapped), and results flow one way as typed dataclasses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from offline_seg.stages.captioner import Blip2Captioner, Captioner
from offline_seg.classes import ensure_names
from offline_seg.errors import InvalidInputError
from offline_seg.gpus import check_device
from offline_seg.stages.detector import Detector, GroundingDinoDetector
from offline_seg.stages.centernet import CenterNetDetector, CenterNetSettings
from offline_seg.stages.vocabulary import Vocabulary, build_vocabulary, check_coverage, undecided_by_embedding
from offline_seg.models.centernet import CenterNetOnnx, read_class_names
from offline_seg.io.images import load_image
from offline_seg.llm.base import LLM
from offline_seg.llm.registry import load_llm
from offline_seg.models.embedder import load_embedder
from offline_seg.stages.refiner import PromptTemplates, Refiner, labels_without_llm
from offline_seg.stages.oracle import GroundTruth, boxes_from_ground_truth, labels_from_ground_truth, loosen_boxes
from offline_seg.stages.sam3 import MaskReuseSegmenter, Sam3Detector
from offline_seg.stages.segmenter import Segmenter, load_segmenter
from offline_seg.specs import ModelSpec, is_closed_set, is_sam3, parse_spec
from offline_seg.chain import ChainSpec, chain_spec
from offline_seg.stages.examples import Example, build_examples, common_labels, with_additions
from offline_seg.stages.shortlist import Embedder, GuidedRefiner, LabelEmbeddings
from offline_seg.stages.tagger import RamPlusTagger, Tagger
from offline_seg.types import Detections, Recognition, SegmentationResult
from offline_seg.config import PipelineConfig
from offline_seg.weights import WeightsDir

logger = logging.getLogger(__name__)


class Pipeline:
    """Segment images with the configured chain. Pass any stage to replace the default model."""

    def __init__(
        self,
        config: PipelineConfig | None = None,
        *,
        tagger: Tagger | None = None,
        captioner: Captioner | None = None,
        llm: LLM | None = None,
        detector: Detector | None = None,
        segmenter: Segmenter | None = None,
        chain: ChainSpec | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        """`chain`: the models' descriptions to load from, e.g. as a memory plan filled them in
        (`offline_seg.plan.fit_chain`); default: the config's, fitted to `config.gpu_mem` when given."""
        self.config = config or PipelineConfig()
        self.weights = WeightsDir(self.config.weights_dir)
        # One description per model: the loaders below, the batch runner and the memory plan all read it.
        self.chain: ChainSpec = chain or chain_spec(self.config)
        self.memory_plan = None
        if self.config.gpu_mem and chain is None:
            from offline_seg.plan import PlanOptions, fit_chain

            options = PlanOptions(per_process=self.config.engine == "ray")
            self.chain, self.memory_plan = fit_chain(self.chain, self.config.gpu_mem, options)
        self._tagger = tagger
        self._captioner = captioner
        self._llm = llm
        self._detector = detector
        self._segmenter = segmenter
        self._embedder = embedder
        self._examples: list[Example] | None = None
        self._vocabulary: Vocabulary | None = None
        self._refiner: Refiner | GuidedRefiner | None = None
        self._injected = {name for name, stage in (("tagger", tagger), ("captioner", captioner), ("llm", llm),
                                                    ("detector", detector), ("segmenter", segmenter),
                                                    ("embedder", embedder)) if stage is not None}

    # --- stages, built on first use, exactly as their descriptions say ---------------------------
    def model_spec(self, stage: str) -> ModelSpec:
        """The description a stage's model is loaded from (a stage the chain does not run: its default)."""
        c = self.config
        texts = {"llm": c.llm, "segmenter": c.segmenter, "detector": c.detector, "embedder": c.embedder}
        return self.chain.model(stage) or parse_spec(texts.get(stage), stage, c.weights_dir, c.device)

    def preflight(self, start: bool = True) -> None:
        """Stop before any image if a file of a configured (not injected) model is missing; names them all.
        With `start`, a resident LLM server the run manages (`vllm_server`) is started now, before any model
        takes GPU memory (a swapped one starts at its first step): a server that cannot start stops the run
        before the first image."""
        extra = [self.model_spec("embedder")] if self.uses_embedder and "embedder" not in self._injected else []
        if any(model.stage not in self._injected for model in self.chain.models):
            check_device(self.config.device, available=True)  # before a loader would blame its weights file
        self.chain.preflight(self.config.weights_dir, skip=self._injected, extra=extra)
        if self.vocabulary is not None:
            check_coverage(self.vocabulary, self.config.require_all_classes)
        llm = self.chain.model("llm")
        if start and llm is not None and llm.backend == "vllm_server" and llm.resident and "llm" not in self._injected:
            self.llm.start()  # type: ignore[attr-defined]

    def close(self) -> None:
        """Release what outlives a call: an LLM server this pipeline started is stopped (also at interpreter
        exit, and by its watchdog if the process dies). Injected stages are the caller's."""
        if self._llm is not None and "llm" not in self._injected:
            closer = getattr(self._llm, "close", None)
            if callable(closer):
                closer()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def uses_embedder(self) -> bool:
        """Whether refinement reads the sentence embedder (every refiner mode but the paper's LLM-only)."""
        c = self.config
        return self.config.refiner_mode != "llm" and (
            (c.pre_refine and self.chain.labels_from == "llm") or self.chain.post_refine)

    @property
    def tagger(self) -> Tagger:
        if self._tagger is None:
            spec = self.model_spec("tagger")
            self._tagger = RamPlusTagger(spec.path, device=spec.device, dtype=spec.torch_dtype())
        return self._tagger

    @property
    def captioner(self) -> Captioner:
        if self._captioner is None:
            spec = self.model_spec("captioner")
            self._captioner = Blip2Captioner(spec.path, device=spec.device, dtype=spec.torch_dtype(),
                                             quantization=spec.quantization)
        return self._captioner

    @property
    def detector(self) -> Detector:
        c = self.config
        if self._detector is None and is_sam3(spec := self.model_spec("detector")):
            self._detector = Sam3Detector(spec.path, c.sam3_thresholds(), device=spec.device)
        elif self._detector is None and is_closed_set(spec):
            self._detector = CenterNetDetector(CenterNetOnnx(spec.path), CenterNetSettings.from_spec(spec))
        elif self._detector is None:
            self._detector = GroundingDinoDetector(
                spec.path,
                box_threshold=c.box_threshold,
                text_threshold=c.text_threshold,
                nms_iou=c.nms_iou,
                device=spec.device,
                dtype=spec.torch_dtype(),
            )
        return self._detector

    @property
    def vocabulary(self) -> Vocabulary | None:
        """A closed-set detector's class names on the class list, decided once by post-refinement (None for
        an open-vocabulary detector, whose phrases are refined per image)."""
        if self._vocabulary is None and is_closed_set(spec := self.model_spec("detector")):
            names = list(getattr(self.detector, "class_names", None) or read_class_names(spec.path))
            every_class = Detections(np.zeros((len(names), 4)), np.zeros(len(names)), names)  # one box per name
            [(named, reasons)] = self.label_detections([every_class], vocabulary=False)
            undecided = undecided_by_embedding(self.refiner, names, reasons or {}) if self.chain.post_refine else {}
            self._vocabulary = build_vocabulary(names, named.labels, self.config.classes, reasons, undecided)
        return self._vocabulary

    @property
    def segmenter(self) -> Segmenter:
        if self._segmenter is None and self.chain.masks_from == "detector":
            self._segmenter = MaskReuseSegmenter()  # the detections carry SAM 3's masks
        if self._segmenter is None:
            c = self.config
            self._segmenter = load_segmenter(self.model_spec("segmenter"), num_points=c.num_points,
                                             strategy=c.point_strategy)
        return self._segmenter

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = load_embedder(self.model_spec("embedder"))
        return self._embedder

    @property
    def refiner(self) -> Refiner | GuidedRefiner:
        """The refiner of `config.refiner`: the LLM alone, the embedding alone, or both (shortlists)."""
        if self._refiner is None:
            c = self.config
            llm_refiner = self._llm_refiner() if c.refiner_mode != "embed" else None
            if c.refiner_mode == "llm":
                self._refiner = llm_refiner
            else:
                self._refiner = GuidedRefiner(LabelEmbeddings(self.embedder, c.classes), llm_refiner)
        return self._refiner

    @property
    def llm(self) -> LLM:
        if self._llm is None:
            self._llm = load_llm(self.model_spec("llm"))
        return self._llm

    def _llm_refiner(self) -> Refiner:
        """The paper's LLM refiner (loads the LLM), with the persistent phrase cache when configured."""
        c = self.config
        templates = PromptTemplates.load(c.prompts_dir)
        if c.examples or c.min_labels:
            templates = with_additions(templates, examples=self.examples, min_labels=c.min_labels)
        cache = None
        if c.phrase_cache_dir is not None:
            cache = Refiner.open_phrase_cache(c.phrase_cache_dir, self.llm, c.classes, templates,
                                              constrained=c.constrained)
        return Refiner(self.llm, c.classes, templates, constrained=c.constrained, phrase_cache=cache)

    @property
    def examples(self) -> list[Example]:
        """The few-shot examples (built once per pipeline: N annotated images recognised and explained)."""
        c = self.config
        if self._examples is None:
            self._examples = []
            if c.examples:
                self._examples = build_examples(c.examples_from, c.examples, c.classes, self.llm,
                                                lambda path: self.recognize(load_image(path)))
        return self._examples

    def release(self, stage: str) -> None:
        """Drop a stage's model (tagger, captioner, llm, detector, segmenter) so its memory can go back;
        the next use loads it again. Injected stages are kept: the caller owns them."""
        attribute = {"tagger": "_tagger", "captioner": "_captioner", "detector": "_detector",
                     "segmenter": "_segmenter", "llm": "_llm"}[stage]
        if stage in self._injected:
            return
        if stage == "llm":
            self.close()  # a server process gives all of its memory back only when it stops
        setattr(self, attribute, None)
        if stage == "llm":
            self._refiner = None
        import gc

        gc.collect()
        if self.config.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        logger.info("released the %s", stage)

    # --- the chain, one stage at a time (the batch runner calls these on chunks) -----------------
    def tag(self, images: Sequence[Image.Image]) -> list[list[str]]:
        tag_batch = getattr(self.tagger, "tag_batch", None)
        return [list(t) for t in tag_batch(images)] if tag_batch else [list(self.tagger.tag(i)) for i in images]

    def caption(self, images: Sequence[Image.Image]) -> list[str | None]:
        """Captions, or None for every image when BLIP-2 is switched off (the model is not loaded)."""
        if not self.config.use_caption:
            return [None] * len(images)
        caption_batch = getattr(self.captioner, "caption_batch", None)
        return list(caption_batch(images)) if caption_batch else [self.captioner.caption(i) for i in images]

    def recognize(self, image: Image.Image) -> Recognition:
        return Recognition(tuple(self.tag([image])[0]), self.caption([image])[0])

    def scene_labels(self, recognitions: Sequence[Recognition]) -> list[tuple[list[str], str | None]]:
        """The detector's labels per image and the LLM's reply: pre-refinement in one batched call, or
        the tags themselves when pre-refinement is off."""
        if not recognitions:
            return []
        if self.config.pre_refine:
            shared = common_labels(self.examples)  # labels of every few-shot example go to every image
            return [(labels + [x for x in shared if x not in labels], reply)
                    for labels, reply in self.refiner.pre_refine(list(recognitions))]
        return [(list(r.tags), None) for r in recognitions]

    def given_labels(self, labels: Sequence[str]) -> list[str]:
        """User-given (or ground-truth) labels, checked against the class list, background dropped."""
        classes = self.config.classes
        return [label for label in ensure_names(labels, classes) if label != classes.background]

    def ground_truth_boxes(self, ground_truth: np.ndarray, name: str) -> Detections:
        """The oracle's boxes for one image (`name` seeds its jitter), loosened as the config says."""
        c = self.config
        height, width = ground_truth.shape
        return loosen_boxes(boxes_from_ground_truth(ground_truth, c.classes), (width, height), c.gt_box_expand,
                            c.gt_box_jitter, c.seed, key=name)

    def fixed_labels(self, ground_truth: np.ndarray | None, labels: Sequence[str] | None = None) -> list[str] | None:
        """The detector's labels when they do not come from recognition: the ground truth's (oracle modes)
        or the user's (`labels`, else `config.labels`); None when recognition + pre-refinement decide."""
        c = self.config
        if self.chain.labels_from == "gt":
            return labels_from_ground_truth(ground_truth, c.classes)
        given = labels if labels is not None else c.labels
        if given is None and self.chain.labels_from == "all":  # a closed-set detector: every class is asked for
            given = c.classes.foreground
        return None if given is None else self.given_labels(given)

    def detect(self, image: Image.Image, labels: Sequence[str]) -> Detections:
        return self.detector.detect(image, list(labels)) if labels else Detections.empty()

    def label_detections(self, detections: Sequence[Detections], labels: Sequence[Sequence[str]] | None = None,
                         vocabulary: bool = True) -> list[tuple[Detections, dict[str, str] | None]]:
        """Class-list labels for the detections of several images: post-refinement with all distinct
        unknown phrases in one LLM batch, or phrases matched as-is when post-refinement is off. SAM 3's
        detections are labelled already (each prompt is a class name): nothing to refine. A closed-set
        detector's class names go through its vocabulary (refined once), kept only where the label is one
        of that image's `labels`."""
        if self.chain.masks_from == "detector":
            return [(d, None) for d in detections]
        if vocabulary and (known := self.vocabulary) is not None:
            allowed = labels or [None] * len(detections)
            return [(d.with_labels([known.label(p, a) for p in d.phrases]),
                     {p: known.reasons[p] for p in dict.fromkeys(d.phrases)}) for d, a in zip(detections, allowed)]
        if not self.config.post_refine:
            classes = self.config.classes
            return [(d.with_labels(labels_without_llm(d.phrases, classes)), None) for d in detections]
        if not any(len(d) for d in detections):
            return [(d, {}) for d in detections]
        refined = self.refiner.post_refine_batch([d.phrases for d in detections])
        return [(d.with_labels(r.labels), r.replies) for d, r in zip(detections, refined)]

    def ground_truth_for(self, image: Image.Image, name: str | None) -> np.ndarray:
        """The class-index ground truth of an image, from `config.ground_truth_dir` by file stem."""
        if self.config.ground_truth_dir is None or name is None:
            raise InvalidInputError("oracle labels/boxes need ground truth: pass --gt DIR (and image files)")
        return GroundTruth(self.config.ground_truth_dir, self.config.classes).class_map(name, image.size)

    def segment(
        self,
        image: str | Path | Image.Image,
        labels: Sequence[str] | None = None,
        *,
        name: str | None = None,
        ground_truth: np.ndarray | None = None,
    ) -> SegmentationResult:
        """Run the whole chain on one image, through the same steps a batch run takes (`offline_seg.steps`).

        `labels` (or `config.labels`) skips recognition and pre-refinement: the paper's ground-truth-labels
        row. With `config.oracle_labels`/`oracle_boxes`, labels/boxes come from `ground_truth` (a class-index
        map) or from `config.ground_truth_dir`, matched by `name` (default: the image file's stem).
        An image the chain cannot process raises InvalidInputError with the reason.
        """
        from offline_seg.steps import Item, StepFailure, Steps

        path = Path(image) if isinstance(image, (str, Path)) else None
        item = Item(path, name or (path.stem if path else ""), image=None if path else load_image(image),
                    labels=None if labels is None else tuple(labels), truth=ground_truth)
        steps = Steps(self)
        for step in self.chain.steps:
            if step == "write" or (labels is not None and step in ("tag", "caption")):
                continue
            [value] = steps.compute(step, [item])
            if isinstance(value, StepFailure):
                raise InvalidInputError(value.reason)
            item.values[step] = value
        return steps.result(item.values)
