"""`doctor`: one table of what a run here will use and whether it can, and the one fix when it cannot."""

from __future__ import annotations

import sys

import click

from offline_seg.cli.common import _go_offline, _setup_logging, main
from offline_seg.cli.options import _build_config, _segment_options


@main.command()
@_segment_options
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="The engine the run will use (ray: every model loaded at once, one process each).")
@click.option("--quick", is_flag=True, help="Check the weights' sizes against weights.lock.json, not their sha256.")
def doctor(out_dir, verbose: int, engine: str, quick: bool, **options) -> None:
    """What `run` with these options will use here and whether it can: devices, driver and CUDA, library
    versions, free GPU memory, each model present and verified, the memory plan's verdict for this card, the
    vLLM venv or server, the offline switches. Exit 1 naming the one fix when something is off."""
    _go_offline()
    _setup_logging(verbose)
    from offline_seg.doctor import diagnose

    diagnosis = diagnose(_build_config(engine=engine, **options), quick=quick)
    width = max(len(check.name) for check in diagnosis.checks)
    for check in diagnosis.checks:
        status = "ok" if check.ok else "FAIL"
        click.echo(f"{check.name:{width}}  {status:4}  {check.value}")
    if diagnosis.ok:
        click.echo("ready: a run with these options can start here")
        return
    click.secho(f"fix: {diagnosis.fix}", fg="red")
    sys.exit(1)
