"""A run's memory: every stage result of every image, in one SQLite file in the output dir.

Two kinds of rows, kept apart on purpose:
- `results`: stage computations (tag ... segment), keyed by the image's *content* hash, the stage and a
  key that hashes the stage's settings with the keys of the stages before it. Byte-identical images share
  them, and changing one setting (say `--points`) makes only that stage and the ones after it miss.
- `images` and `writes`: one row per *input file* (its output name): its status and the files written for
  it. Writing is never shared: two files with the same bytes each get their own outputs.

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    name TEXT PRIMARY KEY,         -- the output name: one row per input file
    source TEXT NOT NULL,
    image_hash TEXT,               -- NULL when the file could not even be read
    status TEXT NOT NULL,          -- pending | done | failed
    reason TEXT,
    updated REAL NOT NULL
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
    name TEXT NOT NULL,
    stage_key TEXT NOT NULL,
    value TEXT NOT NULL,           -- JSON: the paths written
    created REAL NOT NULL,
    PRIMARY KEY (name, stage_key)
);
"""


def settings_key(*parts: Any) -> str:
    """A short stable hash of JSON-able settings (and upstream keys)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class OutputLockedError(OfflineSegError):
    """Another run holds the output folder."""


@dataclass(frozen=True)
class ImageRecord:
    name: str
    source: str
    image_hash: str | None
    status: str
    reason: str | None


_COLUMNS = "name, source, image_hash, status, reason"


class ResultStore:
    """The SQLite store of one output dir. One writer at a time (the run); readers may look any time."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)  # autocommit: one row, one commit
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: WAL is fsynced at every commit, so a committed result survives a power loss too (NORMAL
        # would keep the database consistent but could lose the last results). One fsync per result is
        # cheap next to a model forward pass.
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self._db.executescript(_SCHEMA)

    def _migrate(self) -> None:
        """Stores of earlier versions keyed images by content hash: drop that table (statuses are
        recomputed; stage results are kept and reused)."""
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(images)")]
        if columns and columns[0] != "name":
            self._db.execute("DROP TABLE images")
            self._db.execute("DROP TABLE IF EXISTS failures")

    @classmethod
    def in_dir(cls, out_dir: Path) -> ResultStore:
        return cls(Path(out_dir) / STORE_NAME)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- input files ----------------------------------------------------------------------------
    def add_image(self, name: str, source: str, image_hash: str | None) -> ImageRecord:
        """Register an input file (idempotent). A file whose bytes changed since is pending again."""
        self._db.execute(
            "INSERT INTO images VALUES (?, ?, ?, 'pending', NULL, ?) ON CONFLICT(name) DO UPDATE SET "
            "source=excluded.source, image_hash=excluded.image_hash, "
            "status=CASE WHEN images.image_hash IS excluded.image_hash THEN images.status ELSE 'pending' END, "
            "reason=CASE WHEN images.image_hash IS excluded.image_hash THEN images.reason ELSE NULL END",
            (name, source, image_hash, time.time()),
        )
        return self.image(name)

    def image(self, name: str) -> ImageRecord:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM images WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(name)
        return ImageRecord(*row)

    def images(self, status: str | None = None) -> list[ImageRecord]:
        query = f"SELECT {_COLUMNS} FROM images"
        rows = self._db.execute(query + (" WHERE status = ?" if status else "") + " ORDER BY name",
                                (status,) if status else ())
        return [ImageRecord(*row) for row in rows]

    def set_status(self, name: str, status: str, reason: str | None = None) -> None:
        self._db.execute("UPDATE images SET status = ?, reason = ?, updated = ? WHERE name = ?",
                         (status, reason, time.time(), name))

    # --- stage results (shared by identical content) --------------------------------------------
    def get(self, image_hash: str, stage: str, stage_key: str) -> Any | None:
        row = self._db.execute(
            "SELECT value FROM results WHERE image_hash = ? AND stage = ? AND stage_key = ?",
            (image_hash, stage, stage_key),
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, image_hash: str, stage: str, stage_key: str, value: Any, seconds: float = 0.0) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
            (image_hash, stage, stage_key, json.dumps(value), seconds, time.time()),
        )

    def count(self, stage: str) -> int:
        if stage == "write":
            return int(self._db.execute("SELECT COUNT(*) FROM writes").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM results WHERE stage = ?", (stage,)).fetchone()[0])

    # --- outputs (one per input file, never shared) ---------------------------------------------
    def get_write(self, name: str, stage_key: str) -> Any | None:
        row = self._db.execute("SELECT value FROM writes WHERE name = ? AND stage_key = ?",
                               (name, stage_key)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_write(self, name: str, stage_key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO writes VALUES (?, ?, ?, ?)",
                         (name, stage_key, json.dumps(value), time.time()))


class OutputLock:
    """An exclusive `flock` on OUT/offline_seg.lock for the length of a run: a second run on the same
    folder stops at once instead of interleaving writes. The kernel drops it when the process dies."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
