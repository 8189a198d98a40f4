"""`offline_seg.evaluation` (confusion, scoring, writers, worst) and `offline-seg eval`: exact numbers on tiny hand-computed fixtures."""

from __future__ import annotations

import csv
import json
import shutil
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from offline_seg.classes import ClassList
from offline_seg.cli import main
from offline_seg.errors import InvalidInputError
from offline_seg.evaluation.confusion import ConfusionMatrix
from offline_seg.evaluation.scoring import evaluate
from offline_seg.evaluation.worst import worst_images
from offline_seg.evaluation.writers import plot_per_class, write_csv, write_markdown
from offline_seg.io.outputs import class_map_image

V = 255  # void

# Two 3x4 images over (background, cat, dog); dataset ids equal class indices here.
GT_A = [[0, 0, 1, 1], [0, 1, 1, V], [2, 2, 0, 0]]
PRED_A = [[0, 1, 1, 1], [0, 1, 0, 2], [2, 0, 0, 0]]  # the 2 under the void pixel must not count
GT_B = [[2, 2, 2, 2], [0, 0, 0, 0], [1, 1, V, V]]
PRED_B = [[2, 2, 1, 2], [0, 0, 0, 2], [1, 0, 0, 0]]
# By hand, rows = ground truth, columns = prediction (A has 11 scored pixels, B 10).
EXPECTED = np.array([[7, 1, 1], [2, 4, 0], [1, 1, 4]])
# IoU = TP / (row + column - TP): background 7/(9+10-7), cat 4/(6+6-4), dog 4/(6+5-4).
EXPECTED_IOU = [7 / 12, 4 / 8, 4 / 7]


def _classes() -> ClassList:
    return ClassList.parse("background, cat, dog")


def _save_gt(path: Path, ids) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(ids, dtype=np.uint8)).save(path)  # mode L, like a grey label map


def _save_pred(path: Path, indices) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    class_map_image(np.asarray(indices, dtype=np.uint8)).save(path)  # our own P-mode output format


@pytest.fixture()
def two_images(tmp_path) -> tuple[Path, Path]:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    _save_gt(gt / "a.png", GT_A)
    _save_gt(gt / "b.png", GT_B)
    _save_pred(pred / "a.png", PRED_A)
    _save_pred(pred / "b.png", PRED_B)
    _save_pred(pred / "a_overlay.png", np.full((3, 4), 2))  # an overlay is never read as a prediction
    return pred, gt


def test_confusion_matrix_matches_hand_computation():
    matrix = ConfusionMatrix(3)
    matrix.update(np.array(GT_A), np.array(PRED_A))
    matrix.update(np.array(GT_B), np.array(PRED_B))
    np.testing.assert_array_equal(matrix.matrix, EXPECTED)
    np.testing.assert_allclose(matrix.iou_per_class(), EXPECTED_IOU, rtol=0, atol=1e-15)
    assert matrix.miou() == pytest.approx(sum(EXPECTED_IOU) / 3, abs=1e-15)
    assert matrix.pixel_accuracy() == pytest.approx(15 / 21, abs=1e-15)


def test_evaluate_files_gives_the_same_numbers(two_images):
    pred, gt = two_images
    report = evaluate(pred, gt, _classes())
    np.testing.assert_array_equal(report.confusion.matrix, EXPECTED)
    assert report.miou == pytest.approx(sum(EXPECTED_IOU) / 3, abs=1e-15)
    assert report.ok and report.missing == [] and report.failed == {} and report.extra == []
    per_image = {s.stem: s.miou for s in report.images}
    # image A alone: matrix [[4,1,0],[1,3,0],[1,0,1]] -> IoUs 4/7, 3/5, 1/2
    assert per_image["a"] == pytest.approx((4 / 7 + 3 / 5 + 1 / 2) / 3, abs=1e-15)


def test_class_absent_everywhere_is_nan_and_left_out_of_the_mean():
    matrix = ConfusionMatrix(4)
    matrix.update(np.array(GT_A), np.array(PRED_A))
    matrix.update(np.array(GT_B), np.array(PRED_B))
    iou = matrix.iou_per_class()
    assert math.isnan(iou[3])
    assert matrix.miou() == pytest.approx(sum(EXPECTED_IOU) / 3, abs=1e-15)


def test_prediction_of_a_class_absent_from_ground_truth_scores_zero():
    matrix = ConfusionMatrix(3)
    matrix.update(np.array([[0, 0]]), np.array([[0, 2]]))
    np.testing.assert_allclose(matrix.iou_per_class(), [0.5, np.nan, 0.0])
    assert matrix.miou() == pytest.approx(0.25)


def test_non_contiguous_cityscapes_ids_map_to_class_indices(tmp_path):
    classes = ClassList.preset("cityscapes")
    road, car, person = classes.index("road"), classes.index("car"), classes.index("person")
    # labelIds: 7 road, 26 car, 24 person, 0 unlabeled -> background, 4 static and 1 ego vehicle -> ignored
    _save_gt(tmp_path / "gt" / "frankfurt" / "f_1_gtFine_labelIds.png", [[7, 7, 26, 26], [24, 0, 4, 1]])
    _save_pred(tmp_path / "pred" / "f_1_leftImg8bit.png", [[road, car, car, car], [person, 0, road, car]])
    _save_gt(tmp_path / "gt" / "frankfurt" / "f_1_gtFine_color.png", [[1, 2, 3, 4], [5, 6, 7, 8]])  # not GT
    report = evaluate(tmp_path / "pred", tmp_path / "gt", classes,
                      gt_suffix="_gtFine_labelIds", pred_suffix="_leftImg8bit")
    assert [s.stem for s in report.images] == ["f_1"] and report.ok
    assert report.confusion.total == 6  # the two ignored ids never enter the matrix
    iou = report.iou
    assert iou[road] == pytest.approx(1 / 2)  # TP 1, GT 2, predicted 1
    assert iou[car] == pytest.approx(2 / 3)  # TP 2, GT 2, predicted 3
    assert iou[person] == 1.0 and iou[0] == 1.0
    assert int(np.isfinite(iou).sum()) == 4


def test_prediction_in_dataset_ids_goes_through_the_same_table(tmp_path):
    classes = ClassList.preset("dram")  # ids 0, 3, 4, 5, 8, ...: 8 is cat, index 4
    ids = [[0, 8, 8, V], [3, 3, 0, 5]]
    _save_gt(tmp_path / "gt" / "x.png", ids)
    _save_gt(tmp_path / "pred" / "x.png", ids)
    assert evaluate(tmp_path / "pred", tmp_path / "gt", classes, pred_ids=True).miou == 1.0
    # read as class indices instead, id 8 would be index 8 = horse: the scores say so
    as_indices = evaluate(tmp_path / "pred", tmp_path / "gt", classes)
    assert as_indices.ok and as_indices.iou[classes.index("horse")] == 0.0


def test_missing_prediction_is_named_counted_and_scored_as_background(two_images):
    pred, gt = two_images
    (pred / "b.png").unlink()
    report = evaluate(pred, gt, _classes())
    assert report.missing == ["b"] and not report.ok
    assert report.num_scored == 2
    assert report.confusion.total == 21  # b still counts, as all-background
    np.testing.assert_array_equal(report.confusion.matrix[:, 0], [4 + 4, 1 + 2, 1 + 4])
    assert report.summary()["missing_policy"] == "scored as all-background"


def test_skip_missing_excludes_but_still_reports(two_images):
    pred, gt = two_images
    (pred / "b.png").unlink()
    report = evaluate(pred, gt, _classes(), skip_missing=True)
    assert report.missing == ["b"] and report.num_scored == 1
    assert report.confusion.total == 11
    np.testing.assert_array_equal(report.confusion.matrix, [[4, 1, 0], [1, 3, 0], [1, 0, 1]])


def test_size_mismatch_and_bad_values_fail_that_image_only(two_images):
    pred, gt = two_images
    _save_pred(pred / "a.png", np.zeros((6, 8), dtype=np.uint8))
    _save_pred(pred / "b.png", np.full((3, 4), 7))  # class index 7 does not exist in a 3-class list
    report = evaluate(pred, gt, _classes(), skip_missing=True)
    assert set(report.failed) == {"a", "b"} and report.num_scored == 0
    assert "8x6" in report.failed["a"] and "4x3" in report.failed["a"]
    assert "[7]" in report.failed["b"]
    resized = evaluate(pred, gt, _classes(), skip_missing=True, resize=True)
    assert set(resized.failed) == {"b"} and resized.num_scored == 1


def test_prediction_without_ground_truth_is_listed_not_scored(two_images):
    pred, gt = two_images
    _save_pred(pred / "extra.png", np.zeros((3, 4)))
    report = evaluate(pred, gt, _classes())
    assert report.extra == ["extra"] and report.ok and report.confusion.total == 21


def test_writers(two_images, tmp_path):
    pred, gt = two_images
    report = evaluate(pred, gt, ClassList.parse("background, cat, dog, bird"))
    with write_csv(report, tmp_path / "r" / "t.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["class"] for r in rows] == ["background", "cat", "dog", "bird"]
    assert float(rows[0]["iou_percent"]) == pytest.approx(100 * 7 / 12, abs=0.01)
    assert rows[3]["iou_percent"] == ""  # absent class: empty, not 0
    markdown = write_markdown(report, tmp_path / "r" / "t.md").read_text()
    assert "| 3 | bird | 3 | n/a |" in markdown and "over 3 of 4 classes" in markdown
    chart = Image.open(plot_per_class(report, tmp_path / "r" / "t.png"))
    assert chart.format == "PNG" and chart.width > 300


def test_worst_images_are_ranked_and_show_the_photo(two_images, tmp_path):
    pred, gt = two_images
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 6), "red").save(images / "b.jpg")  # another size: scaled to the ground truth
    report = evaluate(pred, gt, _classes())
    worst = {s.stem: s.miou for s in report.images}
    order = sorted(worst, key=worst.get)
    paths = worst_images(report, tmp_path / "worst", count=5, images_dir=images)
    assert [p.name for p in paths] == [f"{i + 1:02d}_{stem}.png" for i, stem in enumerate(order)]
    widths = {p.name.split("_", 1)[1]: Image.open(p).width for p in paths}
    assert widths == {"a.png": 2 * 4, "b.png": 3 * 4}  # photo | prediction | ground truth when found


def test_cli_writes_report_and_exit_codes(two_images, tmp_path):
    pred, gt = two_images
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["eval", "--pred", str(pred), "--gt", str(gt), "--classes",
                                       "background, cat, dog", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("per_class.csv", "per_class.md", "per_class.png", "summary.json", "worst/01_b.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["miou_percent"] == round(100 * sum(EXPECTED_IOU) / 3, 2)
    assert f"mIoU {100 * sum(EXPECTED_IOU) / 3:.2f} %" in result.output

    (pred / "a.png").unlink()
    result = CliRunner().invoke(main, ["eval", "--pred", str(pred), "--gt", str(gt), "--classes",
                                       "background, cat, dog"])
    assert result.exit_code == 1
    assert "missing prediction: a (scored as all-background)" in result.output
    summary = json.loads((pred / "eval" / "summary.json").read_text())  # written before exiting 1
    assert summary["missing"] == ["a"] and summary["images_scored"] == 2


def test_cli_reports_bad_directories_without_traceback(tmp_path):
    result = CliRunner().invoke(main, ["eval", "--pred", str(tmp_path), "--gt", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "ground-truth directory not found" in result.output
    assert "Traceback" not in result.output


def test_voc_mini_ground_truth_as_prediction_is_100(voc_mini, tmp_path):
    labels = voc_mini / "SegmentationClass"
    result = CliRunner().invoke(main, ["eval", "--pred", str(labels), "--gt", str(labels), "--pred-ids",
                                       "--preset", "voc", "--images", str(voc_mini / "JPEGImages"),
                                       "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["miou_percent"] == 100.0 and summary["images_scored"] == 5
    assert summary["missing"] == [] and summary["failed"] == {}
    report = evaluate(labels, labels, ClassList.preset("voc"), pred_ids=True)
    assert report.miou * 100 == 100.0 and report.pixel_accuracy == 1.0


def test_eval_never_writes_into_the_ground_truth_and_an_old_report_there_is_not_read(tmp_path):
    """Ground truth scored against itself (--pred-ids) would put its report into GT/eval: refused. A report
    left there by an earlier version (as in some shared data folders) is not taken for ground-truth maps."""
    labels = tmp_path / "labels"
    _save_gt(labels / "a.png", GT_A)
    _save_gt(labels / "b.png", GT_B)
    args = ["eval", "--pred", str(labels), "--gt", str(labels), "--pred-ids", "--classes", "background, cat, dog"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "ground-truth folder" in result.output
    assert sorted(p.name for p in labels.iterdir()) == ["a.png", "b.png"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    shutil.copytree(tmp_path / "report", labels / "eval")  # an old report inside the ground truth
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert summary["images"] == 2 and summary["miou_percent"] == 100.0
    assert (tmp_path / "again" / "worst" / "01_a.png").is_file()


def test_nested_predictions_are_found_and_reports_are_not_read_as_predictions(tmp_path):
    gt, pred = tmp_path / "gt" / "val" / "aachen", tmp_path / "pred" / "val" / "aachen"
    ids = np.array([[0, 1], [1, 2]])
    _save_gt(gt / "a_gtFine.png", ids)
    _save_pred(pred / "a.png", ids)
    _save_pred(tmp_path / "pred" / "eval" / "worst" / "01_a.png", ids)
    report = evaluate(tmp_path / "pred", tmp_path / "gt", _classes(), gt_suffix="_gtFine")
    assert report.ok and report.miou == 1.0 and report.extra == []


# --- protocols: which classes are in the mean -------------------------------------------------------
def test_an_unscored_class_has_no_iou_and_its_predictions_are_misses():
    matrix = ConfusionMatrix(3, scored=(1, 2))
    # the background (0) is not scored: its ground-truth pixel is ignored, a pixel predicted as it is a miss
    matrix.update(np.array([[1, 1, 2, 0]]), np.array([[1, 0, 2, 1]]))
    np.testing.assert_array_equal(matrix.matrix, [[0, 0, 0], [1, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(matrix.iou_per_class(), [np.nan, 0.5, 1.0])
    assert matrix.miou() == 0.75 and matrix.pixel_accuracy() == pytest.approx(2 / 3)


@pytest.mark.parametrize("preset, first, second, void", [
    ("ade20k", "wall", "floor", 0), ("coco-stuff", "wall-concrete", "floor-wood", 255),
    ("pascal-context", "wall", "floor", 0)])
@pytest.mark.parametrize("pred_ids", [False, True])
def test_long_list_background_is_no_class_of_the_mean(tmp_path, preset, first, second, void, pred_ids):
    """10x10: `first` on the top half all right (IoU 1.0), `second` on the bottom half with 10 of its 50
    pixels predicted background (IoU 0.8): mIoU 0.90, not 0.60 with a background IoU of 0 in the mean."""
    classes = ClassList.preset(preset)
    a, b = classes.index(first), classes.index(second)
    id_a, id_b = classes.ids[a], classes.ids[b]
    gt = np.full((10, 10), id_a)
    gt[5:] = id_b
    # predicted background: class index 0, or in dataset ids the benchmark's void ("no class")
    pred = np.full((10, 10), id_a if pred_ids else a)
    pred[5:] = id_b if pred_ids else b
    pred[9] = void if pred_ids else 0
    _save_gt(tmp_path / "gt" / "room.png", gt)
    (_save_gt if pred_ids else _save_pred)(tmp_path / "pred" / "room.png", pred)
    out = tmp_path / "report"
    args = ["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--preset", preset,
            "--out", str(out), *(["--pred-ids"] if pred_ids else [])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "mIoU 90.00 % over 2 of" in result.output and "(paper protocol, background not scored)" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["miou_percent"] == 90.0 and summary["classes_in_mean"] == 2
    assert summary["scored_classes"] == len(classes) - 1 and summary["not_scored"] == ["background"]
    rows = {row["class"]: row for row in summary["per_class"]}
    assert rows[first]["iou_percent"] == 100.0 and rows[second]["iou_percent"] == 80.0
    assert rows["background"] == {**rows["background"], "scored": False, "iou_percent": None, "gt_pixels": 0,
                                  "pred_pixels": 10}
    assert summary["pixel_accuracy_percent"] == 90.0


# Cityscapes labelIds in a row: road, road, car, car, person, unlabeled (0), static (4, void in both).
CITY_GT = [[7, 7, 26, 26, 24, 0, 4]]


@pytest.mark.parametrize("pred_ids", [False, True])
@pytest.mark.parametrize("protocol, miou, accuracy, in_mean", [
    # paper: 20 entries, labelId 0 a background class. road TP 1 of GT 2 + predicted 2 -> 1/3; background
    # TP 0 -> 0; car 1, person 1: (1/3 + 0 + 1 + 1) / 4; pixel accuracy 4 of 6
    ("paper", 100 * (1 / 3 + 0 + 1 + 1) / 4, 100 * 4 / 6, 4),
    # standard: 19 classes, 0 void. road TP 1 of GT 2 + predicted 1 -> 1/2 (the pixel predicted background
    # is a miss), car 1, person 1: (1/2 + 1 + 1) / 3; pixel accuracy 4 of 5
    ("standard", 100 * (1 / 2 + 1 + 1) / 3, 100 * 4 / 5, 3)])
def test_cityscapes_paper_and_standard_protocols(tmp_path, protocol, miou, accuracy, in_mean, pred_ids):
    classes = ClassList.preset("cityscapes")
    road, car, person = classes.index("road"), classes.index("car"), classes.index("person")
    if pred_ids:  # background in labelIds is 0
        _save_gt(tmp_path / "pred" / "f_1_leftImg8bit.png", [[7, 0, 26, 26, 24, 7, 26]])
    else:
        _save_pred(tmp_path / "pred" / "f_1_leftImg8bit.png", [[road, 0, car, car, person, road, car]])
    _save_gt(tmp_path / "gt" / "frankfurt" / "f_1_gtFine_labelIds.png", CITY_GT)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, [
        "eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--preset", "cityscapes",
        "--gt-suffix", "_gtFine_labelIds", "--pred-suffix", "_leftImg8bit", "--protocol", protocol,
        "--out", str(out), *(["--pred-ids"] if pred_ids else [])])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == protocol and summary["miou_percent"] == round(miou, 2)
    assert summary["pixel_accuracy_percent"] == round(accuracy, 2) and summary["classes_in_mean"] == in_mean
    scored = 20 if protocol == "paper" else 19
    assert summary["scored_classes"] == scored
    note = "paper protocol" if protocol == "paper" else "standard protocol, background not scored"
    assert f"mIoU {miou:.2f} % over {in_mean} of {scored} classes ({note})" in result.output
    assert f"({note})" in (out / "per_class.md").read_text()


def test_unknown_protocol_is_a_usage_error(two_images):
    pred, gt = two_images
    result = CliRunner().invoke(main, ["eval", "--pred", str(pred), "--gt", str(gt), "--protocol", "official"])
    assert result.exit_code == 2 and "'official' is not one of 'paper', 'standard'" in result.output
    with pytest.raises(InvalidInputError, match="unknown protocol"):
        evaluate(pred, gt, _classes(), protocol="official")
