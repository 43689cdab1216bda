#!/usr/bin/env bash
# The CUDA checks of the README's "Scale out" section, prepared to finish within ~8 minutes on one CUDA machine.
#   bash analysis/gpu_check.sh [--cpu-smoke]
# Needs torch, timm, pandas, safetensors and this package (PYTHONPATH=. is set here). Without Ray it prints the
# training-step and latency tables (analysis/gpu_check.py, in-process); with Ray installed it also trains one
# supernet epoch on 1 GPU and on all of them, and runs the quickstart end to end with its phase times.
# --cpu-smoke runs the Python part at toy sizes on CPU (what CI can check) and skips the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
PY="${PYTHON:-python}"
OUT="${OUT:-$(mktemp -d)}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PY" analysis/gpu_check.py "$@"
if [[ " $* " == *" --cpu-smoke "* ]] || ! "$PY" -c "import ray" 2>/dev/null; then
  echo "skipped: 1 vs all GPUs and the quickstart (need Ray and CUDA)"
  exit 0
fi
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if (( GPUS > 1 )); then
  timeout 180 "$PY" analysis/bench_distributed.py --workers "$GPUS" --images 8192 --device cuda \
    || echo "multi-GPU check failed"
fi
started=$(date +%s)
timeout 300 "$PY" -m morf_search.cli run search_spaces/quickstart.yaml --name gpu-check --runs "$OUT" \
  >"$OUT/quickstart.log" 2>&1 || { tail -20 "$OUT/quickstart.log"; echo "quickstart did not finish in 300 s"; }
echo "quickstart on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1): $(( $(date +%s) - started )) s"
"$PY" - "$OUT/gpu-check/manifest.json" <<'PY'
import json, sys
phases = json.load(open(sys.argv[1]))["phases"]
print("| phase | status | seconds | workers | device | precision |\n|---|---|---|---|---|---|")
for name, p in phases.items():
    print(f"| {name} | {p.get('status')} | {p.get('seconds', 0):.1f} | {p.get('workers', '')} | {p.get('device', '')} "
          f"| {p.get('precision', '')} |")
PY
