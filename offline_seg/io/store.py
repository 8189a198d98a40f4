"""A run's memory: every step result of every image, in one SQLite file in the output dir.

Three kinds of rows, kept apart on purpose:
- `results`: step computations (tag ... segment), keyed by the image's *content* hash, the step and the
  step's key (`offline_seg.engines.keys`). Byte-identical images share them, and changing one setting (say
  `--points`) makes only that step and the ones after it miss.
- `images`: one row per *input file* (its output name): where it is, its content hash, its status, and for a
  failure the reason and the step and key that failed (a changed setting retries it).
- `writes`: per input file, the files written for it: paths relative to the output dir with their size and
  sha256, the input's content hash and the settings key they were made under. A file counts as done only
  while all of it still holds on disk; the listed paths are also the only existing files a run overwrites.
`meta` holds the schema version and the class list: one class list per output dir.

Each row is committed as soon as it exists (WAL journal, `synchronous=FULL`: a committed row survives a
crash, `kill -9` and a power loss), so an interruption loses at most the result being computed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_seg.errors import OfflineSegError

STORE_NAME = "offline_seg.sqlite"
LOCK_NAME = "offline_seg.lock"
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    name TEXT PRIMARY KEY,         -- the output name: one row per input file
    source BLOB NOT NULL,          -- the input's absolute path, as bytes (any file name survives)
    image_hash TEXT,               -- NULL when the file could not even be read
    status TEXT NOT NULL,          -- pending | done | failed | gone (the input is no longer there)
    reason TEXT,
    updated REAL NOT NULL,
    failed_step TEXT,              -- the step that failed, and its key then: a changed setting retries it
    failed_key TEXT
);
CREATE TABLE IF NOT EXISTS results (
    image_hash TEXT NOT NULL,
    stage TEXT NOT NULL,
    stage_key TEXT NOT NULL,
    value TEXT NOT NULL,           -- JSON
    seconds REAL NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (image_hash, stage, stage_key)
);
CREATE TABLE IF NOT EXISTS writes (
    name TEXT PRIMARY KEY,         -- the input file's output name
    image_hash TEXT,               -- the input's content when its files were written
    stage_key TEXT NOT NULL,       -- the settings they were written under
    files TEXT NOT NULL,           -- JSON {kind: {"path": relative to the output dir, "size", "sha256"}}
    created REAL NOT NULL
);
"""


def settings_key(*parts: Any) -> str:
    """A short stable hash of JSON-able settings (and upstream keys)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class OutputLockedError(OfflineSegError):
    """Another run holds the output folder."""


class StoreError(OfflineSegError):
    """The output dir's store cannot be used (damaged, unwritable, or made for another class list)."""


@dataclass(frozen=True)
class ImageRecord:
    name: str
    source: str  # the path as the OS names it (non-UTF-8 bytes as surrogate escapes)
    image_hash: str | None
    status: str
    reason: str | None
    failed_step: str | None = None
    failed_key: str | None = None


@dataclass(frozen=True)
class WriteRecord:
    """The files written for one input file, and what they were made from."""

    image_hash: str | None
    stage_key: str
    files: dict[str, dict[str, Any]]  # kind -> {"path": relative to the output dir, "size", "sha256"}

    def paths(self) -> set[str]:
        return {entry["path"] for entry in self.files.values()}


def _source_text(value: bytes | str) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


_COLUMNS = "name, source, image_hash, status, reason, failed_step, failed_key"


class ResultStore:
    """The SQLite store of one output dir. One writer at a time (the run); readers may look any time."""

    def __init__(self, path: Path | str, create: bool = True):
        self.path = Path(path)
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            elif not self.path.is_file():
                raise StoreError(f"no store {self.path}")
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)  # autocommit: one row, one commit
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: WAL is fsynced at every commit, so a committed result survives a power loss too (NORMAL
            # would keep the database consistent but could lose the last results). One fsync per result is
            # cheap next to a model forward pass.
            self._db.execute("PRAGMA synchronous=FULL")
            if create:
                self._migrate()
                self._db.executescript(_SCHEMA)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            else:
                self._db.execute("SELECT COUNT(*) FROM images").fetchone()
        except sqlite3.DatabaseError as error:
            raise self._damaged(error) from None
        except OSError as error:
            raise StoreError(f"cannot open {self.path}: {error.strerror or error}") from None

    def _damaged(self, error: Exception) -> StoreError:
        if isinstance(error, sqlite3.OperationalError) and "readonly" in str(error).lower():
            return StoreError(f"cannot write to {self.path}: read-only ({error}); choose another --out")
        return StoreError(f"the run's store {self.path} is damaged ({error}): move it away and run again with "
                          "another --out; the outputs already written are kept")

    def _execute(self, sql: str, parameters: tuple = ()) -> sqlite3.Cursor:
        """Every statement: a damaged or unwritable database becomes one clear error."""
        try:
            return self._db.execute(sql, parameters)
        except sqlite3.DatabaseError as error:
            raise self._damaged(error) from None

    def _migrate(self) -> None:
        """Stores of earlier versions: images keyed by content hash (dropped: statuses are recomputed), and
        writes keyed by name + key with cwd-relative paths and no file identities (kept as the paths this
        run may overwrite; their outputs are written again)."""
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(images)")]
        if columns and columns[0] != "name":
            self._db.execute("DROP TABLE images")
            self._db.execute("DROP TABLE IF EXISTS failures")
        elif columns and "failed_step" not in columns:
            self._db.execute("ALTER TABLE images ADD COLUMN failed_step TEXT")
            self._db.execute("ALTER TABLE images ADD COLUMN failed_key TEXT")
        writes = [row[1] for row in self._db.execute("PRAGMA table_info(writes)")]
        if writes and "files" not in writes:
            old = self._db.execute("SELECT name, value FROM writes ORDER BY created").fetchall()
            self._db.execute("DROP TABLE writes")
            self._db.executescript(_SCHEMA)
            root = self.path.parent.resolve()
            for name, value in old:
                files = {}
                for kind, path in json.loads(value).items():
                    absolute = Path(path).resolve()
                    if absolute.is_relative_to(root):
                        files[kind] = {"path": str(absolute.relative_to(root)), "size": None, "sha256": None}
                self._db.execute("INSERT OR REPLACE INTO writes VALUES (?, NULL, '', ?, ?)",
                                 (name, json.dumps(files), time.time()))

    @classmethod
    def in_dir(cls, out_dir: Path, create: bool = True) -> ResultStore:
        return cls(Path(out_dir) / STORE_NAME, create=create)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the class list of the output dir ---------------------------------------------------------
    def claim_class_list(self, names: tuple[str, ...], ids: tuple[int, ...]) -> None:
        """Record the class list of this output dir, or stop when it holds results of another one."""
        wanted = json.dumps({"names": list(names), "ids": list(ids)})
        row = self._execute("SELECT value FROM meta WHERE key = 'classes'").fetchone()
        if row is None:
            self._execute("INSERT INTO meta VALUES ('classes', ?)", (wanted,))
            return
        if row[0] != wanted:
            held = json.loads(row[0])
            shown = ", ".join(held["names"][:4]) + (", ..." if len(held["names"]) > 4 else "")
            raise StoreError(f"{self.path.parent} holds results for another class list ({len(held['names'])} "
                             f"classes: {shown}); choose another --out for this one")

    def class_list(self) -> tuple[list[str], list[int]] | None:
        row = self._execute("SELECT value FROM meta WHERE key = 'classes'").fetchone()
        if row is None:
            return None
        held = json.loads(row[0])
        return list(held["names"]), list(held["ids"])

    # --- input files ----------------------------------------------------------------------------
    def add_image(self, name: str, source: Path | str, image_hash: str | None) -> ImageRecord:
        """Register an input file (idempotent). A file whose bytes changed since is pending again."""
        self._execute(
            "INSERT INTO images VALUES (?, ?, ?, 'pending', NULL, ?, NULL, NULL) ON CONFLICT(name) DO UPDATE SET "
            "source=excluded.source, image_hash=excluded.image_hash, "
            "status=CASE WHEN images.image_hash IS excluded.image_hash AND images.status != 'gone' "
            "THEN images.status ELSE 'pending' END, "
            "reason=CASE WHEN images.image_hash IS excluded.image_hash THEN images.reason ELSE NULL END",
            (name, os.fsencode(os.path.abspath(source)), image_hash, time.time()),
        )
        return self.image(name)

    def image(self, name: str) -> ImageRecord:
        row = self._execute(f"SELECT {_COLUMNS} FROM images WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(name)
        return ImageRecord(row[0], _source_text(row[1]), *row[2:])

    def images(self, status: str | None = None) -> list[ImageRecord]:
        query = f"SELECT {_COLUMNS} FROM images"
        rows = self._execute(query + (" WHERE status = ?" if status else "") + " ORDER BY name",
                             (status,) if status else ())
        return [ImageRecord(row[0], _source_text(row[1]), *row[2:]) for row in rows]

    def set_status(self, name: str, status: str, reason: str | None = None, step: str | None = None,
                   key: str | None = None) -> None:
        self._execute("UPDATE images SET status = ?, reason = ?, updated = ?, failed_step = ?, failed_key = ? "
                      "WHERE name = ?", (status, reason, time.time(), step, key, name))

    # --- step results (shared by identical content) ---------------------------------------------
    def get(self, image_hash: str, stage: str, stage_key: str) -> Any | None:
        row = self._execute(
            "SELECT value FROM results WHERE image_hash = ? AND stage = ? AND stage_key = ?",
            (image_hash, stage, stage_key),
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, image_hash: str, stage: str, stage_key: str, value: Any, seconds: float = 0.0) -> None:
        self._execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
                      (image_hash, stage, stage_key, json.dumps(value), seconds, time.time()))

    def count(self, stage: str) -> int:
        if stage == "write":
            return int(self._execute("SELECT COUNT(*) FROM writes").fetchone()[0])
        return int(self._execute("SELECT COUNT(*) FROM results WHERE stage = ?", (stage,)).fetchone()[0])

    # --- outputs (one set per input file, never shared) -----------------------------------------
    def get_write(self, name: str) -> WriteRecord | None:
        row = self._execute("SELECT image_hash, stage_key, files FROM writes WHERE name = ?", (name,)).fetchone()
        return None if row is None else WriteRecord(row[0], row[1], json.loads(row[2]))

    def put_write(self, name: str, record: WriteRecord) -> None:
        self._execute("INSERT OR REPLACE INTO writes VALUES (?, ?, ?, ?, ?)",
                      (name, record.image_hash, record.stage_key, json.dumps(record.files), time.time()))


class OutputLock:
    """An exclusive `flock` on OUT/offline_seg.lock for the length of a run: a second run on the same
    folder stops at once instead of interleaving writes. The kernel drops it when the process dies."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise StoreError(f"cannot write to {self.path.parent}: {error.strerror or error}; choose another "
                             "--out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputLockedError(f"another run (pid {holder}) is using {self.path.parent}; wait for it to "
                                    "finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
