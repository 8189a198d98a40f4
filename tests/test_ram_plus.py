"""RAM++: official key names and size, checkpoint fix-ups, the tiny round trip, tiling, missing files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from offline_seg.errors import MissingWeightsError
from offline_seg.models.ram_plus import CHECKPOINT_NAME, RamPlus, RamPlusConfig
from offline_seg.models.ram_plus_checkpoint import load_ram_plus, save_ram_plus
from offline_seg.stages.tagger import RamPlusTagger, Tagger, split_tiles
from offline_seg.tiny import ram_plus as tiny_ram_plus


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ram") / "ram_plus"
    tiny_ram_plus.write(directory, seed=0)
    return directory


def _image(seed: int, size=(96, 80)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# --- official architecture ---------------------------------------------------------------------


def test_full_config_has_official_keys_and_size():
    with torch.device("meta"):
        model = RamPlus(RamPlusConfig())
    keys = set(official_state_dict_keys(model))
    for key in [
        "label_embed",
        "reweight_scale",
        "image_proj.weight",
        "wordvec_proj.weight",
        "fc.weight",
        "fc.bias",
        "visual_encoder.patch_embed.proj.weight",
        "visual_encoder.patch_embed.norm.weight",
        "visual_encoder.layers.0.blocks.1.attn_mask",
        "visual_encoder.layers.2.blocks.17.attn.relative_position_bias_table",
        "visual_encoder.layers.2.blocks.17.attn.relative_position_index",
        "visual_encoder.layers.2.blocks.17.mlp.fc2.weight",
        "visual_encoder.layers.2.downsample.reduction.weight",
        "visual_encoder.layers.3.blocks.1.norm2.bias",
        "visual_encoder.norm.weight",
        "vision_multi.encoder.layer.1.crossattention.self.query.weight",
        "vision_multi.encoder.layer.1.crossattention.self.key.weight",
        "vision_multi.encoder.layer.1.crossattention.output.LayerNorm.weight",
        "vision_multi.encoder.layer.1.intermediate.dense.weight",
        "vision_multi.encoder.layer.1.output.dense.weight",
    ]:
        assert key in keys, key
    # last stage: 12x12 map = one window, so no shift and no mask (as in Swin)
    assert "visual_encoder.layers.3.blocks.1.attn_mask" not in keys
    assert not any(".attention." in k or "embeddings" in k or "pooler" in k or k.startswith("visual_encoder.head")
                   for k in keys)

    params = dict(model.named_parameters())
    assert "tagging_head.encoder.layer.1.crossattention.self.query.weight" in params
    assert params["label_embed"].shape == (4585 * 51, 512)
    assert params["image_proj.weight"].shape == (512, 1536)
    assert params["wordvec_proj.weight"].shape == (768, 512)
    assert params["tagging_head.encoder.layer.0.crossattention.self.key.weight"].shape == (768, 512)
    assert params["visual_encoder.layers.2.blocks.17.attn.relative_position_bias_table"].shape == (23 * 23, 24)
    assert params["fc.weight"].shape == (1, 768)
    assert sum(p.numel() for p in model.parameters()) == 329_493_046  # Swin-L 195M + label_embed 120M + head


def official_state_dict_keys(model: RamPlus) -> list[str]:
    """Key names of the official file, computed without materialising a meta model's tensors."""
    names = [k.replace("tagging_head.", "vision_multi.", 1) if k.startswith("tagging_head.") else k
             for k in model.state_dict()]
    for name, module in model.visual_encoder.named_modules():
        if type(module).__name__ == "SwinBlock":
            names.append(f"visual_encoder.{name}.attn.relative_position_index")
            if module.shift:
                names.append(f"visual_encoder.{name}.attn_mask")
    return names


# --- checkpoint I/O -----------------------------------------------------------------------------


def test_tiny_checkpoint_is_official_format(tiny_dir):
    checkpoint = torch.load(tiny_dir / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    state = checkpoint["model"]
    assert any(k.startswith("vision_multi.") for k in state)
    assert not any(k.startswith("tagging_head.") for k in state)
    assert "visual_encoder.layers.0.blocks.0.attn.relative_position_index" in state
    assert "visual_encoder.layers.0.blocks.1.attn_mask" in state


def test_load_round_trip_and_fixups(tiny_dir, tmp_path, caplog):
    model = load_ram_plus(tiny_dir / CHECKPOINT_NAME)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(pixels)
    assert reference.shape == (2, len(tiny_ram_plus.TAGS))
    assert ((reference > 0) & (reference < 1)).all()

    # a 5x5 table (window 3) where the model has 7x7 (window 4): the loader must resize it, drop index
    # buffers of the other size, and ignore keys the inference model has no use for
    state = torch.load(tiny_dir / CHECKPOINT_NAME, map_location="cpu", weights_only=True)["model"]
    key = "visual_encoder.layers.0.blocks.0.attn.relative_position_bias_table"
    state[key] = torch.randn(5 * 5, state[key].shape[1])
    state["visual_encoder.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(9, 9, dtype=torch.long)
    state["text_encoder.embeddings.word_embeddings.weight"] = torch.zeros(3, 4)
    # already-renamed keys are accepted next to `vision_multi.` ones
    key = "encoder.layer.0.output.dense.weight"
    state["tagging_head." + key] = state.pop("vision_multi." + key)
    (tmp_path / "ram_plus_config.json").write_text((tiny_dir / "ram_plus_config.json").read_text())
    torch.save({"model": state}, tmp_path / "other.pth")
    with caplog.at_level("INFO", logger="offline_seg.models.ram_plus_checkpoint"):
        loaded = load_ram_plus(tmp_path / "other.pth")
    assert "dropped 1 checkpoint keys" in caplog.text
    assert loaded.visual_encoder.layers[0].blocks[0].attn.relative_position_bias_table.shape == (7 * 7, 1)
    with torch.no_grad():
        assert torch.isfinite(loaded(pixels)).all()
        # the un-touched layers loaded the same tensors
        assert torch.equal(loaded.fc.weight, model.fc.weight)

    # save -> load reproduces the outputs exactly
    save_ram_plus(model, tmp_path / "again" / CHECKPOINT_NAME)
    with torch.no_grad():
        assert torch.equal(load_ram_plus(tmp_path / "again" / CHECKPOINT_NAME)(pixels), reference)


def test_interpolation_keeps_a_constant_table():
    from offline_seg.models.ram_plus_checkpoint import _interpolate_bias_table

    table = torch.full((5 * 5, 2), 0.25)
    resized = _interpolate_bias_table(table, 7 * 7, "t")
    assert resized.shape == (49, 2)
    assert torch.allclose(resized, torch.full((49, 2), 0.25))


def test_missing_weights_name_the_file(tmp_path, tiny_dir):
    with pytest.raises(MissingWeightsError, match=CHECKPOINT_NAME):
        RamPlusTagger(tmp_path / "nowhere").tag(_image(0))
    with pytest.raises(MissingWeightsError, match="ram_tag_list.txt"):
        directory = tmp_path / "no-tags"
        directory.mkdir()
        (directory / CHECKPOINT_NAME).write_bytes((tiny_dir / CHECKPOINT_NAME).read_bytes())
        RamPlusTagger(directory).tag(_image(0))
    with pytest.raises(MissingWeightsError, match="x.pth"):
        load_ram_plus(tmp_path / "x.pth")


# --- tagger ------------------------------------------------------------------------------------


def test_tagger_round_trip_is_deterministic(tiny_dir, tmp_path):
    tagger = RamPlusTagger(tiny_dir)
    assert isinstance(tagger, Tagger)
    assert tagger._model is None  # lazy
    images = [_image(1), _image(2, (1000, 600)), Image.new("RGB", (50, 70), (20, 200, 30))]
    batch = tagger.tag_batch(images)
    for image, tags in zip(images, batch):
        assert tags, "the tiny model must yield tags"
        assert set(tiny_ram_plus.ALWAYS) <= set(tags) < set(tiny_ram_plus.TAGS)
        assert tags == [t for t in tiny_ram_plus.TAGS if t in tags]  # tag-list order
        assert all(type(t) is str for t in tags)
        assert tagger.tag(image) == tags

    # the writer is deterministic: a second copy tags identically
    tiny_ram_plus.write(tmp_path / "copy", seed=0)
    assert (tmp_path / "copy" / CHECKPOINT_NAME).read_bytes() == (tiny_dir / CHECKPOINT_NAME).read_bytes()
    assert RamPlusTagger(tmp_path / "copy").tag_batch(images) == batch


def test_default_threshold_without_file(tiny_dir, tmp_path):
    for name in (CHECKPOINT_NAME, "ram_plus_config.json", "ram_tag_list.txt"):
        (tmp_path / name).write_bytes((tiny_dir / name).read_bytes())
    tagger = RamPlusTagger(tmp_path)
    tagger.tag(_image(3))
    assert torch.allclose(tagger.model.class_threshold, torch.full((len(tiny_ram_plus.TAGS),), 0.68))
    assert set(tagger.tag(_image(3))) <= set(tiny_ram_plus.TAGS)


@pytest.mark.parametrize(
    "size, count, tile",
    [
        ((640, 480), 1, (640, 480)),
        ((642, 480), 4, (321, 240)),
        ((1000, 600), 4, (500, 300)),
        ((2000, 700), 16, (500, 175)),
        ((1280, 1280), 4, (640, 640)),
        ((1280, 100), 4, (640, 50)),
        ((1282, 100), 16, None),
    ],
)
def test_split_tiles(size, count, tile):
    image = Image.new("RGB", size)
    tiles = split_tiles(image)
    assert len(tiles) == count
    assert tile is None or all(t.size == tile for t in tiles)
    assert all(max(t.size) <= 640 for t in tiles)
    assert sum(t.size[0] * t.size[1] for t in tiles) == size[0] * size[1]


def test_split_tiles_order_and_odd_sizes():
    image = Image.fromarray(np.arange(9 * 5 * 3, dtype=np.uint8).reshape(5, 9, 3))
    tiles = split_tiles(image, max_side=5)
    assert [t.size for t in tiles] == [(4, 2), (5, 2), (4, 3), (5, 3)]
    assert np.array_equal(np.asarray(tiles[0]), np.asarray(image)[:2, :4])
    assert np.array_equal(np.asarray(tiles[3]), np.asarray(image)[2:, 4:])
