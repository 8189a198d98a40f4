"""Batch runs: stage-major chunks, a SQLite store that survives kill -9, resume, failures recorded."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from offline_seg.errors import InvalidInputError
from offline_seg.pipeline import Pipeline
from offline_seg.config import PipelineConfig
from offline_seg.engines.runner import BatchRunner
from offline_seg.io.inputs import find_images
from offline_seg.io.store import STORE_NAME, ResultStore


def _images(directory, count, size=(64, 48)):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / f"img_{i:02d}.png")
    return directory


def test_find_images_understands_dataset_layouts(tmp_path):
    _images(tmp_path / "voc" / "JPEGImages", 2)
    (tmp_path / "voc" / "SegmentationClass").mkdir()
    Image.new("P", (4, 4)).save(tmp_path / "voc" / "SegmentationClass" / "img_00.png")
    root, images = find_images(tmp_path / "voc")
    assert root == tmp_path / "voc" / "JPEGImages" and [p.name for p in images] == ["img_00.png", "img_01.png"]
    (tmp_path / "val.txt").write_text("img_01\n")
    assert [p.name for p in find_images(tmp_path / "voc", names=tmp_path / "val.txt")[1]] == ["img_01.png"]
    (tmp_path / "val.txt").write_text("img_01\nimg_07\n")
    with pytest.raises(InvalidInputError, match="img_07"):
        find_images(tmp_path / "voc", names=tmp_path / "val.txt")
    _images(tmp_path / "city" / "leftImg8bit" / "val" / "aachen", 1)
    root, images = find_images(tmp_path / "city")
    assert [str(p.relative_to(root)) for p in images] == ["val/aachen/img_00.png"]


def test_changing_points_reruns_only_segmentation(tiny_weights, tmp_path):
    images = sorted(_images(tmp_path / "in", 3).iterdir())
    out = tmp_path / "out"
    first = BatchRunner(Pipeline(PipelineConfig(weights_dir=tiny_weights, num_points=2)), out, chunk_size=2,
                        progress=False).run(images, root=tmp_path / "in")
    assert first.done == 3 and not first.failed
    assert all(first.computed[stage] == 3 for stage in ("tag", "caption", "labels", "detect", "segment", "write"))
    again = BatchRunner(Pipeline(PipelineConfig(weights_dir=tiny_weights, num_points=2)), out, progress=False).run(
        images, root=tmp_path / "in")
    assert sum(again.computed.values()) == 0 and again.reused["write"] == 3
    changed = BatchRunner(Pipeline(PipelineConfig(weights_dir=tiny_weights, num_points=4, point_strategy="paper")),
                          out, progress=False).run(images, root=tmp_path / "in")
    assert changed.reused["detect"] == 3 and changed.reused["post_refine"] == 3
    assert changed.computed["segment"] == 3 and changed.computed["write"] == 3 and changed.computed["tag"] == 0
    record = json.loads((out / "img_00.json").read_text())
    assert all(len(instance["points"]) == 4 for instance in record["instances"])
    strategy = BatchRunner(Pipeline(PipelineConfig(weights_dir=tiny_weights, num_points=4, point_strategy="spread")),
                           out, progress=False).run(images, root=tmp_path / "in")
    assert strategy.computed["segment"] == 3 and strategy.reused["post_refine"] == 3  # the strategy is in the key
    assert json.loads((out / "img_00.json").read_text())["settings"]["point_strategy"] == "spread"


def test_bad_images_are_recorded_and_the_run_goes_on(tiny_weights, tmp_path):
    source = _images(tmp_path / "in", 2)
    (source / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    _, images = find_images(source)
    summary = BatchRunner(Pipeline(PipelineConfig(weights_dir=tiny_weights, labels=("dog",))), out,
                          progress=False).run(images, root=source)
    assert summary.done == 2 and list(summary.failed) == ["broken"]
    assert "cannot read image" in summary.failed["broken"]
    with ResultStore.in_dir(out) as store:
        assert [(r.name, r.status) for r in store.images()] == [("broken", "failed"), ("img_00", "done"),
                                                                ("img_01", "done")]
    assert sorted(p.name for p in out.glob("*.json")) == ["img_00.json", "img_01.json"]


def test_deleted_outputs_are_rewritten_from_the_store(tiny_weights, tmp_path):
    images = sorted(_images(tmp_path / "in", 1).iterdir())
    out = tmp_path / "out"
    config = PipelineConfig(weights_dir=tiny_weights, labels=("dog", "cat"))
    BatchRunner(Pipeline(config), out, progress=False).run(images, root=tmp_path / "in")
    before = json.loads((out / "img_00.json").read_text())
    (out / "img_00.json").unlink()
    summary = BatchRunner(Pipeline(config), out, progress=False).run(images, root=tmp_path / "in")
    assert summary.computed["write"] == 1 and summary.computed["segment"] == 0
    assert json.loads((out / "img_00.json").read_text())["instances"] == before["instances"]


def _done(store_path):
    if not store_path.exists():
        return 0
    try:
        with sqlite3.connect(store_path, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM images WHERE status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:  # the tables may not exist yet
        return 0


def test_kill_9_mid_run_then_resume_loses_and_repeats_nothing(tiny_weights, tmp_path):
    count = 8
    source = _images(tmp_path / "in", count, size=(160, 120))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "offline_seg.cli", "run", str(source), "--weights", str(tiny_weights),
               "--out", str(out), "--chunk-size", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store_path = out / STORE_NAME
    deadline = time.monotonic() + 300
    while _done(store_path) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed: " + process.stderr.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    with sqlite3.connect(store_path) as db:
        finished_before = dict(((h, s, k), c) for h, s, k, c in db.execute(
            "SELECT image_hash, stage, stage_key, created FROM results"))
        done_before = db.execute("SELECT COUNT(*) FROM images WHERE status = 'done'").fetchone()[0]
    assert 2 <= done_before < count

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    with sqlite3.connect(store_path) as db:
        statuses = db.execute("SELECT name, status FROM images ORDER BY name").fetchall()
        after = dict(((h, s, k), c) for h, s, k, c in db.execute(
            "SELECT image_hash, stage, stage_key, created FROM results"))
    assert statuses == [(f"img_{i:02d}", "done") for i in range(count)]  # every image exactly once
    assert sorted(p.name for p in out.glob("*.json")) == [f"img_{i:02d}.json" for i in range(count)]
    # results finished before the kill were reused, not recomputed (their creation time is unchanged)
    assert all(after[key] == created for key, created in finished_before.items())
    assert f"{count} of {count} images done" in rerun.stdout


@pytest.mark.parametrize("row", ["no-points", "all-off"])
def test_ablation_rows_apply_the_paper_switches(row):
    from offline_seg.evaluation.ablations import ablation_config

    config = ablation_config(PipelineConfig(), row)
    assert config.num_points == 0
    assert config.use_caption is (row != "all-off") and config.pre_refine is (row != "all-off")


def test_models_the_plan_swaps_are_reloaded_per_chunk(tiny_weights, tmp_path, monkeypatch):
    import offline_seg.pipeline as pipeline_module

    loads = []
    real = pipeline_module.load_segmenter
    monkeypatch.setattr(pipeline_module, "load_segmenter", lambda *a, **k: loads.append(1) or real(*a, **k))
    images = sorted(_images(tmp_path / "in", 3).iterdir())
    config = PipelineConfig(weights_dir=tiny_weights, labels=("dog", "cat"))
    BatchRunner(Pipeline(config), tmp_path / "kept", chunk_size=1, progress=False).run(images)
    assert len(loads) == 1  # resident: loaded once per run
    loads.clear()
    BatchRunner(Pipeline(config), tmp_path / "swapped", chunk_size=1, progress=False, swapped=["segmenter"]).run(images)
    assert len(loads) == 3  # swapped: loaded for each chunk, released after its stage
