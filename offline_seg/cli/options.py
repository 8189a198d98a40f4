"""The options `segment`, `run` and `llm refine` share, and the `PipelineConfig` they describe."""

from __future__ import annotations

from pathlib import Path

import click

from offline_seg.classes import PRESETS
from offline_seg.cli.common import _class_list
from offline_seg.stages.points import STRATEGIES as POINT_STRATEGIES
from offline_seg.stages.sam3 import MASK_THRESHOLD, PRESENCE_THRESHOLD, SCORE_THRESHOLD


def _refiner_options() -> list:
    """How phrases and captions become class-list labels (see `offline-seg llm refine`)."""
    from offline_seg.stages.shortlist import DEFAULT_REFINER, REFINER_MODES

    return [
        click.option("--refiner", type=click.Choice(REFINER_MODES), default=DEFAULT_REFINER, show_default=True,
                     help="hybrid: exact match, then a sentence embedding, the LLM only among a short list when "
                     "the embedding is undecided; embed: no LLM at all; llm: the paper's LLM-only refinement; "
                     "auto: hybrid on a CUDA device or with --llm, unless the LLM has under 1 B parameters "
                     "(measured: a small LLM's answers lose to the embedding), embed otherwise."),
        click.option("--embedder", help="Sentence-embedding model dir (default: WEIGHTS/embedder)."),
        click.option("--examples", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Few-shot examples for pre-refinement (the paper's supplementary): N images of "
                     "--examples-from, their ground-truth labels and the LLM's explanation of each."),
        click.option("--examples-from", type=click.Path(path_type=Path, file_okay=False, exists=True),
                     help="Annotated set for --examples: a dataset root with images and label maps "
                     "(e.g. JPEGImages + SegmentationClass)."),
        click.option("--min-labels", type=click.IntRange(min=0), default=0, show_default=True,
                     help='Pre-refinement prompt hint "at least N labels" (dense street scenes); 0 = off.'),
    ]


def _segment_options(func):
    options = [
        click.option("--preset", type=click.Choice(sorted(PRESETS)), help="Class list preset (default: voc)."),
        click.option("--classes", help='Custom class list: "background, a, b" or a text file (one per line).'),
        click.option("--weights", "weights_dir", type=click.Path(path_type=Path), default=Path("weights"),
                     show_default=True, help="Local weights directory."),
        click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
                     help="Output directory."),
        click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda or cuda:1."),
        click.option("--no-caption", is_flag=True, help="Ablation: tags only, no BLIP-2 caption."),
        click.option("--no-pre-refine", is_flag=True, help="Ablation: tags go straight to the detector."),
        click.option("--no-post-refine", is_flag=True, help="Ablation: detected phrases used as-is."),
        click.option("--points", "num_points", type=click.IntRange(min=0),
                     help="Positive points per box for SAM's second pass; 0 = box only (default: per segmenter "
                     "backend, see the README). Does not apply to --detector sam3 (its masks are final)."),
        click.option("--point-strategy", type=click.Choice(list(POINT_STRATEGIES)),
                     help="How pass 1 prompts pass 2: paper (top-n logits, the reference), gated (pass 2 only where "
                     "SAM's predicted IoU does not drop), spread (top logits kept apart), mask (pass 1's logits as "
                     "mask_input). Default: per segmenter backend."),
        click.option("--labels", help='Given labels instead of recognition + pre-refinement, e.g. "cat, dog"; '
                     '"gt": the classes in the ground truth (needs --gt); "all": every class of the list.'),
        click.option("--boxes", type=click.Choice(["detect", "gt"]), default="detect", show_default=True,
                     help="gt: one box per connected component of each ground-truth class; no tagger, "
                     "captioner, LLM or detector is loaded (isolates the segmenter)."),
        click.option("--gt-box-expand", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="--boxes gt: move each side out by this share of the box's width/height (0.15 = 15%)."),
        click.option("--gt-box-jitter", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="--boxes gt: shift each side by a random up to ± this share of the box (see --seed)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of --gt-box-jitter."),
        click.option("--gt", "gt_dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
                     help="Ground-truth label maps (dataset ids, matched by file stem) for --labels gt / --boxes gt."),
        click.option("--segmenter", help="sam (WEIGHTS/sam), sam:PATH, onnx (WEIGHTS/sam_onnx) or onnx:DIR "
                     "(SAM exported to ONNX, the CPU tier)."),
        click.option("--llm", help="LLM backend, e.g. transformers:DIR (default: WEIGHTS/llm)."),
        click.option("--gpu-mem", help="Plan for a GPU of this size (e.g. 8GiB, needs --device cuda): the plan "
                     "picks each model's precision and which models load per chunk, and the loaders follow it; "
                     "a chain that cannot fit stops before the first image (see `offline-seg plan`)."),
        click.option("--captioner-quant", type=click.Choice(["none", "int8", "int4"]),
                     help="BLIP-2 weights: none (16-bit) or bitsandbytes int8/int4 (default: the plan's choice)."),
        click.option("--unconstrained", is_flag=True, help="Free-text post-refinement (paper-faithful ablation)."),
        *_refiner_options(),
        click.option("--no-phrase-cache", is_flag=True,
                     help="Do not reuse post-refinement answers of earlier runs (kept in ~/.cache/offline_seg)."),
        click.option("--detector", help="grounding_dino[:DIR] (default: boxes, then --segmenter); sam3[:DIR] "
                     "(WEIGHTS/sam3): SAM 3 detects and segments each label as a concept prompt; its labels are "
                     "class names (no post-refinement) and its masks are final: SAM's two-pass point refinement "
                     "(--points) and --segmenter do not apply; centernet[:DIR][?threshold=0.25&resize=letterbox|squash"
                     "&nms=0.5&agnostic=0.9] (WEIGHTS/centernet, ONNX on the CPU): a closed-set COCO-80 detector, the CPU tier's "
                     "(`--detector centernet --segmenter onnx`): it finds its 80 classes whatever the prompt, so no "
                     "tagger, captioner or pre-refinement runs; post-refinement maps its class names onto the list "
                     "once per run (airplane -> aeroplane, tv -> monitor, ...), --labels keeps only those labels."),
        click.option("--require-all-classes", is_flag=True,
                     help="--detector centernet: stop when a class of the list is one the detector can never find "
                     "(default: a warning naming them)."),
        click.option("--sam3-score-threshold", type=click.FloatRange(0, 1), default=SCORE_THRESHOLD,
                     show_default=True, help="SAM 3: keep instances with sigmoid(logit) x presence above this."),
        click.option("--sam3-presence-threshold", type=click.FloatRange(0, 1), default=PRESENCE_THRESHOLD,
                     show_default=True, help="SAM 3: drop a prompt whose presence score is below this "
                     "(0: presence only scales the scores, as SAM 3's post-processing does)."),
        click.option("--sam3-mask-threshold", type=click.FloatRange(0, 1), default=MASK_THRESHOLD,
                     show_default=True, help="SAM 3: mask pixels with probability above this."),
        click.option("--box-threshold", type=float, default=0.18, show_default=True),
        click.option("--text-threshold", type=float, default=0.15, show_default=True),
        click.option("--prompts", "prompts_dir", type=click.Path(path_type=Path, file_okay=False),
                     help="Directory with pre_refine.txt / post_refine.txt replacing the paper's templates."),
        click.option("-v", "--verbose", count=True, help="-v info, -vv debug (and model loading bars)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func



def _build_config(
    *,
    preset,
    classes,
    weights_dir,
    device,
    no_caption,
    no_pre_refine,
    no_post_refine,
    num_points,
    labels,
    boxes,
    gt_dir,
    point_strategy=None,
    gt_box_expand=0.0,
    gt_box_jitter=0.0,
    seed=0,
    segmenter,
    llm,
    gpu_mem,
    captioner_quant,
    unconstrained,
    no_phrase_cache,
    box_threshold,
    text_threshold,
    prompts_dir,
    refiner="auto",
    embedder=None,
    examples=0,
    examples_from=None,
    min_labels=0,
    detector=None,
    sam3_score_threshold=SCORE_THRESHOLD,
    sam3_presence_threshold=PRESENCE_THRESHOLD,
    sam3_mask_threshold=MASK_THRESHOLD,
    engine="local",
    require_all_classes=False,
):
    """The PipelineConfig the shared segment/run options describe. On a CUDA device without --gpu-mem the plan
    is made for the card's free memory (the local engine: a Ray cluster's cards are not this one)."""
    from offline_seg.config import PipelineConfig

    if gpu_mem is None and device.startswith("cuda") and engine == "local":
        from offline_seg.gpus import free_memory_size

        gpu_mem = free_memory_size(device)
    class_list = _class_list(preset, classes)
    oracle_labels = labels is not None and labels.strip().lower() == "gt"
    if (oracle_labels or boxes == "gt") and gt_dir is None:
        raise click.UsageError("--labels gt and --boxes gt need --gt DIR (ground-truth label maps)")
    if (gt_box_expand or gt_box_jitter) and boxes != "gt":
        raise click.UsageError("--gt-box-expand and --gt-box-jitter loosen the boxes of --boxes gt only")
    return PipelineConfig(
        classes=class_list,
        weights_dir=weights_dir,
        device=device,
        use_caption=not no_caption,
        pre_refine=not no_pre_refine,
        post_refine=not no_post_refine,
        num_points=num_points,
        point_strategy=point_strategy,
        gt_box_expand=gt_box_expand,
        gt_box_jitter=gt_box_jitter,
        seed=seed,
        labels=_given_labels(labels, class_list) if labels and not oracle_labels else None,
        oracle_labels=oracle_labels,
        oracle_boxes=boxes == "gt",
        ground_truth_dir=gt_dir,
        segmenter=segmenter,
        llm=llm,
        gpu_mem=gpu_mem,
        captioner_quant=captioner_quant,
        constrained=not unconstrained,
        **({"phrase_cache_dir": None} if no_phrase_cache else {}),
        box_threshold=box_threshold,
        text_threshold=text_threshold,
        prompts_dir=prompts_dir,
        refiner=refiner,
        embedder=embedder,
        examples=examples,
        examples_from=examples_from,
        min_labels=min_labels,
        detector=detector,
        sam3_score_threshold=sam3_score_threshold,
        sam3_presence_threshold=sam3_presence_threshold,
        sam3_mask_threshold=sam3_mask_threshold,
        engine=engine,
        require_all_classes=require_all_classes,
    )


def _given_labels(labels: str, classes) -> tuple[str, ...]:
    """`--labels "cat, dog"`, or `all`: every class of the list but the background."""
    if labels.strip().lower() == "all":
        return tuple(classes.foreground)
    given = tuple(x.strip() for x in labels.split(",") if x.strip())
    if not given:
        raise click.BadParameter(f"{labels!r} names no label; give names of the class list (comma-separated) "
                                 f"or `all`", param_hint="--labels")
    return given


def _echo_plan(pipeline) -> None:
    """The memory plan's choices as the loaders will follow them (only with --gpu-mem)."""
    plan = pipeline.memory_plan
    if plan is None:
        return
    click.echo(f"memory plan for {plan.gpu_bytes / 2**30:.1f} GiB: peak {plan.peak_bytes / 2**30:.2f} GiB; "
               f"resident: {', '.join(plan.resident_stages) or 'none'}; "
               f"per chunk: {', '.join(plan.swapped_stages) or 'none'}")
    for model in pipeline.chain.models:
        click.echo(f"  {model.stage:10} {model.text()}{'' if model.resident else ' (load per chunk)'}")




def _check_out(out_dir: Path, pipeline, *, input_dirs=(), input_files=()) -> None:
    """Refuse, before any model loads, an --out that is, holds or lies in what the run reads: its input
    folders, the ground truth, the few-shot examples, the prompts, the weights and every model's files."""
    from offline_seg.io.guards import check_out_dir

    c = pipeline.config
    models = [Path(m.path) for m in pipeline.chain.models if m.backend != "openai"]
    if pipeline.uses_embedder:
        models.append(Path(pipeline.model_spec("embedder").path))
    check_out_dir(out_dir, input_files=input_files, folders={
        "input folder": [*input_dirs, c.examples_from, c.prompts_dir],
        "ground-truth folder": [c.ground_truth_dir],
        "weights folder": [c.weights_dir, *models],
    })
