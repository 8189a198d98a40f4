"""`demo`: the chain on a bundled picture: real models on a real photo, or tiny random ones (`--tiny`)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import click

from offline_seg.cli.common import _go_offline, _setup_logging, main
from offline_seg.cli.segment import _run_segment
from offline_seg.demo import DEMO_PHOTO, DEMO_PHOTO_CREDIT, demo_image
from offline_seg.errors import InvalidInputError, MissingWeightsError
from offline_seg.io.guards import check_out_dir, new_or_empty


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _place_scene(scene: Path, data: bytes, other: bytes) -> None:
    """Put this mode's picture at `scene`: the other mode's picture (an earlier demo) is replaced, a file
    that is neither is a user's and is refused (one line), never segmented in the demo's name."""
    if scene.is_file() and not scene.is_symlink():
        current = scene.read_bytes()
        if current == data:
            return
        if current != other:
            raise InvalidInputError(f"{scene} is not the demo's picture; move it away or choose another --out")
    elif scene.exists() or scene.is_symlink():
        raise InvalidInputError(f"{scene} is in the way of the demo's picture; choose another --out")
    scene.parent.mkdir(parents=True, exist_ok=True)
    scene.write_bytes(data)


@main.command()
@click.option("--weights", "weights_dir", type=click.Path(path_type=Path),
              help="Weights directory (default: weights; with --tiny: tiny random models written to OUT/tiny-weights).")
@click.option("--tiny", is_flag=True, help="Tiny random models on a drawn scene: the whole flow of the full chain "
              "(RAM++, BLIP-2, LLM, Grounding DINO, SAM) runs and writes every output, but the masks are meaningless.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("-v", "--verbose", count=True)
def demo(weights_dir: Path | None, tiny: bool, out_dir: Path, device: str, verbose: int) -> None:
    """Segment a bundled real photo with the real CPU tier (CenterNet -> post-refinement -> MobileSAM on
    ONNX Runtime; weights: centernet, sam_onnx, embedder, which scripts/setup.sh pulls), or with --tiny the
    whole paper chain on tiny random models."""
    _go_offline()
    _setup_logging(verbose)
    common = dict(check_out=False, preset="voc", classes=None, out_dir=out_dir, device=device, no_caption=False,
                  no_pre_refine=False, no_post_refine=False, num_points=None, labels=None, boxes="detect", gt_dir=None,
                  llm=None, gpu_mem=None, captioner_quant=None, no_phrase_cache=False, unconstrained=False,
                  box_threshold=0.18, text_threshold=0.15, prompts_dir=None, verbose=verbose)
    scene = out_dir / "input" / "demo.png"  # the demo's own input, beside its outputs
    real_photo, drawn = DEMO_PHOTO.read_bytes(), _png(demo_image())
    if not tiny:
        weights_dir = weights_dir or Path("weights")
    check_out_dir(out_dir, folders={"weights folder": [weights_dir]})  # the demo never writes into weights
    if tiny:
        _place_scene(scene, drawn, other=real_photo)
        if weights_dir is None:
            from offline_seg.tiny import make_tiny_weights

            weights_dir = out_dir / "tiny-weights"
            if not (weights_dir / "weights.lock.json").is_file():
                if not new_or_empty(weights_dir):
                    raise InvalidInputError(f"{weights_dir} holds files that are not tiny weights; choose another --out")
                click.echo(f"writing tiny random models to {weights_dir} ...")
                make_tiny_weights(weights_dir)
        click.secho("note: tiny random weights -> the masks below are meaningless; they show the flow only.",
                    fg="yellow")
        _run_segment([scene], weights_dir=weights_dir, segmenter=None, **common)
        return
    _place_scene(scene, real_photo, other=drawn)
    start = time.perf_counter()
    try:
        _run_segment([scene], weights_dir=weights_dir, segmenter="onnx", detector="centernet", **common)
    except MissingWeightsError as error:  # the same one line, and the way to see the flow without weights
        error.args = (f"{error.args[0]}\n  (the demo runs the real CPU tier; "
                      "`offline-seg demo --tiny` needs no weights)",)
        raise
    click.echo(f"real models on the CPU: {time.perf_counter() - start:.1f} s, loading included "
               f"(photo: {DEMO_PHOTO_CREDIT})")
