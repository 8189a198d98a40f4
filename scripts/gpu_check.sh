#!/usr/bin/env bash
# The device check of the GPU journey, for a CUDA machine with no weights (see scripts/gpu_check.py): full-size
# random weights of every stage, the whole chain through the default CUDA path (the managed vLLM server
# included) on N synthetic images at 8, 12 and 24 GiB, the measured peak beside the plan, images/s per stage;
# exit 1 when a peak passes its card. Needs `GPU=1 bash scripts/setup.sh` first.
#   bash scripts/gpu_check.sh [--images 8] [--cards 8,12,24] [--work DIR]
#   bash scripts/gpu_check.sh --smoke --smoke-llm DIR     # the same code on a CPU, tiny weights
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
exec "${PYTHON:-.venv/bin/python}" scripts/gpu_check.py "$@"
