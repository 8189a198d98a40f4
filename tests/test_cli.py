import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from offline_seg.cli import main


def test_help_lists_commands_and_ablations():
    runner = CliRunner()
    assert "segment" in runner.invoke(main, ["--help"]).output
    help_text = runner.invoke(main, ["segment", "--help"]).output
    for flag in ("--no-caption", "--no-pre-refine", "--no-post-refine", "--points", "--labels", "--weights"):
        assert flag in help_text


def test_segment_with_tiny_weights_writes_outputs(tiny_weights, tmp_path):
    image = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["segment", str(image), "--weights", str(tiny_weights), "--out", str(out), "--points", "3",
               "--point-strategy", "paper"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "photo.json").read_text())
    assert record["settings"]["num_points"] == 3 and record["classes"][0] == "background"
    assert all(len(instance["points"]) == 3 for instance in record["instances"])
    labels = Image.open(out / "photo.png")
    assert labels.mode == "P" and labels.size == (128, 96)
    assert (out / "photo_overlay.png").is_file()


def test_bad_image_is_reported_and_others_still_written(tiny_weights, tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["segment", str(bad), str(good), "--weights", str(tiny_weights), "--out", str(out), "--labels", "cat"]
    )
    assert result.exit_code == 1
    assert "broken" in result.output and "cannot read image" in result.output
    assert (out / "good.json").is_file() and not (out / "broken.json").exists()


def test_missing_weights_is_one_clear_error(tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    result = CliRunner().invoke(main, ["segment", str(image), "--weights", str(tmp_path / "w"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "ram_plus_swin_large_14m.pth" in result.output
    assert "offline-seg weights pull ram_plus" in result.output
    assert "Traceback" not in result.output


def test_weights_list_and_verify(tiny_weights):
    runner = CliRunner()
    listing = runner.invoke(main, ["weights", "list", "--weights", str(tiny_weights)])
    assert listing.exit_code == 0 and listing.output.count("present") == 7  # every tiny model: embedder, sam3 too
    verify = runner.invoke(main, ["weights", "verify", "--weights", str(tiny_weights)])
    assert verify.exit_code == 0 and "files ok" in verify.output


def test_demo_tiny_runs_the_whole_chain(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--tiny", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "meaningless" in result.output
    record = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert record["recognition"]["tags"] and "pre_refine" in record["llm_replies"]
    assert (tmp_path / "demo" / "demo_overlay.png").is_file()


def test_demo_never_segments_or_replaces_a_users_file_nor_writes_into_weights(tmp_path, tiny_weights):
    scene = tmp_path / "demo" / "input" / "demo.png"
    scene.parent.mkdir(parents=True)
    scene.write_bytes(b"my picture")
    result = CliRunner().invoke(main, ["demo", "--tiny", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 2 and "is not the demo's picture" in result.output
    assert scene.read_bytes() == b"my picture" and not (tmp_path / "demo" / "tiny-weights").exists()
    result = CliRunner().invoke(main, ["demo", "--tiny", "--weights", str(tiny_weights), "--out", str(tiny_weights)])
    assert result.exit_code == 2 and "is the weights folder" in result.output


def test_demo_without_real_weights_says_how_to_get_them(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--weights", str(tmp_path / "none"), "--out", str(tmp_path / "demo")])
    assert result.exit_code == 2 and "offline-seg weights pull" in result.output and "demo --tiny" in result.output
    assert "centernet" in result.output and "Traceback" not in result.output
