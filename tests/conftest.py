"""Shared fixtures: a tiny weights dir of every real architecture, written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
