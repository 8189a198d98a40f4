"""`segment`: the chain on images one by one, each written as soon as it is done."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import click

from offline_seg.cli.common import _collect_images, _go_offline, _setup_logging, main, say
from offline_seg.cli.options import _build_config, _check_out, _echo_plan, _segment_options
from offline_seg.errors import InvalidInputError


@main.command()
@click.argument("images", nargs=-1, required=True)
@_segment_options
def segment(images: tuple[str, ...], **options) -> None:
    """Segment IMAGES (files or folders) and write <name>.png, <name>_overlay.png and <name>.json.

    The outputs go to --out, which must not hold the inputs, the ground truth or the weights; an output file
    that exists and was not written by offline_seg for that input is never written over (that image fails
    with the reason). OUT/offline_seg.sqlite records what was written, so `export` and `report` read it.
    """
    _go_offline()
    folders = [Path(item) for item in images if Path(item).is_dir()]
    _run_segment(_collect_images(images), input_dirs=folders, **options)


def _run_segment(images: Sequence[Path], *, out_dir: Path, verbose: int, input_dirs: Sequence[Path] = (),
                 check_out: bool = True, **options) -> None:
    """The images through the batch runner one at a time (the same steps and store as `run`), each
    reported as it is written; a bad image is reported and the others are still written (exit 1)."""
    _setup_logging(verbose)
    from offline_seg.engines.runner import BatchRunner
    from offline_seg.io.inputs import output_names
    from offline_seg.io.outputs import output_path
    from offline_seg.pipeline import Pipeline

    if not images:
        raise InvalidInputError("no images given (an empty folder?)")
    pipeline = Pipeline(_build_config(**options))
    if check_out:
        _check_out(out_dir, pipeline, input_dirs=input_dirs, input_files=images)
    _echo_plan(pipeline)
    runner = BatchRunner(pipeline, out_dir, chunk_size=1, progress=len(images) > 1, retry_failed=True)
    summary = runner.run(images)
    pipeline.close()  # stops an LLM server it started (a crash or Ctrl-C: at exit, or by its watchdog)
    for name in output_names(images):
        if name in summary.written:
            found = sorted(set(summary.written[name]))
            count = len(summary.written[name])
            say(f"{name}: {count} mask{'' if count == 1 else 's'} ({', '.join(found) or 'none'}) -> "
                f"{output_path(out_dir, name)}")
        elif name in summary.failed:
            say(f"skipped {name}: {summary.failed[name]}", fg="yellow", err=True)
    if summary.failed:
        say(f"{len(summary.failed)} of {len(images)} image(s) failed", fg="red", err=True)
        sys.exit(1)
