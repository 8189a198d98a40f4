"""Trust: no command writes over what is not its own or outside its --out; "done" means the files on disk are
that input's result under these settings; every mistake is one line with the right exit code.

Runs go through the CLI with tiny random weights and `--boxes gt` (only the tiny SAM loads), so each case
costs seconds and needs no real asset.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from offline_seg.cli import main
from offline_seg.io.store import STORE_NAME
from offline_seg.io.inputs import output_names, safe_name
from offline_seg.io.outputs import UnsafeOutputError, output_path
from scenes import write_scene


def cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def _write_scene(folder: Path, gt: Path, name: str, seed: int) -> Path:
    """A cat rectangle (placed by `seed`) and a dog rectangle, VOC ids 8 and 12."""
    x = 2 + (7 * seed) % 18
    return write_scene(folder, gt, name, {8: (x, 5, x + 20, 25), 12: (30, 28, 60, 44)}, size=(64, 48), seed=seed)


@pytest.fixture()
def data(tmp_path) -> Path:
    for seed, name in enumerate(("a", "b")):
        _write_scene(tmp_path / "in", tmp_path / "gt", name, seed)
    return tmp_path


def gt_run(tiny_weights: Path, source: Path, out: Path, *extra: object, gt: Path | None = None):
    """`run` with ground-truth boxes (from `gt`, default: the `gt` folder beside `source`): only the (tiny)
    segmenter loads."""
    gt = gt or source.parent / "gt"
    return cli("run", source, "--preset", "voc", "--boxes", "gt", "--gt", gt, "--weights", tiny_weights,
               "--points", "0", "--out", out, *extra)


def _record(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())


def _store_rows(out: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(out / STORE_NAME) as db:
        return db.execute(sql).fetchall()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- writes stay where they belong ------------------------------------------------------------------
def test_output_names_are_safe_distinct_and_inside_out(tmp_path):
    raw = [Path("/x.png"), Path("p/x.png"), Path("a\nb.png"), Path(os.fsdecode(b"caf\xe9.png")),
           Path("x" * 300 + ".png"), Path("x_overlay.png"), Path("x.jpg")]
    names = output_names(raw)
    assert len(set(names)) == len(names)
    for name in names:
        assert safe_name(name) == name and not name.startswith("/") and ".." not in name.split("/")
        assert "\n" not in name and len(max(name.split("/"), key=len).encode()) <= 200
        name.encode("utf-8")  # printable: no surrogate escapes left
        assert output_path(tmp_path, name, "overlay").resolve().is_relative_to(tmp_path.resolve())
    assert "caf%E9" in names
    # the same long name gives the same short one (stable), and a mask never lands on another's overlay
    assert output_names([Path("x" * 300 + ".png")]) == [names[4]]
    masks = {n for n in names}
    assert not masks & {f"{n}_overlay" for n in names}
    for bad in ("/etc/passwd", "../x", "a/../../x", "a//b", "x\n"):
        with pytest.raises(UnsafeOutputError):
            output_path(tmp_path, bad)
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(UnsafeOutputError):
        output_path(tmp_path, "link/passwd")


def test_out_may_not_be_hold_or_lie_in_the_inputs(data, tiny_weights):
    before = _tree(data / "in")
    for out in (data / "in", data / "in" / "out", data):
        result = gt_run(tiny_weights, data / "in", out)
        assert result.exit_code == 2, result.output
        assert "error: --out" in result.output and "Traceback" not in result.output
    assert _tree(data / "in") == before
    result = cli("segment", data / "in" / "a.png", "--preset", "voc", "--boxes", "gt", "--gt", data / "gt",
                 "--weights", tiny_weights, "--out", data / "in")
    assert result.exit_code == 2 and "contains the input" in result.output
    for out, what in ((data / "gt", "ground-truth folder"), (tiny_weights / "sam", "weights folder")):
        result = gt_run(tiny_weights, data / "in", out)
        assert result.exit_code == 2 and what in result.output, result.output
    assert _tree(data / "in") == before


def test_segment_with_cwd_as_out_is_refused(data, tiny_weights, monkeypatch):
    monkeypatch.chdir(data / "in")
    result = cli("segment", "a.png", "--preset", "voc", "--boxes", "gt", "--gt", data / "gt", "--weights",
                 tiny_weights, "--out", ".")
    assert result.exit_code == 2 and "contains the input" in result.output
    assert Image.open(data / "in" / "a.png").mode == "RGB"  # still the photo, not a class map


def test_listing_skips_run_folders_and_refuses_a_run_folder_as_input(data, tiny_weights):
    assert gt_run(tiny_weights, data / "in", data / "runs" / "r1").exit_code == 0
    shutil.copytree(data / "runs" / "r1", data / "in" / "old-run")  # a run folder inside the inputs
    result = gt_run(tiny_weights, data / "in", data / "runs" / "r2")
    assert result.exit_code == 0 and "2 images under" in result.output, result.output
    result = gt_run(tiny_weights, data / "runs" / "r1", data / "runs" / "r3", gt=data / "gt")
    assert result.exit_code == 2 and "is a run's output folder" in result.output


def test_out_that_is_a_file_or_read_only_is_one_line(data, tiny_weights, tmp_path):
    (tmp_path / "file").write_text("x")
    result = gt_run(tiny_weights, data / "in", tmp_path / "file")
    assert result.exit_code == 2 and "is a file" in result.output
    readonly = tmp_path / "ro"
    readonly.mkdir()
    command = [sys.executable, "-m", "offline_seg.cli", "run", str(data / "in"), "--preset", "voc", "--boxes", "gt",
               "--gt", str(data / "gt"), "--weights", str(tiny_weights), "--out", str(readonly / "out")]
    if shutil.which("unshare") and os.geteuid() == 0:  # a real read-only file system in a mount namespace
        script = 'mount -t tmpfs -o ro none "$0" && exec "$@"'
        done = subprocess.run(["unshare", "-m", "sh", "-c", script, str(readonly), *command],
                              capture_output=True, text=True)
    else:
        readonly.chmod(0o555)
        done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "Read-only file system" in done.stderr or "Permission denied" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


# --- "done" means these files are this input's result under these settings --------------------------
def _mask(out: Path, name: str) -> bytes:
    """The class map's pixels (the file also names its output, so two files of one picture differ)."""
    return np.asarray(Image.open(out / f"{name}.png")).tobytes()


def test_changed_swapped_renamed_inputs_are_redone(data, tiny_weights):
    out = data / "out"
    assert gt_run(tiny_weights, data / "in", out).exit_code == 0
    first = {n: _mask(out, n) for n in "ab"}
    # swap the two pictures (and their ground truth): both redone, each file holds its own input's result
    for folder in (data / "in", data / "gt"):
        (folder / "a.png").rename(folder / "tmp.png")
        (folder / "b.png").rename(folder / "a.png")
        (folder / "tmp.png").rename(folder / "b.png")
    result = gt_run(tiny_weights, data / "in", out)
    assert result.exit_code == 0 and "2 of 2 images done" in result.output
    assert _mask(out, "a") == first["b"] and _mask(out, "b") == first["a"]
    for name in "ab":
        assert _record(out, name)["input_sha256"] == _store_rows(
            out, f"SELECT image_hash FROM images WHERE name = '{name}'")[0][0]
    # a rename: the old name stops being done and is not exported
    (data / "in" / "b.png").rename(data / "in" / "c.png")
    (data / "gt" / "b.png").rename(data / "gt" / "c.png")
    assert gt_run(tiny_weights, data / "in", out).exit_code == 0
    statuses = dict(_store_rows(out, "SELECT name, status FROM images"))
    assert statuses == {"a": "done", "b": "gone", "c": "done"}
    result = cli("export", out, "--format", "coco", "--out", data / "coco.json")
    assert result.exit_code == 0 and "not exported: b: its input" in result.output
    assert [i["file_name"] for i in json.loads((data / "coco.json").read_text())["images"]] == ["a.png", "c.png"]


def test_settings_a_b_a_rewrite_and_damaged_outputs_are_rewritten(data, tiny_weights):
    out = data / "out"
    assert gt_run(tiny_weights, data / "in", out).exit_code == 0
    a_box_only = _mask(out, "a")
    assert gt_run(tiny_weights, data / "in", out, "--gt-box-expand", "0.3").exit_code == 0
    assert _record(out, "a")["settings"]["gt_box_expand"] == 0.3
    result = gt_run(tiny_weights, data / "in", out)
    assert result.exit_code == 0
    assert _record(out, "a")["settings"]["gt_box_expand"] == 0.0 and _mask(out, "a") == a_box_only
    assert "write                2" in result.output  # A's files are written again, not B's reused
    # a truncated overlay, a garbage record, a deleted mask: each rewritten by a plain re-run
    overlay = out / "a_overlay.png"
    overlay.write_bytes(overlay.read_bytes()[:100])
    (out / "b.json").write_text("garbage")
    (out / "b.png").unlink()
    result = gt_run(tiny_weights, data / "in", out)
    assert result.exit_code == 0 and "write                2" in result.output
    assert Image.open(overlay).size[1] == 48 and _record(out, "b")["image"] == "b" and (out / "b.png").is_file()
    result = gt_run(tiny_weights, data / "in", out)
    assert "write                0       2" in result.output  # now all holds: nothing written


def test_a_copied_output_folder_is_checked_where_it_is(data, tiny_weights):
    out = data / "out"
    assert gt_run(tiny_weights, data / "in", out).exit_code == 0
    copy = data / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(out)  # the paths recorded are relative to the folder, not to the first one
    (copy / "a.png").unlink()
    result = gt_run(tiny_weights, data / "in", copy)
    assert result.exit_code == 0 and "write                1       1" in result.output
    assert (copy / "a.png").is_file() and not out.exists()


def test_never_writes_over_a_file_it_did_not_write(data, tiny_weights):
    out = data / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"my own file")
    result = gt_run(tiny_weights, data / "in", out)
    assert result.exit_code == 1
    assert "a.png exists and was not written by offline_seg" in result.output
    assert (out / "a.png").read_bytes() == b"my own file" and (out / "b.png").is_file()


# --- keys hold what changes a result -----------------------------------------------------------------
def test_ground_truth_content_and_class_ids_are_in_the_keys(data, tiny_weights):
    out = data / "out"
    assert gt_run(tiny_weights, data / "in", out).exit_code == 0
    Image.fromarray(np.zeros((48, 64), np.uint8), mode="L").save(data / "gt" / "a.png")  # blank a's truth
    result = gt_run(tiny_weights, data / "in", out)
    assert "detect               1       1" in result.output, result.output
    assert _record(out, "a")["instances"] == []
    classes = data / "classes.txt"
    classes.write_text("0: background\n8: cat\n12: dog\n")
    first = cli("run", data / "in", "--classes", classes, "--boxes", "gt", "--gt", data / "gt", "--weights",
                tiny_weights, "--points", "0", "--out", data / "ids")
    assert first.exit_code == 0, first.output
    classes.write_text("0: background\n8: dog\n12: cat\n")  # same names, other ids: another list
    result = cli("run", data / "in", "--classes", classes, "--boxes", "gt", "--gt", data / "gt", "--weights",
                 tiny_weights, "--points", "0", "--out", data / "ids")
    assert result.exit_code == 2 and "another class list" in result.output


def test_every_setting_a_step_reads_is_in_its_key(tiny_weights, tmp_path):
    """Run each step with a configuration that records the fields it reads: each must be declared (or be a
    model field, held as the model's identity) for that step or a step it follows."""
    from offline_seg.engines.keys import MODEL_FIELDS, NEUTRAL_FIELDS, READS, StepKeys
    from offline_seg.engines.runner import BatchRunner, RunItem
    from offline_seg.pipeline import Pipeline
    from offline_seg.config import PipelineConfig

    class Recording:
        def __init__(self, config):
            object.__setattr__(self, "_config", config)
            object.__setattr__(self, "read", set())

        def __getattr__(self, name):
            self.read.add(name)
            return getattr(self._config, name)

    _write_scene(tmp_path, tmp_path / "gt", "x", 3)
    # read through methods that read declared fields only: the record's settings (informational), the
    # refiner mode (field `refiner`), the detector's description (model fields), SAM 3's thresholds
    DERIVED = {"summary", "refiner_mode", "detector_spec", "sam3_thresholds"}
    variants = [
        dict(refiner="hybrid"), dict(refiner="embed", no_caption=True), dict(labels=("cat", "dog")),
        dict(oracle_boxes=True, ground_truth_dir=tmp_path / "gt", gt_box_jitter=0.1),
        dict(oracle_labels=True, ground_truth_dir=tmp_path / "gt", num_points=2, point_strategy="spread"),
        dict(pre_refine=False, post_refine=False), dict(detector="sam3", labels=("cat",)),
    ]
    for number, options in enumerate(variants):
        options = dict(options)
        options["use_caption"] = not options.pop("no_caption", False)
        config = PipelineConfig(weights_dir=tiny_weights, **options)
        pipeline = Pipeline(config)
        runner = BatchRunner(pipeline, tmp_path / f"out{number}", progress=False)
        keys = StepKeys(pipeline)
        declared: set[str] = set()
        item = RunItem(tmp_path / "x.png", "x", "hash")
        for step in pipeline.chain.steps:
            declared |= set(READS[step].fields)
            recording = Recording(config)
            pipeline.config = recording
            try:
                [value], _ = runner.compute(step, [item])
            finally:
                pipeline.config = config
            assert not hasattr(value, "reason"), (options, step, value)
            item.values[step] = value
            undeclared = recording.read - declared - MODEL_FIELDS - NEUTRAL_FIELDS - DERIVED
            assert not undeclared, f"{step} reads {sorted(undeclared)} but its key does not hold them ({options})"
        assert set(keys.as_dict()) == set(pipeline.chain.steps)


def test_resolved_dtype_is_in_the_keys(tiny_weights):
    from offline_seg.engines.keys import stage_keys
    from offline_seg.pipeline import Pipeline
    from offline_seg.config import PipelineConfig

    cpu = stage_keys(Pipeline(PipelineConfig(weights_dir=tiny_weights, device="cpu", refiner="embed")))
    cuda = stage_keys(Pipeline(PipelineConfig(weights_dir=tiny_weights, device="cuda", refiner="embed")))
    assert cpu["tag"] != cuda["tag"] and cpu["segment"] != cuda["segment"]  # fp32 here, fp16 there
    fp16 = stage_keys(Pipeline(PipelineConfig(weights_dir=tiny_weights, device="cuda", refiner="llm",
                                              llm=f"{tiny_weights / 'llm'}?dtype=fp16")))
    bf16 = stage_keys(Pipeline(PipelineConfig(weights_dir=tiny_weights, device="cuda", refiner="llm",
                                              llm=f"{tiny_weights / 'llm'}?dtype=bf16")))
    assert fp16["labels"] != bf16["labels"] and fp16["tag"] == bf16["tag"]


# --- one class list per output folder ----------------------------------------------------------------
def test_one_class_list_per_out_and_eval_refuses_another(data, tiny_weights):
    out = data / "out"
    assert gt_run(tiny_weights, data / "in", out).exit_code == 0
    result = cli("run", data / "in", "--preset", "dram", "--boxes", "gt", "--gt", data / "gt", "--weights",
                 tiny_weights, "--points", "0", "--out", out)
    assert result.exit_code == 2 and "another class list" in result.output
    result = cli("eval", "--pred", out, "--gt", data / "gt", "--preset", "cityscapes")
    assert result.exit_code == 2 and "another class list" in result.output


# --- one line and the right exit code, never a traceback -------------------------------------------------
def test_mistakes_are_found_before_any_model_loads(data, tmp_path, tiny_weights):
    nowhere = tmp_path / "no-weights"  # nothing would load: each mistake must be found first
    for args, words in (
        (["--labels", "unicorn"], "'unicorn' is not in the class list"),
        (["--classes", "cat, dog"], "the first class of a list is the background"),
        (["--classes", "background, " + ", ".join(f"thing{i}" for i in range(1000))], "do not fit the class-map PNG"),
    ):
        result = cli("run", data / "in", "--weights", nowhere, "--out", tmp_path / "out", *args)
        assert result.exit_code == 2 and words in result.output, (args, result.output)
        assert "missing weights" not in result.output and "Traceback" not in result.output
    (tmp_path / "latin1.txt").write_bytes("background\ncaf\xe9\n".encode("latin-1"))
    for args, words in (
        (["--classes", "cat, background, dog"], 'move \'background\' to the front, e.g. --classes "background, cat, dog"'),
        (["--classes", tmp_path / "latin1.txt"], "latin1.txt is not UTF-8 text"),
        (["--labels", " , "], "names no label"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--device", "cuda", "--gpu-mem", "0"], "a memory size must be more than 0"),
    ):
        result = cli("run", data / "in", "--weights", nowhere, "--out", tmp_path / "out", *args)
        assert result.exit_code == 2 and words in result.output, (args, result.output)
        assert "missing weights" not in result.output and "Traceback" not in result.output
    import torch

    if not torch.cuda.is_available():  # a CPU build of torch: the device is named, not a weights file blamed
        result = cli("run", data / "in", "--weights", tiny_weights, "--out", tmp_path / "out", "--device", "cuda")
        assert result.exit_code == 2 and "--device cuda: this torch" in result.output, result.output
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.png"))
    long_inline = "background, " + ", ".join(f"a-rather-long-class-name-{i}" for i in range(20))
    result = cli("run", data / "in", "--weights", nowhere, "--out", tmp_path / "out", "--classes", long_inline)
    assert result.exit_code == 2 and "missing weights" in result.output  # the list itself was fine


def test_damaged_store_and_non_utf8_names(data, tiny_weights):
    out = data / "out"
    assert gt_run(tiny_weights, data / "in", out).exit_code == 0
    store = out / STORE_NAME
    for damage in (lambda: store.write_bytes(store.read_bytes()[:200]), lambda: store.write_text("garbage")):
        for extra in (out / f"{STORE_NAME}-wal", out / f"{STORE_NAME}-shm"):
            extra.unlink(missing_ok=True)
        damage()
        result = gt_run(tiny_weights, data / "in", out)
        assert result.exit_code == 2 and "is damaged" in result.output and "move it away" in result.output
        assert "Traceback" not in result.output and (out / "a.png").is_file()
    odd = os.fsencode(data / "in") + b"/caf\xe9.png"
    shutil.copyfile(data / "in" / "a.png", odd)
    shutil.copyfile(data / "gt" / "a.png", os.fsencode(data / "gt") + b"/caf\xe9.png")
    result = gt_run(tiny_weights, data / "in", data / "out2")
    assert result.exit_code == 0, result.output
    assert (data / "out2" / "caf%E9.png").is_file()


def test_sigterm_stops_with_143_keeps_results_and_resumes(tmp_path, tiny_weights):
    for seed in range(12):
        _write_scene(tmp_path / "in", tmp_path / "gt", f"im{seed:02d}", seed)
    command = [sys.executable, "-m", "offline_seg.cli", "run", str(tmp_path / "in"), "--preset", "voc", "--boxes",
               "gt", "--gt", str(tmp_path / "gt"), "--weights", str(tiny_weights), "--points", "0", "--chunk-size",
               "1", "--out", str(tmp_path / "out")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "out" / "im01.json").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "stopped (SIGTERM)" in stderr and "Traceback" not in stderr
    again = subprocess.run(command, capture_output=True, text=True)  # the lock was released
    assert again.returncode == 0 and "12 of 12 images done" in again.stdout, again.stderr


def test_a_damaged_model_stops_once_naming_the_file_and_marks_no_image(data, tiny_weights):
    weights = data / "weights"
    shutil.copytree(tiny_weights, weights)
    model = weights / "sam" / "model.safetensors"
    good = model.read_bytes()
    model.write_bytes(good[: len(good) // 2])
    result = gt_run(weights, data / "in", data / "out")
    assert result.exit_code == 2 and str(model) in result.output and "weights verify" in result.output
    assert "Traceback" not in result.output
    assert {status for (status,) in _store_rows(data / "out", "SELECT status FROM images")} == {"pending"}
    model.write_bytes(good)
    result = gt_run(weights, data / "in", data / "out")  # fixed: done without --retry-failed
    assert result.exit_code == 0 and "2 of 2 images done" in result.output
    config = weights / "sam" / "config.json"
    config.write_text("{ not json")
    result = gt_run(weights, data / "in", data / "out3")
    assert result.exit_code == 2 and str(config) in result.output


def test_junk_onnx_decoder_stops_the_run_naming_it(data, tmp_path):
    onnx_dir = tmp_path / "sam_onnx"
    onnx_dir.mkdir()
    (onnx_dir / "encoder.onnx").write_bytes(b"\x08\x07junk")
    (onnx_dir / "decoder.onnx").write_bytes(b"junk")
    result = cli("run", data / "in", "--preset", "voc", "--boxes", "gt", "--gt", data / "gt", "--segmenter",
                 f"onnx:{onnx_dir}", "--weights", tmp_path / "w", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "encoder.onnx" in result.output and "AttributeError" not in result.output


# --- weights ------------------------------------------------------------------------------------------
def test_make_tiny_refuses_a_non_empty_folder_and_verify_a_bad_lock(tmp_path):
    weights = tmp_path / "weights"
    (weights / "sam").mkdir(parents=True)
    (weights / "sam" / "model.safetensors").write_bytes(b"real weights")
    result = cli("weights", "make-tiny", weights)
    assert result.exit_code == 2 and "not an empty folder" in result.output
    assert (weights / "sam" / "model.safetensors").read_bytes() == b"real weights"
    lock = weights / "weights.lock.json"
    for text, words in (("{garbage", "is damaged"), ('{"sam/x": {}}', "has no sha256"),
                        ('{"../../../etc/passwd": {"sha256": "0", "size": 1}}', "not a file of this weights dir")):
        lock.write_text(text)
        result = cli("weights", "verify", "--weights", weights)
        assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output
    lock.unlink()


def test_pack_and_convert_gguf_never_write_over_files(tmp_path):
    weights = tmp_path / "weights"
    (weights / "sam").mkdir(parents=True)
    (weights / "sam" / "model.safetensors").write_bytes(b"real weights")
    picture = tmp_path / "photo.png"
    picture.write_bytes(b"a photo")
    for target, words in ((picture, "exists; choose a new file name or pass --overwrite"),
                          (weights / "pack.tar", "lies inside the weights dir")):
        result = cli("weights", "pack", target, "--weights", weights)
        assert result.exit_code == 2 and words in result.output, result.output
    assert picture.read_bytes() == b"a photo" and not (weights / "pack.tar").exists()
    assert cli("weights", "pack", tmp_path / "w.tar", "--weights", weights).exit_code == 0
    assert cli("weights", "pack", tmp_path / "w.tar", "--weights", weights).exit_code == 2
    assert cli("weights", "pack", tmp_path / "w.tar", "--weights", weights, "--overwrite").exit_code == 0
    fake = tmp_path / "model.gguf"
    fake.write_text("not a gguf")
    result = cli("llm", "convert-gguf", fake, tmp_path / "hf")
    assert result.exit_code == 2 and "is not a GGUF file" in result.output and not (tmp_path / "hf").exists()


# --- exports --------------------------------------------------------------------------------------------
@pytest.fixture()
def finished(data, tiny_weights) -> Path:
    assert gt_run(tiny_weights, data / "in", data / "out").exit_code == 0
    return data / "out"


def test_export_never_writes_over_ground_truth_the_run_or_foreign_files(data, finished):
    voc = data / "VOC2012"
    (voc / "SegmentationClass").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    (voc / "SegmentationClass" / "a.png").write_bytes(b"truth")
    for fmt, out in (("voc", voc), ("voc", voc / "SegmentationClass"), ("coco", voc / "x.json"),
                     ("coco", finished / "a.png"), ("yolo-seg", finished / "yolo"), ("coco", data / "gt" / "x.json")):
        result = cli("export", finished, "--format", fmt, "--out", out, "--overwrite")
        assert result.exit_code == 2 and "Traceback" not in result.output, (fmt, out, result.output)
    assert (voc / "SegmentationClass" / "a.png").read_bytes() == b"truth" and not list((voc / "JPEGImages").iterdir())
    assert Image.open(finished / "a.png").mode == "P"
    mine = data / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = cli("export", finished, "--format", "yolo-seg", "--out", mine)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert cli("export", finished, "--format", "yolo-seg", "--out", data / "yolo").exit_code == 0
    assert cli("export", finished, "--format", "yolo-seg", "--out", data / "yolo").exit_code == 0  # its own
    (data / "coco.json").write_text("{}")
    assert cli("export", finished, "--format", "coco", "--out", data / "coco.json").exit_code == 2
    assert cli("export", finished, "--format", "coco", "--out", data / "coco.json", "--overwrite").exit_code == 0
    assert cli("export", finished, "--format", "coco", "--out", data / "coco.json").exit_code == 0  # now its own
    for fmt, out in (("coco", data / "yolo"), ("yolo-seg", data / "coco.json")):
        result = cli("export", finished, "--format", fmt, "--out", out)
        assert result.exit_code == 2 and ("is a folder" in result.output or "is a file" in result.output)


def test_eval_and_report_never_write_over_files_they_did_not_write(data, finished):
    """eval's folder and report's file may sit among a user's files: only their own earlier outputs are
    replaced (an earlier eval's stale worst panels go); anything else is one line, or --overwrite."""
    folder = data / "scores"
    folder.mkdir()
    (folder / "summary.json").write_text("mine")
    result = cli("eval", "--pred", finished, "--gt", data / "gt", "--out", folder)
    assert result.exit_code == 2 and "was not written by `offline-seg eval`" in result.output, result.output
    assert (folder / "summary.json").read_text() == "mine"
    assert cli("eval", "--pred", finished, "--gt", data / "gt", "--out", folder, "--overwrite").exit_code == 0
    assert json.loads((folder / "summary.json").read_text())["images"] == 2
    assert sorted(p.name[3:] for p in (folder / "worst").iterdir()) == ["a.png", "b.png"]
    assert cli("eval", "--pred", finished, "--gt", data / "gt", "--out", folder, "--worst", "1").exit_code == 0
    assert len(list((folder / "worst").iterdir())) == 1  # its own stale panel removed
    (folder / "per_class.md").write_text("edited by hand")
    assert cli("eval", "--pred", finished, "--gt", data / "gt", "--out", folder).exit_code == 2
    result = cli("eval", "--pred", finished, "--gt", data / "gt", "--out", finished)
    assert result.exit_code == 2 and "is the prediction folder" in result.output

    page = data / "page.html"
    page.write_text("my notes")
    for target in (page, data / "in" / "a.png"):
        before = target.read_bytes()
        result = cli("report", finished, "--out", target)
        assert result.exit_code == 2 and "was not written by `offline-seg report`" in result.output
        assert target.read_bytes() == before
    assert cli("report", finished, "--out", data / "report.html").exit_code == 0
    assert cli("report", finished, "--out", data / "report.html").exit_code == 0  # its own
    assert cli("report", finished, "--out", page, "--overwrite").exit_code == 0 and "offline-seg report" in \
        page.read_text()


def test_exports_open_right_in_the_tools(data, tiny_weights):
    folder = data / "odd"
    for seed, name in enumerate(("a&b #1%+", "line\nbreak")):
        _write_scene(folder, data / "odd-gt", name, seed)
    rotated = folder / "rotated.jpg"
    _write_scene(data / "scratch", data / "scratch-gt", "r", 5)
    image, truth = Image.open(data / "scratch" / "r.png"), np.asarray(Image.open(data / "scratch-gt" / "r.png"))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    image.save(rotated, exif=exif.tobytes())
    Image.fromarray(np.rot90(truth, -1).copy(), mode="L").save(data / "odd-gt" / "rotated.png")
    classes = data / "classes.txt"
    classes.write_text("background\ncat\ntraffic light: red\n")
    result = cli("run", folder, "--classes", classes, "--boxes", "gt", "--gt", data / "odd-gt", "--weights",
                 tiny_weights, "--points", "0", "--out", data / "run")
    assert result.exit_code == 0, result.output
    assert cli("export", data / "run", "--format", "labelstudio", "--out", data / "ls").exit_code == 0
    urls = [task["data"]["image"] for task in json.loads((data / "ls" / "tasks.json").read_text())]
    assert all("&" not in url.split("?d=")[1] and "#" not in url and "+" not in url.split("?d=")[1] for url in urls)
    assert any("a%26b%20%231%25%2B.png" in url for url in urls)
    result = cli("export", data / "run", "--format", "cvat", "--out", data / "cvat.zip")
    assert result.exit_code == 0 and "traffic light - red" in result.output
    import zipfile

    with zipfile.ZipFile(data / "cvat.zip") as archive:
        lines = archive.read("labelmap.txt").decode().splitlines()[1:]
        assert all(len(line.split(":")) == 4 for line in lines)
        listed = archive.read("ImageSets/Segmentation/default.txt").decode().splitlines()
        assert len(listed) == 3 and "line_break" in listed
    assert cli("export", data / "run", "--format", "voc", "--out", data / "voc").exit_code == 0
    exported = Image.open(data / "voc" / "JPEGImages" / "rotated.jpg")
    assert exported.size == Image.open(data / "voc" / "SegmentationClass" / "rotated.png").size == (48, 64)
    assert exported.getexif().get(0x0112, 1) == 1


def test_exports_list_pending_changed_and_crafted_images(data, finished):
    with sqlite3.connect(finished / STORE_NAME) as db:
        db.execute("INSERT INTO images VALUES ('p', ?, NULL, 'pending', NULL, 0, NULL, NULL)", (b"/nowhere.png",))
        db.execute("INSERT INTO images VALUES ('/etc/evil', ?, 'x', 'done', NULL, 0, NULL, NULL)", (b"/etc/passwd",))
    Image.new("RGB", (64, 48)).save(data / "in" / "b.png")  # changed after the run
    result = cli("export", finished, "--format", "yolo-seg", "--out", data / "yolo")
    assert result.exit_code == 0, result.output
    assert "not exported: p: not finished" in result.output
    assert "not exported: b: its input" in result.output and "changed since the run" in result.output
    assert "unsafe output name" in result.output
    assert sorted(p.name for p in (data / "yolo" / "images").iterdir()) == ["a.png"]
    assert not Path("/etc/evil.png").exists()
