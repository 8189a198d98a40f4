"""Pre-labelling exports, each read back by its consumer's own reader (pycocotools, Label Studio's brush
decoder, the PNGs and polygons of CVAT / VOC / YOLO) and compared with the run's own outputs."""

from __future__ import annotations

import io
import json
import shutil
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from offline_seg.classes import ClassList, voc_palette
from offline_seg.cli import main

VOC = ClassList.preset("voc")
PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(-1, 3)


def _export(run: Path, fmt: str, out: Path, *extra: str) -> Path:
    result = CliRunner().invoke(main, ["export", str(run), "--format", fmt, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    assert "broken" in result.output  # the failed image is named, not silently dropped
    return out


def _expected(run: Path) -> dict[str, dict]:
    """Per image, straight from the run's files: the class map PNG and each instance's visible pixels
    (its COCO RLE minus what higher-scored instances cover, the composer's rule)."""
    images = {}
    for record_path in sorted(run.glob("*.json")):
        record = json.loads(record_path.read_text())
        class_map = np.array(Image.open(record_path.with_suffix(".png")))
        items = record["instances"]
        masks = [mask_utils.decode({"size": i["segmentation"]["size"],
                                    "counts": i["segmentation"]["counts"].encode()}).astype(bool) for i in items]
        visible = []
        for i, (item, mask) in enumerate(zip(items, masks)):
            above = [m for j, (other, m) in enumerate(zip(items, masks))
                     if other["score"] > item["score"] or (other["score"] == item["score"] and j < i)]
            shown = mask & ~np.any(above, axis=0) if above else mask
            if shown.any():
                visible.append((item["label"], item["score"], shown))
        images[record["image"]] = {"class_map": class_map, "instances": visible, "size": class_map.shape}
    return images


def test_the_run_has_instances_of_several_classes(prelabel_run):
    expected = _expected(prelabel_run)
    assert sorted(expected) == ["plane", "walk"]
    labels = {label for image in expected.values() for label, _, _ in image["instances"]}
    assert {"aeroplane", "car", "person"} <= labels
    for image in expected.values():  # the visible parts rebuild the class map exactly
        rebuilt = np.zeros(image["size"], np.uint8)
        for label, _, mask in image["instances"]:
            rebuilt[mask] = VOC.index(label)
        np.testing.assert_array_equal(rebuilt, image["class_map"])


def test_coco_round_trip_through_pycocotools(prelabel_run, tmp_path):
    from pycocotools.coco import COCO

    expected = _expected(prelabel_run)
    coco = COCO(str(_export(prelabel_run, "coco", tmp_path / "instances.json")))
    assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == dict(zip(VOC.ids[1:], VOC.names[1:]))
    assert len(coco.getImgIds()) == 2
    for image in coco.loadImgs(coco.getImgIds()):
        want = expected[Path(image["file_name"]).stem]
        assert (image["height"], image["width"]) == want["size"] and image["file_name"].endswith(".png")
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert len(anns) == len(want["instances"])
        for ann, (label, score, mask) in zip(anns, want["instances"]):
            assert coco.loadCats(ann["category_id"])[0]["name"] == label
            assert ann["score"] == pytest.approx(score)
            decoded = coco.annToMask(ann).astype(bool)
            np.testing.assert_array_equal(decoded, mask)
            assert ann["area"] == mask.sum()
            rows, cols = np.nonzero(mask)
            assert ann["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
    # and as detection results against itself: a perfect segm AP
    results = coco.loadRes(coco.dataset["annotations"])
    assert len(results.getAnnIds()) == sum(len(e["instances"]) for e in expected.values())


def test_coco_categories_carry_the_dataset_ids(prelabel_run, tmp_path):
    """A class list with non-contiguous dataset ids (recorded in the run's settings) keeps them."""
    run = tmp_path / "run"
    shutil.copytree(prelabel_run, run)
    (run / "offline_seg.sqlite").unlink()  # records edited by hand no longer match the store's: read them alone
    ids = [0] + [100 + 2 * i for i in range(1, len(VOC))]
    for record_path in run.glob("*.json"):
        record = json.loads(record_path.read_text())
        record["settings"]["class_ids"] = ids
        record_path.write_text(json.dumps(record))
    result = CliRunner().invoke(main, ["export", str(run), "--format", "coco", "--out", str(tmp_path / "ids.json")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "ids.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert names == dict(zip(ids[1:], VOC.names[1:]))
    assert {names[a["category_id"]] for a in data["annotations"]} >= {"aeroplane", "car", "person"}


def test_labelstudio_round_trip_through_its_brush_decoder(prelabel_run, tmp_path):
    from label_studio_sdk.converter.brush import decode_rle

    expected = _expected(prelabel_run)
    out = _export(prelabel_run, "labelstudio", tmp_path / "ls")
    config = ET.fromstring((out / "labeling_config.xml").read_text())
    brush, image_tag = config.find("BrushLabels"), config.find("Image")
    assert [label.get("value") for label in brush.findall("Label")] == list(VOC.names[1:])
    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks) == 2
    for task in tasks:
        want = expected[task["data"]["name"]]
        assert task["data"]["image"].startswith("/data/local-files/?d=") and task["data"]["image"].endswith(".png")
        (prediction,) = task["predictions"]
        assert prediction["model_version"].startswith("offline_seg ")
        assert len(prediction["result"]) == len(want["instances"])
        for result, (label, score, mask) in zip(prediction["result"], want["instances"]):
            assert result["from_name"] == brush.get("name") and result["to_name"] == image_tag.get("name")
            assert brush.get("toName") == image_tag.get("name") and result["type"] == "brushlabels"
            assert (result["original_height"], result["original_width"]) == want["size"]
            assert result["value"]["brushlabels"] == [label] and result["score"] == pytest.approx(score)
            height, width = want["size"]
            decoded = decode_rle(result["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 0
            np.testing.assert_array_equal(decoded, mask)


def test_labelstudio_image_url_template(prelabel_run, tmp_path):
    out = _export(prelabel_run, "labelstudio", tmp_path / "ls", "--image-url", "/data/upload/1/{file}")
    tasks = json.loads((out / "tasks.json").read_text())
    assert sorted(t["data"]["image"] for t in tasks) == ["/data/upload/1/plane.png", "/data/upload/1/walk.png"]
    for template in ("/data/{foo}", "/data/{0}", "/data/{path"):  # a mistake is one line, nothing written
        result = CliRunner().invoke(main, ["export", str(prelabel_run), "--format", "labelstudio", "--out",
                                           str(tmp_path / "bad"), "--image-url", template])
        assert result.exit_code == 2 and "may name only {path} and {file}" in result.output, result.output
        assert not (tmp_path / "bad").exists()


def _decode_colours(rgb: np.ndarray, colours: dict[tuple[int, int, int], int]) -> np.ndarray:
    index = np.full(rgb.shape[:2], -1)
    for colour, value in colours.items():
        index[np.all(rgb == colour, axis=-1)] = value
    assert (index >= 0).all(), "a mask colour that the label map does not name"
    return index


def test_cvat_segmentation_mask_zip_round_trip(prelabel_run, tmp_path):
    expected = _expected(prelabel_run)
    archive = zipfile.ZipFile(_export(prelabel_run, "cvat", tmp_path / "cvat.zip"))
    assert archive.read("ImageSets/Segmentation/default.txt").decode().split() == ["plane", "walk"]
    labelmap = {}
    for line in archive.read("labelmap.txt").decode().splitlines():
        if line and not line.startswith("#"):
            name, colour, _parts, _actions = line.split(":")
            labelmap[tuple(int(v) for v in colour.split(","))] = VOC.index(name)
    assert len(labelmap) == len(VOC)
    for name, want in expected.items():
        rgb = np.array(Image.open(io.BytesIO(archive.read(f"SegmentationClass/{name}.png"))).convert("RGB"))
        np.testing.assert_array_equal(_decode_colours(rgb, labelmap), want["class_map"])
        objects = np.array(Image.open(io.BytesIO(archive.read(f"SegmentationObject/{name}.png"))).convert("RGB"))
        instance_colours = {tuple(int(v) for v in PALETTE[i]): i for i in range(len(want["instances"]) + 1)}
        numbers = _decode_colours(objects, instance_colours)
        for number, (_, _, mask) in enumerate(want["instances"], start=1):
            np.testing.assert_array_equal(numbers == number, mask)


def test_voc_layout_round_trip_and_eval_reads_it(prelabel_run, tmp_path):
    expected = _expected(prelabel_run)
    out = _export(prelabel_run, "voc", tmp_path / "voc")
    assert (out / "ImageSets" / "Segmentation" / "default.txt").read_text().split() == ["plane", "walk"]
    for name, want in expected.items():
        photo = Image.open(out / "JPEGImages" / f"{name}.jpg")
        assert photo.format == "JPEG" and photo.size[::-1] == want["size"]
        classes = Image.open(out / "SegmentationClass" / f"{name}.png")
        assert classes.mode == "P"
        np.testing.assert_array_equal(np.array(classes), want["class_map"])  # VOC: dataset id == index
        objects = np.array(Image.open(out / "SegmentationObject" / f"{name}.png"))
        for number, (_, _, mask) in enumerate(want["instances"], start=1):
            np.testing.assert_array_equal(objects == number, mask)
    # the exported class maps are ground truth `eval` reads: scoring the run against them gives 100 %
    result = CliRunner().invoke(main, ["eval", "--pred", str(prelabel_run), "--gt", str(out / "SegmentationClass"),
                                       "--preset", "voc", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["miou_percent"] == 100.0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_yolo_seg_layout_and_lines(prelabel_run, tmp_path):
    expected = _expected(prelabel_run)
    out = _export(prelabel_run, "yolo-seg", tmp_path / "yolo")
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(VOC.names[1:])) and (out / data["train"]).is_dir()
    for name, want in expected.items():
        assert (out / "images" / f"{name}.png").is_file()
        found = set()
        for line in (out / "labels" / f"{name}.txt").read_text().splitlines():
            number, *coords = line.split()
            xy = np.array(coords, float).reshape(-1, 2)
            assert len(xy) >= 3 and ((0 <= xy) & (xy <= 1)).all()
            found.add(data["names"][int(number)])
        assert found == {label for label, _, _ in want["instances"]}


def test_yolo_polygons_round_trip_on_solid_masks():
    """Outer boundaries traced at pixel edges give back the mask (holes filled, as YOLO has none)."""
    from offline_seg.io.exports import mask_polygons

    yy, xx = np.mgrid[:160, :240] / 2.0  # shapes of object size, as detections have
    shapes = {
        "disc": (xx - 40) ** 2 + (yy - 40) ** 2 < 25**2,
        "L": ((xx > 10) & (xx < 30) & (yy > 5) & (yy < 70)) | ((xx > 10) & (xx < 90) & (yy > 50) & (yy < 70)),
        "two blobs": ((xx - 20) ** 2 + (yy - 20) ** 2 < 100) | ((xx > 70) & (xx < 110) & (yy > 30) & (yy < 75)),
    }
    for name, mask in shapes.items():
        canvas = Image.new("1", (240, 160))
        for polygon in mask_polygons(mask):
            ImageDraw.Draw(canvas).polygon([tuple(p) for p in polygon], fill=1)
        assert _iou(np.array(canvas, bool), mask) > 0.97, name


def test_export_of_a_folder_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(main, ["export", str(tmp_path), "--format", "coco", "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "no segmentation records" in result.output


def test_dataset_ids_of_runs_made_before_they_were_recorded():
    """Older records name their preset but hold no ids: the preset's ids are taken when its names match."""
    from offline_seg.io.runs import class_list_of

    cityscapes = ClassList.preset("cityscapes")
    record = {"classes": list(cityscapes.names), "settings": {"classes": "cityscapes"}}
    assert class_list_of(record).ids == cityscapes.ids
    renamed = {"classes": ["background", "road", "tree"], "settings": {"classes": "cityscapes"}}
    assert class_list_of(renamed).ids == (0, 1, 2)  # not the preset's list: class indices


def test_segment_outputs_without_a_store_need_images_only_for_pixel_formats(prelabel_run, tmp_path):
    """A folder of records without a store (what `segment` wrote before it kept one): the records are found
    by themselves, the images by --images."""
    run = tmp_path / "run"
    run.mkdir()
    for path in [*prelabel_run.glob("plane*"), *prelabel_run.glob("walk*")]:
        shutil.copyfile(path, run / path.name)
    coco = CliRunner().invoke(main, ["export", str(run), "--format", "coco", "--out", str(tmp_path / "c.json")])
    assert coco.exit_code == 0 and "2 image(s)" in coco.output, coco.output
    voc = CliRunner().invoke(main, ["export", str(run), "--format", "voc", "--out", str(tmp_path / "voc")])
    assert voc.exit_code == 2 and "--images DIR" in voc.output
    inputs = prelabel_run.parent / "in"
    voc = CliRunner().invoke(main, ["export", str(run), "--format", "voc", "--out", str(tmp_path / "voc"),
                                    "--images", str(inputs)])
    assert voc.exit_code == 0, voc.output
    assert sorted(p.name for p in (tmp_path / "voc" / "JPEGImages").iterdir()) == ["plane.jpg", "walk.jpg"]
