"""A real OpenAI-compatible server (vLLM's CPU build in .venv-vllm) serving the real SmolLM2-135M (the
`vllm_server` fixture in conftest.py). vLLM's in-process backend on the same model runs in
test_offline.py, with networking off. In CI a missing vLLM venv fails these tests."""

import time

import pytest

from offline_seg.classes import ClassList
from offline_seg.llm import load_llm
from offline_seg.stages.refiner import Refiner
from offline_seg.types import Recognition

VOC = ClassList.preset("voc")
COCO = ClassList.preset("coco81")
PHRASES = ["man", "puppy", "table", "tv screen", "couch", "jet", "kitten", "motor bike", "lady", "automobile"]


def test_server_constrained_answers_are_all_members(vllm_server):
    llm = load_llm(f"openai:{vllm_server.base_url}?concurrency=8")
    refiner = Refiner(llm, VOC)
    started = time.monotonic()
    result = refiner.post_refine(PHRASES)
    elapsed = time.monotonic() - started
    assert llm.dialect == "vllm" and llm.model == "smollm2"
    assert set(result.replies) == set(PHRASES)
    assert all(reply in VOC.names for reply in result.replies.values())  # 100 % members, by construction
    assert llm.stats.invalid == 0 and llm.stats.requests == len(PHRASES) and llm.stats.completion_tokens > 0
    print(f"post-refinement of {len(PHRASES)} phrases: {elapsed:.2f} s")


def test_server_constrained_label_lists_are_all_members(vllm_server):
    llm = load_llm(f"openai:{vllm_server.base_url}")
    refiner = Refiner(llm, COCO, max_new_tokens=48)
    recognitions = [Recognition(("dog", "grass", "man"), "a man walking a dog"),
                    Recognition(("kitchen", "oven"), "a kitchen with an oven and a sink")]
    for labels, reply in refiner.pre_refine(recognitions):
        assert labels and reply.split(", ") == labels
        assert all(label in COCO.foreground for label in labels)
    assert llm.stats.invalid == 0


def test_server_unconstrained_mode_is_free_text(vllm_server):
    llm = load_llm(f"openai:{vllm_server.base_url}")
    [reply] = llm.complete([[{"role": "user", "content": "Say hello."}]], max_new_tokens=8)
    assert isinstance(reply, str) and reply
    again = llm.complete([[{"role": "user", "content": "Say hello."}]], max_new_tokens=8)
    assert again == [reply]  # greedy: same input, same output


def test_llm_serve_dry_run_prints_the_vllm_command(tmp_path):
    from click.testing import CliRunner

    from offline_seg.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["llm", "serve", "--model", str(tmp_path), "--port", "8123", "--dry-run",
                                  "--quantization", "awq", "--python", "py"])
    assert result.exit_code == 0, result.output
    offline = "VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1"
    assert result.output.strip() == (
        f"{offline} py -m vllm.entrypoints.openai.api_server --model {tmp_path} --host 127.0.0.1 --port 8123 "
        "--max-model-len 2048 --gpu-memory-utilization 0.41 --generation-config vllm --quantization awq"
    )
    cpu = runner.invoke(main, ["llm", "serve", "--model", str(tmp_path), "--dry-run", "--cpu",
                               "--gpu-memory-gb", "24", "--python", "py"])
    assert cpu.output.startswith("VLLM_CPU_KVCACHE_SPACE=1 ") and "--enforce-eager" in cpu.output
    assert f"{offline} py -m" in cpu.output
    assert "--gpu-memory-utilization 0.7 " in cpu.output  # 24 GB card: more room beside the vision models
    missing = runner.invoke(main, ["llm", "serve", "--model", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "config.json" in missing.output


# --- the vLLM server a run manages (--llm vllm_server, the default on CUDA) --------------------------------
def _pgid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[2])


def _group(pgid: int) -> list[int]:
    """Live processes of a process group (the watchdog, the vLLM server, its engine core and worker)."""
    import os

    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid]


def _end_group(pgid: int) -> None:
    """SIGKILL what is left of a group this test started (only after its checks)."""
    import os
    import signal

    if _group(pgid):
        os.killpg(pgid, signal.SIGKILL)


def _watchdog_of(port: int) -> int | None:
    """The pid (= process group) of the watchdog that runs the server on `port`."""
    import os

    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"watchdog.py") for a in argv) and str(port).encode() in argv:
            return int(entry)
    return None


def _tiny_images(directory, count):
    import numpy as np
    from PIL import Image

    directory.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(directory / f"img_{i}.png")
    return directory


def test_a_run_starts_its_vllm_server_and_leaves_no_orphan_after_kill_9(vllm_python, smollm2_hf_dir, tiny_weights,
                                                                       tmp_path):
    """`run` with the managed server (the CUDA default; here vLLM's CPU build): killed with kill -9 after its
    first LLM result, it leaves no process of the server's group behind and the port free; the re-run starts
    the server again, finishes from the store, and stops the server at its end."""
    import json
    import os
    import subprocess
    import sys

    from offline_seg.llm.serve import free_port, port_in_use

    port = free_port()
    source = _tiny_images(tmp_path / "in", 2)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "offline_seg.cli", "run", str(source), "--out", str(out), "--weights",
               str(tiny_weights), "--refiner", "llm", "--chunk-size", "1",
               "--llm", f"vllm_server:{smollm2_hf_dir}?python={vllm_python}&port={port}"]
    run = subprocess.Popen(command, env={**os.environ, "OFFLINE_SEG_FAULT": "after:labels:1"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    group = None
    deadline = time.monotonic() + 600
    while run.poll() is None and time.monotonic() < deadline:
        group = group or _watchdog_of(port)
        time.sleep(0.2)
    output = run.stdout.read()
    assert run.returncode == -9, output[-3000:]  # killed by the fault point after the first labels result
    assert group is not None, "the run started no server: " + output[-2000:]
    deadline = time.monotonic() + 60  # the watchdog's grace (20 s) and then SIGKILL
    while _group(group) and time.monotonic() < deadline:
        time.sleep(0.5)
    orphans = _group(group)
    _end_group(group)  # a failing check must not leave a server behind for the next test
    assert orphans == [], "the server outlived its run"
    assert not port_in_use(port)

    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "2 of 2 images done" in again.stdout
    record = json.loads((out / "img_1.json").read_text())
    assert record["llm_replies"]["pre_refine"] is not None  # the served LLM answered the pre-refinement
    assert _watchdog_of(port) is None and not port_in_use(port)  # stopped at the end of the run


def test_a_busy_port_or_no_vllm_stops_the_run_before_any_image(tiny_weights, tmp_path):
    """A second run on the port of a running server (here any listener) says so with its three ways out; no
    vLLM to serve with names the install. Both before any image (exit 2, no store)."""
    import socket
    import sys

    from click.testing import CliRunner

    from offline_seg.cli import main

    source = _tiny_images(tmp_path / "in", 1)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        busy = CliRunner().invoke(main, [
            "run", str(source), "--out", str(tmp_path / "out"), "--weights", str(tiny_weights), "--refiner", "llm",
            "--llm", f"vllm_server:{tiny_weights / 'llm'}?python={sys.executable}&port={port}"])
    assert busy.exit_code == 2, busy.output
    assert busy.output.strip().splitlines()[-1] == (
        f"error: port {port} on 127.0.0.1 is in use (another run's LLM server?): stop it, give this run another "
        "port (--llm 'vllm_server:DIR?port=0' takes a free one), or use the running server with "
        f"--llm openai:http://127.0.0.1:{port}/v1")
    assert not (tmp_path / "out").exists()
    missing = CliRunner().invoke(main, [
        "run", str(source), "--out", str(tmp_path / "out"), "--weights", str(tiny_weights), "--refiner", "llm",
        "--llm", f"vllm_server:{tiny_weights / 'llm'}?python={tmp_path / 'no-venv' / 'python'}&port=0"])
    assert missing.exit_code == 2 and "no vLLM to serve the LLM: install it with `GPU=1 bash scripts/setup.sh`" in \
        missing.output
    assert not (tmp_path / "out").exists()


def test_a_server_that_fails_to_start_is_one_error_with_its_log(tmp_path):
    import sys

    from offline_seg.errors import OfflineSegError
    from offline_seg.llm.serve import ServerProcess

    script = "import sys; print('Free memory on device is less than desired GPU memory utilization'); sys.exit(3)"
    server = ServerProcess([sys.executable, "-c", script], "http://127.0.0.1:9/v1", log=tmp_path / "server.log")
    with pytest.raises(OfflineSegError, match="exited with code 3 before it was ready; log .*server.log, last "
                                              "lines: Free memory on device is less than desired"):
        server.start(timeout=60)


FAKE_API_SERVER = '''
import http.server, subprocess, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # like vLLM's EngineCore
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
'''


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_the_managed_server_goes_with_its_process_however_it_ends(tmp_path, sig):
    """Ctrl-C (SIGINT: the exit handler stops it), SIGTERM and kill -9 (no handler runs: the watchdog sees its
    lifeline close) all stop the server's whole process group, its engine child included. A stand-in for vLLM's
    api_server (it serves /health and starts a child, as vLLM's starts its engine) keeps this test fast; the
    real server's kill -9 case is `test_a_run_starts_its_vllm_server_and_leaves_no_orphan_after_kill_9`."""
    import os
    import signal
    import subprocess
    import sys

    from offline_seg.llm.serve import free_port, port_in_use

    package = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "api_server.py").write_text(FAKE_API_SERVER)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    port = free_port()
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom offline_seg.llm import load_llm\n"
         f"llm = load_llm('vllm_server:{model}?python={sys.executable}&port={port}&startup_timeout=60').start()\n"
         "print('ready', llm.server.group, flush=True)\ntime.sleep(600)\n"],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "fake")}, stdout=subprocess.PIPE, text=True)
    line = parent.stdout.readline().split()
    assert line[:1] == ["ready"], line
    group = int(line[1])
    assert len(_group(group)) >= 3 and port_in_use(port)  # the watchdog, the server, its engine child
    try:
        parent.send_signal(getattr(signal, sig))
        parent.wait(timeout=60)
        deadline = time.monotonic() + 40
        while _group(group) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _group(group) == [] and not port_in_use(port)
    finally:
        _end_group(group)
