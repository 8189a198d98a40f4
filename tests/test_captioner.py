"""Captioner: the tiny BLIP-2 round trip through Blip2Captioner, offline and deterministic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from offline_seg.stages.captioner import Blip2Captioner, Captioner
from offline_seg.errors import MissingWeightsError


def test_missing_dir_names_a_file(tmp_path: Path):
    with pytest.raises(MissingWeightsError) as error:
        Blip2Captioner(tmp_path / "blip2").caption(Image.new("RGB", (16, 16)))
    assert error.value.component == "blip2"
    assert error.value.path == tmp_path / "blip2" / "config.json"


def test_missing_preprocessor_config_is_named(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(MissingWeightsError, match="preprocessor_config.json"):
        Blip2Captioner(tmp_path).caption(Image.new("RGB", (16, 16)))


@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory) -> Blip2Captioner:
    from offline_seg.tiny import blip2

    directory = blip2.write(tmp_path_factory.mktemp("blip2") / "blip2", seed=0)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert (directory / name).is_file(), name
    return Blip2Captioner(directory, max_new_tokens=8)


def test_tiny_blip2_captions_deterministically(tiny_captioner: Blip2Captioner):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert isinstance(tiny_captioner, Captioner)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    first = tiny_captioner.caption(image)
    assert isinstance(first, str) and first and first == first.strip()
    assert "<image>" not in first and "</s>" not in first
    assert tiny_captioner.caption(image) == first

    other = Image.new("L", (40, 30), 128)  # grayscale input is converted
    batch = tiny_captioner.caption_batch([image, other])
    assert len(batch) == 2 and batch[0] == first and isinstance(batch[1], str)
    assert tiny_captioner.caption_batch([]) == []
