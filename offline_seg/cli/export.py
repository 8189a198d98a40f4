"""`export`: a run as pre-labels for annotation tools (COCO, Label Studio, CVAT, YOLO-seg, VOC)."""

from __future__ import annotations

from pathlib import Path

import click

from offline_seg.cli.common import _setup_logging, main

FORMATS = ("coco", "labelstudio", "cvat", "yolo-seg", "voc")


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
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug.")
def export_command(run_dir: Path, fmt: str, out: Path, images_dir: Path | None, image_url: str | None,
                   verbose: int) -> None:
    """Write the run in RUN_DIR (from `run` or `segment`) as pre-labels in FORMAT.

    Instances are exported as the class map shows them (overlaps go to the higher score). Images that
    failed in the run are listed (on stderr) and left out.
    """
    _setup_logging(verbose)
    from offline_seg.io import exports
    from offline_seg.io.runs import read_run

    run = read_run(run_dir, images_dir)
    if fmt == "labelstudio" and image_url:
        path = exports.export_labelstudio(run, out, image_url=image_url)
    else:
        path = exports.EXPORTERS[fmt](run, out)
    count = sum(len(image.instances) for image in run.images)
    click.echo(f"{fmt}: {len(run.images)} image(s), {count} instance(s) -> {path}")
    for name, reason in run.failures.items():
        click.secho(f"not exported (failed in the run): {name}: {reason}", fg="yellow", err=True)
