#!/usr/bin/env bash
# Every GPU check of this project in one call, so that a GPU's minutes go to measuring, not to setting up:
#   1. `unleash register --device cuda` on the 17 val pairs (wall time per pair, file I/O included; aim <= 2 s)
#   2. the refinement in fp32 and under bf16 autocast: TRE, seconds, and how far the fields lie apart
#   3. sampler throughput (the maskgit and the paper schedule)
#   4. training throughput at the paper's sizes against the paper's loop
# Needs the project's .venv (carry it along) and ../shared/data (or $UNLEASH_DATA). Results go to $OUT
# (default benchmarks/results); each check runs even when an earlier one fails, and the end says which failed.
#   bash benchmarks/gpu.sh            # about 5-8 minutes on one H200
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
failed=()
check() {  # name, then the command
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    if "$@" 2>&1 | tee "$OUT/${name}_cuda.log"; then
        echo "== $name: done in $((SECONDS - start)) s"
    else
        echo "== $name: FAILED after $((SECONDS - start)) s"
        failed+=("$name")
    fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
set -o pipefail
check registration "$PY" benchmarks/registration.py --device cuda --json "$OUT/registration_val_cuda.json"
check precision "$PY" benchmarks/precision.py --device cuda --cases 002,055,056,117 --json "$OUT/precision_cuda.json"
check sampler "$PY" benchmarks/sampler.py --device cuda --count 8 --json "$OUT/sampler_cuda.json"
check training "$PY" benchmarks/training.py --device cuda --size paper --json "$OUT/training_gpu.json"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
echo "all GPU checks done; results in $OUT"
