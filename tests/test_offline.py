"""Offline proof: the whole chain runs with networking really off (`unshare -n`) and never tries the
network (a socket guard in every Python process records any attempt), on the transformers path and on
both vLLM paths (in-process, and the server `offline-seg llm serve` starts)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO, network_guard, no_network_prefix
from PIL import Image

from offline_seg.classes import ClassList
from offline_seg.demo import demo_image

VOC = ClassList.preset("voc")
OFFLINE_VARIABLES = ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _run_offline(tiny_weights, tmp_path, *options: str) -> Path:
    """`segment` on one image in a subprocess with networking off; the output dir, after checking that
    it ran, opened no socket and wrote the usual outputs."""
    guard = network_guard(tmp_path / "guard")
    image = tmp_path / "street.jpg"
    demo_image(320, 240).save(image)
    env = {
        **os.environ,
        **guard.env(),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "empty-hf-home"),
    }
    env.pop("TRANSFORMERS_OFFLINE", None)
    command = [sys.executable, "-m", "offline_seg.cli", "segment", str(image), "--weights", str(tiny_weights),
               "--out", str(tmp_path / "out"), *options]
    run = subprocess.run(no_network_prefix() + command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not guard.attempts(), f"tried to open network sockets: {guard.attempts()}"
    record = json.loads((tmp_path / "out" / "street.json").read_text())
    assert record["width"] == 320 and record["height"] == 240
    assert Image.open(tmp_path / "out" / "street.png").size == (320, 240)
    assert (tmp_path / "out" / "street_overlay.png").is_file()
    return tmp_path / "out"


def test_chain_runs_with_network_off(tiny_weights, tmp_path):
    _run_offline(tiny_weights, tmp_path)


def test_sam3_runs_with_network_off(tiny_weights, tmp_path):
    """SAM 3 (model, CLIP tokenizer, preprocessing) loads from the local dir alone."""
    out = _run_offline(tiny_weights, tmp_path, "--detector", "sam3", "--labels", "all")
    record = json.loads((out / "street.json").read_text())
    assert record["settings"]["detector"] == "sam3" and record["instances"]


INPROCESS = textwrap.dedent('''
    import json, os, sys
    from offline_seg.classes import ClassList
    from offline_seg.llm import load_llm
    from offline_seg.stages.refiner import Refiner
    from offline_seg.types import Recognition

    def main():
        voc = ClassList.preset("voc")
        llm = load_llm(f"vllm:{sys.argv[1]}?enforce_eager=1&max_model_len=2048")
        refiner = Refiner(llm, voc, max_new_tokens=32)
        post = refiner.post_refine(json.loads(sys.argv[2]))
        pre = refiner.pre_refine([Recognition(("dog", "man"), "a man walking a dog")])
        env = {name: os.environ.get(name) for name in json.loads(sys.argv[3])}
        print("RESULT " + json.dumps({"replies": post.replies, "pre": pre, "stats": llm.stats.snapshot(), "env": env}))

    if __name__ == "__main__":  # vLLM starts its engine with multiprocessing spawn
        main()
''')


def test_inprocess_vllm_runs_with_network_off(vllm_python, smollm2_hf_dir, tmp_path):
    """vLLM's in-process backend (its CPU build) in a network namespace with only loopback, every process
    under the guard; the offline variables come from the backend itself, not from this test."""
    from offline_seg.llm.serve import cpu_environment

    phrases = ["man", "puppy", "couch", "jet"]
    script = tmp_path / "run_vllm.py"
    script.write_text(INPROCESS)
    guard = network_guard(tmp_path / "guard", allow_loopback=True)
    env = {key: value for key, value in os.environ.items() if key not in OFFLINE_VARIABLES}
    env.update(cpu_environment(), **guard.env(str(REPO)))
    done = subprocess.run(
        no_network_prefix(loopback=True) + [vllm_python, str(script), str(smollm2_hf_dir), json.dumps(phrases),
                                            json.dumps(OFFLINE_VARIABLES)],
        capture_output=True, text=True, env=env, timeout=420, cwd=tmp_path,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    assert not guard.attempts(), f"vLLM tried the network: {guard.attempts()}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["env"] == {name: "1" for name in OFFLINE_VARIABLES}
    assert set(result["replies"]) == set(phrases)
    assert all(reply in VOC.names for reply in result["replies"].values())
    [(labels, reply)] = result["pre"]
    assert labels and all(label in VOC.foreground for label in labels) and reply.split(", ") == labels
    assert result["stats"]["calls"] == 2 and result["stats"]["requests"] == 5


def test_vllm_server_runs_offline(vllm_server):
    """The server as `llm serve` starts it: the offline variables in its environment, and after serving
    (the other vLLM tests share this server) no attempt to reach another host."""
    from offline_seg.llm import load_llm
    from offline_seg.stages.refiner import Refiner

    environ = Path(f"/proc/{vllm_server.process.pid}/environ").read_bytes().split(b"\0")
    variables = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
    assert {name: variables.get(name) for name in OFFLINE_VARIABLES} == {name: "1" for name in OFFLINE_VARIABLES}
    result = Refiner(load_llm(f"openai:{vllm_server.base_url}"), VOC).post_refine(["puppy", "lady"])
    assert all(reply in VOC.names for reply in result.replies.values())
    assert not vllm_server.guard.attempts(), f"the vLLM server tried the network: {vllm_server.guard.attempts()}"
