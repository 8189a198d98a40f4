"""The user's text files (class lists, phrase lists, prompt templates, image lists), read as UTF-8: a file
that cannot be read, or is not UTF-8, is one line naming it and saying what it should hold."""

from __future__ import annotations

from pathlib import Path

from offline_seg.errors import InvalidInputError


def read_text(path: Path | str, what: str, holds: str = "") -> str:
    """The text of `path`; `what` names the file in the error (e.g. "class list file"), `holds` says what
    it should contain (e.g. "one class name per line")."""
    path = Path(path)
    hint = f": {holds}" if holds else ""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{what} {path} is not UTF-8 text ({error.reason} at byte {error.start}){hint}") \
            from None
    except OSError as error:
        raise InvalidInputError(f"cannot read {what} {path}: {error.strerror or error}") from None
