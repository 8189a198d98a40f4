"""`weights`: list, verify, pull, pack, make-tiny."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from offline_seg.cli.common import _go_offline, _setup_logging, main


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
    """Show each model of the manifest: present or missing, size on disk, source, licence."""
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
        revision = f"@{status.entry.revision[:12]}" if status.entry.revision else ""
        click.echo(f"{key:15} {state:18} {_human(status.size_bytes):>9}  {status.entry.repo}{revision}"
                   + (f"  [{status.entry.license}]" if status.entry.license else ""))
        click.echo(f"{'':15} {status.entry.description}")
        if status.missing:
            click.echo(f"{'':15} needs {', '.join(status.missing)} in {status.directory}")


@weights.command("verify")
@_weights_dir_option
def weights_verify(weights_dir: Path) -> None:
    """Check every file against the sha256 lock file, offline."""
    from offline_seg.weights import WeightsDir

    store = WeightsDir(weights_dir)
    report = store.verify()
    bad = {name: state for name, state in report.items() if state != "ok"}
    for name, state in sorted(bad.items()):
        click.echo(f"{state:9} {name}")
    for key, origins in store.revisions().items():
        click.echo(f"{key:15} {', '.join(origins)}")
    click.echo(f"{len(report) - len(bad)} of {len(report)} files ok")
    if any(state in ("missing", "changed") for state in bad.values()):
        sys.exit(1)


@weights.command("pull")
@click.argument("models", nargs=-1)
@_weights_dir_option
def weights_pull(models: tuple[str, ...], weights_dir: Path) -> None:
    """Download MODELS (default: all but the large alternatives, e.g. llm_bf16) into the weights dir, each
    from one pinned or resolved commit recorded in the lock file. Run this on a connected machine."""
    from offline_seg.weights import WeightsDir

    store = WeightsDir(weights_dir)
    for key in models or tuple(k for k, entry in store.manifest.items() if entry.pull_default):
        click.echo(f"pulling {key} from {store.entry(key).repo} ...")
        store.pull(key)
    click.echo(f"done; lock file: {weights_dir / 'weights.lock.json'}")


@weights.command("pack")
@click.argument("archive", type=click.Path(path_type=Path, dir_okay=False))
@_weights_dir_option
@click.option("--overwrite", is_flag=True, help="Replace an existing ARCHIVE file.")
def weights_pack(archive: Path, weights_dir: Path, overwrite: bool) -> None:
    """Write the weights dir and its lock file into one tar ARCHIVE to carry across the air gap (beside the
    weights dir, never over an existing file without --overwrite)."""
    from offline_seg.weights import WeightsDir

    click.echo(f"wrote {WeightsDir(weights_dir).pack(archive, overwrite=overwrite)}")


@weights.command("make-tiny")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
def weights_make_tiny(directory: Path, seed: int) -> None:
    """Write tiny random models of every architecture into DIRECTORY (for tests and the demo)."""
    _go_offline()
    _setup_logging(0)
    from offline_seg.errors import InvalidInputError
    from offline_seg.io.guards import new_or_empty
    from offline_seg.tiny import make_tiny_weights

    if not new_or_empty(directory):
        raise InvalidInputError(f"{directory} is not an empty folder: tiny random models are written only into a "
                                "new or empty one (never over real weights)")
    make_tiny_weights(directory, seed=seed)
    click.echo(f"wrote tiny weights to {directory} (random: outputs are meaningless)")

