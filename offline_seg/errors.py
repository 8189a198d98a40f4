"""Exceptions with messages a user can act on."""

from __future__ import annotations

from pathlib import Path


class OfflineSegError(Exception):
    """Base class for every error the toolkit raises on purpose."""


class MissingWeightsError(OfflineSegError, FileNotFoundError):
    """A model file is absent from the local weights directory.

    The message names the file and the command that fetches it on a connected machine,
    because the air-gapped user cannot fix it any other way.
    """

    def __init__(self, path: Path | str, component: str, weights_dir: Path | str | None = None):
        self.path = Path(path)
        self.component = component
        target = f" --weights {weights_dir}" if weights_dir is not None else ""
        super().__init__(
            f"missing weights file for '{component}': {self.path}\n"
            f"  fetch it on a connected machine with: offline-seg weights pull {component}{target}\n"
            f"  then copy the weights directory here (see `offline-seg weights pack`)."
        )


class InvalidInputError(OfflineSegError, ValueError):
    """The user's input (image, class list, option) cannot be used."""
