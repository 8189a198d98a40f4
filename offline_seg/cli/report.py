"""`report`: one self-contained HTML page to look at a run."""

from __future__ import annotations

from pathlib import Path

import click

from offline_seg.cli.common import _setup_logging, main


@main.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--gt", "gt_dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Ground truth (<name>.png of dataset ids): IoU per image and class, confusion matrix.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Default: RUN_DIR/report.html.")
@click.option("--images", "images_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where the input images are, when the run's recorded paths no longer hold them.")
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug.")
def report_command(run_dir: Path, gt_dir: Path | None, out: Path | None, images_dir: Path | None, verbose: int) -> None:
    """Write one static HTML file for the run in RUN_DIR: overlays with their labels (filter by class,
    sort by score or IoU), per-class chart, confusion matrix, settings and failures. It needs no server
    and loads nothing from the network."""
    _setup_logging(verbose)
    from offline_seg.io.report import write_report
    from offline_seg.io.runs import read_run

    path = write_report(read_run(run_dir, images_dir), out or run_dir / "report.html", gt_dir)
    click.echo(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
