"""The NVIDIA cards of this machine as the driver reports them (`nvidia-smi`): names, memory, driver and the
newest CUDA it supports. Read without initialising CUDA in this process, so asking costs no GPU memory and
leaves the card free for a vLLM server that checks its free memory at start.

Standard library only (`offline-seg doctor`, the default memory plan of a CUDA run).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from offline_seg.errors import InvalidInputError

logger = logging.getLogger(__name__)

MiB = 1024**2
_QUERY = "index,name,memory.total,memory.free,driver_version"


@dataclass(frozen=True)
class Gpu:
    index: int  # as nvidia-smi numbers it (not remapped by CUDA_VISIBLE_DEVICES)
    name: str
    total_bytes: int
    free_bytes: int
    driver: str


@dataclass(frozen=True)
class GpuReport:
    """What the driver says: its cards, its version and the newest CUDA runtime it can run (None: no driver)."""

    gpus: tuple[Gpu, ...]
    driver: str | None
    cuda: str | None


def _smi(*args: str) -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.info("nvidia-smi failed: %s", error)
        return None
    return done.stdout if done.returncode == 0 else None


def gpu_report() -> GpuReport:
    """This machine's NVIDIA cards (none without a driver)."""
    listing = _smi(f"--query-gpu={_QUERY}", "--format=csv,noheader,nounits")
    gpus = []
    for line in (listing or "").strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 5:
            continue
        try:
            gpus.append(Gpu(int(fields[0]), fields[1], int(float(fields[2])) * MiB, int(float(fields[3])) * MiB,
                            fields[4]))
        except ValueError:
            continue
    banner = _smi() or ""
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", banner)
    return GpuReport(tuple(gpus), gpus[0].driver if gpus else None, cuda.group(1) if cuda else None)


def visible_device(device: str) -> str:
    """The driver's name of the card a torch device (`cuda`, `cuda:1`) runs on: its entry of this process's
    CUDA_VISIBLE_DEVICES (an index or a UUID), else its own index."""
    _, _, index = device.partition(":")
    number = int(index or 0)
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[number] if number < len(visible) else str(number)


def card_for(device: str, report: GpuReport | None = None) -> Gpu | None:
    """The card a torch device (`cuda`, `cuda:1`) runs on; None if unknown (e.g. named by UUID)."""
    if not device.startswith("cuda"):
        return None
    report = report or gpu_report()
    name = visible_device(device)
    return next((gpu for gpu in report.gpus if name.isdigit() and gpu.index == int(name)), None)


def free_memory_size(device: str) -> str | None:
    """The free memory of `device`'s card as a `--gpu-mem` size (e.g. "23012MiB"), None if unknown."""
    card = card_for(device)
    return None if card is None else f"{card.free_bytes // MiB}MiB"


DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")


def check_device(device: str, available: bool = False) -> None:
    """Refuse a device this toolkit does not run on (`cpu`, `cuda`, `cuda:N`), and with `available` one this
    machine's torch cannot reach: before any model loads, so the error names the device, not a weights file."""
    if not DEVICE_PATTERN.fullmatch(device):
        raise InvalidInputError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if not available or device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise InvalidInputError(f"--device {device}: this torch ({torch.__version__}) cannot use a CUDA card here "
                                "(a CPU build, or no driver); install the GPU set with `GPU=1 bash scripts/setup.sh`, "
                                "check with `offline-seg doctor`, or use --device cpu")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise InvalidInputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA card(s) "
                                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
