"""Shared fixtures: a tiny weights dir of every real architecture, written once per test session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Keep the persistent phrase cache (and any other user cache) out of the developer's home.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="offline-seg-test-cache-")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    from offline_seg.tiny import make_tiny_weights

    root = tmp_path_factory.mktemp("tiny-weights")
    make_tiny_weights(root)
    return root


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    from offline_seg.tiny import llama

    directory = tmp_path_factory.mktemp("tiny-llm") / "llm"
    llama.write(directory)
    return directory


REPO = Path(__file__).resolve().parents[1]


def require_asset(path: Path, how: str) -> Path:
    """A real asset the tests need: CI must have it (fail), elsewhere a missing one skips with `how`."""
    if path.exists():
        return path
    message = f"{path} is missing; {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def sam_onnx_dir() -> Path:
    """The real ONNX SAM (MobileSAM TinyViT encoder + SAM decoder) that scripts/setup.sh pulls."""
    directory = Path(os.environ.get("OFFLINE_SEG_SAM_ONNX", REPO / "weights" / "sam_onnx"))
    require_asset(directory / "encoder.onnx", "run `offline-seg weights pull sam_onnx --weights weights`")
    return directory


@pytest.fixture(scope="session")
def voc_mini() -> Path:
    """Five real VOC 2012 val crops with ground truth, in ../shared beside the checkout."""
    return require_asset(REPO.parent / "shared" / "data" / "voc-mini", "it ships in ../shared beside the checkout")


@pytest.fixture(scope="session")
def prelabel_run(tmp_path_factory, sam_onnx_dir, voc_mini) -> Path:
    """A real `run` for exports and the report: two VOC images segmented by the ONNX SAM from
    ground-truth boxes, plus one unreadable file that the run records as failed."""
    import shutil

    from click.testing import CliRunner

    from offline_seg.cli import main

    root = tmp_path_factory.mktemp("prelabel")
    inputs = root / "in"
    inputs.mkdir()
    for name in ("voc_0", "voc_294"):
        shutil.copyfile(voc_mini / "JPEGImages" / f"{name}.png", inputs / f"{name}.png")
    (inputs / "broken.jpg").write_text("not an image")
    result = CliRunner().invoke(main, [
        "run", str(inputs), "--preset", "voc", "--segmenter", f"onnx:{sam_onnx_dir}", "--boxes", "gt",
        "--gt", str(voc_mini / "SegmentationClass"), "--points", "0", "--out", str(root / "run"),
    ])
    assert result.exit_code == 1 and "broken" in result.output, result.output  # exit 1: one image failed
    return root / "run"
