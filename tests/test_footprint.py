"""The loaders load exactly what the model descriptions (and so the memory plan) say: for every precision
that runs on a CPU, the loaded weights take the plan's bytes for that stage; and the plan and the batch
runner, driven by one description, agree on which models stay loaded and which are released per chunk."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from offline_seg import pipeline as pipeline_module
from offline_seg.engines.runner import BatchRunner
from offline_seg.pipeline import Pipeline
from offline_seg.config import PipelineConfig
from offline_seg.plan import PlanOptions, apply_plan, loaded_weight_bytes, plan_chain
from offline_seg.chain import chain_spec

try:
    import bitsandbytes  # noqa: F401 - the int8 / int4 loaders need it; it runs on a CPU since 0.46
except ImportError:
    if os.environ.get("CI"):
        pytest.fail("bitsandbytes is missing; it is in the dev extra that scripts/setup.sh installs",
                    pytrace=False)
    pytest.skip("bitsandbytes is missing (bash scripts/setup.sh installs the dev extra)", allow_module_level=True)

STAGES = ("tagger", "captioner", "llm", "detector", "segmenter")


def _loaded(pipeline: Pipeline, stage: str):
    if stage == "llm":
        return pipeline.refiner.llm.model
    return getattr(pipeline, stage).model


def _described(tiny_weights, dtype: str, quantization: str | None, stages=STAGES):
    """The tiny chain's descriptions with one precision chosen for `stages`, as a plan would record it."""
    config = PipelineConfig(weights_dir=tiny_weights, phrase_cache_dir=None, refiner="llm")
    chain = chain_spec(config)
    chain = chain.replace_models(replace(m, dtype=dtype, quantization=quantization, explicit=frozenset({"dtype", "quantization"}))
                                 for m in chain.models if m.stage in stages)
    return config, chain


@pytest.mark.parametrize("dtype,quantization,stages", [
    ("fp32", None, STAGES),
    ("bf16", None, STAGES),
    ("fp32", "int8", ("captioner", "llm")),  # bitsandbytes LLM.int8 (CPU backend)
    ("bf16", "int4", ("captioner", "llm")),  # bitsandbytes nf4, blocks of 64
])
def test_loaded_weights_match_the_plan(tiny_weights, dtype, quantization, stages):
    config, chain = _described(tiny_weights, dtype, quantization, stages)
    plan = plan_chain(chain, "24GiB")
    pipeline = Pipeline(config, chain=chain)
    for stage in stages:
        planned = plan.stage(stage)
        expected = dtype if quantization is None else f"{quantization}/{dtype}"
        assert planned.precision == expected
        measured = loaded_weight_bytes(_loaded(pipeline, stage))
        assert measured == pytest.approx(planned.weights_bytes, rel=0.02), (stage, measured, planned.weights_bytes)


def test_int4_llm_on_cpu_still_answers(tiny_weights):
    config, chain = _described(tiny_weights, "bf16", "int4", ("llm",))
    llm = Pipeline(config, chain=chain).refiner.llm
    [reply] = llm.complete([[{"role": "user", "content": "a cat"}]], choices=["cat", "dog"])
    assert reply in ("cat", "dog")
    assert type(llm.model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"


def test_plan_and_runner_agree_on_loads_and_releases(tiny_weights, tmp_path, monkeypatch):
    from PIL import Image

    config = PipelineConfig(weights_dir=tiny_weights, phrase_cache_dir=None, refiner="llm")
    chain = chain_spec(config)
    options = PlanOptions(llm_quant="none", cuda_context_bytes=0)
    everything = plan_chain(chain, "1TiB", options)
    plan = plan_chain(chain, everything.peak_bytes - 1, options)  # one byte short of keeping all resident
    assert plan.fits and plan.swapped_stages and plan.resident_stages
    described = apply_plan(chain, plan)
    assert described.swapped == plan.swapped_stages

    loads: list[str] = []
    releases: list[str] = []
    for name, stage in (("RamPlusTagger", "tagger"), ("Blip2Captioner", "captioner"), ("load_llm", "llm"),
                        ("GroundingDinoDetector", "detector"), ("load_segmenter", "segmenter")):
        real = getattr(pipeline_module, name)
        monkeypatch.setattr(pipeline_module, name, lambda *a, _r=real, _s=stage, **k: loads.append(_s) or _r(*a, **k))
    pipeline = Pipeline(config, chain=described)
    real_release = pipeline.release
    monkeypatch.setattr(pipeline, "release", lambda stage: releases.append(stage) or real_release(stage))
    images = []
    for i in range(2):
        images.append(tmp_path / f"im{i}.png")
        Image.new("RGB", (64, 48), (40 * i, 90, 200)).save(images[-1])
    BatchRunner(pipeline, tmp_path / "out", chunk_size=1, progress=False).run(images)

    chunks = len(images)
    for stage in plan.resident_stages:
        assert loads.count(stage) == 1 and stage not in releases, stage
    for stage in plan.swapped_stages:  # loaded and released once per use per chunk (the LLM: pre and post)
        uses = plan.stage(stage).uses
        assert loads.count(stage) == releases.count(stage) == chunks * uses, stage
    assert set(loads) == {s.name for s in plan.stages}
