"""One description per model: one parser for every stage, one decision of the steps, and `--gpu-mem`
choosing what the loaders load (or stopping, before any image, with the cheapest change that fits)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from offline_seg.cli import main
from offline_seg.errors import InvalidInputError, MissingWeightsError
from offline_seg.pipeline import Pipeline
from offline_seg.config import PipelineConfig
from offline_seg.plan import PlanError, fit_chain, plan_for
from offline_seg.specs import parse_spec
from offline_seg.chain import chain_spec


def test_one_parser_for_every_stage(tmp_path):
    bare = parse_spec(str(tmp_path / "m"), "llm", "W")
    assert (bare.backend, bare.path, bare.quantization, bare.explicit) == ("transformers", str(tmp_path / "m"), None,
                                                                           frozenset())
    quant = parse_spec("transformers:D?quantization=4bit&batch_size=2", "llm")
    assert (quant.quantization, quant.option_dict, quant.explicit) == ("int4", {"batch_size": "2"},
                                                                      frozenset({"quantization"}))
    vllm = parse_spec("vllm:D?gpu_memory_utilization=0.3&max_model_len=1024&dtype=bfloat16", "llm")
    assert (vllm.backend, vllm.gpu_memory_utilization, vllm.max_model_len, vllm.dtype) == ("vllm", 0.3, 1024, "bf16")
    assert parse_spec(None, "llm", "W").path == str(Path("W") / "llm")
    assert parse_spec("onnx", "segmenter", "W").path == str(Path("W") / "sam_onnx")
    assert parse_spec("sam:ckpt/sam_vit_b.pth?dtype=fp16", "segmenter").dtype == "fp16"
    assert parse_spec("blip2?quantization=int8", "captioner", "W").quantization == "int8"
    assert parse_spec("C:/models/llm", "llm").path == "C:/models/llm"  # a drive letter is a path
    assert parse_spec("openai:http://127.0.0.1:8000/v1?concurrency=2", "llm").path == "http://127.0.0.1:8000/v1"
    with pytest.raises(InvalidInputError, match="unknown option"):
        parse_spec("sam?batch=3", "segmenter")
    with pytest.raises(InvalidInputError, match="quantization"):
        parse_spec("D?quantization=int3", "llm")
    with pytest.raises(InvalidInputError, match="available: sam, onnx"):
        parse_spec("yolo:x", "segmenter")
    for text, stage, words in (("vllm_server:D?port=99999", "llm", "port must be a whole number from 0 to 65535, not '99999'"),
                               ("vllm_server:D?port=x", "llm", "whole number"),
                               ("openai:http://127.0.0.1:8000/v1?timeout=-1", "llm", "timeout must be a number at least 0.001"),
                               ("centernet?threshold=2", "detector", "threshold must be a number from 0 to 1, not '2'"),
                               ("vllm:D?max_model_len=0", "llm", "max_model_len must be at least 1")):
        with pytest.raises(InvalidInputError, match=words):
            parse_spec(text, stage)


def test_one_decision_of_steps_and_models(tmp_path):
    def decided(**switches):
        chain = chain_spec(PipelineConfig(weights_dir=tmp_path, **{"refiner": "llm", **switches}))
        return chain.steps, tuple(m.stage for m in chain.models), chain.model_steps

    steps, models, _ = decided()
    assert steps == ("tag", "caption", "labels", "detect", "post_refine", "segment", "write")
    assert models == ("tagger", "captioner", "llm", "detector", "segmenter")
    assert decided(oracle_boxes=True)[:2] == (("detect", "segment", "write"), ("segmenter",))
    steps, models, _ = decided(labels=("cat",))
    assert "tag" not in steps and models == ("llm", "detector", "segmenter")
    _, models, model_steps = decided(pre_refine=False, post_refine=False, use_caption=False)
    assert models == ("tagger", "detector", "segmenter") and ("labels", "llm") not in model_steps
    steps, models, model_steps = decided(detector="sam3")  # SAM 3 detects and segments: no SAM, no post-refinement
    assert steps == ("tag", "caption", "labels", "detect", "segment", "write")
    assert models == ("tagger", "captioner", "llm", "detector") and ("segment", "segmenter") not in model_steps
    sam3 = chain_spec(PipelineConfig(weights_dir=tmp_path, detector="sam3:/x/sam3?device=cuda:1")).model("detector")
    assert (sam3.backend, sam3.path, sam3.device, sam3.component) == ("sam3", "/x/sam3", "cuda:1", "sam3")
    # refinement by the embedder alone (the CPU default) loads no LLM, and preflight does not ask for one
    embed_only = chain_spec(PipelineConfig(weights_dir=tmp_path))
    assert PipelineConfig(weights_dir=tmp_path).refiner_mode == "embed"
    assert [m.stage for m in embed_only.models] == ["tagger", "captioner", "detector", "segmenter"]


def _tiny_llm_config(directory: Path) -> None:
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
                num_key_value_heads=2).save_pretrained(directory)


def test_the_plan_plans_the_llm_as_described(tmp_path):
    _tiny_llm_config(tmp_path / "mine")
    # --refiner hybrid: `auto` would not ask (nor load) an LLM this small
    bare = plan_for(PipelineConfig(weights_dir=tmp_path / "w", device="cuda", llm=str(tmp_path / "mine"),
                                   refiner="hybrid"), "8GiB")
    assert bare.stage("llm").params < 1_000_000  # the model in DIR, not the default Llama-3-8B
    int8 = plan_for(PipelineConfig(weights_dir=tmp_path / "w", device="cuda",
                                   llm=f"transformers:{tmp_path / 'mine'}?quantization=8bit", refiner="hybrid"), "24GiB")
    assert int8.stage("llm").precision == "int8/fp16"
    vllm = chain_spec(PipelineConfig(weights_dir=tmp_path / "w", device="cuda", llm="vllm:"))
    described, plan = fit_chain(vllm, "24GiB")
    assert plan.options.llm_backend == "vllm" and "llm" in plan.resident_stages
    llm = described.model("llm")
    assert llm.resident and llm.gpu_memory_utilization == plan.vllm_gpu_memory_utilization
    assert llm.quantization == "bitsandbytes" and llm.max_model_len == 2048


def test_gpu_mem_picks_precision_and_the_description_records_it(tmp_path):
    config = PipelineConfig(weights_dir=tmp_path, device="cuda", gpu_mem="8GiB", llm="transformers:")
    pipeline = Pipeline(config)  # nothing loads yet: the description is decided up front
    plan = pipeline.memory_plan
    assert plan.fits and plan.stage("captioner").precision == "int8/fp16"
    captioner, llm = pipeline.chain.model("captioner"), pipeline.chain.model("llm")
    assert (captioner.quantization, captioner.dtype, llm.quantization) == ("int8", "fp16", "int4")
    assert set(pipeline.chain.swapped) == set(plan.swapped_stages) and pipeline.chain.swapped
    roomy = Pipeline(PipelineConfig(weights_dir=tmp_path, device="cuda", gpu_mem="24GiB"))
    assert roomy.chain.model("captioner").quantization is None and roomy.chain.swapped == ()
    # the CUDA default, a vLLM server the run manages: on 8 GiB it cannot stay beside the vision models, so
    # it stops after each LLM step and starts again (with the plan's share of the card)
    served = Pipeline(PipelineConfig(weights_dir=tmp_path, device="cuda", gpu_mem="8GiB"))
    llm = served.chain.model("llm")
    assert (llm.backend, llm.resident, llm.quantization) == ("vllm_server", False, "bitsandbytes")
    assert llm.gpu_memory_utilization == served.memory_plan.vllm_gpu_memory_utilization and llm.max_model_len == 2048
    assert served.memory_plan.fits and served.memory_plan.options.llm_restart


def test_explicit_choices_win_and_a_chain_that_cannot_fit_names_the_cheapest_change(tmp_path):
    with pytest.raises(PlanError, match=r"Cheapest change that fits: --captioner-quant int8 \(your explicit"):
        Pipeline(PipelineConfig(weights_dir=tmp_path, device="cuda", gpu_mem="8GiB", captioner_quant="none",
                                llm="transformers:"))
    # the default, a vLLM server: on 8 GiB it must also stop between its steps
    with pytest.raises(PlanError, match=r"Cheapest change that fits: the LLM server stopped between its steps, "
                                        r"--captioner-quant int8 \(your explicit"):
        Pipeline(PipelineConfig(weights_dir=tmp_path, device="cuda", gpu_mem="8GiB", captioner_quant="none"))
    with pytest.raises(InvalidInputError, match="--device cuda"):
        Pipeline(PipelineConfig(weights_dir=tmp_path, device="cpu", gpu_mem="8GiB"))


def test_run_that_cannot_fit_stops_before_the_first_image(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(tmp_path / "a.png"), "--weights", str(tmp_path / "w"), "--out",
                                       str(out), "--device", "cuda", "--gpu-mem", "6GiB"])
    assert result.exit_code == 2, result.output
    assert "does not fit a 6 GiB card" in result.output and "Cheapest change" in result.output
    assert not out.exists()  # no store, no outputs: nothing ran
    cpu = CliRunner().invoke(main, ["segment", str(tmp_path / "a.png"), "--weights", str(tmp_path / "w"),
                                    "--gpu-mem", "8GiB", "--out", str(out)])
    assert cpu.exit_code == 2 and "--gpu-mem plans a CUDA card" in cpu.output


def test_preflight_reports_every_missing_file_at_once(tiny_weights, tmp_path):
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    (weights / "ram_plus" / "ram_tag_list.txt").unlink()
    for path in (weights / "blip2").glob("*.safetensors"):
        path.unlink()
    pipeline = Pipeline(PipelineConfig(weights_dir=weights))
    with pytest.raises(MissingWeightsError) as error:
        pipeline.preflight()
    assert {(p.name, c) for p, c in error.value.missing} == {("ram_tag_list.txt", "ram_plus"),
                                                              ("*.safetensors", "blip2")}
    assert f"offline-seg weights pull ram_plus blip2 --weights {weights}" in str(error.value)
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    result = CliRunner().invoke(main, ["run", str(tmp_path / "a.png"), "--weights", str(weights), "--out",
                                       str(tmp_path / "out")])
    assert result.exit_code == 2 and "2 missing weights files" in result.output
    assert not list((tmp_path / "out").glob("*.png"))
    # a stage that does not run needs no files: given labels skip the tagger and the captioner
    Pipeline(PipelineConfig(weights_dir=weights, labels=("cat",))).preflight()


def test_store_keys_follow_the_description(tiny_weights):
    from offline_seg.engines.runner import stage_keys

    plain = stage_keys(Pipeline(PipelineConfig(weights_dir=tiny_weights, refiner="llm")))
    int8 = stage_keys(Pipeline(PipelineConfig(weights_dir=tiny_weights, refiner="llm",
                                              llm=f"{tiny_weights}/llm?quantization=int8")))
    assert plain["labels"] != int8["labels"] and plain["tag"] == int8["tag"]


def test_the_cuda_default_is_a_vllm_server_with_the_plans_share(tmp_path, monkeypatch):
    """`--device cuda` with nothing else said: the LLM is a vLLM server the run manages, serving the AWQ
    checkpoint as it is, launched with the memory plan's gpu_memory_utilization and max_model_len, eager,
    offline, on loopback. The resolved descriptions and the launch command, from the real plan arithmetic of
    the full-size Llama-3-8B (its config.json in the weights dir, as `weights pull` puts it)."""
    from offline_seg.llm.vllm_server_backend import launch_for
    from offline_seg.plan.architectures import _llama3_8b_defaults

    weights = tmp_path / "weights"
    config = _llama3_8b_defaults()
    config.quantization_config = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                                  "version": "gemm"}
    config.save_pretrained(weights / "llm")
    for card in ("12GiB", "24GiB"):
        pipeline = Pipeline(PipelineConfig(weights_dir=weights, device="cuda", gpu_mem=card))
        plan, llm = pipeline.memory_plan, pipeline.chain.model("llm")
        assert pipeline.config.refiner_mode == "hybrid"  # the LLM is loaded on CUDA
        assert (llm.backend, llm.quantization, llm.dtype, llm.resident) == ("vllm_server", "awq", "fp16", True)
        assert llm.gpu_memory_utilization == plan.vllm_gpu_memory_utilization
        assert plan.stage("llm").precision == "awq/fp16" and plan.fits
        # its share of the card holds the AWQ weights, the KV cache for one 2048-token sequence and its context
        process = plan.stage("llm").step_bytes + plan.options.cuda_context_bytes
        assert process <= llm.gpu_memory_utilization * plan.gpu_bytes < process + 0.01 * plan.gpu_bytes
        launch = launch_for(llm, python=Path("/lab/.venv-vllm/bin/python"), port=8000)
        assert launch.command == (
            "/lab/.venv-vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model",
            str((weights / "llm").absolute()), "--host", "127.0.0.1", "--port", "8000", "--max-model-len", "2048",
            "--gpu-memory-utilization", f"{llm.gpu_memory_utilization:g}", "--generation-config", "vllm",
            "--quantization", "awq", "--dtype", "float16", "--enforce-eager")
        env = dict(launch.env)
        assert {env[k] for k in ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "HF_HUB_OFFLINE")} == {"1"}
        assert "CUDA_VISIBLE_DEVICES" not in env and launch.base_url == "http://127.0.0.1:8000/v1"
    # a 12 GiB plan on a 24 GiB card (--gpu-mem below the card, or an emulated card): vLLM reads its flag as a
    # share of the whole device, so the launch halves the plan's share (rounded down)
    from offline_seg import gpus

    twelve = Pipeline(PipelineConfig(weights_dir=weights, device="cuda", gpu_mem="12GiB")).chain.model("llm")
    assert twelve.planned_gpu_bytes == 12 * 1024**3
    card = gpus.Gpu(0, "a 24 GiB card", 24 * 1024**3, 23 * 1024**3, "580.1")
    monkeypatch.setattr(gpus, "gpu_report", lambda: gpus.GpuReport((card,), "580.1", "13.0"))
    command = launch_for(twelve, python=Path("py"), port=8000).command
    share = float(command[command.index("--gpu-memory-utilization") + 1])
    assert share == int(twelve.gpu_memory_utilization / 2 * 1000) / 1000
    monkeypatch.undo()
    # another card and an explicit share: CUDA_VISIBLE_DEVICES follows the device, the user's share is kept
    mine = parse_spec(f"vllm_server:{weights / 'llm'}?gpu_memory_utilization=0.5&device=cuda:1", "llm")
    assert mine.backend == "vllm_server" and "--gpu-memory-utilization" in (command := launch_for(mine).command)
    assert command[command.index("--gpu-memory-utilization") + 1] == "0.5"
    assert dict(launch_for(mine).env)["CUDA_VISIBLE_DEVICES"] == "1"
    # a bare path is the device's default kind; transformers stays what it says, with its clear AWQ error
    assert parse_spec(str(weights / "llm"), "llm", weights, "cuda").backend == "vllm_server"
    assert parse_spec(str(weights / "llm"), "llm", weights, "cpu").backend == "transformers"
    assert parse_spec("transformers:", "llm", weights, "cuda").backend == "transformers"
    assert parse_spec("/m/llama.gguf", "llm", weights, "cuda").backend == "transformers"  # vLLM reads no GGUF


def test_transformers_on_an_awq_checkpoint_keeps_its_clear_error(tmp_path):
    import json

    from offline_seg.errors import OfflineSegError
    from offline_seg.llm import load_llm
    from offline_seg.tiny import llama

    llama.write(tmp_path / "llm")
    config = json.loads((tmp_path / "llm" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                                     "version": "gemm"}
    (tmp_path / "llm" / "config.json").write_text(json.dumps(config))
    with pytest.raises(OfflineSegError, match=r"served by vLLM as it is: --llm vllm_server:.* \(the default on "
                                              r"--device cuda\); or pull `llm_bf16`"):
        load_llm(f"transformers:{tmp_path / 'llm'}").complete([[{"role": "user", "content": "hi"}]], choices=["a"])
