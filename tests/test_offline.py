"""Offline proof: the whole chain runs with networking really off, and never tries a socket."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from offline_seg.demo import demo_image

SOCKET_GUARD = '''
import os, socket
_log = os.environ["OFFLINE_SEG_SOCKET_LOG"]
_real = socket.socket
class _Guarded(_real):
    def __init__(self, family=socket.AF_INET, *args, **kwargs):
        if family in (socket.AF_INET, socket.AF_INET6):
            with open(_log, "a") as handle:
                handle.write(f"socket({family!r})\\n")
            raise OSError("network disabled by offline_seg's offline test")
        super().__init__(family, *args, **kwargs)
socket.socket = _Guarded
'''


def _no_network_prefix() -> list[str]:
    """`unshare -n` (a new, empty network namespace) when we may; the socket guard covers the rest."""
    unshare = shutil.which("unshare")
    if unshare and os.geteuid() == 0 and subprocess.run([unshare, "-n", "true"]).returncode == 0:
        return [unshare, "-n"]
    return []


def _run_offline(tiny_weights, tmp_path, *options: str) -> Path:
    """`segment` on one image in a subprocess with networking off; the output dir, after checking that
    it ran, opened no socket and wrote the usual outputs."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(SOCKET_GUARD)
    log = tmp_path / "sockets.log"
    image = tmp_path / "street.jpg"
    demo_image(320, 240).save(image)
    env = {
        **os.environ,
        "PYTHONPATH": str(guard),
        "OFFLINE_SEG_SOCKET_LOG": str(log),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "empty-hf-home"),
    }
    env.pop("TRANSFORMERS_OFFLINE", None)
    command = [sys.executable, "-m", "offline_seg.cli", "segment", str(image), "--weights", str(tiny_weights),
               "--out", str(tmp_path / "out"), *options]
    run = subprocess.run(_no_network_prefix() + command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not log.exists(), f"tried to open network sockets: {log.read_text()}"
    record = json.loads((tmp_path / "out" / "street.json").read_text())
    assert record["width"] == 320 and record["height"] == 240
    assert Image.open(tmp_path / "out" / "street.png").size == (320, 240)
    assert (tmp_path / "out" / "street_overlay.png").is_file()
    return tmp_path / "out"


def test_chain_runs_with_network_off(tiny_weights, tmp_path):
    _run_offline(tiny_weights, tmp_path)


def test_sam3_runs_with_network_off(tiny_weights, tmp_path):
    """SAM 3 (model, CLIP tokenizer, preprocessing) loads from the local dir alone."""
    out = _run_offline(tiny_weights, tmp_path, "--detector", "sam3", "--labels", "all")
    record = json.loads((out / "street.json").read_text())
    assert record["settings"]["detector"] == "sam3" and record["instances"]
