"""What every command group shares: the root group, offline switches, logging, class lists, inputs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from offline_seg.classes import PROTOCOLS, ClassList
from offline_seg.errors import OfflineSegError

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
    if preset and classes is not None:
        raise click.UsageError("give --preset or --classes, not both")
    if classes is not None:  # an empty --classes "" is an empty list, an error, not the default preset
        return ClassList.from_file(Path(classes)) if Path(classes).is_file() else ClassList.parse(classes)
    return ClassList.preset(preset or "voc")


def _scoring_options(command):
    """The options that say how predictions are scored, one definition for `eval`, `report` and
    `run --ablation`, which all score through `evaluation.scoring.evaluate` and so agree."""
    options = [
        click.option("--protocol", type=click.Choice(list(PROTOCOLS)), default="paper", show_default=True,
                     help="Scoring protocol: " + "; ".join(f"{k}: {v}" for k, v in PROTOCOLS.items())
                     + ". VOC, COCO-81 and DRAM score their background in both; ADE20K, COCO-Stuff and "
                     "Pascal Context in neither."),
        click.option("--skip-missing", is_flag=True, help="Leave images with no usable prediction out of the "
                     "score (default: score them as all-background, what a failed image produced)."),
        click.option("--gt-suffix", default="", help='Ground-truth name ending to strip, e.g. "_gtFine_labelIds".'),
        click.option("--pred-suffix", default="", help='Prediction name ending to strip, e.g. "_leftImg8bit".'),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _collect_images(inputs: tuple[str, ...]) -> list[Path]:
    """Files as given (a bad one is reported per image later); a folder's own images, as `run` finds them."""
    from offline_seg.io.inputs import find_images

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

