"""The chain: recognize → pre-refine → detect → post-refine → segment → compose.

`Pipeline` owns no global state: each stage is built from the weights dir on first use (or injected,
which is how stages are swapped), and results flow one way as typed dataclasses.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from offline_seg.captioner import Blip2Captioner, Captioner
from offline_seg.classes import ClassList, ensure_names
from offline_seg.composer import compose
from offline_seg.errors import InvalidInputError
from offline_seg.detector import Detector, GroundingDinoDetector
from offline_seg.images import load_image
from offline_seg.llm.base import LLM, load_llm
from offline_seg.refiner import PromptTemplates, Refiner, labels_without_llm
from offline_seg.oracle import GroundTruth, boxes_from_ground_truth, labels_from_ground_truth
from offline_seg.segmenter import Segmenter, load_segmenter
from offline_seg.tagger import RamPlusTagger, Tagger
from offline_seg.types import Detections, Recognition, SegmentationResult
from offline_seg.weights import DEFAULT_WEIGHTS_DIR, WeightsDir

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
    num_points: int = 20  # 0: "w/o points" (box-only SAM)
    labels: tuple[str, ...] | None = None  # given labels instead of recognition + pre-refinement
    box_threshold: float = 0.18
    text_threshold: float = 0.15
    nms_iou: float = 0.8
    llm: str | None = None  # backend spec, e.g. "transformers:DIR"; default: <weights>/llm
    segmenter: str | None = None  # "sam" (default, <weights>/sam), "sam:PATH", "onnx" (<weights>/sam_onnx), "onnx:DIR"
    oracle_labels: bool = False  # labels from the ground truth ("ground-truth labels" row)
    oracle_boxes: bool = False  # boxes from the ground truth's connected components (isolates the segmenter)
    ground_truth_dir: Path | None = None  # label maps matched by image file stem, in dataset ids
    constrained: bool = True  # post-refinement answers are forced to be class-list members
    prompts_dir: Path | None = None

    def __post_init__(self) -> None:
        self.weights_dir = Path(self.weights_dir)
        if self.num_points < 0:
            raise ValueError("num_points must be >= 0")
        if self.ground_truth_dir is not None:
            self.ground_truth_dir = Path(self.ground_truth_dir)

    def summary(self) -> dict[str, object]:
        """JSON-friendly settings, written next to every result."""
        data = asdict(self)
        data["classes"] = self.classes.name
        data["weights_dir"] = str(self.weights_dir)
        data["prompts_dir"] = str(self.prompts_dir) if self.prompts_dir else None
        data["ground_truth_dir"] = str(self.ground_truth_dir) if self.ground_truth_dir else None
        return data


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
    ) -> None:
        self.config = config or PipelineConfig()
        self.weights = WeightsDir(self.config.weights_dir)
        self._tagger = tagger
        self._captioner = captioner
        self._llm = llm
        self._detector = detector
        self._segmenter = segmenter
        self._refiner: Refiner | None = None

    # --- stages, built on first use -------------------------------------------------------------
    @property
    def tagger(self) -> Tagger:
        if self._tagger is None:
            self._tagger = RamPlusTagger(self.weights.path("ram_plus"), device=self.config.device)
        return self._tagger

    @property
    def captioner(self) -> Captioner:
        if self._captioner is None:
            self._captioner = Blip2Captioner(self.weights.path("blip2"), device=self.config.device)
        return self._captioner

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            c = self.config
            self._detector = GroundingDinoDetector(
                self.weights.path("grounding_dino"),
                box_threshold=c.box_threshold,
                text_threshold=c.text_threshold,
                nms_iou=c.nms_iou,
                device=c.device,
            )
        return self._detector

    @property
    def segmenter(self) -> Segmenter:
        if self._segmenter is None:
            c = self.config
            self._segmenter = load_segmenter(c.segmenter, self.weights, num_points=c.num_points, device=c.device)
        return self._segmenter

    @property
    def refiner(self) -> Refiner:
        if self._refiner is None:
            if self._llm is None:
                spec = self.config.llm or str(self.weights.path("llm"))
                self._llm = load_llm(spec, device=self.config.device)
            self._refiner = Refiner(
                self._llm,
                self.config.classes,
                PromptTemplates.load(self.config.prompts_dir),
                constrained=self.config.constrained,
            )
        return self._refiner

    # --- the chain ----------------------------------------------------------------------------
    def recognize(self, image: Image.Image) -> Recognition:
        tags = self.tagger.tag(image)
        caption = self.captioner.caption(image) if self.config.use_caption else None
        return Recognition(tuple(tags), caption)

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
        """Run the whole chain on one image.

        `labels` (or `config.labels`) skips recognition and pre-refinement: the paper's ground-truth-labels
        row. With `config.oracle_labels`/`oracle_boxes`, labels/boxes come from `ground_truth` (a class-index
        map) or from `config.ground_truth_dir`, matched by `name` (default: the image file's stem).
        """
        if name is None and isinstance(image, (str, Path)):
            name = Path(image).stem
        image = load_image(image)
        classes = self.config.classes
        if (self.config.oracle_labels or self.config.oracle_boxes) and ground_truth is None:
            ground_truth = self.ground_truth_for(image, name)
        replies: dict[str, object] = {}
        recognition: Recognition | None = None
        if self.config.oracle_boxes:
            detections = boxes_from_ground_truth(ground_truth, classes)
            prompt_labels = labels_from_ground_truth(ground_truth, classes)
        else:
            if self.config.oracle_labels:
                given: Sequence[str] | None = labels_from_ground_truth(ground_truth, classes)
            else:
                given = labels if labels is not None else self.config.labels
            if given is not None:
                prompt_labels = [label for label in ensure_names(given, classes) if label != classes.background]
            else:
                recognition = self.recognize(image)
                if self.config.pre_refine:
                    prompt_labels, reply = self.refiner.pre_refine([recognition])[0]
                    replies["pre_refine"] = reply
                else:
                    prompt_labels = list(recognition.tags)
            logger.info("detector prompt: %s", prompt_labels)
            detections = self.detector.detect(image, prompt_labels) if prompt_labels else Detections.empty()
            if self.config.post_refine:
                post = self.refiner.post_refine(detections.phrases)
                detections = detections.with_labels(post.labels)
                replies["post_refine"] = post.replies
            else:
                detections = detections.with_labels(labels_without_llm(detections.phrases, classes))

        instances = self.segmenter.segment(image, detections)
        class_map = compose(instances, classes, image.height, image.width)
        return SegmentationResult(
            class_map=class_map,
            class_names=list(classes.names),
            recognition=recognition,
            scene_labels=prompt_labels,
            detections=detections,
            instances=instances,
            llm_replies=replies,
        )
