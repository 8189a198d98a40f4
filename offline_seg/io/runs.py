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
from offline_seg.io.store import STORE_NAME, ImageRecord, ResultStore
from offline_seg.errors import InvalidInputError
from offline_seg.io.images import IMAGE_SUFFIXES
from offline_seg.io.inputs import safe_relative, sha256_file
from offline_seg.io.outputs import decode_rle
from offline_seg.types import InstanceMasks, instance_map

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
    """The input image: where the store says it was (checked against its hash by the caller), else by name
    in `images_dir`."""
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    if images_dir is not None:
        for suffix in IMAGE_SUFFIXES:
            for candidate in (images_dir / f"{name}{suffix}", images_dir / f"{Path(name).name}{suffix}"):
                if candidate.is_file():
                    return candidate
    return None


def check_run_classes(run_dir: Path, classes: ClassList) -> None:
    """Stop when the predictions in `run_dir` were made for another class list than the one to score with."""
    if not (Path(run_dir) / STORE_NAME).is_file():
        return
    with ResultStore.in_dir(run_dir, create=False) as store:
        held = store.class_list()
    if held is not None and (tuple(held[0]) != classes.names or tuple(held[1]) != classes.ids):
        raise InvalidInputError(f"the predictions in {run_dir} were made for another class list ({len(held[0])} "
                                f"classes: {', '.join(held[0][:4])}, ...) than --preset/--classes "
                                f"({len(classes)} classes: {', '.join(classes.names[:4])}, ...)")


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
    and the failures come from it, and only what still holds is read: an image is taken when the run
    finished it, its files are on disk as written, and its input still has the bytes it was segmented from;
    every other one is listed in `failures` by name with the reason (pending, failed, changed, gone). Names
    and paths read from the store are checked as outputs are: none may lead outside `run_dir`. Without a
    store every `<name>.json` record under the dir is taken and images are looked up in `images_dir`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InvalidInputError(f"run directory not found: {run_dir}")
    images_dir = Path(images_dir) if images_dir else None
    failures: dict[str, str] = {}
    entries: list[tuple[str, Path, Path | None]] = []  # name, record path, its source when verified
    if (run_dir / STORE_NAME).is_file():
        with ResultStore.in_dir(run_dir, create=False) as store:
            for image in store.images():
                reason, entry = _check_stored(run_dir, store, image, images_dir)
                if reason:
                    failures[image.name if safe_relative(image.name) else repr(image.name)] = reason
                else:
                    entries.append(entry)
    else:
        for record_path in sorted(run_dir.rglob("*.json")):
            name = str(record_path.relative_to(run_dir).with_suffix(""))
            entries.append((name, record_path, _find_source(name, None, images_dir)))
    images: list[RunImage] = []
    for name, record_path, source in entries:
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            failures[name] = f"unreadable record {record_path}: {error}"
            continue
        if not _is_record(record):
            continue  # some other JSON (e.g. eval/summary.json)
        images.append(RunImage(name, record, record_path, source))
    if not images:
        detail = f" ({len(failures)} listed but not usable, e.g. {next(iter(failures.items()))})" if failures else ""
        raise InvalidInputError(f"no segmentation records (<name>.json) to read in {run_dir}{detail}")
    classes = class_list_of(images[0].record)
    for image in images[1:]:
        if tuple(image.record["classes"]) != classes.names:
            raise InvalidInputError(f"{image.name} was segmented with another class list than {images[0].name}")
    images.sort(key=lambda image: image.name)
    return Run(run_dir, images, classes, dict(images[0].record.get("settings") or {}), failures)


def _check_stored(run_dir: Path, store: ResultStore, image: ImageRecord,
                  images_dir: Path | None) -> tuple[str | None, tuple[str, Path, Path | None]]:
    """(why the image cannot be taken, or None; its name, record path and verified source)."""
    from offline_seg.io.outputs import holds, output_path

    none = (image.name, run_dir, None)
    if safe_relative(image.name) is None:
        return "the store lists an unsafe output name (not read)", none
    if image.status == "failed":
        return image.reason or "failed", none
    if image.status == "gone":
        return image.reason or "its input is no longer there", none
    if image.status != "done":
        return f"not finished by the run ({image.status}): run the command again", none
    written = store.get_write(image.name)
    if written is None or not all(holds(run_dir, entry) for entry in written.files.values()):
        return "its output files changed or went missing since the run: run the command again", none
    record_path = output_path(run_dir, image.name, "record")
    source = _find_source(image.name, image.source, images_dir)
    if source is None:
        return f"its input {image.source} is no longer there (if it moved, give its folder with --images)", none
    if image.image_hash is not None:
        try:
            if sha256_file(source) != image.image_hash:
                return f"its input {source} changed since the run: run the command again", none
        except OSError as error:
            return f"its input {source} cannot be read: {error.strerror or error}", none
    return None, (image.name, record_path, source)
