"""`offline-seg`: a thin command line over the Python API, one module per command group. Heavy imports
happen inside commands so `--help` is instant and `weights pull` is the only command that may go online."""

from offline_seg.cli import demo, doctor, evaluate, export, llm, plan, report, run, segment, weights  # noqa: F401  (each registers its commands)
from offline_seg.cli.common import main

__all__ = ["main"]
