"""`llm`: serve a local model over an OpenAI-compatible API, convert GGUF files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from offline_seg.errors import InvalidInputError
from offline_seg.cli.common import _go_offline, _setup_logging, main
from offline_seg.cli.options import _segment_options
from offline_seg.types import Recognition
from offline_seg.textfiles import read_text


@main.group()
def llm() -> None:
    """The LLM side: serve a local model over an OpenAI-compatible API, convert GGUF files."""


@llm.command("serve")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Local HF model directory (safetensors; convert a .gguf with `llm convert-gguf`).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--gpu-memory-gb", type=float, default=12.0, show_default=True,
              help="GPU size for the memory plan: vLLM gets what the vision models leave.")
@click.option("--gpu-memory-utilization", type=click.FloatRange(0.05, 1.0),
              help="Override the plan's share of GPU memory for vLLM.")
@click.option("--quantization", type=click.Choice(["awq", "gptq", "bitsandbytes", "fp8"]),
              help="Weight quantization of the model (AWQ/GPTQ checkpoints, or bitsandbytes in-flight).")
@click.option("--max-model-len", type=int, default=2048, show_default=True)
@click.option("--enforce-eager", is_flag=True, help="No CUDA graphs: faster start, less memory (default on --cpu).")
@click.option("--cpu", is_flag=True, help="vLLM's CPU build: adds its thread and KV-cache settings.")
@click.option("--python", "python", default=sys.executable, show_default="this Python",
              help="Python of the venv that has vLLM (e.g. .venv-vllm/bin/python).")
@click.option("--dry-run", is_flag=True, help="Print the command line instead of running it.")
def llm_serve(model_dir: Path, port: int, gpu_memory_gb: float, gpu_memory_utilization: float | None,
              quantization: str | None, max_model_len: int, enforce_eager: bool, cpu: bool, python: str,
              dry_run: bool) -> None:
    """Start vLLM's OpenAI-compatible server for MODEL on 127.0.0.1 (then use --llm openai:URL)."""
    import shlex

    from offline_seg.llm.serve import OFFLINE_ENV, VllmShare, ServeOptions, cpu_environment

    if not dry_run and not (model_dir / "config.json").is_file():
        raise InvalidInputError(f"no config.json in {model_dir}: give a HF model directory")
    options = ServeOptions(
        model=model_dir,
        port=port,
        gpu_memory_utilization=gpu_memory_utilization or VllmShare(gpu_memory_gb=gpu_memory_gb).gpu_memory_utilization,
        max_model_len=max_model_len,
        quantization=quantization,
        enforce_eager=enforce_eager or cpu,
        python=python,
    )
    env = {**(cpu_environment() if cpu else {}), **OFFLINE_ENV}
    argv = options.command()
    if dry_run:
        click.echo(" ".join([f"{k}={v}" for k, v in env.items()] + [shlex.quote(a) for a in argv]))
        return
    click.echo(f"serving {model_dir} at http://127.0.0.1:{port}/v1 (use --llm openai:http://127.0.0.1:{port}/v1)")
    os.execvpe(argv[0], argv, {**os.environ, **env})


@llm.command("convert-gguf")
@click.argument("gguf", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default="bfloat16", show_default=True)
def llm_convert_gguf(gguf: Path, out_dir: Path, dtype: str) -> None:
    """Write a safetensors HF directory OUT_DIR from a GGUF file (vLLM's CPU build cannot read GGUF)."""
    _go_offline()
    _setup_logging(0)
    from offline_seg.llm.convert import gguf_to_hf

    click.echo(f"wrote {gguf_to_hf(gguf, out_dir, dtype=dtype)}")


@llm.command("refine")
@click.option("--phrases", "phrases_file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Detector phrases, one per line: prints phrase<TAB>label (background when dropped).")
@click.option("--captions", "captions_file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help='Recognition texts ("tags: caption"), one per line: prints text<TAB>labels joined by ", ".')
@_segment_options
def llm_refine(phrases_file: Path | None, captions_file: Path | None, out_dir: Path, verbose: int, **options) -> None:
    """Show what refinement does with a class list before a long run: post-refinement of --phrases and
    pre-refinement of --captions, with the model and refiner options of `run` (the others are ignored)."""
    _go_offline()
    _setup_logging(verbose)
    from offline_seg.cli.options import _build_config
    from offline_seg.pipeline import Pipeline

    if (phrases_file is None) == (captions_file is None):
        raise click.UsageError("give --phrases FILE or --captions FILE")
    pipeline = Pipeline(_build_config(**options))
    background = pipeline.config.classes.background
    if phrases_file is not None:
        phrases = _lines(phrases_file)
        labels = pipeline.refiner.post_refine(phrases).labels  # the pipeline's refiner, as `run` builds it
        for phrase, label in zip(phrases, labels):
            click.echo(f"{phrase}\t{label or background}")
        return
    texts = _lines(captions_file)
    results = pipeline.scene_labels([Recognition.from_text(text) for text in texts])  # as `run` does
    for text, (labels, _) in zip(texts, results):
        click.echo(f"{text}\t{', '.join(labels)}")


def _lines(path: Path) -> list[str]:
    lines = [line.strip() for line in read_text(path, "the file", "one entry per line").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise InvalidInputError(f"{path} has no non-empty lines")
    return lines
