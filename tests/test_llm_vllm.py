"""A real OpenAI-compatible server (vLLM's CPU build in .venv-vllm) serving the real SmolLM2-135M (the
`vllm_server` fixture in conftest.py). vLLM's in-process backend on the same model runs in
test_offline.py, with networking off. In CI a missing vLLM venv fails these tests."""

import time

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
