"""The local weights directory: what belongs in it (the manifest), whether it is there (`list`),
whether it is intact (`verify` against a sha256 lock file), and how it gets there (`pull` on a
connected machine, `pack` to carry it across an air gap). Nothing here touches the network except
`pull`, which exists for the connected side."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator

from offline_seg.errors import InvalidInputError, MissingWeightsError
from offline_seg.io.atomic import write_atomically
from offline_seg.io.inputs import safe_relative, sha256_file

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
    archive_sha256: str = ""  # expected digest of `archive`, checked at pull
    convert: tuple[str, ...] = ()  # converters (pip requirements) for a throwaway venv: `archive` -> the model
    revision: str = ""  # pins `repo` (a commit; a tag or branch is resolved to its commit at `pull`)
    url_revision: str = ""  # the commit `urls` name (as `{url_revision}`), recorded for their files
    sha256: dict[str, str] = field(default_factory=dict)  # expected digests of `urls` files, checked at pull
    pull_default: bool = True  # pulled by `weights pull` without arguments (not e.g. a 16 GB alternative)


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
            archive_sha256=raw.get("archive_sha256", ""),
            convert=tuple(raw.get("convert", ())),
            revision=raw.get("revision", ""),
            url_revision=raw.get("url_revision", ""),
            sha256=dict(raw.get("sha256", {})),
            pull_default=bool(raw.get("pull_default", True)),
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

    def missing_in(self, key: str, directory: Path | None = None) -> tuple[str, ...]:
        """The manifest's required files of `key` absent from `directory` (default: its place in this dir);
        () when they, or a complete `alternative` set, are there."""
        entry = self.entry(key)
        directory = self.root / key if directory is None else Path(directory)
        if not directory.is_dir():
            return entry.required
        missing = tuple(p for p in entry.required if not _matches(directory, p))
        if missing and entry.alternative and all(_matches(directory, p) for p in entry.alternative):
            return ()
        return missing

    def status(self, key: str) -> ComponentStatus:
        entry = self.entry(key)
        directory = self.root / key
        missing = self.missing_in(key)
        size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else 0
        return ComponentStatus(entry, directory, not missing, missing, size)

    def path(self, key: str) -> Path:
        """The component's directory, or MissingWeightsError naming the first missing file."""
        status = self.status(key)
        if status.missing:
            raise MissingWeightsError(status.directory / status.missing[0], component=key, weights_dir=self.root)
        return status.directory

    def files(self) -> Iterator[Path]:
        """The model files under the manifest's directories (not hidden download caches)."""
        for key in self.manifest:
            directory = self.root / key
            if directory.is_dir():
                yield from sorted(p for p in directory.rglob("*") if p.is_file()
                                  and not any(part.startswith(".") for part in p.relative_to(directory).parts))

    # --- integrity ----------------------------------------------------------------------------
    def read_lock(self) -> dict[str, dict[str, object]]:
        """The lock file's records, checked: every entry a file under one of the manifest's folders (no
        absolute path, no `..`) with its sha256 and size; a damaged lock is one clear error."""
        path = self.root / LOCK_NAME
        if not path.is_file():
            return {}
        fix = "fetch the weights again (`offline-seg weights pull`) or restore the lock file from the weights tar"
        try:
            lock = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InvalidInputError(f"{path} is damaged ({error}); {fix}") from None
        if not isinstance(lock, dict):
            raise InvalidInputError(f"{path} is not a lock file (not a JSON object); {fix}")
        for name, record in lock.items():
            if safe_relative(name) is None or name.split("/")[0] not in self.manifest:
                raise InvalidInputError(f"{path} lists {name!r}, which is not a file of this weights dir; {fix}")
            if not (isinstance(record, dict) and isinstance(record.get("sha256"), str)
                    and isinstance(record.get("size"), int)):
                raise InvalidInputError(f"{path}: the entry of {name} has no sha256 and size; {fix}")
        return lock

    def write_lock(self, provenance: dict[str, dict[str, str]] | None = None) -> Path:
        """Record sha256 and size of every file under the manifest's directories, and where each came
        from (`source` and the exact `revision`): given in `provenance` (file -> {source, revision}) by a
        pull, else kept from the old lock file while the file is unchanged."""
        old = self.read_lock()
        lock: dict[str, dict[str, object]] = {}
        for p in self.files():
            name = str(p.relative_to(self.root))
            record: dict[str, object] = {"sha256": sha256_file(p), "size": p.stat().st_size}
            origin = (provenance or {}).get(name)
            if origin is None and old.get(name, {}).get("sha256") == record["sha256"]:
                origin = {k: old[name][k] for k in ("source", "revision") if k in old[name]}
            lock[name] = {**record, **(origin or {})}
        path = self.root / LOCK_NAME
        path.write_text(json.dumps(lock, indent=1, sort_keys=True) + "\n")
        return path

    def revisions(self) -> dict[str, list[str]]:
        """Per model, the `source@revision` its files came from (from the lock file), so a lab can say
        exactly what it runs; files without a record (e.g. tiny test models) are left out."""
        found: dict[str, list[str]] = {}
        for name, record in sorted(self.read_lock().items()):
            if "source" in record:
                origin = f"{record['source']}@{record.get('revision') or 'unpinned'}"
                found.setdefault(name.split("/")[0], [])
                if origin not in found[name.split("/")[0]]:
                    found[name.split("/")[0]].append(origin)
        return found

    def verify(self, under: Path | str | None = None, quick: bool = False) -> dict[str, str]:
        """file → "ok" | "missing" | "changed" | "unlocked" (present but not in the lock file). `under`: only
        the files below that directory of the weights dir (one model's); `quick`: sizes only, no sha256."""
        lock_path = self.root / LOCK_NAME
        if not lock_path.is_file():
            raise InvalidInputError(f"no lock file {lock_path}: run `offline-seg weights pull` (or `make-tiny`) first")
        lock = self.read_lock()
        prefix = None if under is None else Path(under).resolve().relative_to(self.root.resolve()).parts
        report: dict[str, str] = {}
        for name, info in lock.items():
            if prefix is not None and Path(name).parts[:len(prefix)] != prefix:
                continue
            path = self.root / name
            if not path.is_file():
                report[name] = "missing"
            elif path.stat().st_size != info["size"] or (not quick and sha256_file(path) != info["sha256"]):
                report[name] = "changed"
            else:
                report[name] = "ok"
        for path in self.files():
            name = str(path.relative_to(self.root))
            if prefix is None or Path(name).parts[:len(prefix)] == prefix:
                report.setdefault(name, "unlocked")
        return report

    def pack(self, archive: Path, overwrite: bool = False) -> Path:
        """A plain tar of the weights dir and its lock file (weights do not compress), written beside, never
        inside, the weights dir and never over an existing file unless `overwrite` (then only a plain file)."""
        archive = Path(archive)
        files = list(self.files())
        if not files:
            raise InvalidInputError(f"no model files in {self.root}: nothing to pack")
        if os.path.commonpath([os.path.realpath(archive), os.path.realpath(self.root)]) == os.path.realpath(self.root):
            raise InvalidInputError(f"{archive} lies inside the weights dir {self.root}; write the archive beside it")
        if archive.exists() or archive.is_symlink():
            if not overwrite or not archive.is_file() or archive.is_symlink():
                raise InvalidInputError(f"{archive} exists; choose a new file name"
                                        + (" or pass --overwrite" if archive.is_file() and not archive.is_symlink() else ""))
        def write(target: Path) -> None:
            with tarfile.open(target, "w") as tar:
                for path in files:
                    tar.add(path, arcname=str(path.relative_to(self.root)))
                if (self.root / LOCK_NAME).is_file():
                    tar.add(self.root / LOCK_NAME, arcname=LOCK_NAME)

        return write_atomically(archive, write)

    # --- connected side only ------------------------------------------------------------------
    def pull(self, key: str) -> Path:
        """Download one model into the weights dir (needs network and `huggingface_hub`), every Hugging
        Face file from one commit (the manifest's `revision`, or the branch head resolved once), and
        record each file's source and revision in the lock file."""
        import fnmatch

        entry = self.entry(key)
        directory = self.root / key
        directory.mkdir(parents=True, exist_ok=True)
        provenance: dict[str, dict[str, str]] = {}
        if entry.patterns or entry.files:
            from huggingface_hub import HfApi, hf_hub_download, snapshot_download

            commit = HfApi().model_info(entry.repo, revision=entry.revision or None).sha
            logger.info("%s: %s at commit %s", key, entry.repo, commit)
            if entry.patterns:
                snapshot_download(entry.repo, revision=commit, allow_patterns=list(entry.patterns), local_dir=directory)
            for name in entry.files:
                hf_hub_download(entry.repo, name, revision=commit, local_dir=directory)
            for path in self.files():
                relative = path.relative_to(directory) if path.is_relative_to(directory) else None
                if relative is not None and (str(relative) in entry.files or any(
                        fnmatch.fnmatch(str(relative), pattern) for pattern in entry.patterns)):
                    provenance[str(path.relative_to(self.root))] = {"source": entry.repo, "revision": commit}
        for name, url in entry.urls.items():
            url = url.format(url_revision=entry.url_revision)
            _download(url, directory / name)
            expected = entry.sha256.get(name)
            if expected and sha256_file(directory / name) != expected:
                (directory / name).unlink()
                raise InvalidInputError(f"{url} does not have the sha256 the manifest pins ({expected}); not kept")
            provenance[f"{key}/{name}"] = {"source": url, "revision": entry.url_revision}
        if entry.archive and entry.convert:  # a model only a converter can read (e.g. TF.js): ONNX comes out
            from offline_seg.models.centernet_pull import pull_centernet

            provenance.update(pull_centernet(_fetch(entry.archive, entry.archive_sha256), directory, entry.convert,
                                             entry.repo))
        elif entry.archive:
            _extract_from_archive(entry.archive, entry.extract, directory)
            for name in entry.extract.values():
                provenance[f"{key}/{name}"] = {"source": entry.archive, "revision": entry.revision or entry.repo}
        self.write_lock(provenance)
        return directory


def _download(url: str, target: Path) -> None:
    import urllib.request

    logger.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - explicit pull on a connected host
        target.write_bytes(response.read())


def _fetch(url: str, sha256: str = "") -> bytes:
    """The bytes at `url`, checked against `sha256` when the manifest pins one."""
    import urllib.request

    logger.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 - explicit pull on a connected host
        data = response.read()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise InvalidInputError(f"{url} does not have the sha256 the manifest pins ({sha256}); not used")
    return data


def _extract_from_archive(url: str, members: dict[str, str], directory: Path) -> None:
    """Download a tar(.gz) and keep only the listed members, renamed; nothing else is written."""
    import io

    data = _fetch(url)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member, name in members.items():
            source = tar.extractfile(member)
            if source is None:
                raise InvalidInputError(f"{url} has no file {member}")
            (directory / name).write_bytes(source.read())


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
