"""`offline-seg`: a thin command line over the Python API. Heavy imports happen inside commands so
`--help` is instant and `weights pull` is the only command that may go online."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from offline_seg.classes import PRESETS, ClassList
from offline_seg.errors import InvalidInputError, OfflineSegError

logger = logging.getLogger("offline_seg")


def _go_offline() -> None:
    """Make every Hugging Face library refuse the network, before any of them is imported."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose < 2:  # read by transformers / huggingface_hub when (and only if) they are imported
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _class_list(preset: str | None, classes: str | None) -> ClassList:
    if preset and classes:
        raise click.UsageError("give --preset or --classes, not both")
    if classes:
        return ClassList.from_file(Path(classes)) if Path(classes).is_file() else ClassList.parse(classes)
    return ClassList.preset(preset or "voc")


def _collect_images(inputs: tuple[str, ...]) -> list[Path]:
    """Files as given (a bad one is reported per image later); a folder's own images, as `run` finds them."""
    from offline_seg.runner import find_images

    images: list[Path] = []
    for item in inputs:
        path = Path(item)
        images.extend(find_images(path, recursive=False)[1] if path.is_dir() else [path])
    return images


class _Group(click.Group):
    """Turns the toolkit's own errors into one clear line and exit code 2, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OfflineSegError as error:
            click.secho(f"error: {error}", fg="red", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="offline_seg")
def main() -> None:
    """Training-free zero-shot semantic segmentation with open models, fully offline.

    Start with `offline-seg demo` (tiny random models, no downloads), then get real weights with
    `offline-seg weights pull` on a connected machine.
    """


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
        click.option("--points", "num_points", type=click.IntRange(min=0), default=20, show_default=True,
                     help="Positive points per box for SAM's second pass; 0 = box only."),
        click.option("--labels", help='Given labels instead of recognition + pre-refinement, e.g. "cat, dog"; '
                     '"gt": the classes in the ground truth (needs --gt).'),
        click.option("--boxes", type=click.Choice(["detect", "gt"]), default="detect", show_default=True,
                     help="gt: one box per connected component of each ground-truth class; no tagger, "
                     "captioner, LLM or detector is loaded (isolates the segmenter)."),
        click.option("--gt", "gt_dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
                     help="Ground-truth label maps (dataset ids, matched by file stem) for --labels gt / --boxes gt."),
        click.option("--segmenter", help="sam (WEIGHTS/sam), sam:PATH, onnx (WEIGHTS/sam_onnx) or onnx:DIR "
                     "(SAM exported to ONNX, the CPU tier)."),
        click.option("--llm", help="LLM backend, e.g. transformers:DIR (default: WEIGHTS/llm)."),
        click.option("--unconstrained", is_flag=True, help="Free-text post-refinement (paper-faithful ablation)."),
        click.option("--no-phrase-cache", is_flag=True,
                     help="Do not reuse post-refinement answers of earlier runs (kept in ~/.cache/offline_seg)."),
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
    segmenter,
    llm,
    unconstrained,
    no_phrase_cache,
    box_threshold,
    text_threshold,
    prompts_dir,
):
    """The PipelineConfig the shared segment/run options describe."""
    from offline_seg.pipeline import PipelineConfig

    oracle_labels = labels is not None and labels.strip().lower() == "gt"
    if (oracle_labels or boxes == "gt") and gt_dir is None:
        raise click.UsageError("--labels gt and --boxes gt need --gt DIR (ground-truth label maps)")
    return PipelineConfig(
        classes=_class_list(preset, classes),
        weights_dir=weights_dir,
        device=device,
        use_caption=not no_caption,
        pre_refine=not no_pre_refine,
        post_refine=not no_post_refine,
        num_points=num_points,
        labels=tuple(x.strip() for x in labels.split(",") if x.strip()) if labels and not oracle_labels else None,
        oracle_labels=oracle_labels,
        oracle_boxes=boxes == "gt",
        ground_truth_dir=gt_dir,
        segmenter=segmenter,
        llm=llm,
        constrained=not unconstrained,
        **({"phrase_cache_dir": None} if no_phrase_cache else {}),
        box_threshold=box_threshold,
        text_threshold=text_threshold,
        prompts_dir=prompts_dir,
    )


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

    from offline_seg.images import load_image
    from offline_seg.outputs import save_result
    from offline_seg.pipeline import Pipeline

    config = _build_config(**options)
    pipeline = Pipeline(config)
    failures: list[tuple[str, str]] = []
    for path in tqdm(images, desc="segment", unit="img", disable=len(images) < 2):
        name = "demo" if path is None else path.stem
        try:
            image = demo_image if path is None else load_image(path)
            result = pipeline.segment(image, name=name)
        except InvalidInputError as error:  # a bad image: report it, keep going (missing weights stop the run)
            failures.append((name, str(error)))
            click.secho(f"skipped {name}: {error}", fg="yellow", err=True)
            continue
        paths = save_result(result, image, out_dir, name, settings=config.summary())
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
@click.option("--gpu-mem", help="Follow the memory plan for a GPU of this size (e.g. 8GiB): models the plan "
              "swaps are released after their stage in every chunk (see `offline-seg plan`).")
def run(source: Path, out_dir: Path, verbose: int, chunk_size: int, ablations: tuple[str, ...], no_recursive: bool,
        image_list: Path | None, gpu_mem: str | None, **options) -> None:
    """Segment every image under SOURCE (a folder, or a VOC / Cityscapes / COCO dataset root), resumably.

    Every stage result is stored in OUT/offline_seg.sqlite as it is made: run the same command again after a
    crash and only the missing work is done; change a setting and only the stages after it are redone.
    Unreadable images are recorded as failed and the run goes on.
    """
    _go_offline()
    _setup_logging(verbose)
    from offline_seg.ablations import ABLATIONS, ablation_config
    from offline_seg.pipeline import Pipeline
    from offline_seg.runner import BatchRunner, find_images

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
        swapped: tuple[str, ...] = ()
        if gpu_mem:
            from offline_seg.plan import plan_for

            plan = plan_for(config, gpu_mem)
            swapped = plan.swapped_stages
            click.echo(f"memory plan for {gpu_mem}: peak {plan.peak_bytes / 2**30:.2f} GiB "
                       f"({'fits' if plan.fits else 'does NOT fit: ' + ', '.join(plan.suggestions)}); "
                       f"resident: {', '.join(plan.resident_stages) or 'none'}; per chunk: {', '.join(swapped) or 'none'}")
        runner = BatchRunner(Pipeline(config), row_out, chunk_size=chunk_size, swapped=swapped)
        summary = runner.run(images, root=root)
        click.echo(summary.table())
        click.echo(f"{summary.done} of {summary.images} images done -> {row_out}")
        for name, reason in sorted(summary.failed.items()):
            click.secho(f"failed: {name}: {reason}", fg="red", err=True)
        any_failed |= bool(summary.failed)
    if rows and base.ground_truth_dir is not None:
        _print_ablation_table(runs, base)
    if any_failed:
        sys.exit(1)


def _print_ablation_table(runs, base) -> None:
    """Score each row's output against --gt and print it beside the paper's Table 3."""
    from offline_seg import evaluation
    from offline_seg.ablations import PAPER_MIOU, paper_row_name

    paper = PAPER_MIOU.get(base.classes.name, {})
    click.echo(f"\n| row | paper row | mIoU % (ours) | paper mIoU % ({base.classes.name}, GPT-4) |\n|---|---|---:|---:|")
    for row, config, row_out in runs:
        report = evaluation.evaluate(row_out, base.ground_truth_dir, config.classes)
        theirs = f"{paper[row]:.2f}" if row in paper else "n/a"
        click.echo(f"| {row} | {paper_row_name(row)} | {100 * report.miou:.2f} | {theirs} |")


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
        no_caption=False, no_pre_refine=False, no_post_refine=False, num_points=20, labels=None, boxes="detect",
        gt_dir=None, segmenter=None, llm=None, no_phrase_cache=False,
        unconstrained=False, box_threshold=0.18, text_threshold=0.15, prompts_dir=None, verbose=verbose,
        demo_image=demo_image(),
    )


@main.command("eval")
@click.option("--pred", "pred_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Predictions: <name>.png class-index maps (the output of `segment`).")
@click.option("--gt", "gt_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Ground truth: <name>.png holding dataset ids (searched recursively).")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), help="Class list preset (default: voc).")
@click.option("--classes", help='Custom class list: "background, a, b" or a text file ("id: name" lines).')
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Report directory (default: PRED/eval).")
@click.option("--images", "images_dir", type=click.Path(path_type=Path, file_okay=False),
              help="RGB images, to show next to the worst predictions.")
@click.option("--pred-ids", is_flag=True, help="Predictions hold dataset ids like the ground truth, not class indices.")
@click.option("--skip-missing", is_flag=True,
              help="Leave missing/unusable predictions out of the score (default: score them as all-background).")
@click.option("--resize-pred", is_flag=True, help="Scale predictions of another size to the ground truth (nearest).")
@click.option("--gt-suffix", default="", help='Ground-truth name ending to strip, e.g. "_gtFine_labelIds".')
@click.option("--pred-suffix", default="", help='Prediction name ending to strip, e.g. "_leftImg8bit".')
@click.option("--worst", "num_worst", type=click.IntRange(min=0), default=10, show_default=True,
              help="Side-by-side panels for this many lowest-mIoU images.")
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug.")
def evaluate_command(pred_dir: Path, gt_dir: Path, preset, classes, out_dir: Path | None, images_dir: Path | None,
                     pred_ids: bool, skip_missing: bool, resize_pred: bool, gt_suffix: str, pred_suffix: str,
                     num_worst: int, verbose: int) -> None:
    """mIoU of PRED against GT from one dataset-wide confusion matrix (ignore label excluded).

    Writes per_class.csv, per_class.md, per_class.png, summary.json and worst/*.png. Exit code 1 when
    any prediction was missing or unusable (they are listed by name; see --skip-missing).
    """
    _setup_logging(verbose)
    from tqdm import tqdm

    from offline_seg import evaluation

    class_list = _class_list(preset, classes)
    report = evaluation.evaluate(
        pred_dir, gt_dir, class_list, pred_ids=pred_ids, skip_missing=skip_missing, resize=resize_pred,
        gt_suffix=gt_suffix, pred_suffix=pred_suffix,
        progress=lambda keys: tqdm(keys, desc="eval", unit="img", disable=len(keys) < 2),
    )
    out_dir = out_dir or pred_dir / "eval"
    evaluation.write_csv(report, out_dir / "per_class.csv")
    evaluation.write_markdown(report, out_dir / "per_class.md")
    evaluation.write_summary(report, out_dir / "summary.json")
    evaluation.plot_per_class(report, out_dir / "per_class.png")
    worst = evaluation.worst_images(report, out_dir / "worst", num_worst, images_dir, pred_suffix=pred_suffix)
    click.echo(evaluation.format_table(report))
    click.secho(evaluation.summary_line(report), bold=True)
    click.echo(f"report: {out_dir} ({len(worst)} worst-image panels)")
    policy = "excluded" if skip_missing else "scored as all-background"
    for name in report.missing:
        click.secho(f"missing prediction: {name} ({policy})", fg="red", err=True)
    for name, reason in report.failed.items():
        click.secho(f"failed: {name}: {reason}", fg="red", err=True)
    if report.extra:
        click.secho(f"{len(report.extra)} prediction(s) without ground truth, not scored", fg="yellow", err=True)
    if not report.ok:
        click.secho(f"{len(report.missing)} missing, {len(report.failed)} failed of {len(report.images)} images",
                    fg="red", err=True)
        sys.exit(1)


# --- plan ---------------------------------------------------------------------------------------
@main.command("plan")
@click.option("--gpu-mem", default="8GiB", show_default=True, help="GPU memory, e.g. 8GiB, 12GB, 7680MiB.")
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), default="fp16", show_default=True)
@click.option("--llm-quant", type=click.Choice(["none", "int8", "int4"]), default="int4", show_default=True,
              help="LLM weight quantization (int4 = bitsandbytes nf4, 0.5625 byte/param).")
@click.option("--captioner-quant", type=click.Choice(["none", "int8", "int4"]), default="none", show_default=True,
              help="BLIP-2 weight quantization.")
@click.option("--llm-backend", type=click.Choice(["transformers", "vllm"]), default="transformers",
              show_default=True, help="vllm: a resident server process; prints its --gpu-memory-utilization.")
@click.option("--llm-seqs", type=click.IntRange(min=1), default=8, show_default=True,
              help="LLM prompts in flight (KV cache allowance; halved automatically when the LLM step does not fit).")
@click.option("--llm-context", type=click.IntRange(min=64), default=1024, show_default=True,
              help="Tokens per LLM sequence (prompt + reply) for the KV cache allowance.")
@click.option("--weights", "weights_dir", type=click.Path(path_type=Path), default=Path("weights"), show_default=True,
              help="Read each model's config.json here when present (defaults: the manifest's models).")
@click.option("--all-cards", is_flag=True, help="Also print one line each for 8, 12, 16 and 24 GiB cards.")
@click.option("-v", "--verbose", count=True)
def plan_command(gpu_mem: str, dtype: str, llm_quant: str, captioner_quant: str, llm_backend: str, llm_seqs: int,
                 llm_context: int, weights_dir: Path, all_cards: bool, verbose: int) -> None:
    """GPU memory plan: per-stage weights and activations from the full-size architectures (built on the
    meta device, no weights needed), which stages stay resident, the load order and the peak."""
    _go_offline()
    _setup_logging(verbose)
    from offline_seg.plan import PlanOptions, format_cards, format_plan, make_plan, parse_size, profile_all, stage_specs

    options = PlanOptions(dtype=dtype, llm_quant=llm_quant, captioner_quant=captioner_quant, llm_sequences=llm_seqs,
                          llm_context=llm_context, llm_backend=llm_backend)
    profiles = profile_all(stage_specs(weights_dir))
    click.echo(format_plan(make_plan(profiles, parse_size(gpu_mem), options)))
    if all_cards:
        click.echo()
        click.echo(format_cards(profiles, options))


# --- weights ------------------------------------------------------------------------------------
@main.group()
def weights() -> None:
    """Manage the local weights directory (list, verify, pull, pack, make-tiny)."""


_weights_dir_option = click.option(
    "--weights", "weights_dir", type=click.Path(path_type=Path), default=Path("weights"), show_default=True
)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


@weights.command("list")
@_weights_dir_option
def weights_list(weights_dir: Path) -> None:
    """Show each model of the manifest: present or missing, size on disk, source."""
    from offline_seg.weights import WeightsDir

    store = WeightsDir(weights_dir)
    for key in store.manifest:
        status = store.status(key)
        if status.present:
            state = click.style("present", fg="green")
        elif status.entry.optional:
            state = click.style("optional", fg="yellow")
        else:
            state = click.style("missing", fg="red")
        click.echo(f"{key:15} {state:18} {_human(status.size_bytes):>9}  {status.entry.repo}")
        if status.missing:
            click.echo(f"{'':15} needs {', '.join(status.missing)} in {status.directory}")


@weights.command("verify")
@_weights_dir_option
def weights_verify(weights_dir: Path) -> None:
    """Check every file against the sha256 lock file, offline."""
    from offline_seg.weights import WeightsDir

    report = WeightsDir(weights_dir).verify()
    bad = {name: state for name, state in report.items() if state != "ok"}
    for name, state in sorted(bad.items()):
        click.echo(f"{state:9} {name}")
    click.echo(f"{len(report) - len(bad)} of {len(report)} files ok")
    if any(state in ("missing", "changed") for state in bad.values()):
        sys.exit(1)


@weights.command("pull")
@click.argument("models", nargs=-1)
@_weights_dir_option
def weights_pull(models: tuple[str, ...], weights_dir: Path) -> None:
    """Download MODELS (default: all) into the weights dir. Run this on a connected machine."""
    from offline_seg.weights import WeightsDir

    store = WeightsDir(weights_dir)
    for key in models or tuple(store.manifest):
        click.echo(f"pulling {key} from {store.entry(key).repo} ...")
        store.pull(key)
    click.echo(f"done; lock file: {weights_dir / 'weights.lock.json'}")


@weights.command("pack")
@click.argument("archive", type=click.Path(path_type=Path))
@_weights_dir_option
def weights_pack(archive: Path, weights_dir: Path) -> None:
    """Write the weights dir and its lock file into one tar ARCHIVE to carry across the air gap."""
    from offline_seg.weights import WeightsDir

    click.echo(f"wrote {WeightsDir(weights_dir).pack(archive)}")


@weights.command("make-tiny")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
def weights_make_tiny(directory: Path, seed: int) -> None:
    """Write tiny random models of every architecture into DIRECTORY (for tests and the demo)."""
    _go_offline()
    _setup_logging(0)
    from offline_seg.tiny import make_tiny_weights

    make_tiny_weights(directory, seed=seed)
    click.echo(f"wrote tiny weights to {directory} (random: outputs are meaningless)")


# --- llm ----------------------------------------------------------------------------------------
@main.group()
def llm() -> None:
    """The LLM side: serve a local model over an OpenAI-compatible API, convert GGUF files."""


@llm.command("serve")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Local HF model directory (safetensors; convert a .gguf with `llm convert-gguf`).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--gpu-memory-gb", type=float, default=12.0, show_default=True,
              help="GPU size for the memory plan: vLLM gets what the vision models leave.")
@click.option("--gpu-memory-utilization", type=click.FloatRange(0.05, 1.0),
              help="Override the plan's share of GPU memory for vLLM.")
@click.option("--quantization", type=click.Choice(["awq", "gptq", "bitsandbytes", "fp8"]),
              help="Weight quantization of the model (AWQ/GPTQ checkpoints, or bitsandbytes in-flight).")
@click.option("--max-model-len", type=int, default=2048, show_default=True)
@click.option("--enforce-eager", is_flag=True, help="No CUDA graphs: faster start, less memory (default on --cpu).")
@click.option("--cpu", is_flag=True, help="vLLM's CPU build: adds its thread and KV-cache settings.")
@click.option("--python", "python", default=sys.executable, show_default="this Python",
              help="Python of the venv that has vLLM (e.g. .venv-vllm/bin/python).")
@click.option("--dry-run", is_flag=True, help="Print the command line instead of running it.")
def llm_serve(model_dir: Path, port: int, gpu_memory_gb: float, gpu_memory_utilization: float | None,
              quantization: str | None, max_model_len: int, enforce_eager: bool, cpu: bool, python: str,
              dry_run: bool) -> None:
    """Start vLLM's OpenAI-compatible server for MODEL on 127.0.0.1 (then use --llm openai:URL)."""
    import shlex

    from offline_seg.llm.serve import VllmShare, ServeOptions, cpu_environment

    if not dry_run and not (model_dir / "config.json").is_file():
        raise InvalidInputError(f"no config.json in {model_dir}: give a HF model directory")
    options = ServeOptions(
        model=model_dir,
        port=port,
        gpu_memory_utilization=gpu_memory_utilization or VllmShare(gpu_memory_gb=gpu_memory_gb).gpu_memory_utilization,
        max_model_len=max_model_len,
        quantization=quantization,
        enforce_eager=enforce_eager or cpu,
        python=python,
    )
    env = cpu_environment() if cpu else {}
    argv = options.command()
    if dry_run:
        click.echo(" ".join([f"{k}={v}" for k, v in env.items()] + [shlex.quote(a) for a in argv]))
        return
    click.echo(f"serving {model_dir} at http://127.0.0.1:{port}/v1 (use --llm openai:http://127.0.0.1:{port}/v1)")
    os.execvpe(argv[0], argv, {**os.environ, **env})


@llm.command("convert-gguf")
@click.argument("gguf", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default="bfloat16", show_default=True)
def llm_convert_gguf(gguf: Path, out_dir: Path, dtype: str) -> None:
    """Write a safetensors HF directory OUT_DIR from a GGUF file (vLLM's CPU build cannot read GGUF)."""
    _go_offline()
    _setup_logging(0)
    from offline_seg.llm.convert import gguf_to_hf

    click.echo(f"wrote {gguf_to_hf(gguf, out_dir, dtype=dtype)}")

if __name__ == "__main__":
    main()
