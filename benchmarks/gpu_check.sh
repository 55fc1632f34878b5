#!/usr/bin/env bash
# GPU check: one bf16 training step, segment predict, classify features, an XGBoost fit on the GPU
# and a bf16 matmul; prints their throughput (benchmarks/gpu_check.py), and writes $OUT/gpu_check.json
# when $OUT is set. Run from anywhere; about 2-4 minutes on one H100.
#
#   benchmarks/gpu_check.sh                                   # on a GPU machine
#   DEVICE=cpu PYTHON=.venv/bin/python benchmarks/gpu_check.sh  # dry run at tiny sizes
#
# Packages the machine's python lacks (segmentation-models-pytorch, xgboost, pydicom) come as
# wheels in .whl/ at the repository root; they are installed into $WHEEL_SITE (default /tmp/site)
# with pip --no-index --no-deps --target, one by one (a wheel that does not install is reported).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export DEVICE=${DEVICE:-cuda}
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ), device $DEVICE"
if [ "$DEVICE" != cpu ]; then
  nvidia-smi -L || echo "nvidia-smi: not available"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
if ! "$PY" -c "import segmentation_models_pytorch, xgboost, pydicom" 2>/dev/null; then
  SITE=${WHEEL_SITE:-/tmp/site}
  if ls .whl/*.whl >/dev/null 2>&1; then
    for wheel in .whl/*.whl; do
      echo "installing $(basename "$wheel") ($(du -h "$wheel" | cut -f1)) into $SITE"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$wheel" || echo "  $(basename "$wheel"): not installed"
    done
  else
    echo "no .whl/ folder: using the packages python has"
  fi
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - <<'EOF'
import importlib, sys
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| GPUs", torch.cuda.device_count())
for name in ("torchvision", "timm", "segmentation_models_pytorch", "xgboost", "pydicom", "sklearn", "numpy"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '?')} ({module.__file__.rsplit('/', 2)[0]})")
    except Exception as exc:
        print(f"  {name}: not importable ({type(exc).__name__}: {exc})")
EOF
exec "$PY" benchmarks/gpu_check.py
