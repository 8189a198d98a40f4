"""A run's memory: every stage result of every image, in one SQLite file in the output dir.

Results are keyed by the image's content hash, the stage and a key that hashes the stage's settings
together with the keys of the stages it depends on, so changing one setting (say `--points`) makes only
that stage and the ones after it miss. Each result is committed as soon as it exists (WAL journal), so a
crash or `kill -9` loses at most the result being computed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STORE_NAME = "offline_seg.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    image_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    source TEXT NOT NULL,
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
CREATE TABLE IF NOT EXISTS failures (
    source TEXT PRIMARY KEY,       -- images that could not even be read have no hash
    reason TEXT NOT NULL,
    updated REAL NOT NULL
);
"""


def settings_key(*parts: Any) -> str:
    """A short stable hash of JSON-able settings (and upstream keys)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ImageRecord:
    image_hash: str
    name: str
    source: str
    status: str
    reason: str | None


class ResultStore:
    """The SQLite store of one output dir. One writer at a time (the run); readers may look any time."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)  # autocommit: every write is durable
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def in_dir(cls, out_dir: Path) -> ResultStore:
        return cls(Path(out_dir) / STORE_NAME)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- images ---------------------------------------------------------------------------------
    def add_image(self, image_hash: str, name: str, source: str) -> ImageRecord:
        """Register an image (idempotent); a known image keeps its status and results."""
        self._db.execute(
            "INSERT INTO images VALUES (?, ?, ?, 'pending', NULL, ?) ON CONFLICT(image_hash) DO UPDATE SET "
            "name=excluded.name, source=excluded.source",
            (image_hash, name, source, time.time()),
        )
        self._db.execute("DELETE FROM failures WHERE source = ?", (source,))
        return self.image(image_hash)

    def image(self, image_hash: str) -> ImageRecord:
        row = self._db.execute(
            "SELECT image_hash, name, source, status, reason FROM images WHERE image_hash = ?", (image_hash,)
        ).fetchone()
        if row is None:
            raise KeyError(image_hash)
        return ImageRecord(*row)

    def images(self, status: str | None = None) -> list[ImageRecord]:
        query = "SELECT image_hash, name, source, status, reason FROM images"
        rows = self._db.execute(query + (" WHERE status = ?" if status else "") + " ORDER BY name",
                                (status,) if status else ())
        return [ImageRecord(*row) for row in rows]

    def set_status(self, image_hash: str, status: str, reason: str | None = None) -> None:
        self._db.execute(
            "UPDATE images SET status = ?, reason = ?, updated = ? WHERE image_hash = ?",
            (status, reason, time.time(), image_hash),
        )

    def record_unreadable(self, source: str, reason: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?)", (source, reason, time.time()))

    def unreadable(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT source, reason FROM failures ORDER BY source"))

    # --- stage results --------------------------------------------------------------------------
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
        return int(self._db.execute("SELECT COUNT(*) FROM results WHERE stage = ?", (stage,)).fetchone()[0])
