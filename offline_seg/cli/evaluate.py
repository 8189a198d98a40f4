"""`eval`: score predictions against ground truth."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from offline_seg.classes import PRESETS
from offline_seg.errors import InvalidInputError
from offline_seg.cli.common import _class_list, _scoring_options, _setup_logging, main


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
@_scoring_options
@click.option("--resize-pred", is_flag=True, help="Scale predictions of another size to the ground truth (nearest).")
@click.option("--worst", "num_worst", type=click.IntRange(min=0), default=10, show_default=True,
              help="Side-by-side panels for this many lowest-mIoU images.")
@click.option("--overwrite", is_flag=True, help="Replace files in --out that an earlier eval did not write.")
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug.")
def evaluate_command(pred_dir: Path, gt_dir: Path, preset, classes, out_dir: Path | None, images_dir: Path | None,
                     pred_ids: bool, protocol: str, skip_missing: bool, gt_suffix: str, pred_suffix: str,
                     resize_pred: bool, num_worst: int, overwrite: bool, verbose: int) -> None:
    """mIoU of PRED against GT from one dataset-wide confusion matrix (ignore label excluded), under
    --protocol (printed with the number and written to summary.json).

    Writes per_class.csv, per_class.md, per_class.png, summary.json and worst/*.png (never over a file an
    earlier eval did not write). Exit code 1 when any prediction was missing or unusable (they are listed by
    name; see --skip-missing).
    """
    _setup_logging(verbose)
    from tqdm import tqdm

    from offline_seg.evaluation import writers, worst
    from offline_seg.evaluation.scoring import evaluate
    from offline_seg.io.guards import Ledger, check_out_dir
    from offline_seg.io.runs import check_run_classes

    class_list = _class_list(preset, classes)
    check_run_classes(pred_dir, class_list)  # a run made for another list is not scored as if it were this one
    out_dir = out_dir or pred_dir / "eval"
    check_out_dir(out_dir, folders={"ground-truth folder": [gt_dir], "input folder": [images_dir]})
    if os.path.realpath(out_dir) == os.path.realpath(pred_dir):
        raise InvalidInputError(f"--out {out_dir} is the prediction folder: eval's own PNGs would read as "
                                "predictions; choose another --out (default: PRED/eval)")
    ledger = Ledger(out_dir, "eval", overwrite)
    tables = [out_dir / name for name in ("per_class.csv", "per_class.md", "summary.json", "per_class.png")]
    ledger.check(tables)
    report = evaluate(
        pred_dir, gt_dir, class_list, pred_ids=pred_ids, skip_missing=skip_missing, resize=resize_pred,
        gt_suffix=gt_suffix, pred_suffix=pred_suffix, protocol=protocol,
        progress=lambda keys: tqdm(keys, desc="eval", unit="img", disable=len(keys) < 2),
    )
    panel_files = [path for path, _ in worst.panel_paths(report, out_dir / "worst", num_worst)]
    ledger.check(panel_files)  # the tables were checked before scoring
    ledger.remove_stale(tables + panel_files)  # an earlier eval's worst panels: this folder shows this result only
    out_dir.mkdir(parents=True, exist_ok=True)
    writers.write_csv(report, tables[0])
    writers.write_markdown(report, tables[1])
    writers.write_summary(report, tables[2])
    writers.plot_per_class(report, tables[3])
    panels = worst.worst_images(report, out_dir / "worst", num_worst, images_dir, pred_suffix=pred_suffix)
    ledger.record([*tables, *panels])
    click.echo(writers.format_table(report))
    click.secho(writers.summary_line(report), bold=True)
    click.echo(f"report: {out_dir} ({len(panels)} worst-image panels)")
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

