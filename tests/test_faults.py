"""Fault matrix: kill -9 at every stage boundary, identical files, failures that stay per image, a full
disk, a second run on the same folder, and an LLM server that goes down, hangs or talks garbage."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from offline_seg.engines.runner import BatchRunner
from offline_seg.io.inputs import find_images
from offline_seg.io.store import STORE_NAME, OutputLock, OutputLockedError, ResultStore
from offline_seg.pipeline import Pipeline
from offline_seg.config import PipelineConfig


def _pictures(directory, names, size=(40, 30), seed=0):
    """One random picture per distinct key in `names` (name -> key); files with one key are identical."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = {}
    for name, key in names.items():
        if key not in pixels:
            pixels[key] = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels[key]).save(directory / name)
    return directory


def _cli(args, env_extra=None, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "offline_seg.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600, **kwargs)


def _class_maps(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.png") if not p.stem.endswith("_overlay"))


def test_forty_files_eight_copies_each_killed_and_resumed_get_forty_outputs(tiny_weights, tmp_path):
    names = {f"copy{c}_pic{p}.png": p for c in range(8) for p in range(5)}
    source = _pictures(tmp_path / "in", names)
    out = tmp_path / "out"
    args = ["run", source, "--weights", tiny_weights, "--out", out, "--chunk-size", "4", "--no-caption"]
    killed = _cli(args, {"OFFLINE_SEG_FAULT": "after:write:6"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert 6 <= len(_class_maps(out)) < 40  # killed after the 6th recorded write
    rerun = _cli(args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "40 of 40 images done" in rerun.stdout
    assert _class_maps(out) == sorted(f"{n[:-4]}.png" for n in names)
    with ResultStore.in_dir(out) as store:
        assert [r.status for r in store.images()] == ["done"] * 40
        assert store.count("detect") == 5 and store.count("segment") == 5 and store.count("write") == 40


def test_three_files_two_identical_chunk_size_one(tiny_weights, tmp_path):
    source = _pictures(tmp_path / "in", {"a.png": 0, "b.png": 0, "c.png": 1})
    out = tmp_path / "out"
    _, images = find_images(source)
    config = PipelineConfig(weights_dir=tiny_weights, labels=("dog", "cat"), num_points=1)
    summary = BatchRunner(Pipeline(config), out, chunk_size=1, progress=False).run(images, root=source)
    assert summary.images == 3 and summary.done == 3 and not summary.failed
    assert summary.computed["segment"] == 2 and summary.reused["segment"] == 1  # shared computation
    assert summary.computed["write"] == 3  # never shared writing
    assert _class_maps(out) == ["a.png", "b.png", "c.png"]
    assert json.loads((out / "a.json").read_text())["instances"] == json.loads((out / "b.json").read_text())["instances"]
    (out / "b.png").unlink()
    again = BatchRunner(Pipeline(config), out, chunk_size=1, progress=False).run(images, root=source)
    assert again.computed["write"] == 1 and again.computed["segment"] == 0 and again.done == 3
    assert (out / "b.png").is_file()


def _results(out):
    with sqlite3.connect(out / STORE_NAME) as db:
        return {(h, s, k): c for h, s, k, c in db.execute("SELECT image_hash, stage, stage_key, created FROM results")}


def test_kill_9_at_each_stage_boundary_loses_and_repeats_nothing(tiny_weights, tmp_path):
    """One folder, killed in turn right after the first result each stage stores in that run; every
    re-run keeps all earlier results (same creation time) and the last one finishes what is missing."""
    source = _pictures(tmp_path / "in", {f"img{i}.png": i for i in range(4)}, size=(32, 24))
    out = tmp_path / "out"
    args = ["run", source, "--weights", tiny_weights, "--out", out, "--chunk-size", "2", "--no-caption",
            "--points", "1", "--no-phrase-cache"]
    before: dict = {}
    for stage in ("tag", "labels", "detect", "post_refine", "segment"):  # after `write`: the 40-file test
        killed = _cli(args, {"OFFLINE_SEG_FAULT": f"after:{stage}:1"})
        assert killed.returncode == -9, (stage, killed.stderr[-2000:])
        after = _results(out)
        assert all(after[key] == created for key, created in before.items()), stage  # nothing lost or redone
        assert len(after) > len(before), stage
        before = after
    rerun = _cli(args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "4 of 4 images done" in rerun.stdout
    table = {row[0]: (int(row[1]), int(row[2])) for row in (line.split() for line in rerun.stdout.splitlines())
             if len(row) == 4 and row[0] in ("tag", "labels", "detect", "post_refine", "segment", "write")}
    with ResultStore.in_dir(out) as store:
        for stage in ("tag", "labels", "detect", "post_refine", "segment"):
            assert store.count(stage) == 4
            kept = sum(1 for (_, s, _) in before if s == stage)
            assert table.get(stage, (0, 0)) == (4 - kept, kept), stage  # computed only what was missing
        assert [r.status for r in store.images()] == ["done"] * 4
    assert all(_results(out)[key] == created for key, created in before.items())
    assert len(_class_maps(out)) == 4


def test_one_image_raising_anything_fails_alone_and_is_skipped_on_resume(tiny_weights, tmp_path, monkeypatch):
    source = _pictures(tmp_path / "in", {f"img{i}.png": i for i in range(3)})
    _, images = find_images(source)
    out = tmp_path / "out"
    config = PipelineConfig(weights_dir=tiny_weights, labels=("dog",), num_points=1)
    pipeline = Pipeline(config)
    real = pipeline.detector.detect
    bad = Image.open(images[1]).convert("RGB").tobytes()

    def flaky(image, labels):
        if image.tobytes() == bad:
            raise RuntimeError("The size of tensor a (452) must match the size of tensor b (256)")
        return real(image, labels)

    monkeypatch.setattr(pipeline.detector, "detect", flaky)
    summary = BatchRunner(pipeline, out, chunk_size=3, progress=False).run(images, root=source)
    assert summary.done == 2 and list(summary.failed) == ["img1"]
    assert "RuntimeError: The size of tensor a" in summary.failed["img1"]
    assert _class_maps(out) == ["img0.png", "img2.png"]
    resumed = BatchRunner(pipeline, out, progress=False).run(images, root=source)
    assert resumed.skipped == 1 and "--retry-failed" in resumed.failed["img1"] and resumed.computed["detect"] == 0
    monkeypatch.setattr(pipeline.detector, "detect", real)
    retried = BatchRunner(pipeline, out, progress=False, retry_failed=True).run(images, root=source)
    assert retried.done == 3 and not retried.failed and retried.computed["detect"] == 1


def test_cuda_out_of_memory_empties_the_cache_and_retries_once(tiny_weights, tmp_path, monkeypatch):
    import torch

    source = _pictures(tmp_path / "in", {"a.png": 0, "b.png": 1})
    _, images = find_images(source)
    pipeline = Pipeline(PipelineConfig(weights_dir=tiny_weights, labels=("dog",), num_points=1))
    real = pipeline.detector.detect
    calls = []
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the run's device check sees a card
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def once_oom(image, labels):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(image, labels)

    monkeypatch.setattr(pipeline.detector, "detect", once_oom)
    # the models are loaded on the CPU first; the retry is for a CUDA device's allocator, so the run says it is one
    pipeline.segmenter, pipeline.embedder  # noqa: B018 - loaded here, on the CPU
    monkeypatch.setattr(pipeline.config, "device", "cuda")
    summary = BatchRunner(pipeline, tmp_path / "out", progress=False).run(images, root=source)
    assert summary.done == 2 and not summary.failed and emptied == [1] and len(calls) == 3


def test_out_of_memory_is_retried_on_cuda_devices_only():
    import torch

    from offline_seg.steps import with_oom_retry

    attempts = []

    def compute():
        attempts.append(1)
        if len(attempts) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return "ok"

    assert with_oom_retry(compute, "cuda:1") == "ok" and len(attempts) == 2
    attempts.clear()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        with_oom_retry(compute, "cpu")
    assert len(attempts) == 1


def test_a_batch_that_raises_is_split_so_one_bad_image_does_not_fail_the_chunk(tiny_weights, tmp_path):
    source = _pictures(tmp_path / "in", {f"img{i}.png": i for i in range(3)})
    _, images = find_images(source)

    class PickyTagger:
        def tag(self, image):
            if image.getpixel((0, 0)) == Image.open(images[2]).convert("RGB").getpixel((0, 0)):
                raise ValueError("cannot tag this one")
            return ("dog",)

        def tag_batch(self, batch):
            return [self.tag(image) for image in batch]

    config = PipelineConfig(weights_dir=tiny_weights, use_caption=False, pre_refine=False, num_points=1)
    summary = BatchRunner(Pipeline(config, tagger=PickyTagger()), tmp_path / "out", progress=False).run(
        images, root=source)
    assert summary.computed["tag"] == 2 and list(summary.failed) == ["img2"]
    assert "ValueError: cannot tag this one" in summary.failed["img2"] and summary.done == 2
    assert summary.computed["detect"] == 2


def test_disk_full_during_write_is_a_clear_failure_and_the_store_stays_consistent(tiny_weights, tmp_path,
                                                                                  monkeypatch):
    import offline_seg.engines.runner as runner_module

    source = _pictures(tmp_path / "in", {"a.png": 0, "b.png": 1})
    _, images = find_images(source)
    out = tmp_path / "out"
    config = PipelineConfig(weights_dir=tiny_weights, labels=("dog",), num_points=1)
    real = runner_module.save_result

    def full_disk(result, image, directory, name, **kwargs):
        if name == "b":
            raise OSError(28, "No space left on device")
        return real(result, image, directory, name, **kwargs)

    monkeypatch.setattr(runner_module, "save_result", full_disk)
    summary = BatchRunner(Pipeline(config), out, progress=False).run(images, root=source)
    assert summary.done == 1 and "No space left on device" in summary.failed["b"]
    with ResultStore.in_dir(out) as store:
        assert {r.name: r.status for r in store.images()} == {"a": "done", "b": "failed"}
        assert store.count("segment") == 2 and store.count("write") == 1  # b's segmentation is kept
    monkeypatch.setattr(runner_module, "save_result", real)
    retried = BatchRunner(Pipeline(config), out, progress=False, retry_failed=True).run(images, root=source)
    assert retried.done == 2 and retried.computed["write"] == 1 and retried.computed["segment"] == 0


def test_a_second_run_on_the_same_folder_stops_at_once(tiny_weights, tmp_path):
    source = _pictures(tmp_path / "in", {"a.png": 0})
    out = tmp_path / "out"
    with OutputLock(out):
        with pytest.raises(OutputLockedError, match="another run"):
            OutputLock(out).__enter__()
        from click.testing import CliRunner

        from offline_seg.cli import main

        # flock locks belong to an open file: a second open in this same process conflicts like another run
        result = CliRunner().invoke(main, ["run", str(source), "--weights", str(tiny_weights), "--out", str(out),
                                           "--labels", "dog"])
    assert result.exit_code == 2 and "another run" in result.output and f"pid {os.getpid()}" in result.output
    assert not (out / "a.png").exists()


class _FlakyLLMServer:
    """A loopback OpenAI-compatible server that answers `dog` to `healthy` chat requests, then goes
    down (stops listening), hangs (answers after the client's timeout) or answers garbage."""

    def __init__(self, mode: str, healthy: int):
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.posts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, payload: bytes):
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up on a hanging answer
                    pass

            def do_GET(self):
                self._send(json.dumps({"data": [{"id": "flaky", "owned_by": "test"}]}).encode())

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts += 1
                broken = outer.posts > healthy
                if broken and mode == "hang":
                    time.sleep(3)
                if broken and mode == "garbage":
                    return self._send(b"\x00\xffnot json")
                if outer.posts == healthy and mode == "down":
                    outer.close()  # before answering: the client's next connect is refused, never half-accepted
                self._send(json.dumps({"choices": [{"message": {"content": "dog"}, "finish_reason": "stop"}]}).encode())

        class Server(ThreadingHTTPServer):
            daemon_threads = True  # a hanging answer must not hold up closing the server
            block_on_close = False

            def handle_error(self, request, client_address):  # no tracebacks into the CLI's captured stderr
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        # a short poll: closing (mode "down") takes ~10 ms, far inside the client's 0.5 s timeout
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        self._closed = False

    def close(self):
        if not self._closed:
            self._closed = True
            self.server.shutdown()
            self.server.server_close()


@pytest.mark.parametrize("mode, message", [
    ("down", "no LLM server at"),
    ("hang", "failed after 1 tries"),
    ("garbage", "not JSON"),
])
def test_llm_server_failing_mid_run_is_a_clear_error_and_finished_images_are_kept(tiny_weights, tmp_path, mode,
                                                                                 message):
    from click.testing import CliRunner

    from offline_seg.cli import main

    source = _pictures(tmp_path / "in", {f"img{i}.png": i for i in range(3)})
    out = tmp_path / "out"
    server = _FlakyLLMServer(mode, healthy=2)
    spec = f"openai:{server.url}?timeout=0.5&retries=0&constraint=none"
    args = ["run", str(source), "--weights", str(tiny_weights), "--out", str(out), "--chunk-size", "1",
            "--no-caption", "--points", "1", "--no-phrase-cache", "--refiner", "llm"]
    try:
        result = CliRunner().invoke(main, [*args, "--llm", spec])
    finally:
        server.close()
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    with ResultStore.in_dir(out) as store:
        done = [r.name for r in store.images("done")]
    assert done and len(done) < 3
    assert _class_maps(out) == [f"{name}.png" for name in done]  # finished images kept, nothing half-written
    if mode != "down":
        return  # the resume after an LLM failure is the same for every mode: checked once
    healthy = _FlakyLLMServer("ok", healthy=10**6)
    try:
        rerun = CliRunner().invoke(main, [*args, "--llm", f"openai:{healthy.url}?constraint=none"])
    finally:
        healthy.close()
    assert rerun.exit_code == 0, rerun.output
    assert "3 of 3 images done" in rerun.output and len(_class_maps(out)) == 3


def test_ablation_table_is_scored_like_eval_with_its_options(tiny_weights, tmp_path):
    """Two of three ground-truth images were run: with --skip-missing the table leaves the third out, as
    `eval --skip-missing` does, and prints the same mIoU."""
    from click.testing import CliRunner

    from offline_seg.cli import main

    source = _pictures(tmp_path / "in", {"a_leftImg8bit.png": 0, "b_leftImg8bit.png": 1})
    gt = tmp_path / "gt"
    gt.mkdir()
    for name in ("a", "b", "never_run"):
        Image.fromarray(np.full((30, 40), 12, np.uint8), mode="L").save(gt / f"{name}_gtFine_labelIds.png")
    out = tmp_path / "out"
    options = ["--skip-missing", "--gt-suffix", "_gtFine_labelIds", "--pred-suffix", "_leftImg8bit"]
    result = CliRunner().invoke(main, ["run", str(source), "--weights", str(tiny_weights), "--out", str(out),
                                       "--ablation", "no-points", "--labels", "dog", "--gt", str(gt),
                                       *options])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("| no-points |"))
    table_miou = row.split("|")[3].split("(")[0].strip()
    assert "(1 missing, 0 failed)" in row
    evaluated = CliRunner().invoke(main, ["eval", "--pred", str(out / "no-points"), "--gt", str(gt), *options])
    assert f"mIoU {table_miou} %" in evaluated.output and "2 of 3 images scored" in evaluated.output
