"""A run as one static HTML page to look at: a gallery of overlays (filter by class, sort by score or by
IoU), the per-class chart, the confusion matrix (with ground truth), the settings and the failures.

Everything is inside the file (thumbnails as data URIs, inline SVG, CSS and a few lines of script) and a
Content-Security-Policy forbids any fetch, so it opens from disk on an air-gapped machine.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template

import numpy as np
from PIL import Image

from offline_seg.classes import voc_palette
from offline_seg.errors import InvalidInputError
from offline_seg.io.atomic import write_atomically
from offline_seg.evaluation.results import EvalReport
from offline_seg.evaluation.writers import summary_line
from offline_seg.io.runs import Run, RunImage

logger = logging.getLogger(__name__)

THUMB_WIDTH = 480


@dataclass(frozen=True)
class ClassStat:
    index: int
    name: str
    colour: str
    images: int  # images showing the class
    pixels: int
    iou: float | None  # None without ground truth, NaN when the class is in neither or not scored
    scored: bool  # in the mean of the scores' protocol (`ClassList.scored`)


def _data_uri(image: Image.Image, width: int = THUMB_WIDTH) -> str:
    """A downscaled JPEG thumbnail as a data URI (keeps a 1000-image report in tens of MB, not GB)."""
    image = image.convert("RGB")
    if image.width > width:
        image = image.resize((width, max(1, round(image.height * width / image.width))), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _thumbnail(image: RunImage) -> str | None:
    for path in (image.overlay_path, image.source):
        if path is not None and path.is_file():
            with Image.open(path) as pixels:
                return _data_uri(pixels)
    return None


def _hex(rgb: tuple[int, ...]) -> str:
    return "#%02x%02x%02x" % tuple(rgb[:3])


def class_stats(run: Run, scores: EvalReport | None) -> list[ClassStat]:
    """Per class: how many images and pixels show it, its dataset-wide IoU and whether the protocol
    scores it (the chart shows the classes of the mean, as `eval`'s table does)."""
    palette = np.array(voc_palette(), dtype=np.uint8).reshape(-1, 3)
    n = len(run.classes)
    pixels = np.zeros(n, np.int64)
    images = np.zeros(n, np.int64)
    for image in run.images:
        counts = np.bincount(image.class_map().ravel(), minlength=n)
        pixels += counts
        images += counts > 0
    iou = scores.iou if scores is not None else None
    scored = set((scores.classes if scores is not None else run.classes).scored)
    return [ClassStat(i, name, _hex(tuple(palette[i])), int(images[i]), int(pixels[i]),
                      None if iou is None else float(iou[i]), i in scored)
            for i, name in enumerate(run.classes.names)]


def _bar_chart(stats: list[ClassStat], with_iou: bool) -> str:
    """An inline SVG bar chart: IoU % per class in the mean with ground truth, else each foreground class's
    share of the labelled pixels (`stats` are the foreground's then)."""
    if with_iou:
        rows = [s for s in stats if s.scored and s.iou is not None and not math.isnan(s.iou)]
    else:
        rows = [s for s in stats if s.pixels]
    if not rows:
        return "<p>No class was found.</p>"
    total = sum(s.pixels for s in rows) or 1
    values = [100 * s.iou if with_iou else 100 * s.pixels / total for s in rows]  # type: ignore[operator]
    bar, gap, label_width, width = 18, 6, 150, 420
    height = len(rows) * (bar + gap) + gap
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_width + width + 70}" height="{height}" '
             f'role="img" aria-label="per-class chart">']
    for row, (stat, value) in enumerate(zip(rows, values)):
        y = gap + row * (bar + gap)
        parts.append(f'<text x="{label_width - 6}" y="{y + bar - 5}" text-anchor="end">{html.escape(stat.name)}</text>'
                     f'<rect x="{label_width}" y="{y}" width="{width * value / 100:.1f}" height="{bar}" '
                     f'fill="{stat.colour}" stroke="#333"/>'
                     f'<text x="{label_width + width * value / 100 + 6:.1f}" y="{y + bar - 5}">{value:.1f} %</text>')
    parts.append("</svg>")
    return "".join(parts)


def _confusion_table(run: Run, scores: EvalReport) -> str:
    """Rows: ground truth, columns: prediction; cells shaded by the share of their row."""
    matrix = scores.confusion.matrix
    keep = [i for i in range(len(run.classes)) if matrix[i].sum() or matrix[:, i].sum()]
    head = "".join(f"<th>{html.escape(run.classes.names[j])}</th>" for j in keep)
    body = []
    for i in keep:
        total = matrix[i].sum() or 1
        cells = "".join(
            f'<td style="background:rgba(31,119,180,{matrix[i, j] / total:.2f})" title="{matrix[i, j]} px">'
            f"{100 * matrix[i, j] / total:.1f}</td>" for j in keep)
        body.append(f"<tr><th>{html.escape(run.classes.names[i])}</th>{cells}</tr>")
    return (f'<table class="confusion"><tr><th>truth \\ prediction (% of row)</th>{head}</tr>'
            f'{"".join(body)}</table>')


def _card(image: RunImage, iou: float | None) -> str:
    labels = sorted({instance.label for instance in image.instances})
    chips = "".join(
        f'<li>{html.escape(item["label"])} {item["score"]:.2f}</li>' for item in image.record["instances"])
    thumb = _thumbnail(image)
    picture = (f'<img src="{thumb}" alt="{html.escape(image.name)}" loading="lazy">' if thumb
               else '<div class="noimg">no overlay</div>')
    iou_text = f" · IoU {100 * iou:.1f} %" if iou is not None and not math.isnan(iou) else ""
    return (f'<figure class="card" data-name="{html.escape(image.name)}" data-score="{image.score:.4f}" '
            f'data-iou="{"" if iou is None or math.isnan(iou) else f"{iou:.4f}"}" '
            f'data-labels="{html.escape(json.dumps(labels))}">{picture}'
            f'<figcaption><b>{html.escape(image.name)}</b> · score {image.score:.2f}{iou_text}'
            f'<ul>{chips or "<li>(nothing found)</li>"}</ul></figcaption></figure>')


def render_report(run: Run, scores: EvalReport | None = None) -> str:
    """The report page of `run` as one HTML string; with `scores` (`evaluate` of the run's folder, so the
    numbers are `eval`'s), IoU per image and per class and the confusion matrix."""
    per_image = {s.pred_path.resolve(): s.miou for s in scores.images} if scores else {}
    stats = class_stats(run, scores)
    foreground = [s for s in stats if s.name in run.classes.foreground]  # labels an instance can have
    cards = "".join(_card(image, per_image.get(image.mask_path.resolve()) if scores else None)
                    for image in run.images)
    filters = "".join(
        f'<button type="button" class="filter" data-class="{html.escape(s.name)}">'
        f'<span class="swatch" style="background:{s.colour}"></span>{html.escape(s.name)} ({s.images})</button>'
        for s in foreground if s.images)
    sorts = ['<option value="score-desc">score, high first</option>', '<option value="score-asc">score, low first</option>']
    if scores:
        sorts = ['<option value="iou-asc">IoU, low first</option>', '<option value="iou-desc">IoU, high first</option>'] + sorts
    sorts.append('<option value="name-asc">name</option>')
    failures = "".join(f"<tr><td>{html.escape(name)}</td><td>{html.escape(reason)}</td></tr>"
                       for name, reason in run.failures.items())
    settings = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v))}</td></tr>"
                       for k, v in run.settings.items())
    summary = f"{len(run.images)} image(s), {sum(len(i.instances) for i in run.images)} instance(s), " \
              f"{len(run.failures)} failure(s)"
    if scores:
        summary += f" · {summary_line(scores)}"
        if not scores.ok:
            policy = "left out" if scores.skip_missing else "scored as all-background, as eval does"
            summary += (f" ({len(scores.missing)} ground-truth image(s) without a prediction, "
                        f"{len(scores.failed)} unusable: {policy})")
    template = Template(files("offline_seg.evaluation").joinpath("report_template.html").read_text(encoding="utf-8"))
    return template.substitute(
        title=html.escape(f"offline_seg run: {run.root.name}"),
        summary=html.escape(summary),
        filters=filters,
        sorts="".join(sorts),
        cards=cards,
        chart_title=f"Per-class IoU (%), {html.escape(scores.protocol_note)}" if scores else "Share of labelled pixels per class (%) — give --gt for IoU",
        chart=_bar_chart(stats if scores else foreground, with_iou=scores is not None),
        confusion=_confusion_table(run, scores) if scores else "<p>Give <code>--gt DIR</code> for the confusion matrix.</p>",
        failures=f"<table><tr><th>image</th><th>reason</th></tr>{failures}</table>" if failures else "<p>None.</p>",
        settings=f"<table>{settings}</table>",
    )


GENERATOR = b'<meta name="generator" content="offline-seg report">'


def written_by_report(path: Path) -> bool:
    """Whether `path` is a report this command wrote (its generator tag near the top), so may be replaced."""
    if not path.is_file() or path.is_symlink():
        return False
    with open(path, "rb") as handle:
        return GENERATOR in handle.read(4096)


def write_report(run: Run, out: Path, scores: EvalReport | None = None, overwrite: bool = False) -> Path:
    """Write the page atomically; never over a file that is not an earlier report unless `overwrite`."""
    out = Path(out)
    if out.is_dir():
        raise InvalidInputError(f"--out {out} is a folder; give the report's file name, e.g. {out}/report.html")
    if (out.exists() or out.is_symlink()) and not written_by_report(out) and not overwrite:
        raise InvalidInputError(f"{out} exists and was not written by `offline-seg report`; move it away, choose "
                                "another --out, or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    page = render_report(run, scores)
    return write_atomically(out, lambda target: target.write_text(page, encoding="utf-8"))
