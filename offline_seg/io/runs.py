"""Reading a finished run back: the per-image JSON records it wrote, the images they came from, its class
list (with dataset ids) and its failures, for exports and the report. Nothing is recomputed."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from offline_seg.classes import PRESETS, ClassList
from offline_seg.engines.store import STORE_NAME, ResultStore
from offline_seg.errors import InvalidInputError
from offline_seg.io.images import IMAGE_SUFFIXES
from offline_seg.io.outputs import decode_rle
from offline_seg.stages.composer import instance_map
from offline_seg.types import InstanceMasks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Instance:
    """One instance as the class map shows it: the pixels it won where masks overlap."""

    label: str
    class_index: int
    score: float
    mask: np.ndarray  # (H, W) bool, visible part only

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """x, y, width, height in pixels of the visible part."""
        rows, cols = np.nonzero(self.mask)
        return int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)


@dataclass
class RunImage:
    """One segmented image of a run: its record (as written by `io.outputs`) and where its files are."""

    name: str  # output name: relative path without suffix
    record: dict[str, Any]
    record_path: Path
    source: Path | None  # the input image, when it can be found

    @property
    def height(self) -> int:
        return int(self.record["height"])

    @property
    def width(self) -> int:
        return int(self.record["width"])

    @property
    def mask_path(self) -> Path:
        return self.record_path.with_suffix(".png")

    @property
    def overlay_path(self) -> Path:
        return self.record_path.with_name(f"{self.record_path.stem}_overlay.png")

    @property
    def file_name(self) -> str:
        """The image's file name inside exports: the output name with the source's suffix."""
        suffix = self.source.suffix.lower() if self.source else ".jpg"
        return f"{self.name}{suffix}"

    @cached_property
    def instances(self) -> list[Instance]:
        """Visible instances, in record order; an instance that lost every pixel to others is left out."""
        stored = self.record["instances"]
        if not stored:
            return []
        masks = np.stack([decode_rle(item["segmentation"]) for item in stored])
        scores = np.asarray([item["score"] for item in stored], np.float32)
        labels = [item["label"] for item in stored]
        winner = instance_map(InstanceMasks(masks, np.zeros((len(stored), 4), np.float32), scores, labels,
                                            [np.zeros((0, 2), np.float32)] * len(stored)), self.height, self.width)
        visible = [Instance(item["label"], int(item["class_index"]), float(item["score"]), winner == i)
                   for i, item in enumerate(stored)]
        return [instance for instance in visible if instance.mask.any()]

    def class_map(self) -> np.ndarray:
        """Class indices per pixel, rebuilt from the instances (equal to the run's `<name>.png`)."""
        class_map = np.zeros((self.height, self.width), np.int32)
        for instance in self.instances:
            class_map[instance.mask] = instance.class_index
        return class_map

    def object_map(self) -> np.ndarray:
        """Instance number per pixel: 0 background, 1..N the visible instances in order."""
        objects = np.zeros((self.height, self.width), np.int32)
        for number, instance in enumerate(self.instances, start=1):
            objects[instance.mask] = number
        return objects

    @property
    def score(self) -> float:
        """Mean detection score of the image's instances (0 without any): how sure the run was."""
        scores = [instance["score"] for instance in self.record["instances"]]
        return float(np.mean(scores)) if scores else 0.0


@dataclass
class Run:
    """A run directory read back: its images (in name order), class list, settings and failures."""

    root: Path
    images: list[RunImage]
    classes: ClassList
    settings: dict[str, Any]
    failures: dict[str, str] = field(default_factory=dict)  # image name or path -> reason

    def require_sources(self) -> None:
        """Formats that carry the pixels need every input image; name the missing ones."""
        missing = [image.name for image in self.images if image.source is None]
        if missing:
            raise InvalidInputError(f"{len(missing)} input image(s) of the run not found, e.g. "
                                    f"{', '.join(missing[:3])}; give their folder with --images DIR")


def _is_record(data: object) -> bool:
    return isinstance(data, dict) and {"image", "classes", "instances", "height", "width"} <= data.keys()


def _find_source(name: str, recorded: str | None, images_dir: Path | None) -> Path | None:
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    if images_dir is not None:
        for suffix in IMAGE_SUFFIXES:
            for candidate in (images_dir / f"{name}{suffix}", images_dir / f"{Path(name).name}{suffix}"):
                if candidate.is_file():
                    return candidate
    return None


def class_list_of(record: dict[str, Any]) -> ClassList:
    """The run's class list with its dataset ids: the preset it names when names and ids match (so its
    void ids and protocols score the run as `eval --preset` does), else the recorded ids, else the class
    indices."""
    names = tuple(record["classes"])
    settings = record.get("settings") or {}
    ids = settings.get("class_ids")
    preset = str(settings.get("classes", "")).lower()
    if preset in PRESETS:
        known = PRESETS[preset]()
        if known.names == names and tuple(ids or known.ids) == known.ids:
            return known
    return ClassList(names, tuple(ids or ()), name=preset or "custom")


def read_run(run_dir: Path, images_dir: Path | None = None) -> Run:
    """The run in `run_dir` (made by `run` or `segment`). With its SQLite store the images, their sources
    and the failures come from it; without one every `<name>.json` record under the dir is taken and the
    images are looked up in `images_dir` by name."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InvalidInputError(f"run directory not found: {run_dir}")
    images_dir = Path(images_dir) if images_dir else None
    failures: dict[str, str] = {}
    entries: list[tuple[str, Path, str | None]] = []  # name, record path, recorded source
    if (run_dir / STORE_NAME).is_file():
        with ResultStore.in_dir(run_dir) as store:
            for image in store.images():
                record_path = run_dir / f"{image.name}.json"
                if image.status == "failed":
                    failures[image.name] = image.reason or "failed"
                elif image.status == "done" and record_path.is_file():
                    entries.append((image.name, record_path, image.source))
                elif image.status == "done":
                    failures[image.name] = f"its record {record_path.name} is missing (run the command again)"
    else:
        for record_path in sorted(run_dir.rglob("*.json")):
            entries.append((str(record_path.relative_to(run_dir).with_suffix("")), record_path, None))
    images: list[RunImage] = []
    for name, record_path, source in entries:
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            failures[name] = f"unreadable record {record_path}: {error}"
            continue
        if not _is_record(record):
            continue  # some other JSON (e.g. eval/summary.json)
        images.append(RunImage(name, record, record_path, _find_source(name, source, images_dir)))
    if not images:
        raise InvalidInputError(f"no segmentation records (<name>.json) in {run_dir}")
    classes = class_list_of(images[0].record)
    for image in images[1:]:
        if tuple(image.record["classes"]) != classes.names:
            raise InvalidInputError(f"{image.name} was segmented with another class list than {images[0].name}")
    images.sort(key=lambda image: image.name)
    return Run(run_dir, images, classes, dict(images[0].record.get("settings") or {}), failures)
