import numpy as np
import pytest

from offline_seg.classes import (
    ClassList,
    as_class_list,
    ensure_names,
    label_key,
    parse_label_list,
    parse_single_label,
    voc_palette,
)
from offline_seg.errors import InvalidInputError


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("Dining-Table", "dining table"),
        ("dining tables", "dining table"),
        ("potted_plants", "potted plant"),
        ("Buses", "bus"),
        ("bus", "bus"),
        ("people", "person"),
        ("wine glasses", "wine glass"),
        ("ponies", "pony"),
        ("boxes", "box"),
        ("traffic-lights!", "traffic light"),
        ("ties", "tie"),
        ("tvs", "tv"),
        ("skis", "ski"),
        ("tennis", "tennis"),
        ("puppies", "puppy"),
    ],
)
def test_label_key_normalises_case_hyphens_and_plurals(text, key):
    assert label_key(text) == key


def test_presets_have_their_dataset_ids():
    voc = ClassList.preset("voc")
    assert len(voc) == 21 and voc.names[0] == "background" and voc.names[-1] == "monitor"
    assert voc.ids == tuple(range(21))
    cityscapes = ClassList.preset("cityscapes")
    assert len(cityscapes) == 20 and cityscapes.ids[cityscapes.index("sky")] == 23
    coco = ClassList.preset("coco81")
    assert len(coco) == 81 and coco.names[0] == "unlabeled" and coco.ids[-1] == 90
    assert coco.ids[coco.index("dining-table")] == 67
    dram = ClassList.preset("dram")
    assert dram.ids == (0, 3, 4, 5, 8, 9, 10, 12, 13, 15, 16, 17)


def test_lookup_table_maps_dataset_ids_to_indices():
    table = ClassList.preset("cityscapes").lookup_table()
    assert table[7] == 1 and table[33] == 19 and table[1] == 255 and table[255] == 255


def test_custom_lists_from_text_and_file(tmp_path):
    assert ClassList.parse("background, cat,dog\nbird").names == ("background", "cat", "dog", "bird")
    path = tmp_path / "mine.txt"
    path.write_text("0: background\n7: road  # comment\n26: car\n")
    classes = ClassList.from_file(path)
    assert classes.names == ("background", "road", "car") and classes.ids == (0, 7, 26)
    assert as_class_list("voc").name == "voc" and as_class_list(["bg", "x"]).names == ("bg", "x")


def test_invalid_class_lists_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="same label"):
        ClassList.parse("background, cat, Cats")
    with pytest.raises(InvalidInputError, match="at least one"):
        ClassList.parse("background")
    with pytest.raises(InvalidInputError, match="unknown preset"):
        ClassList.preset("nope")
    with pytest.raises(InvalidInputError, match="not found"):
        ClassList.from_file(tmp_path / "missing.txt")


def test_parse_label_list_keeps_only_class_members_in_order():
    voc = ClassList.preset("voc")
    reply = "1. Persons\n- dogs, Dining Tables and potted plant. sofa, tvmonitor, person, grass"
    assert parse_label_list(reply, voc) == ["person", "dog", "dining-table", "potted-plant", "sofa"]
    assert parse_label_list("", voc) == []
    assert parse_label_list('"cat", "horse"', voc) == ["cat", "horse"]


def test_parse_single_label():
    voc = ClassList.preset("voc")
    assert parse_single_label("Dining table.", voc) == "dining-table"
    assert parse_single_label("The label is: dog", voc) == "dog"
    assert parse_single_label("cat or dog", voc) is None  # two labels named: ambiguous
    assert parse_single_label("a lamp", voc) is None
    assert parse_single_label("", voc) is None
    cityscapes = ClassList.preset("cityscapes")
    assert parse_single_label("It is a traffic light", cityscapes) == "traffic-light"


def test_ensure_names_maps_and_rejects():
    voc = ClassList.preset("voc")
    assert ensure_names(["Cats", "dog", "cat"], voc) == ["cat", "dog"]
    with pytest.raises(InvalidInputError, match="not in the class list"):
        ensure_names(["lamp"], voc)


def test_voc_palette_first_colours():
    palette = np.array(voc_palette()).reshape(-1, 3)
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette[15].tolist() == [192, 128, 128]  # person


@pytest.mark.parametrize("preset, size, first, last, ids_of", [
    ("ade20k", 150, "wall", "flag", {"wall": 1, "person": 13, "car": 21, "flag": 150}),
    ("pascal-context", 59, "aeroplane", "wood", {"aeroplane": 1, "person": 37, "wood": 59}),
    ("coco-stuff", 171, "person", "wood", {"person": 0, "dining-table": 66, "toothbrush": 89, "banner": 91,
                                           "wood": 181}),
])
def test_long_list_presets_have_their_dataset_ids(preset, size, first, last, ids_of):
    classes = ClassList.preset(preset)
    assert len(classes.foreground) == size and classes.foreground[0] == first and classes.foreground[-1] == last
    assert classes.names[0] == "background" and classes.ids[0] == -1
    for name, dataset_id in ids_of.items():
        assert classes.ids[classes.index(name)] == dataset_id
    assert len(set(classes.ids)) == len(classes.ids)
    # the ground truth's void maps to ignore, never to the background
    void = 255 if preset == "coco-stuff" else 0
    assert classes.class_indices(np.array([void]))[0] == classes.ignore_index


@pytest.mark.parametrize("preset, paper, standard", [
    ("voc", 21, 21), ("coco81", 81, 81), ("dram", 12, 12), ("cityscapes", 20, 19),
    ("ade20k", 150, 150), ("coco-stuff", 171, 171), ("pascal-context", 59, 59)])
def test_scored_classes_follow_the_protocol(preset, paper, standard):
    classes = ClassList.preset(preset)
    assert len(classes.scored) == paper and len(classes.for_protocol("standard").scored) == standard
    background_scored = preset in ("voc", "coco81", "dram", "cityscapes")
    assert (0 in classes.scored) == background_scored
    assert classes.not_scored == (() if background_scored else (0,))
    assert classes.for_protocol("paper") is classes


def test_cityscapes_standard_protocol_makes_label_id_0_void():
    paper = ClassList.preset("cityscapes")
    standard = paper.for_protocol("standard")
    assert standard.names == paper.names and standard.ids[1:] == paper.ids[1:]  # class indices unchanged
    assert standard.not_scored == (0,) and standard.standard_void_ids == ()
    ids = np.array([0, 7, 26, 4])  # unlabeled, road, car, static
    assert paper.class_indices(ids).tolist() == [0, 1, paper.index("car"), 255]
    assert standard.class_indices(ids).tolist() == [255, 1, paper.index("car"), 255]
    assert standard.unknown_ids(ids) == [] and standard.for_protocol("standard") == standard
    with pytest.raises(InvalidInputError, match="unknown protocol 'official'"):
        paper.for_protocol("official")
