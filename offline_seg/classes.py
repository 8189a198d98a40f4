"""Class lists: the fixed label set of a run, its dataset ids, and how free text maps onto it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from offline_seg.datasets import (ADE20K_150, CITYSCAPES, CITYSCAPES_IDS, COCO81_ENTRIES, COCO_STUFF_STUFF, DRAM,
                                  DRAM_IDS, PASCAL_CONTEXT_59, VOC)
from offline_seg.errors import InvalidInputError
from offline_seg.textfiles import read_text

# The dataset id of a class the ground truth never holds: the background of the long lists (and of Cityscapes
# under its standard protocol). Such a class is not in the mean: see `ClassList.scored`.
NO_ID = -1
# How a benchmark is scored. Only Cityscapes differs: VOC, COCO-81 and DRAM score their background in both,
# the long lists in neither.
PROTOCOLS = {
    "paper": "the paper's class lists (Cityscapes: 20 entries, labelId 0 'unlabeled' scored as background)",
    "standard": "each benchmark's official protocol (Cityscapes: the 19 classes, labelId 0 void)",
}

_IRREGULAR_PLURALS = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
    "knives": "knife", "leaves": "leaf", "shelves": "shelf", "geese": "goose", "feet": "foot",
    "teeth": "tooth", "wolves": "wolf", "calves": "calf", "buses": "bus", "glasses": "glass",
    # plurals in -is of words ending in -i (the -is rule below keeps "tennis", "axis", "iris")
    "skis": "ski", "taxis": "taxi", "kiwis": "kiwi", "bikinis": "bikini", "salamis": "salami",
}
_NO_SINGULAR = {"bus", "glass", "grass", "canvas", "cactus", "octopus", "asparagus", "hummus", "dress"}


def _singular(word: str) -> str:
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word in _NO_SINGULAR:
        return word
    if len(word) == 3 and word.endswith("s") and not set(word[:2]) & set("aeiouy"):
        return word[:2]  # abbreviations: "tvs", "pcs"
    if len(word) <= 3:
        return word
    if word.endswith("ies"):
        return word[:-1] if len(word) == 4 else word[:-3] + "y"  # "ties" -> "tie", "lorries" -> "lorry"
    if word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def label_key(text: str) -> str:
    """The comparison key of a label: case, hyphen/underscore vs space, punctuation and plurals ignored.

    Applied to both the class list and the LLM's words, so `Dining Tables` matches `dining-table`.
    """
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    return " ".join(_singular(word) for word in words)


@dataclass(frozen=True)
class ClassList:
    """An ordered label set. Index 0 is the background class; `ids` are the dataset's pixel values."""

    names: tuple[str, ...]
    ids: tuple[int, ...] = ()
    ignore_index: int = 255
    name: str = "custom"
    void_ids: tuple[int, ...] = ()  # dataset ids meaning "not labelled" besides `ignore_index` (ADE20K's 0)
    # dataset ids the paper scores as a class but the benchmark's standard protocol leaves void (Cityscapes' 0)
    standard_void_ids: tuple[int, ...] = ()
    _keys: dict[str, str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.names) < 2:
            raise InvalidInputError("a class list needs a background class and at least one more label")
        ids = self.ids or tuple(range(len(self.names)))
        if len(ids) != len(self.names):
            raise InvalidInputError(f"{len(self.names)} class names but {len(ids)} dataset ids")
        object.__setattr__(self, "ids", tuple(int(i) for i in ids))
        keys: dict[str, str] = {}
        for label in self.names:
            key = label_key(label)
            if not key:
                raise InvalidInputError(f"empty class name in {list(self.names)!r}")
            if key in keys:
                raise InvalidInputError(f"class names {keys[key]!r} and {label!r} are the same label")
            keys[key] = label
        object.__setattr__(self, "_keys", keys)

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, name: str = "custom") -> ClassList:
        """`"background, cat, dog"` (commas or newlines); the first entry is background."""
        names = [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]
        return cls(tuple(names), name=name)

    @classmethod
    def from_file(cls, path: Path) -> ClassList:
        """One class per line (or comma-separated); optional `id: name` lines give dataset ids."""
        path = Path(path)
        if not path.is_file():
            raise InvalidInputError(f"class list file not found: {path}")
        names: list[str] = []
        ids: list[int] = []
        text = read_text(path, "class list file", "one class name per line")
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            match = re.fullmatch(r"(\d+)\s*[:\t]\s*(.+)", line)
            malformed = re.fullmatch(r"([^\s:,]+)\s*[:\t]\s*(.*)", line)
            if not match and malformed:
                raise InvalidInputError(f"{path}, line {number}: {malformed.group(1)!r} is not a dataset id "
                                        "(write `id: name` with a whole number, or the name alone)")
            if match:
                ids.append(int(match.group(1)))
                names.append(match.group(2).strip())
            else:
                names.extend(part.strip() for part in line.split(",") if part.strip())
        if ids and len(ids) != len(names):
            raise InvalidInputError(f"{path}: give a dataset id on every line or on none")
        if len(set(ids)) != len(ids):
            raise InvalidInputError(f"{path}: a dataset id is given twice")
        return cls(tuple(names), tuple(ids), name=path.stem)

    @classmethod
    def preset(cls, name: str) -> ClassList:
        try:
            return PRESETS[name.lower()]()
        except KeyError:
            raise InvalidInputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None

    # --- lookup -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    # The one place that says which class is the background: the first, index 0 of every class map.
    BACKGROUND_INDEX = 0

    @property
    def background(self) -> str:
        return self.names[self.BACKGROUND_INDEX]

    @property
    def foreground(self) -> tuple[str, ...]:
        return tuple(self.names[i] for i in self.foreground_indices)

    @property
    def foreground_indices(self) -> tuple[int, ...]:
        """Class-map indices of the real classes (everything but the background), in list order."""
        return tuple(i for i in range(len(self.names)) if i != self.BACKGROUND_INDEX)

    def index(self, label: str) -> int:
        return self.names.index(label)

    @property
    def scored(self) -> tuple[int, ...]:
        """Indices of the classes an mIoU averages: those with a dataset id. A class without one (`NO_ID`)
        is never in the ground truth, so it is no class of the mean: pixels predicted as it only count as
        misses of their true class (the standard protocol of the long lists)."""
        return tuple(index for index, dataset_id in enumerate(self.ids) if dataset_id != NO_ID)

    @property
    def not_scored(self) -> tuple[int, ...]:
        """The indices `scored` leaves out (the background of the long lists)."""
        scored = set(self.scored)
        return tuple(index for index in range(len(self.names)) if index not in scored)

    def for_protocol(self, protocol: str) -> ClassList:
        """This list as `protocol` (a key of `PROTOCOLS`) scores it: "standard" makes `standard_void_ids`
        void, so their class loses its dataset id and leaves the mean; class indices do not change."""
        if protocol not in PROTOCOLS:
            raise InvalidInputError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if protocol == "paper" or not self.standard_void_ids:
            return self
        ids = tuple(NO_ID if dataset_id in self.standard_void_ids else dataset_id for dataset_id in self.ids)
        return replace(self, ids=ids, void_ids=(*self.void_ids, *self.standard_void_ids), standard_void_ids=())

    def match(self, text: str) -> str | None:
        """The class-list label that `text` names exactly (up to `label_key`), else None."""
        return self._keys.get(label_key(text))

    def find_all(self, text: str) -> list[str]:
        """Labels named as whole words anywhere in `text`, longest first so `traffic-light` beats `light`."""
        key = f" {label_key(text)} "
        found: list[tuple[int, str]] = []
        for label_k, label in sorted(self._keys.items(), key=lambda kv: -len(kv[0])):
            position = key.find(f" {label_k} ")
            if position >= 0:
                key = key.replace(f" {label_k} ", " " + "_" * len(label_k) + " ")
                found.append((position, label))
        return [label for _, label in sorted(found)]

    def class_indices(self, ids: np.ndarray) -> np.ndarray:
        """Dataset ids → class indices; ids not in the list (void, or beyond the table as in 16-bit maps)
        become `ignore_index`."""
        table = self.lookup_table()
        ids = np.asarray(ids)
        inside = (ids >= 0) & (ids < len(table))
        return np.where(inside, table[np.clip(ids, 0, len(table) - 1)], self.ignore_index)

    def unknown_ids(self, ids: np.ndarray) -> list[int]:
        """Values in a ground-truth map that are neither a class's dataset id nor void: a wrong preset."""
        known = {*self.ids, self.ignore_index, *self.void_ids}
        return [int(v) for v in np.unique(np.asarray(ids)) if int(v) not in known]

    def lookup_table(self) -> np.ndarray:
        """uint8/int LUT from dataset id to class index (ignore_index elsewhere), for ground truth."""
        size = max(max(self.ids), self.ignore_index) + 1
        table = np.full(size, self.ignore_index, dtype=np.int64)
        for index in self.scored:  # a class without a dataset id has no entry: the ground truth never holds it
            table[self.ids[index]] = index
        return table


def _voc() -> ClassList:
    return ClassList.parse(VOC, name="voc")


def _cityscapes() -> ClassList:
    # labelIds 0..33: the ones not evaluated (ego vehicle, static, ...) are void, not a wrong preset
    void = tuple(i for i in range(34) if i not in CITYSCAPES_IDS)
    return ClassList(ClassList.parse(CITYSCAPES).names, CITYSCAPES_IDS, name="cityscapes", void_ids=void,
                     standard_void_ids=(0,))


def _coco81() -> ClassList:
    return ClassList(tuple(n for _, n in COCO81_ENTRIES), tuple(i for i, _ in COCO81_ENTRIES), name="coco81")


def _dram() -> ClassList:
    # DRAM's maps use the VOC ids; the VOC classes DRAM does not evaluate are void
    return ClassList(ClassList.parse(DRAM).names, DRAM_IDS, name="dram",
                     void_ids=tuple(i for i in range(21) if i not in DRAM_IDS))


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(","))


def _ade20k() -> ClassList:
    names = _names(ADE20K_150)
    return ClassList(("background", *names), (NO_ID, *range(1, len(names) + 1)), name="ade20k", void_ids=(0,))


def _coco_stuff() -> ClassList:
    things = COCO81_ENTRIES[1:]
    stuff = _names(COCO_STUFF_STUFF)
    names = ("background", *(name for _, name in things), *stuff)
    ids = (NO_ID, *(coco_id - 1 for coco_id, _ in things), *range(91, 91 + len(stuff)))
    return ClassList(names, ids, name="coco-stuff")


def _pascal_context() -> ClassList:
    names = _names(PASCAL_CONTEXT_59)
    return ClassList(("background", *names), (NO_ID, *range(1, len(names) + 1)), name="pascal-context",
                     void_ids=(0,))


PRESETS = {"voc": _voc, "cityscapes": _cityscapes, "coco81": _coco81, "dram": _dram, "ade20k": _ade20k,
           "coco-stuff": _coco_stuff, "pascal-context": _pascal_context}


def parse_label_list(text: str, classes: ClassList) -> list[str]:
    """Labels of `classes` in an LLM reply such as `"1. Person\\n- dogs, sofa."`, in order, deduplicated.

    Items are split on commas, semicolons, newlines, sentence ends and ` and `; list markers and quotes
    are dropped;
    an item survives only if it names a class-list label exactly (up to `label_key`).
    """
    labels: list[str] = []
    for item in re.split(r"[,;\n]|\.\s|\band\b", text):
        item = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", item).strip().strip("\"'`.:[]() ")
        label = classes.match(item) if item else None
        if label is not None and label not in labels:
            labels.append(label)
    return labels


def parse_single_label(text: str, classes: ClassList) -> str | None:
    """The one label an LLM reply names: an exact match of its first line, else the single label named
    anywhere in it; None when it names none or several (the detection is then dropped)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    first = lines[0].strip().strip("\"'`.:*[]() ")
    exact = classes.match(first)
    if exact is not None:
        return exact
    named = classes.find_all(text)
    return named[0] if len(named) == 1 else None


def voc_palette(count: int = 256) -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved), flat RGB for `Image.putpalette`."""
    palette: list[int] = []
    for index in range(count):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette.extend((r, g, b))
    return palette


def ensure_names(labels: Iterable[str], classes: ClassList) -> list[str]:
    """Map user-given labels (e.g. `--labels cat,dogs`) onto the class list, failing on unknown ones."""
    result: list[str] = []
    for text in labels:
        label = classes.match(text)
        if label is None:
            raise InvalidInputError(f"label {text!r} is not in the class list ({', '.join(classes.names)})")
        if label not in result:
            result.append(label)
    return result


def as_class_list(value: ClassList | str | Sequence[str]) -> ClassList:
    """Accept a ClassList, a preset name, a comma-separated string or a sequence of names."""
    if isinstance(value, ClassList):
        return value
    if isinstance(value, str):
        return ClassList.preset(value) if value.lower() in PRESETS else ClassList.parse(value)
    return ClassList(tuple(value))
