"""Resume and cache keys hold content: model files, prompt texts, tag lists, the model a server serves."""

from __future__ import annotations

import os
import shutil

from offline_seg.engines.runner import stage_keys
from offline_seg.pipeline import Pipeline
from offline_seg.config import PipelineConfig
from offline_seg.weights import model_identity


def test_model_identity_follows_content_not_path(tmp_path):
    model = tmp_path / "a" / "detector"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"hidden": 8}')
    (model / "model.safetensors").write_bytes(b"\0" * (2 << 20))  # large: keyed by size and mtime
    first = model_identity(model)
    copy = tmp_path / "elsewhere"
    shutil.copytree(model, copy, copy_function=shutil.copy2)  # same bytes, same mtimes
    assert model_identity(copy) == first
    (model / "config.json").write_text('{"hidden": 16}')
    assert model_identity(model) != first
    (model / "config.json").write_text('{"hidden": 8}')
    assert model_identity(model) == first
    stat = (model / "model.safetensors").stat()
    os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # replaced weights
    assert model_identity(model) != first


def _keys(weights, **options):
    return stage_keys(Pipeline(PipelineConfig(weights_dir=weights, **options)))


def test_stage_keys_follow_prompt_text_tag_lists_and_model_files(tiny_weights, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights, copy_function=shutil.copy2)
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "pre_refine.txt").write_text("Pick labels from {labels}.")
    (prompts / "post_refine.txt").write_text("Map the phrase onto {labels}.")
    base = _keys(weights, prompts_dir=prompts)
    assert _keys(tiny_weights, prompts_dir=prompts) == base  # the same models under another path
    renamed = tmp_path / "other-name"
    shutil.copytree(prompts, renamed)
    assert _keys(weights, prompts_dir=renamed) == base  # the prompts folder's name does not matter
    (prompts / "pre_refine.txt").write_text("Choose the labels of {labels} you see.")
    edited = _keys(weights, prompts_dir=prompts)
    assert edited["tag"] == base["tag"] and edited["labels"] != base["labels"]  # an edited prompt is redone
    tags = weights / "ram_plus" / "ram_tag_list_threshold.txt"
    tags.write_text(tags.read_text().replace("0.9", "0.8"))
    retagged = _keys(weights, prompts_dir=prompts)
    assert retagged["tag"] != edited["tag"] and retagged["caption"] == edited["caption"]
    sam_config = weights / "sam" / "config.json"
    sam_config.write_text(sam_config.read_text() + " ")
    resam = _keys(weights, prompts_dir=prompts)
    assert resam["detect"] == retagged["detect"] and resam["segment"] != retagged["segment"]
