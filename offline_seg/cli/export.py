"""`export`: a run as pre-labels for annotation tools (COCO, Label Studio, CVAT, YOLO-seg, VOC)."""

from __future__ import annotations

from pathlib import Path

import click

from offline_seg.cli.common import _setup_logging, main, say

FORMATS = ("coco", "labelstudio", "cvat", "yolo-seg", "voc")
FILE_FORMATS = ("coco", "cvat")  # one file; the others write a folder


@main.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS),
              help="coco: one instances JSON; labelstudio: tasks.json + labeling_config.xml; cvat: a "
                   "Segmentation mask 1.1 zip; yolo-seg: images, labels, data.yaml; voc: the VOC layout.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="A file for coco (.json) and cvat (.zip), a folder for the others.")
@click.option("--images", "images_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Where the input images are, when the run's recorded paths no longer hold them.")
@click.option("--image-url", default=None,
              help="labelstudio: each task's image address; {path} = the image's absolute path without the "
                   "leading slash, {file} = its file name. Default: /data/local-files/?d={path}.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out that an earlier export did not write "
              "(never one inside the run, its inputs, its ground truth or a dataset).")
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug.")
def export_command(run_dir: Path, fmt: str, out: Path, images_dir: Path | None, image_url: str | None,
                   overwrite: bool, verbose: int) -> None:
    """Write the run in RUN_DIR (from `run` or `segment`) as pre-labels in FORMAT.

    Instances are exported as the class map shows them (overlaps go to the higher score), images as the
    masks see them (EXIF orientation applied). Images the run did not finish, that failed, or whose input
    or outputs changed since are listed by name (on stderr) and left out. --out must lie outside the run,
    its inputs, its ground truth and any dataset; a non-empty --out not written by an earlier export needs
    --overwrite.
    """
    _setup_logging(verbose)
    from offline_seg.io import exports
    from offline_seg.io.guards import check_export_target
    from offline_seg.io.runs import read_run

    run = read_run(run_dir, images_dir)
    sources = {image.source.parent for image in run.images if image.source is not None}
    truth = run.settings.get("ground_truth_dir")
    check_export_target(out, kind="file" if fmt in FILE_FORMATS else "folder", run_dir=run_dir,
                        input_folders=sources, ground_truth=[Path(truth)] if truth else [], overwrite=overwrite,
                        ours=exports.written_by_export(out, fmt))
    if fmt == "labelstudio" and image_url:
        path = exports.export_labelstudio(run, out, image_url=image_url)
    else:
        path = exports.EXPORTERS[fmt](run, out)
    count = sum(len(image.instances) for image in run.images)
    say(f"{fmt}: {len(run.images)} image(s), {count} instance(s) -> {path}")
    if fmt in ("cvat", "voc"):
        renamed = [(n, exports.labelmap_name(n)) for n in run.classes.names if exports.labelmap_name(n) != n]
        for name, label in renamed:
            say(f"note: labelmap.txt names class {name!r} as {label!r} (':' and a leading '#' cannot stand there)",
                fg="yellow", err=True)
    for name, reason in run.failures.items():
        say(f"not exported: {name}: {reason}", fg="yellow", err=True)
