"""The local weights directory: what belongs in it (the manifest), whether it is there (`list`),
whether it is intact (`verify` against a sha256 lock file), and how it gets there (`pull` on a
connected machine, `pack` to carry it across an air gap). Nothing here touches the network except
`pull`, which exists for the connected side."""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator

from offline_seg.errors import InvalidInputError, MissingWeightsError

logger = logging.getLogger(__name__)

LOCK_NAME = "weights.lock.json"
DEFAULT_WEIGHTS_DIR = Path("weights")


@dataclass(frozen=True)
class ModelEntry:
    """One model of the manifest: its sub-directory `key` of the weights dir and its sources."""

    key: str
    description: str
    repo: str
    license: str = ""
    files: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    urls: dict[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    alternative: tuple[str, ...] = ()
    optional: bool = False  # not needed by the default chain (e.g. the ONNX CPU tier)
    archive: str = ""  # a .tgz/.tar URL to take `extract` (member -> file name) from
    extract: dict[str, str] = field(default_factory=dict)


def load_manifest(path: Path | None = None) -> dict[str, ModelEntry]:
    text = Path(path).read_text() if path else (resources.files("offline_seg") / "manifest.toml").read_text()
    entries = {}
    for key, raw in tomllib.loads(text).items():
        entries[key] = ModelEntry(
            key=key,
            description=raw.get("description", ""),
            repo=raw["repo"],
            license=raw.get("license", ""),
            files=tuple(raw.get("files", ())),
            patterns=tuple(raw.get("patterns", ())),
            urls=dict(raw.get("urls", {})),
            required=tuple(raw.get("required", ())),
            alternative=tuple(raw.get("alternative", ())),
            optional=bool(raw.get("optional", False)),
            archive=raw.get("archive", ""),
            extract=dict(raw.get("extract", {})),
        )
    return entries


def _matches(directory: Path, pattern: str) -> list[Path]:
    return sorted(p for p in directory.glob(pattern) if p.is_file())


@dataclass(frozen=True)
class ComponentStatus:
    entry: ModelEntry
    directory: Path
    present: bool
    missing: tuple[str, ...]
    size_bytes: int


class WeightsDir:
    """A weights directory laid out as `<root>/<model key>/...` per the manifest."""

    def __init__(self, root: Path | str = DEFAULT_WEIGHTS_DIR, manifest: dict[str, ModelEntry] | None = None):
        self.root = Path(root)
        self.manifest = manifest or load_manifest()

    def entry(self, key: str) -> ModelEntry:
        try:
            return self.manifest[key]
        except KeyError:
            raise InvalidInputError(f"unknown model {key!r}; the manifest has {', '.join(self.manifest)}") from None

    def status(self, key: str) -> ComponentStatus:
        entry = self.entry(key)
        directory = self.root / key
        missing = tuple(p for p in entry.required if not _matches(directory, p)) if directory.is_dir() else entry.required
        if missing and entry.alternative and directory.is_dir():
            if all(_matches(directory, p) for p in entry.alternative):
                missing = ()
        size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else 0
        return ComponentStatus(entry, directory, not missing, missing, size)

    def path(self, key: str) -> Path:
        """The component's directory, or MissingWeightsError naming the first missing file."""
        status = self.status(key)
        if status.missing:
            raise MissingWeightsError(status.directory / status.missing[0], component=key, weights_dir=self.root)
        return status.directory

    def files(self) -> Iterator[Path]:
        for key in self.manifest:
            directory = self.root / key
            if directory.is_dir():
                yield from sorted(p for p in directory.rglob("*") if p.is_file())

    # --- integrity ----------------------------------------------------------------------------
    def write_lock(self) -> Path:
        """Record sha256 and size of every file under the manifest's directories."""
        lock = {str(p.relative_to(self.root)): {"sha256": sha256_file(p), "size": p.stat().st_size} for p in self.files()}
        path = self.root / LOCK_NAME
        path.write_text(json.dumps(lock, indent=1, sort_keys=True) + "\n")
        return path

    def verify(self) -> dict[str, str]:
        """file → "ok" | "missing" | "changed" | "unlocked" (present but not in the lock file)."""
        lock_path = self.root / LOCK_NAME
        if not lock_path.is_file():
            raise InvalidInputError(f"no lock file {lock_path}: run `offline-seg weights pull` (or `make-tiny`) first")
        lock = json.loads(lock_path.read_text())
        report: dict[str, str] = {}
        for name, info in lock.items():
            path = self.root / name
            if not path.is_file():
                report[name] = "missing"
            elif path.stat().st_size != info["size"] or sha256_file(path) != info["sha256"]:
                report[name] = "changed"
            else:
                report[name] = "ok"
        for path in self.files():
            report.setdefault(str(path.relative_to(self.root)), "unlocked")
        return report

    def pack(self, archive: Path) -> Path:
        """A plain tar of the weights dir and its lock file (weights do not compress)."""
        archive = Path(archive)
        with tarfile.open(archive, "w") as tar:
            for path in self.files():
                tar.add(path, arcname=str(path.relative_to(self.root)))
            if (self.root / LOCK_NAME).is_file():
                tar.add(self.root / LOCK_NAME, arcname=LOCK_NAME)
        return archive

    # --- connected side only ------------------------------------------------------------------
    def pull(self, key: str) -> Path:
        """Download one model into the weights dir (needs network and `huggingface_hub`)."""
        entry = self.entry(key)
        directory = self.root / key
        directory.mkdir(parents=True, exist_ok=True)
        if entry.patterns or entry.files:
            from huggingface_hub import hf_hub_download, snapshot_download

            if entry.patterns:
                snapshot_download(entry.repo, allow_patterns=list(entry.patterns), local_dir=directory)
            for name in entry.files:
                hf_hub_download(entry.repo, name, local_dir=directory)
        for name, url in entry.urls.items():
            _download(url, directory / name)
        if entry.archive:
            _extract_from_archive(entry.archive, entry.extract, directory)
        self.write_lock()
        return directory


def _download(url: str, target: Path) -> None:
    import urllib.request

    logger.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - explicit pull on a connected host
        target.write_bytes(response.read())


def _extract_from_archive(url: str, members: dict[str, str], directory: Path) -> None:
    """Download a tar(.gz) and keep only the listed members, renamed; nothing else is written."""
    import io
    import urllib.request

    logger.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 - explicit pull on a connected host
        data = response.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member, name in members.items():
            source = tar.extractfile(member)
            if source is None:
                raise InvalidInputError(f"{url} has no file {member}")
            (directory / name).write_bytes(source.read())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# Files up to this size are hashed by content (configs, weight indexes, tokenizers, tag lists and their
# thresholds); larger ones (the weights) by name, size and modification time, which is cheap and changes
# whenever a file is replaced.
_CONTENT_HASH_LIMIT = 1 << 20


def model_identity(path: Path | str) -> str:
    """A short hash of what a model directory (or file) holds, for resume and cache keys: another model
    copied to the same path, an edited config or tag list, or new weights give another identity."""
    path = Path(path)
    if not path.exists():
        return f"absent:{path.resolve()}"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
        if stat.st_size <= _CONTENT_HASH_LIMIT:
            digest.update(file.read_bytes())
        else:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]
