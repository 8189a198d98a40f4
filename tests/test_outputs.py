import hashlib
import json

import numpy as np
from PIL import Image

from offline_seg.classes import ClassList
from offline_seg.io.outputs import decode_rle, encode_rle, render_overlay, save_result
from offline_seg.types import Detections, InstanceMasks, Recognition, SegmentationResult


def _result() -> SegmentationResult:
    classes = ClassList.preset("voc")
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:25] = True
    detections = Detections(np.array([[10, 5, 25, 15], [0, 0, 3, 3]]), np.array([0.8, 0.2]), ["dog", "lamp"],
                            ["dog", None])
    instances = InstanceMasks(mask[None], np.array([[10, 5, 25, 15]]), np.array([0.8]), ["dog"],
                              [np.array([[12.0, 7.0]], np.float32)])
    class_map = np.zeros((20, 30), np.uint8)
    class_map[mask] = classes.index("dog")
    return SegmentationResult(class_map, list(classes.names), Recognition(("dog", "grass"), "a dog"), ["dog"],
                              detections, instances, {"pre_refine": "dog", "post_refine": {"lamp": "background"}})


def test_rle_round_trip():
    mask = np.random.default_rng(0).random((17, 23)) > 0.5
    rle = encode_rle(mask)
    assert rle["size"] == [17, 23] and isinstance(rle["counts"], str)
    assert np.array_equal(decode_rle(json.loads(json.dumps(rle))), mask)


def test_save_result_writes_palette_png_overlay_and_json(tmp_path):
    result = _result()
    image = Image.new("RGB", (30, 20), (10, 200, 10))
    files = save_result(result, image, tmp_path, "img", settings={"num_points": 20}, input_sha256="ab12")
    assert {kind: entry["path"] for kind, entry in files.items()} == {
        "mask": "img.png", "overlay": "img_overlay.png", "record": "img.json"}
    for entry in files.values():  # each file's identity, as the run records it to know the file later
        data = (tmp_path / entry["path"]).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.json", "img.png", "img_overlay.png"]  # no partials
    mask_png = Image.open(tmp_path / "img.png")
    assert mask_png.mode == "P" and mask_png.getpalette()[12 * 3 : 12 * 3 + 3] == [64, 0, 128]
    assert np.array_equal(np.asarray(mask_png), result.class_map)
    overlay = Image.open(tmp_path / "img_overlay.png")
    assert overlay.height >= 20 and overlay.width > 30  # legend beside the image
    record = json.loads((tmp_path / "img.json").read_text())
    assert record["recognition"]["text"] == "dog, grass: a dog"
    assert [d["label"] for d in record["detections"]] == ["dog", None]
    [instance] = record["instances"]
    assert instance["class_index"] == 12 and instance["area"] == 150 and instance["points"] == [[12.0, 7.0]]
    assert np.array_equal(decode_rle(instance["segmentation"]), result.instances.masks[0])
    assert record["settings"] == {"num_points": 20} and record["input_sha256"] == "ab12"


def test_overlay_tints_only_labelled_pixels():
    result = _result()
    image = Image.new("RGB", (30, 20), (100, 100, 100))
    overlay = np.asarray(render_overlay(image, result))
    assert overlay[0, 29].tolist() == [100, 100, 100]  # background pixel untouched (no box drawn there)
    assert overlay[10, 17].tolist() != [100, 100, 100]  # dog pixel tinted
