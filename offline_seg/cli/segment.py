"""`segment`: the chain on images one by one, each written as soon as it is done."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from offline_seg.cli.common import _collect_images, _go_offline, _setup_logging, main
from offline_seg.cli.options import _build_config, _echo_plan, _segment_options
from offline_seg.errors import InvalidInputError, OfflineSegError


@main.command()
@click.argument("images", nargs=-1, required=True)
@_segment_options
def segment(images: tuple[str, ...], **options) -> None:
    """Segment IMAGES (files or folders) and write <name>.png, <name>_overlay.png and <name>.json."""
    _go_offline()
    _run_segment(_collect_images(images), **options)



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
