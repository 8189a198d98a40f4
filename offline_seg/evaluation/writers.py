"""The files a person reads to judge a scoring: the per-class table (terminal, CSV, Markdown), the
summary line and JSON, and the per-class bar chart."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from offline_seg.classes import voc_palette
from offline_seg.evaluation.results import EvalReport

_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(-1, 3)


def _fmt(value: object) -> str:
    return "n/a" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def _iou_text(row: dict[str, object]) -> str:
    """A row's IoU cell: a class the protocol does not score says so, an absent one n/a."""
    return _fmt(row["iou_percent"]) if row["scored"] else "-"


def format_table(report: EvalReport) -> str:
    """The per-class table as aligned plain text, for a terminal ("-": not scored by the protocol)."""
    width = max(len(name) for name in report.classes.names)
    lines = [f"{'#':>3}  {'class':<{width}}  {'id':>4}  {'IoU %':>6}  {'GT px':>11}  {'pred px':>11}"]
    for row in report.rows():
        lines.append(f"{row['index']:>3}  {row['class']:<{width}}  {row['dataset_id']:>4}  "
                     f"{_iou_text(row):>6}  {row['gt_pixels']:>11}  {row['pred_pixels']:>11}")
    return "\n".join(lines)


def write_csv(report: EvalReport, path: Path) -> Path:
    """Per-class rows; an absent class has an empty IoU cell (not 0, which would read as a failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = report.rows()
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return path


def write_markdown(report: EvalReport, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["| # | class | id | IoU (%) | GT pixels | predicted pixels |", "|---:|---|---:|---:|---:|---:|"]
    for row in report.rows():
        lines.append(f"| {row['index']} | {row['class']} | {row['dataset_id']} | {_iou_text(row)} "
                     f"| {row['gt_pixels']} | {row['pred_pixels']} |")
    lines += ["", summary_line(report)]
    if report.missing or report.failed:
        lines.append(f"\nMissing: {', '.join(report.missing) or 'none'}; failed: "
                     f"{', '.join(report.failed) or 'none'} ({report.summary()['missing_policy']}).")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def summary_line(report: EvalReport) -> str:
    """The headline, with the protocol that made the number (the paper's and a benchmark's differ)."""
    summary = report.summary()
    return (f"mIoU {_fmt(summary['miou_percent'])} % over {summary['classes_in_mean']} of "
            f"{summary['scored_classes']} classes ({report.protocol_note}), pixel accuracy "
            f"{_fmt(summary['pixel_accuracy_percent'])} %, {summary['images_scored']} of {summary['images']} "
            "images scored")


def write_summary(report: EvalReport, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.summary(), indent=1) + "\n", encoding="utf-8")
    return path


def plot_per_class(report: EvalReport, path: Path) -> Path:
    """Bar chart of per-class IoU in the VOC colours, mIoU as a dashed line; absent classes say n/a, the
    ones the protocol does not score say so.

    Uses `matplotlib.figure.Figure` directly (Agg canvas) so no pyplot global state or GUI backend.
    """
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iou = report.iou
    count = len(iou)
    figure = Figure(figsize=(max(6.0, 0.32 * count + 1.5), 4.2), dpi=120, layout="constrained")
    axes = figure.add_subplot()
    heights = np.nan_to_num(iou * 100, nan=0.0)
    colours = _PALETTE[:count] / 255.0
    axes.bar(range(count), heights, color=colours, edgecolor="black", linewidth=0.5)
    not_scored = set(report.classes.not_scored)
    for index in np.flatnonzero(np.isnan(iou)):
        axes.text(index, 1, "not scored" if index in not_scored else "n/a", ha="center", va="bottom",
                  rotation=90, fontsize=7, color="grey")
    if not np.isnan(report.miou):
        axes.axhline(100 * report.miou, color="black", linestyle="--", linewidth=1,
                     label=f"mIoU {100 * report.miou:.2f}")
        axes.legend(loc="upper right", fontsize=8)
    axes.set_xticks(range(count), report.classes.names, rotation=60, ha="right", fontsize=8)
    axes.set_ylim(0, 100)
    axes.set_ylabel("IoU (%)")
    axes.set_title(f"Per-class IoU ({report.classes.name}, {report.protocol_note}, {report.num_scored} images)",
                   fontsize=10)
    figure.savefig(path)
    return path
