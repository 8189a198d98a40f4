"""Loading a model: a damaged file stops the run once, naming the file, instead of failing every image."""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import Iterator

from offline_seg.errors import ModelLoadError, OfflineSegError, first_line

# Files whose structure can be checked cheaply, to name the damaged one when a load fails.
_CHECKED = ("*.json", "*.safetensors", "*.onnx", "*.txt")


@contextlib.contextmanager
def loading(component: str, path: Path | str) -> Iterator[None]:
    """Around the code that loads `component` from `path` (a file or folder): any error but the toolkit's
    own (e.g. missing weights) and CUDA out-of-memory becomes one `ModelLoadError` naming the damaged file
    and how to check and fetch it again."""
    try:
        yield
    except OfflineSegError:
        raise
    except Exception as error:
        if type(error).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError: the runner retries it
            raise
        path = Path(path)
        culprit = damaged_file(path) or path
        reason = first_line(error) or type(error).__name__
        raise ModelLoadError(
            f"cannot load the {component} model: {culprit} is damaged or not what the loader expects "
            f"({type(error).__name__}: {reason[:300]}); check the weights with `offline-seg weights verify` "
            f"and fetch them again on a connected machine with `offline-seg weights pull {component}`"
        ) from error


def onnx_session(component: str, path: Path, threads: int | None = None, providers: list[str] | None = None):
    """An ONNX Runtime session for one model file (all cores unless `threads`, the CPU unless `providers`),
    opened under `loading`: a damaged file stops the run once, naming it."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.log_severity_level = 3
    with loading(component, path):
        return onnxruntime.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def damaged_file(path: Path) -> Path | None:
    """The first file under `path` whose structure is broken: JSON that does not parse, a safetensors file
    whose header or length is wrong, an ONNX file that is not a protobuf model; None if none is found."""
    files = [path] if path.is_file() else sorted(p for pattern in _CHECKED for p in path.glob(pattern))
    for file in files:
        try:
            if file.suffix == ".json":
                json.loads(file.read_text(encoding="utf-8"))
            elif file.suffix == ".safetensors" and not _safetensors_ok(file):
                return file
            elif file.suffix == ".onnx" and not _onnx_ok(file):
                return file
            elif file.suffix == ".txt":
                file.read_text(encoding="utf-8")
        except (OSError, ValueError):
            return file
    return None


def _safetensors_ok(file: Path) -> bool:
    """The 8-byte header length, the JSON header, and the file as long as its last tensor's end."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return False
        length = struct.unpack("<Q", head)[0]
        if length > size - 8:
            return False
        header = json.loads(handle.read(length))
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    return 8 + length + max(ends, default=0) == size


def _onnx_ok(file: Path) -> bool:
    try:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 4
        onnxruntime.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        return True
    except Exception:  # noqa: BLE001 - whatever ONNX Runtime refuses, the file is not a usable model
        return False
