"""Bad-input matrix: each bad file gets a clear message, the run exits 1 and every other image's outputs are
written; odd-but-valid files (grey, RGBA, palette, 16-bit, CMYK, EXIF-rotated, odd names) simply work.
Run-level mistakes (class lists, an empty folder) stop with one clear line before any work (exit 2)."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from offline_seg.cli import main


def _photo(size=(40, 30), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (a decompression bomb), with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _exif_rotated(path: Path) -> None:
    """Stored 40 wide x 30 high, EXIF orientation 6: displayed 30 wide x 40 high."""
    image = _photo((40, 30), seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes())


def _make_inputs(folder: Path) -> None:
    folder.mkdir()
    _photo(seed=1).save(folder / "good.png")
    jpeg = io.BytesIO()
    _photo((64, 48), seed=2).save(jpeg, "JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("these are my notes, not a picture\n")
    Image.fromarray((np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50)).save(folder / "deep16.png")
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    _photo(seed=4).convert("L").save(folder / "grey.png")
    _photo(seed=5).convert("RGBA").save(folder / "rgba.png")
    _photo(seed=6).convert("P").save(folder / "palette.png")
    Image.new("RGB", (1, 1), (9, 9, 9)).save(folder / "one_pixel.png")
    (folder / "bomb.png").write_bytes(_png_header_only(30000, 30000))
    _exif_rotated(folder / "rotated.jpg")
    _photo(seed=7).save(folder / "holiday photo é ü 猫.png")
    (folder / "folder.jpg").mkdir()  # unreadable as an image: a directory named like one
    os.mkfifo(folder / "pipe.jpg")  # unreadable: a FIFO (opening it to read would block forever)
    (folder / "loop.jpg").symlink_to("loop.jpg")  # a symlink loop
    (folder / "sub").symlink_to(".")  # a directory loop: must not be walked forever


WORKS = ["good", "deep16", "cmyk", "grey", "rgba", "palette", "one_pixel", "rotated", "holiday photo é ü 猫"]
FAILS = {
    "truncated": "cannot read image .*truncated",
    "empty": "cannot read image .*empty \\(0 bytes\\)",
    "notes": "cannot read image .*cannot identify image file",
    "bomb": "cannot read image .*too large.*900000000 pixels",
    "folder": "cannot read image .*not a regular file",
    "pipe": "cannot read image .*not a regular file",
    "loop": "cannot read image .*symlink loop",
}


@pytest.fixture(scope="module")
def matrix_run(tiny_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad") / "in"
    _make_inputs(folder)
    out = folder.parent / "out"
    args = ["run", str(folder), "--weights", str(tiny_weights), "--out", str(out), "--labels", "dog, cat",
            "--points", "1", "--chunk-size", "8"]
    first = CliRunner().invoke(main, args)
    again = CliRunner().invoke(main, args)  # resumed: the failures are listed again, nothing is redone
    return first, again, out


def test_the_run_reports_every_bad_file_and_exits_1(matrix_run):
    first, again, out = matrix_run
    assert first.exit_code == 1, first.output
    assert "Traceback" not in first.output
    assert f"{len(WORKS)} of {len(WORKS) + len(FAILS)} images done" in first.output
    assert again.exit_code == 1 and f"{len(WORKS)} of {len(WORKS) + len(FAILS)} images done" in again.output
    assert "--retry-failed" in again.output


@pytest.mark.parametrize("name", sorted(FAILS))
def test_bad_file_fails_alone_with_a_clear_message(matrix_run, name):
    import re

    first, _, out = matrix_run
    line = next((ln for ln in first.output.splitlines() if ln.startswith(f"failed: {name}:")), None)
    assert line is not None, first.output
    assert re.search(FAILS[name], line), line
    assert not (out / f"{name}.png").exists()


@pytest.mark.parametrize("name", WORKS)
def test_odd_but_valid_file_simply_works(matrix_run, name):
    _, _, out = matrix_run
    record = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
    assert record["classes"][0] == "background"
    class_map = Image.open(out / f"{name}.png")
    expected = {"one_pixel": (1, 1), "rotated": (30, 40)}.get(name, (40, 30))  # rotated: displayed orientation
    assert class_map.size == expected and class_map.mode == "P"
    assert (out / f"{name}_overlay.png").is_file()


def test_sixteen_bit_png_is_scaled_not_clipped():
    from offline_seg.io.images import load_image

    buffer = io.BytesIO()
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(buffer, "PNG")
    buffer.seek(0)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"offline-seg-16bit-{os.getpid()}.png"
    path.write_bytes(buffer.getvalue())
    try:
        assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 128, 255]
    finally:
        path.unlink()


def test_empty_folder_is_an_error(tiny_weights, tmp_path):
    (tmp_path / "empty").mkdir()
    for command in ("segment", "run"):
        result = CliRunner().invoke(main, [command, str(tmp_path / "empty"), "--weights", str(tiny_weights),
                                           "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and "no images" in result.output, (command, result.output)


def test_one_file_name_in_two_folders_gets_two_outputs(tiny_weights, tmp_path):
    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        _photo(seed=seed).save(tmp_path / folder / "x.jpg")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["segment", str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.jpg"),
                                       "--weights", str(tiny_weights), "--out", str(out), "--labels", "dog",
                                       "--points", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.json")) == ["a/x.json", "b/x.json"]


@pytest.mark.parametrize("classes, message", [
    ("", "needs a background class"),
    ("background", "needs a background class and at least one more label"),
    ("background, cat, cat", "'cat' and 'cat' are the same label"),
    ("background, cat, cats", "'cat' and 'cats' are the same label"),
    ("FILE:0: background\nx1: cat\n2: dog\n", "line 2: 'x1' is not a dataset id"),
    ("FILE:0: background\n1: cat\n1: dog\n", "a dataset id is given twice"),
])
def test_bad_class_lists_are_one_clear_error(tiny_weights, tmp_path, classes, message):
    image = tmp_path / "x.png"
    _photo().save(image)
    if classes.startswith("FILE:"):
        (tmp_path / "classes.txt").write_text(classes[5:])
        classes = str(tmp_path / "classes.txt")
    result = CliRunner().invoke(main, ["segment", str(image), "--weights", str(tiny_weights), "--out",
                                       str(tmp_path / "out"), "--classes", classes])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out" / "x.png").exists()


def test_eval_names_ground_truth_ids_outside_the_preset(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    good = np.array([[0, 15], [15, 255]], dtype=np.uint8)  # background, person, void
    foreign = np.array([[0, 77], [150, 0]], dtype=np.uint8)  # 77 and 150 are not VOC ids (ADE20K labels?)
    for name, labels in (("good", good), ("foreign", foreign)):
        Image.fromarray(labels, mode="L").save(gt / f"{name}.png")
        Image.fromarray(np.where(labels == 255, 0, np.minimum(labels, 20)).astype(np.uint8), mode="L").save(
            pred / f"{name}.png")
    result = CliRunner().invoke(main, ["eval", "--pred", str(pred), "--gt", str(gt), "--preset", "voc"])
    assert result.exit_code == 1, result.output
    assert "failed: foreign: ground truth foreign.png holds id(s) 77, 150 that the voc class list does not have" \
        in result.output
    assert "failed: good" not in result.output
