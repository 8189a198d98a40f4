"""`demo`: the whole chain on the bundled demo scene."""

from __future__ import annotations

from pathlib import Path

import click

from offline_seg.cli.common import _go_offline, _setup_logging, main
from offline_seg.cli.segment import _run_segment


@main.command()
@click.option("--weights", "weights_dir", type=click.Path(path_type=Path),
              help="Weights directory; default: tiny random models written to OUT/tiny-weights.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("-v", "--verbose", count=True)
def demo(weights_dir: Path | None, out_dir: Path, device: str, verbose: int) -> None:
    """Run the full chain on the bundled demo scene.

    Without --weights it uses tiny randomly initialised models: the whole flow runs and writes every
    output, but the tags, boxes and masks are meaningless.
    """
    _go_offline()
    _setup_logging(verbose)
    from offline_seg.demo import demo_image

    if weights_dir is None:
        from offline_seg.tiny import make_tiny_weights

        weights_dir = out_dir / "tiny-weights"
        if not (weights_dir / "weights.lock.json").is_file():
            click.echo(f"writing tiny random models to {weights_dir} ...")
            make_tiny_weights(weights_dir)
        click.secho("note: tiny random weights -> the masks below are meaningless; they show the flow only.",
                    fg="yellow")
    scene = out_dir / "input" / "demo.png"  # the demo's own input, beside its outputs
    image = demo_image()
    if not scene.is_file():
        scene.parent.mkdir(parents=True, exist_ok=True)
        image.save(scene)
    _run_segment(
        [scene], check_out=False, preset="voc", classes=None, weights_dir=weights_dir, out_dir=out_dir,
        device=device, no_caption=False, no_pre_refine=False, no_post_refine=False, num_points=None, labels=None,
        boxes="detect", gt_dir=None, segmenter=None, llm=None, gpu_mem=None, captioner_quant=None,
        no_phrase_cache=False, unconstrained=False, box_threshold=0.18, text_threshold=0.15, prompts_dir=None,
        verbose=verbose,
    )
