"""The Ray engine against a real local Ray instance: the local engine's outputs byte for byte, a killed actor
restarted with every image present once, a driver killed with kill -9 resumed from the store.

Ray runs in a network namespace of its own with only loopback up (`unshare -n`, as root, as CI runs), so
no Ray socket binds to this machine's real address; the drivers join it with `nsenter`. One Ray instance
serves the module: start-up and actor start-up dominate on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from offline_seg.cli import main
from offline_seg.engines.ray_engine import FAULT_ENV, RayOptions, parse_actors, stage_resources
from offline_seg.io.store import STORE_NAME, ResultStore
from offline_seg.errors import InvalidInputError
from offline_seg.config import PipelineConfig

# Bring the namespace's loopback up (SIOCGIFFLAGS / SIOCSIFFLAGS), then hold the namespace until stdin closes.
_HOLDER = """
import fcntl, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, struct.pack("16sh", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))
print("up", flush=True)
sys.stdin.read()
"""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class Cluster:
    enter: list[str]  # the command prefix that runs a process inside Ray's network namespace
    address: str

    def command(self, *args: str) -> list[str]:
        return [*self.enter, sys.executable, "-m", "offline_seg.cli", "run", *args, "--engine", "ray",
                "--ray-address", self.address]


def _stop_namespace(holder: int) -> None:
    """End the processes in the holder's network namespace: this module's Ray and nothing else (`ray stop`
    would end every Ray process on the machine)."""
    namespace = os.readlink(f"/proc/{holder}/ns/net")

    def members() -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and int(entry) != holder and os.readlink(f"/proc/{entry}/ns/net") == namespace:
                    pids.append(int(entry))
            except OSError:  # gone, or a kernel thread
                continue
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in members():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 3
        while members() and time.monotonic() < deadline:
            time.sleep(0.1)


@pytest.fixture(scope="module")
def ray_cluster():
    try:
        import ray  # noqa: F401
    except ImportError:
        _unavailable("Ray is not installed: pip install -e '.[ray]' (scripts/setup.sh does)")
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        _unavailable("the Ray tests run Ray in its own network namespace: they need root, unshare and nsenter")
    holder = subprocess.Popen(["unshare", "-n", sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "up"
    enter = ["nsenter", f"--net=/proc/{holder.pid}/ns/net"]
    ray_bin = str(Path(sys.executable).parent / "ray")
    temp = tempfile.mkdtemp(prefix="osray")  # short: Ray's socket paths live under it
    # No token auth: nothing outside this namespace can reach the cluster, and no ~/.ray/auth_token is needed.
    os.environ["RAY_AUTH_MODE"] = "disabled"  # for the drivers too (this module's subprocesses and CliRunner runs)
    # No idle workers started ahead: the actors run in this test's own runtime env anyway, and 2 cores are few.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_enable_worker_prestart": "0",
           "RAY_prestart_worker_first_driver": "0"}
    try:
        subprocess.run([*enter, ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", "--port=6379",
                        "--num-cpus=6", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
                        "--object-store-memory=100000000"], check=True, env=env, capture_output=True, timeout=120)
        yield Cluster(enter, "127.0.0.1:6379")
    finally:
        _stop_namespace(holder.pid)
        holder.stdin.close()
        holder.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)
        os.environ.pop("RAY_AUTH_MODE", None)


def _images(directory: Path, count: int, size=(64, 48)) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(directory / f"img_{i:02d}.png")
    return directory


def _statuses(out: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(out / STORE_NAME) as db:
        return db.execute("SELECT name, status FROM images ORDER BY name").fetchall()


def _results(out: Path) -> dict[tuple[str, str, str], float]:
    with sqlite3.connect(out / STORE_NAME) as db:
        return {(h, s, k): c for h, s, k, c in db.execute("SELECT image_hash, stage, stage_key, created FROM results")}


def _done(store_path: Path) -> int:
    """Images done so far, read while the run writes (WAL: readers never block the writer)."""
    try:
        with ResultStore(store_path) as store:
            return len(store.images("done"))
    except sqlite3.OperationalError:  # the store is being created
        return 0


def _stage_table(output: str) -> dict[str, tuple[int, int]]:
    """The run summary's table: stage -> (computed, reused)."""
    rows = [line.split() for line in output.splitlines()]
    return {row[0]: (int(row[1]), int(row[2])) for row in rows if len(row) == 4 and row[1].isdigit()}


def test_ray_engine_resumes_after_kill_9_survives_a_killed_actor_and_equals_the_local_engine(
        ray_cluster, tiny_weights, tmp_path):
    """One Ray job is killed with kill -9 mid-run; the re-run, whose segment actor dies mid-batch once, resumes
    from the store and ends with every image done once and the local engine's class maps, byte for byte.
    Post-refinement asks the run's one LLM pool (the tiny LLM, no phrase cache) from a CPU actor."""
    count = 8
    source = _images(tmp_path / "in", count)
    settings = ["--weights", str(tiny_weights), "--labels", "dog, cat", "--refiner", "llm", "--no-phrase-cache",
                "--chunk-size", "1"]
    local = CliRunner().invoke(main, ["run", str(source), "--out", str(tmp_path / "local"), *settings])
    assert local.exit_code == 0, local.output
    out = tmp_path / "ray"
    command = ray_cluster.command(str(source), "--out", str(out), *settings)

    # The driver kills itself with SIGKILL right after committing its 3rd write (a fault point, so the moment
    # does not depend on how fast Ray returns the rows): two images are done, the others are not.
    driver = subprocess.run(command, env={**os.environ, "OFFLINE_SEG_FAULT": "after:write:3"}, capture_output=True,
                            text=True, timeout=600)
    assert driver.returncode == -signal.SIGKILL, "the run was not killed: " + driver.stderr[-2000:]
    before = _results(out)
    done_before = _done(out / STORE_NAME)
    assert 2 <= done_before < count
    segmented_before = sum(stage == "segment" for _, stage, _ in before)

    marker = tmp_path / "segment-actor-killed"
    env = {**os.environ, FAULT_ENV: f"segment:{marker}"}  # the segment actor exits mid-batch, once
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert marker.is_file()  # the actor did die: Ray restarted it and retried its batch
    names = [f"img_{i:02d}" for i in range(count)]
    assert _statuses(out) == [(name, "done") for name in names]
    assert f"{count} of {count} images done" in rerun.stdout
    after = _results(out)
    assert all(after[key] == created for key, created in before.items())  # committed before the kill: reused
    table = _stage_table(rerun.stdout)  # every image segmented once: before the kill, or now (despite the retry)
    assert table["segment"] == (count - segmented_before, segmented_before)
    assert table["write"][0] + table["write"][1] == count
    asked: dict[str, dict[str, str]] = {"ray": {}, "local": {}}
    for name in names:  # the class maps are the local engine's, byte for byte
        assert (out / f"{name}.png").read_bytes() == (tmp_path / "local" / f"{name}.png").read_bytes()
        ray_record = json.loads((out / f"{name}.json").read_text())
        local_record = json.loads((tmp_path / "local" / f"{name}.json").read_text())
        assert ray_record["instances"] == local_record["instances"]
        asked["ray"].update(ray_record["llm_replies"]["post_refine"])  # an image's replies are the calls it
        asked["local"].update(local_record["llm_replies"]["post_refine"])  # caused first: order-dependent
    # some phrase (e.g. "dog cat") was not a class name: the LLM pool was asked, and answered as the local LLM
    assert asked["ray"] == asked["local"] and asked["ray"]
    # nothing left to do: the Ray engine answers from the store without starting Ray
    again = CliRunner().invoke(main, ["run", str(source), "--out", str(out), *settings, "--engine", "ray"])
    assert again.exit_code == 0, again.output
    assert _stage_table(again.output)["write"] == (0, count)


def test_a_damaged_model_in_an_actor_is_one_line_and_marks_no_image(ray_cluster, tiny_weights, tmp_path):
    """The model loads in a worker: its ModelLoadError reaches the driver as the local engine says it (Ray's
    wrapping, retry advice and traceback removed), exit 2, and no image is recorded as failed."""
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    (weights / "sam" / "config.json").write_text("{garbage")
    source = _images(tmp_path / "in", 2)
    out = tmp_path / "out"
    command = ray_cluster.command(str(source), "--out", str(out), "--weights", str(weights), "--labels", "dog",
                                  "--refiner", "embed")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot load the sam model: ") and "config.json is damaged" in last
    assert "Traceback" not in result.stderr and "Failed to apply UDF" not in result.stderr
    assert all(status != "failed" for _, status in _statuses(out))


def test_stage_resources_follow_the_memory_plan_and_the_actor_counts(tiny_weights):
    from offline_seg.pipeline import Pipeline

    pipeline = Pipeline(PipelineConfig(weights_dir=tiny_weights, device="cuda", labels=("dog",), gpu_mem="8GiB", refiner="hybrid",
                                       engine="ray", llm="transformers:"))
    chain, plan = pipeline.chain, pipeline.memory_plan
    stages = ["labels", "detect", "post_refine", "segment", "write"]
    resources = stage_resources(chain, stages, RayOptions(actors=parse_actors("2,segment=3,llm=1")), plan)
    assert {s: r.actors for s, r in resources.items()} == {"labels": 0, "detect": 2, "post_refine": 2, "segment": 3,
                                                           "write": 0, "llm": 1}
    assert resources["post_refine"].num_gpus == 0  # it asks the LLM pool, which holds the LLM
    for stage, model in (("detect", "detector"), ("segment", "segmenter"), ("llm", "llm")):
        share = (plan.stage(model).step_bytes + plan.options.cuda_context_bytes) / plan.gpu_bytes
        assert share <= resources[stage].num_gpus < share + 0.001 + 1e-9
    cpu_chain = Pipeline(PipelineConfig(weights_dir=tiny_weights)).chain
    cpu = stage_resources(cpu_chain, ["tag", "write"], RayOptions())
    assert cpu["tag"].num_gpus == 0 and cpu["tag"].actors == 1 and cpu["write"].actors == 0
    with pytest.raises(InvalidInputError, match="--gpu-mem"):
        stage_resources(chain, stages, RayOptions())
    local_plan = Pipeline(PipelineConfig(weights_dir=tiny_weights, device="cuda", gpu_mem="8GiB")).memory_plan
    with pytest.raises(InvalidInputError, match="engine='ray'"):
        stage_resources(chain, stages, RayOptions(), local_plan)  # a plan that swaps models per chunk
    with pytest.raises(InvalidInputError, match="unknown stage"):
        parse_actors("segmenter=2")


@pytest.mark.parametrize("card", [8, 12, 16, 24])
def test_ray_gpu_shares_fit_the_card_and_one_llm_pool_serves_both_refinements(tmp_path, card):
    """The default CUDA chain (full-size models, the managed vLLM server) planned for Ray on a card of 8, 12, 16
    and 24 GiB: one LLM pool for pre- and post-refinement; every actor's share holds its process (weights,
    workspace, CUDA context) of --gpu-mem; packed onto cards, each card's shares add up to at most one card; a
    cluster with fewer cards is refused before any work instead of waiting forever."""
    from offline_seg.engines.ray_resources import gpus_requested, placement_error, worker_chain
    from offline_seg.pipeline import Pipeline
    from offline_seg.plan.shares import pack

    pipeline = Pipeline(PipelineConfig(weights_dir=tmp_path, device="cuda", gpu_mem=f"{card}GiB", engine="ray"))
    chain, plan = pipeline.chain, pipeline.memory_plan
    assert plan.fits and plan.options.per_process
    resources = stage_resources(chain, list(chain.steps), RayOptions(), plan)
    pools = {stage: r for stage, r in resources.items() if r.actors}
    assert set(pools) == {"tag", "caption", "labels", "detect", "post_refine", "segment", "llm"}
    assert pools["labels"].num_gpus == pools["post_refine"].num_gpus == 0  # they ask the one LLM pool
    models = {"tag": "tagger", "caption": "captioner", "detect": "detector", "segment": "segmenter", "llm": "llm"}
    for stage, model in models.items():
        assert plan.process_bytes(model) <= pools[stage].num_gpus * plan.gpu_bytes  # fits its share of --gpu-mem
        assert pools[stage].num_gpus <= 1.0
    assert pools["llm"].num_gpus == plan.vllm_gpu_memory_utilization  # vLLM claims exactly its Ray share
    llm = worker_chain(chain, resources).model("llm")
    assert (llm.backend, llm.gpu_memory_utilization, llm.option_dict["port"]) == ("vllm_server", pools["llm"].num_gpus,
                                                                                 "0")
    cards = pack(gpus_requested(resources))
    assert len(cards) == plan.cards
    for shares in cards:  # what Ray puts on one card adds up to at most that card, in shares and in bytes
        assert sum(shares) <= 1.0 + 1e-9
    assert sum(plan.process_bytes(m) for m in models.values()) == plan.peak_bytes
    if plan.peak_bytes <= plan.gpu_bytes:
        assert plan.cards == 1
    assert placement_error(resources, plan.cards) is None
    if plan.cards > 1:
        error = placement_error(resources, plan.cards - 1)
        assert f"{plan.cards} card(s) of --gpu-mem when packed" in error and "--engine local" in error


def test_ray_options_need_the_ray_engine(tmp_path):
    source = _images(tmp_path / "in", 1)
    result = CliRunner().invoke(main, ["run", str(source), "--out", str(tmp_path / "out"), "--ray-actors", "2"])
    assert result.exit_code == 2 and "--engine ray" in result.output
    assert not (tmp_path / "out").exists()
