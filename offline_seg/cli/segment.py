"""`segment`, `run` and `demo`: the chain on images, one by one or as a resumable batch."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from offline_seg.classes import PRESETS
from offline_seg.errors import InvalidInputError, OfflineSegError
from offline_seg.stages.points import STRATEGIES as POINT_STRATEGIES
from offline_seg.cli.common import _class_list, _collect_images, _go_offline, _setup_logging, main
from offline_seg.stages.sam3 import MASK_THRESHOLD, PRESENCE_THRESHOLD, SCORE_THRESHOLD


def _refiner_options() -> list:
    """How phrases and captions become class-list labels (see `offline-seg llm refine`)."""
    from offline_seg.stages.shortlist import DEFAULT_REFINER, REFINER_MODES

    return [
        click.option("--refiner", type=click.Choice(REFINER_MODES), default=DEFAULT_REFINER, show_default=True,
                     help="hybrid: exact match, then a sentence embedding, the LLM only among a short list when "
                     "the embedding is undecided; embed: no LLM at all; llm: the paper's LLM-only refinement; "
                     "auto: hybrid on a CUDA device, embed otherwise."),
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
        click.option("--detector", help="grounding_dino[:DIR] (default: boxes, then --segmenter) or sam3[:DIR] "
                     "(WEIGHTS/sam3): SAM 3 detects and segments each label as a concept prompt; its labels are "
                     "class names (no post-refinement) and its masks are final: SAM's two-pass point refinement "
                     "(--points) and --segmenter do not apply."),
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


@main.command()
@click.argument("images", nargs=-1, required=True)
@_segment_options
def segment(images: tuple[str, ...], **options) -> None:
    """Segment IMAGES (files or folders) and write <name>.png, <name>_overlay.png and <name>.json."""
    _go_offline()
    _run_segment(_collect_images(images), **options)


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
):
    """The PipelineConfig the shared segment/run options describe."""
    from offline_seg.pipeline import PipelineConfig

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
    )


def _given_labels(labels: str, classes) -> tuple[str, ...]:
    """`--labels "cat, dog"`, or `all`: every class of the list but the background."""
    if labels.strip().lower() == "all":
        return tuple(classes.foreground)
    return tuple(x.strip() for x in labels.split(",") if x.strip())


def _run_segment(
    images: list[Path | None],
    *,
    out_dir,
    verbose,
    demo_image=None,
    **options,
) -> None:
    _setup_logging(verbose)
    from tqdm import tqdm

    from offline_seg.engines.runner import failure_reason, with_oom_retry
    from offline_seg.io.inputs import output_names
    from offline_seg.io.images import load_image
    from offline_seg.io.outputs import save_result
    from offline_seg.pipeline import Pipeline

    if not images:
        raise InvalidInputError("no images given (an empty folder?)")
    config = _build_config(**options)
    pipeline = Pipeline(config)
    _echo_plan(pipeline)
    pipeline.preflight()
    failures: list[tuple[str, str]] = []
    names = ["demo"] if images == [None] else output_names(images)
    for path, name in tqdm(list(zip(images, names)), desc="segment", unit="img", disable=len(images) < 2):
        try:
            image = demo_image if path is None else load_image(path)
            result = with_oom_retry(lambda: pipeline.segment(image, name=path.stem if path else name), config.device)
            paths = save_result(result, image, out_dir / Path(name).parent, Path(name).name,
                                settings=config.summary())
        except InvalidInputError as error:  # a bad image: report it, keep going
            failures.append((name, str(error)))
            click.secho(f"skipped {name}: {error}", fg="yellow", err=True)
            continue
        except OfflineSegError:  # missing weights, an unreachable LLM server: stop, nothing would work
            raise
        except Exception as error:  # noqa: BLE001 - one image's failure, the others are still written
            failures.append((name, failure_reason(error)))
            click.secho(f"skipped {name}: {failure_reason(error)}", fg="yellow", err=True)
            continue
        found = sorted({label for label in result.instances.labels})
        click.echo(f"{name}: {len(result.instances)} masks ({', '.join(found) or 'none'}) -> {paths.mask}")
    if failures:
        click.secho(f"{len(failures)} of {len(images)} image(s) failed", fg="red", err=True)
        sys.exit(1)


@main.command()
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@_segment_options
@click.option("--chunk-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per chunk; each stage runs over a whole chunk before the next stage starts.")
@click.option("--ablation", "ablations", multiple=True,
              help="Table-3 row(s) to run, each into OUT/<row>: full, no-blip2, no-pre-refine, no-post-refine, "
              "no-points, all-off, gt-labels, or all. With --gt, every row is scored and printed beside the paper.")
@click.option("--no-recursive", is_flag=True, help="Only the folder's own images, not its sub-folders.")
@click.option("--image-list", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Only the images whose stems this file lists, e.g. VOC's ImageSets/Segmentation/val.txt.")
@click.option("--skip-missing", is_flag=True, help="Ablation table: leave images with no prediction out of the "
              "score (as `eval --skip-missing`); by default they count as all-background.")
@click.option("--gt-suffix", default="", help='Ablation table: ground-truth name ending to strip, as in `eval`.')
@click.option("--pred-suffix", default="", help='Ablation table: prediction name ending to strip, as in `eval`.')
@click.option("--retry-failed", is_flag=True, help="Try again the images an earlier run recorded as failed "
              "(by default they are skipped and listed again).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: each model stage an actor pool on Ray Data, over many GPUs and machines "
              "(needs the [ray] extra; same store, same outputs).")
@click.option("--ray-address", help="Join this Ray cluster (HOST:PORT or auto); default: start Ray on this "
              "machine only.")
@click.option("--ray-actors", help="Actors per model stage: N, or per stage, e.g. segment=2,detect=2 (default 1).")
def run(source: Path, out_dir: Path, verbose: int, chunk_size: int, ablations: tuple[str, ...], no_recursive: bool,
        image_list: Path | None, retry_failed: bool, skip_missing: bool, gt_suffix: str, pred_suffix: str,
        engine: str, ray_address: str | None, ray_actors: str | None, **options) -> None:
    """Segment every image under SOURCE (a folder, or a VOC / Cityscapes / COCO dataset root), resumably.

    Every stage result is stored in OUT/offline_seg.sqlite as it is made: run the same command again after a
    crash and only the missing work is done; change a setting and only the stages after it are redone.
    Unreadable images are recorded as failed and the run goes on.
    """
    _go_offline()
    _setup_logging(verbose)
    from offline_seg.evaluation.ablations import ABLATIONS, ablation_config
    from offline_seg.pipeline import Pipeline
    from offline_seg.engines.runner import BatchRunner
    from offline_seg.io.inputs import find_images

    if engine != "ray" and (ray_address or ray_actors):
        raise click.UsageError("--ray-address and --ray-actors need --engine ray")
    base = _build_config(**options)
    root, images = find_images(source, recursive=not no_recursive, names=image_list)
    if not images:
        raise InvalidInputError(f"no images under {source}")
    rows = list(ABLATIONS) if "all" in ablations else list(ablations)
    for row in rows:
        if row not in ABLATIONS:
            raise click.BadParameter(f"unknown row {row!r}; rows: {', '.join(ABLATIONS)}, all", param_hint="--ablation")
    if "gt-labels" in rows and base.ground_truth_dir is None:
        raise click.UsageError("the gt-labels row needs --gt DIR")
    runs = [(row, ablation_config(base, row), out_dir / row) for row in rows] or [(None, base, out_dir)]
    click.echo(f"{len(images)} images under {root}")
    any_failed = False
    for row, config, row_out in runs:
        if row:
            click.secho(f"== {row} -> {row_out}", bold=True)
        pipeline = Pipeline(config)
        _echo_plan(pipeline)
        if engine == "ray":
            from offline_seg.engines.ray_engine import RayOptions, RayRunner, parse_actors

            runner = RayRunner(pipeline, row_out, chunk_size=chunk_size, retry_failed=retry_failed,
                               options=RayOptions(address=ray_address, actors=parse_actors(ray_actors)),
                               plan=pipeline.memory_plan)
        else:
            runner = BatchRunner(pipeline, row_out, chunk_size=chunk_size, retry_failed=retry_failed)
        summary = runner.run(images, root=root)
        click.echo(summary.table())
        click.echo(f"{summary.done} of {summary.images} images done -> {row_out}"
                   + (f" ({len(summary.failed)} failed)" if summary.failed else ""))
        for name, reason in sorted(summary.failed.items()):
            click.secho(f"failed: {name}: {reason}", fg="red", err=True)
        any_failed |= bool(summary.failed)
    if rows and base.ground_truth_dir is not None:
        _print_ablation_table(runs, base, skip_missing=skip_missing, gt_suffix=gt_suffix, pred_suffix=pred_suffix)
    if any_failed:
        sys.exit(1)


def _echo_plan(pipeline) -> None:
    """The memory plan's choices as the loaders will follow them (only with --gpu-mem)."""
    plan = pipeline.memory_plan
    if plan is None:
        return
    click.echo(f"memory plan for {plan.gpu_bytes / 2**30:.0f} GiB: peak {plan.peak_bytes / 2**30:.2f} GiB; "
               f"resident: {', '.join(plan.resident_stages) or 'none'}; "
               f"per chunk: {', '.join(plan.swapped_stages) or 'none'}")
    for model in pipeline.chain.models:
        click.echo(f"  {model.stage:10} {model.text()}{'' if model.resident else ' (load per chunk)'}")


def _print_ablation_table(runs, base, **eval_options) -> None:
    """Score each row's output against --gt with `eval`'s own code and options (`evaluate`) and print it
    beside the paper's Table 3."""
    from offline_seg.evaluation import metrics as evaluation
    from offline_seg.evaluation.ablations import PAPER_MIOU, paper_row_name

    paper = PAPER_MIOU.get(base.classes.name, {})
    click.echo(f"\n| row | paper row | mIoU % (ours) | paper mIoU % ({base.classes.name}, GPT-4) |\n|---|---|---:|---:|")
    for row, config, row_out in runs:
        report = evaluation.evaluate(row_out, base.ground_truth_dir, config.classes, **eval_options)
        theirs = f"{paper[row]:.2f}" if row in paper else "n/a"
        note = f" ({len(report.missing)} missing, {len(report.failed)} failed)" if not report.ok else ""
        click.echo(f"| {row} | {paper_row_name(row)} | {100 * report.miou:.2f}{note} | {theirs} |")


@main.command()
@click.option("--weights", "weights_dir", type=click.Path(path_type=Path),
              help="Weights directory; default: tiny random models written to OUT/tiny-weights.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("-v", "--verbose", count=True)
def demo(weights_dir: Path | None, out_dir: Path, device: str, verbose: int) -> None:
    """Run the full chain on the bundled demo scene.

    Without --weights it uses tiny randomly initialised models: the whole flow runs and writes every
    output, but the tags, boxes and masks are meaningless.
    """
    _go_offline()
    _setup_logging(verbose)
    from offline_seg.demo import demo_image

    if weights_dir is None:
        from offline_seg.tiny import make_tiny_weights

        weights_dir = out_dir / "tiny-weights"
        if not (weights_dir / "weights.lock.json").is_file():
            click.echo(f"writing tiny random models to {weights_dir} ...")
            make_tiny_weights(weights_dir)
        click.secho("note: tiny random weights -> the masks below are meaningless; they show the flow only.",
                    fg="yellow")
    _run_segment(
        [None], preset="voc", classes=None, weights_dir=weights_dir, out_dir=out_dir, device=device,
        no_caption=False, no_pre_refine=False, no_post_refine=False, num_points=None, labels=None, boxes="detect",
        gt_dir=None, segmenter=None, llm=None, gpu_mem=None, captioner_quant=None, no_phrase_cache=False,
        unconstrained=False, box_threshold=0.18, text_threshold=0.15, prompts_dir=None, verbose=verbose,
        demo_image=demo_image(),
    )

