"""The one decision of which steps run and which models load: `chain_spec(config) -> ChainSpec`.

A `ChainSpec` holds the `ModelSpec`s (offline_seg/specs.py) of the models a `PipelineConfig` loads and the steps
it runs. The memory plan reads it and returns one with each stage's precision and residency filled in; the
loaders build exactly what it says; the batch runner runs its steps, releases its swapped models and keys its
results by its specs.

Standard library only, like specs.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from offline_seg.errors import MissingWeightsError
from offline_seg.specs import MODELS, STEP_MODELS, STEPS, ModelSpec, is_closed_set, is_sam3, parse_spec


@dataclass(frozen=True)
class ChainSpec:
    """The models a run loads (in chain order) and the steps it runs; where labels and boxes come from."""

    models: tuple[ModelSpec, ...]
    steps: tuple[str, ...]  # batch-runner steps, a subsequence of STEPS
    labels_from: str = "llm"  # llm (pre-refinement) | tags (no pre-refinement) | given | gt | all (closed set)
    boxes_from: str = "detector"  # detector | gt
    post_refine: bool = True
    masks_from: str = "segmenter"  # segmenter | detector (SAM 3's own masks, reused by the segment step)

    def model(self, stage: str) -> ModelSpec | None:
        return next((m for m in self.models if m.stage == stage), None)

    def step_model(self, step: str) -> str | None:
        """The model a step runs, or None (e.g. `labels` with given labels, `post_refine` switched off)."""
        model = STEP_MODELS.get(step)
        if step not in self.steps or model is None:
            return None
        if step == "labels" and self.labels_from != "llm":
            return None
        if step == "detect" and self.boxes_from != "detector":
            return None
        if step == "post_refine" and not self.post_refine:
            return None
        if step == "segment" and self.masks_from != "segmenter":
            return None
        return model

    @property
    def model_steps(self) -> tuple[tuple[str, str], ...]:
        """(step, model) of every step that runs a model, in chain order."""
        return tuple((step, model) for step in self.steps if (model := self.step_model(step)) is not None)

    def uses(self, stage: str) -> int:
        """How often a model runs per chunk (the LLM: pre- and post-refinement)."""
        return sum(1 for _, model in self.model_steps if model == stage)

    @property
    def swapped(self) -> tuple[str, ...]:
        """Models released after each of their steps (the plan's per-chunk loads)."""
        return tuple(m.stage for m in self.models if not m.resident)

    def replace_models(self, models: Iterable[ModelSpec]) -> ChainSpec:
        by_stage = {m.stage: m for m in models}
        return replace(self, models=tuple(by_stage.get(m.stage, m) for m in self.models))

    def missing_files(self, weights_dir: Path | str | None = None, skip: Iterable[str] = (),
                      extra: Iterable[ModelSpec] = ()) -> list[tuple[Path, str]]:
        """Every file the configured models (but those of the `skip` stages) need and do not find, as
        (path, weights component), by the manifest's `required` lists."""
        from offline_seg.weights import WeightsDir

        store = WeightsDir(weights_dir or Path("weights"))
        missing: list[tuple[Path, str]] = []
        for spec in (*self.models, *extra):
            if spec.backend == "openai" or spec.stage in set(skip):
                continue
            path = Path(spec.path)
            if path.suffix in (".gguf", ".pth") or path.is_file():
                if not path.is_file():
                    missing.append((path, spec.component))
                continue
            missing.extend((path / name, spec.component) for name in store.missing_in(spec.component, path))
        return missing

    def preflight(self, weights_dir: Path | str | None = None, skip: Iterable[str] = (),
                  extra: Iterable[ModelSpec] = ()) -> None:
        """Stop before any image when a model file is missing (of the chain's models and `extra` ones, e.g.
        the refiner's embedder): all of them, in one error."""
        missing = self.missing_files(weights_dir, skip, extra)
        if missing:
            raise MissingWeightsError.of(missing, weights_dir=weights_dir)


def chain_spec(config: Any) -> ChainSpec:
    """The one place that decides, from a `PipelineConfig`, which steps run and which models load."""
    weights, device = config.weights_dir, config.device
    gt_labels = bool(config.oracle_labels or config.oracle_boxes)
    if config.oracle_boxes:
        steps = ["detect", "segment", "write"]
        labels_from, boxes_from = "gt", "gt"
    else:
        boxes_from = "detector"
        steps = list(STEPS)
        if gt_labels or config.labels is not None:
            labels_from = "gt" if gt_labels else "given"
            steps = [s for s in steps if s not in ("tag", "caption")]
        else:
            labels_from = "llm" if config.pre_refine else "tags"
            if not config.use_caption:
                steps.remove("caption")
    detector = parse_spec(getattr(config, "detector", None), "detector", weights, device)
    if is_closed_set(detector) and labels_from in ("llm", "tags"):
        # A closed-set detector finds what it was trained on, whatever the prompt: recognising the scene
        # (RAM++, BLIP-2) and pre-refining it (LLM) would change nothing. Every class of the list is asked
        # for; post-refinement maps the detector's class names onto the list.
        labels_from = "all"
        steps = [s for s in steps if s not in ("tag", "caption")]
    sam3 = is_sam3(detector) and not config.oracle_boxes
    if sam3:  # SAM 3's detections are class names already, and its masks are final
        steps.remove("post_refine")
    chain = ChainSpec(models=(), steps=tuple(steps), labels_from=labels_from, boxes_from=boxes_from,
                      post_refine=bool(config.post_refine) and not config.oracle_boxes and not sam3,
                      masks_from="detector" if sam3 else "segmenter")
    wanted = {model for _, model in chain.model_steps}
    if getattr(config, "refiner_mode", "llm") == "embed":  # refinement by the sentence embedder alone
        wanted.discard("llm")
    texts = {"llm": config.llm, "segmenter": config.segmenter, "detector": getattr(config, "detector", None),
             "captioner": _quant_spec(getattr(config, "captioner_quant", None))}
    models = tuple(parse_spec(texts.get(stage), stage, weights, device) for stage in MODELS if stage in wanted)
    return replace(chain, models=models)


def _quant_spec(quantization: str | None) -> str | None:
    """`--captioner-quant` as a spec string (an explicit choice the plan must honour)."""
    return None if quantization is None else f"blip2?quantization={quantization}"
