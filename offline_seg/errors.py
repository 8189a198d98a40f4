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
        self.missing = [(self.path, component)]
        target = f" --weights {weights_dir}" if weights_dir is not None else ""
        super().__init__(
            f"missing weights file for '{component}': {self.path}\n"
            f"  fetch it on a connected machine with: offline-seg weights pull {component}{target}\n"
            f"  then copy the weights directory here (see `offline-seg weights pack`)."
        )

    def __reduce__(self):
        """Pickled as it stands (message included), so it crosses to the driver from a Ray worker."""
        return _restore, (type(self), self.args, self.__dict__)

    @classmethod
    def of(cls, missing: list[tuple[Path, str]], weights_dir: Path | str | None = None) -> MissingWeightsError:
        """One error for several missing files, (path, component) each, with one pull command for all."""
        first, component = missing[0]
        error = cls(first, component, weights_dir)
        if len(missing) > 1:
            components = list(dict.fromkeys(c for _, c in missing))
            target = f" --weights {weights_dir}" if weights_dir is not None else ""
            lines = "\n".join(f"  - {path} ('{c}')" for path, c in missing)
            error.args = (
                f"{len(missing)} missing weights files:\n{lines}\n"
                f"  fetch them on a connected machine with: offline-seg weights pull {' '.join(components)}{target}\n"
                f"  then copy the weights directory here (see `offline-seg weights pack`).",
            )
        error.missing = list(missing)
        return error


def first_line(error: BaseException) -> str:
    """The first line of an error's message ("" when it has none): what a one-line report shows of it."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


class InvalidInputError(OfflineSegError, ValueError):
    """The user's input (image, class list, option) cannot be used."""


class ModelLoadError(OfflineSegError):
    """A model's files are there but cannot be loaded (truncated, garbled, another format): the same for
    every image, so the run stops once, naming the file, and no image is marked failed for it."""


def _restore(kind: type[OfflineSegError], args: tuple, state: dict) -> OfflineSegError:
    error = kind.__new__(kind, *args)
    error.args = args
    error.__dict__.update(state)
    return error
