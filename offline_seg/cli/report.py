"""`report`: one self-contained HTML page to look at a run."""

from __future__ import annotations

from pathlib import Path

import click

from offline_seg.cli.common import _scoring_options, _setup_logging, main


@main.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--gt", "gt_dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Ground truth (<name>.png of dataset ids): IoU per image and class, confusion matrix.")
@_scoring_options
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Default: RUN_DIR/report.html.")
@click.option("--images", "images_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where the input images are, when the run's recorded paths no longer hold them.")
@click.option("--overwrite", is_flag=True, help="Replace an --out file that is not an earlier report.")
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug.")
def report_command(run_dir: Path, gt_dir: Path | None, protocol: str, skip_missing: bool, gt_suffix: str,
                   pred_suffix: str, out: Path | None, images_dir: Path | None, overwrite: bool, verbose: int) -> None:
    """Write one static HTML file for the run in RUN_DIR: overlays with their labels (filter by class,
    sort by score or IoU), per-class chart, confusion matrix, settings and failures. It needs no server
    and loads nothing from the network. With --gt the scores are `eval`'s, under the same options."""
    _setup_logging(verbose)
    from offline_seg.evaluation.scoring import evaluate
    from offline_seg.evaluation.writers import summary_line
    from offline_seg.evaluation.report import write_report
    from offline_seg.io.runs import read_run

    run = read_run(run_dir, images_dir)
    scores = None
    if gt_dir is not None:
        scores = evaluate(run.root, gt_dir, run.classes, protocol=protocol, skip_missing=skip_missing,
                          gt_suffix=gt_suffix, pred_suffix=pred_suffix)
    path = write_report(run, out or run_dir / "report.html", scores, overwrite=overwrite)
    if scores is not None:
        click.echo(summary_line(scores))
    click.echo(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
