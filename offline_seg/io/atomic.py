"""Files replaced whole or not at all: written beside their target under a hidden partial name, then renamed
over it, so a crash, a kill or a full disk leaves the old file (or none), never half of a new one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Call `write` on a partial file beside `path`, then rename it over `path`; the partial never stays."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
