"""What every command group shares: the root group, offline switches, logging, class lists, inputs."""

from __future__ import annotations

import logging
import os
import signal
import traceback
from pathlib import Path

import click

from offline_seg.classes import PROTOCOLS, ClassList
from offline_seg.errors import InvalidInputError, OfflineSegError, first_line

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


# First names that say "background" (the class of the pixels no detection covers).
BACKGROUND_NAMES = ("background", "unlabeled", "unlabelled", "void", "other", "others", "none", "nothing", "bg",
                    "__background__", "ignore", "rest", "empty")


def _class_list(preset: str | None, classes: str | None) -> ClassList:
    """The class list of `--preset` or `--classes` (names, or a file of one name per line). A custom list
    must name its background first: index 0 is what no detection covers, never a real class by accident."""
    if preset and classes is not None:
        raise click.UsageError("give --preset or --classes, not both")
    if classes is None:
        return ClassList.preset(preset or "voc")
    try:  # an inline list is not a file (and may be longer than a file name can be)
        is_file = "," not in classes and "\n" not in classes and Path(classes).is_file()
    except OSError:
        is_file = False
    class_list = ClassList.from_file(Path(classes)) if is_file else ClassList.parse(classes)
    if class_list.background.strip().lower() not in BACKGROUND_NAMES:
        elsewhere = [name for name in class_list.names if name.strip().lower() in BACKGROUND_NAMES]
        order = [*elsewhere[:1], *(name for name in class_list.names if name not in elsewhere[:1])]
        fix = (f"move {elsewhere[0]!r} to the front" if elsewhere else "put one first") + \
            f", e.g. --classes \"{', '.join(order if elsewhere else ['background', *class_list.names])}\""
        raise InvalidInputError(f"the first class of a list is the background (the pixels no detection covers), "
                                f"but it is {class_list.background!r}; {fix}")
    return class_list


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


def printable(text: object) -> str:
    """Text for the terminal: bytes of file names that are not UTF-8 shown as \\xNN, never an error."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def say(text: object, *, err: bool = False, **style) -> None:
    click.secho(printable(text), err=err, **style)


class Terminated(BaseException):
    """SIGTERM, raised where the process is (like KeyboardInterrupt for SIGINT): the run stops, keeps what it
    finished, releases its lock. A BaseException, so no image's error handling takes it for a failure."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


class _Group(click.Group):
    """Every way a command ends, as one line and an exit code: 2 for the toolkit's errors and for anything
    unexpected (a bug; -vv shows its traceback), 130 on Ctrl-C, 143 on SIGTERM. Never a bare traceback."""

    def invoke(self, ctx: click.Context):
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return super().invoke(ctx)
        except OfflineSegError as error:
            say(f"error: {error}", fg="red", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            say("interrupted (Ctrl-C): finished results are kept; run the same command again to resume",
                fg="yellow", err=True)
            ctx.exit(130)
        except Terminated:
            say("stopped (SIGTERM): finished results are kept; run the same command again to resume",
                fg="yellow", err=True)
            ctx.exit(143)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as error:  # noqa: BLE001 - the last line of defence: one line, exit 2, never 1
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                traceback.print_exc()
            say(f"error: unexpected {type(error).__name__}: {first_line(error)} (a bug in offline_seg: run it again with -vv "
                "and report the traceback)", fg="red", err=True)
            ctx.exit(2)
        finally:
            signal.signal(signal.SIGTERM, previous)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="offline_seg")
def main() -> None:
    """Training-free zero-shot semantic segmentation with open models, fully offline.

    Start with `offline-seg demo` (a real photo, real CPU models: centernet, sam_onnx and embedder, which
    scripts/setup.sh pulls; `demo --tiny`: tiny random models, no weights), then get the other real weights
    with `offline-seg weights pull` on a connected machine.
    """

