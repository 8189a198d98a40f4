#!/usr/bin/env python3
"""Prove, on any machine with PyPI, that the CUDA workstation's install (`GPU=1 bash scripts/setup.sh`) resolves:
pip's resolver on the two requirement files that command installs (`pip install --dry-run --report`, PyPI's
metadata only, nothing downloaded or installed), with no local pip configuration (`--isolated`: PyPI alone, as
on a lab's workstation). Prints the resolved torch / vLLM / bitsandbytes / transformers of each venv and exits
non-zero when a set does not resolve, resolves to other versions than it pins, or gets a torch without CUDA.

    python3 scripts/check_gpu_install.py [--python .venv/bin/python] [--keep DIR]

Run in CI (.ci/run). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETS = {  # venv -> the requirements file setup.sh installs into it
    ".venv": REPO / "scripts" / "gpu" / "requirements.txt",
    ".venv-vllm": REPO / "scripts" / "gpu" / "vllm-requirements.txt",
}
SHOWN = ("torch", "vllm", "bitsandbytes", "transformers", "accelerate", "offline-seg", "triton")


def pins(requirements: Path) -> dict[str, str]:
    found = {}
    for line in requirements.read_text().splitlines():
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==([^\s#;]+)\s*(#.*)?", line)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def resolve(python: str, requirements: Path, report: Path) -> tuple[dict[str, str], float]:
    """name -> version of everything pip would install for `requirements` on this platform."""
    started = time.monotonic()
    done = subprocess.run([python, "-m", "pip", "--isolated", "--disable-pip-version-check", "install", "--dry-run",
                           "--ignore-installed", "--quiet", "--report", str(report), "-r", str(requirements)],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{requirements.relative_to(REPO)} does not resolve:\n{done.stderr[-3000:]}")
    data = json.loads(report.read_text())
    versions = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in data["install"]}
    return versions, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="the Python whose pip resolves (pip >= 22.2)")
    parser.add_argument("--keep", type=Path, help="write pip's JSON reports here")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="gpu-install-"))
    folder.mkdir(parents=True, exist_ok=True)
    failures = []
    rows = []
    for venv, requirements in SETS.items():
        versions, seconds = resolve(args.python, requirements, folder / f"{venv.strip('.')}.json")
        for name, pinned in pins(requirements).items():
            if versions.get(name.replace("_", "-")) != pinned:
                failures.append(f"{venv}: {name} resolves to {versions.get(name)}, not the pinned {pinned}")
        if not any(name.startswith("nvidia-cuda-runtime") for name in versions):
            failures.append(f"{venv}: torch {versions.get('torch')} comes without the CUDA runtime (a CPU build)")
        cuda = next((v for n, v in versions.items() if n.startswith("nvidia-cuda-runtime")), "-")
        shown = [f"{n} {versions[n]}" for n in SHOWN if n in versions and not n.startswith("nvidia")]
        rows.append(f"| {venv} | {requirements.relative_to(REPO)} | {', '.join(shown)} | {cuda} | {len(versions)} | "
                    f"{seconds:.0f} |")
    print("| venv | requirements | resolved | CUDA runtime | packages | resolve s |\n|---|---|---|---|---:|---:|")
    print("\n".join(rows))
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
