"""`run`: every image under a folder or dataset root, stage-major and resumable (or on Ray)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from offline_seg.cli.common import _go_offline, _scoring_options, _setup_logging, main, say
from offline_seg.cli.options import _build_config, _check_out, _echo_plan, _segment_options
from offline_seg.errors import InvalidInputError


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
@_scoring_options
@click.option("--retry-failed", is_flag=True, help="Try again the images an earlier run recorded as failed "
              "(by default they are skipped and listed again).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: each model stage an actor pool on Ray Data, over many GPUs and machines "
              "(needs the [ray] extra; same store, same outputs).")
@click.option("--ray-address", help="Join this Ray cluster (HOST:PORT or auto); default: start Ray on this "
              "machine only.")
@click.option("--ray-actors", help="Actors per model stage: N, or per stage, e.g. segment=2,detect=2,llm=2 (llm: the "
              "one LLM pool both refinement steps ask; default 1).")
def run(source: Path, out_dir: Path, verbose: int, chunk_size: int, ablations: tuple[str, ...], no_recursive: bool,
        image_list: Path | None, retry_failed: bool, protocol: str, skip_missing: bool, gt_suffix: str,
        pred_suffix: str, engine: str, ray_address: str | None, ray_actors: str | None, **options) -> None:
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
    base = _build_config(engine=engine, **options)
    rows = list(ABLATIONS) if "all" in ablations else list(ablations)
    for row in rows:
        if row not in ABLATIONS:
            raise click.BadParameter(f"unknown row {row!r}; rows: {', '.join(ABLATIONS)}, all", param_hint="--ablation")
    if "gt-labels" in rows and base.ground_truth_dir is None:
        raise click.UsageError("the gt-labels row needs --gt DIR")
    runs = [(row, ablation_config(base, row), out_dir / row) for row in rows] or [(None, base, out_dir)]
    pipelines = [Pipeline(config) for _, config, _ in runs]
    for pipeline in pipelines:  # before any model loads or any image is listed
        _check_out(out_dir, pipeline, input_dirs=[Path(source)])
    root, images = find_images(source, recursive=not no_recursive, names=image_list, exclude=[out_dir])
    if not images:
        raise InvalidInputError(f"no images under {source}")
    say(f"{len(images)} images under {root}")
    any_failed = False
    for (row, config, row_out), pipeline in zip(runs, pipelines):
        if row:
            say(f"== {row} -> {row_out}", bold=True)
        _echo_plan(pipeline)
        if engine == "ray":
            from offline_seg.engines.ray_engine import RayOptions, RayRunner, parse_actors

            runner = RayRunner(pipeline, row_out, chunk_size=chunk_size, retry_failed=retry_failed,
                               options=RayOptions(address=ray_address, actors=parse_actors(ray_actors)),
                               plan=pipeline.memory_plan)
        else:
            runner = BatchRunner(pipeline, row_out, chunk_size=chunk_size, retry_failed=retry_failed)
        summary = runner.run(images, root=root)
        pipeline.close()  # stops an LLM server it started (a crash or Ctrl-C: at exit, or by its watchdog)
        click.echo(summary.table())
        say(f"{summary.done} of {summary.images} images done -> {row_out}"
            + (f" ({len(summary.failed)} failed)" if summary.failed else ""))
        for name, reason in sorted(summary.failed.items()):
            say(f"failed: {name}: {reason}", fg="red", err=True)
        any_failed |= bool(summary.failed)
    if rows and base.ground_truth_dir is not None:
        _print_ablation_table(runs, base, protocol=protocol, skip_missing=skip_missing, gt_suffix=gt_suffix,
                              pred_suffix=pred_suffix)
    if any_failed:
        sys.exit(1)


def _print_ablation_table(runs, base, *, protocol: str, **eval_options) -> None:
    """Score each row's output against --gt with `eval`'s own function and options (`evaluate`) and print
    it beside the paper's Table 3, saying which protocol each column used."""
    from offline_seg.evaluation.ablations import PAPER_MIOU, paper_row_name
    from offline_seg.evaluation.scoring import evaluate

    paper = PAPER_MIOU.get(base.classes.name, {})
    reports = [(row, evaluate(row_out, base.ground_truth_dir, config.classes, protocol=protocol, **eval_options))
               for row, config, row_out in runs]
    ours = reports[0][1].protocol_note
    click.echo(f"\n| row | paper row | mIoU % (ours, {ours}) | paper mIoU % ({base.classes.name}, GPT-4, paper "
               "protocol) |\n|---|---|---:|---:|")
    for row, report in reports:
        theirs = f"{paper[row]:.2f}" if row in paper else "n/a"
        note = f" ({len(report.missing)} missing, {len(report.failed)} failed)" if not report.ok else ""
        click.echo(f"| {row} | {paper_row_name(row)} | {100 * report.miou:.2f}{note} | {theirs} |")
