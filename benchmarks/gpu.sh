#!/usr/bin/env bash
# Every GPU check of this project in one call, so that a GPU's minutes go to measuring, not to setting up:
#   1. `unleash register --device cuda` on the 17 val pairs (wall time per pair, file I/O included; aim <= 2 s)
#   2. the refinement in fp32 and under bf16 autocast: TRE, seconds, and how far the fields lie apart
#   3. sampler throughput (the maskgit and the paper schedule)
#   4. training throughput at the paper's sizes against the paper's loop
# On the device machine it reads what benchmarks/gpu_prepare.sh packed into .gpu/ here (SimpleITK, isal, the data);
# elsewhere the project's .venv and ../shared/data (or $UNLEASH_DATA). Results go to $OUT (default benchmarks/results);
# each check runs even when an earlier one fails, and the end says which failed.
#   bash benchmarks/gpu.sh                  # about 5-8 minutes on one H200
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu.sh   # the same plumbing on the CPU, one pair each, a few minutes
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if [ -f .gpu/site.tar.xz ] && [ ! -x "$PY" ]; then  # the device machine: its python3 holds PyTorch
    mkdir -p /tmp/unleash-site
    tar -xJf .gpu/site.tar.xz -C /tmp/unleash-site
    export PYTHONPATH=/tmp/unleash-site:$PWD${PYTHONPATH:+:$PYTHONPATH}
    export UNLEASH_DATA=${UNLEASH_DATA:-$PWD/.gpu/data}
    PY=python3
fi
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-benchmarks/results}
if [ -n "${QUICK:-}" ]; then  # a check of this script, not a measurement
    registration=(--limit 1) precision=(--cases 002) sampler=(--count 1) training=(--size cpu --steps 1 --warmup 1)
else
    registration=() precision=(--cases 002,055,056,117) sampler=(--count 8) training=(--size paper)
fi
mkdir -p "$OUT"
failed=()
check() {  # name, then the command
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    if "$@" 2>&1 | tee "$OUT/${name}_$DEVICE.log"; then
        echo "== $name: done in $((SECONDS - start)) s"
    else
        echo "== $name: FAILED after $((SECONDS - start)) s"
        failed+=("$name")
    fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, SimpleITK; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
set -o pipefail
check registration "$PY" benchmarks/registration.py --device "$DEVICE" "${registration[@]}" --json "$OUT/registration_val_$DEVICE.json"
check precision "$PY" benchmarks/precision.py --device "$DEVICE" "${precision[@]}" --json "$OUT/precision_$DEVICE.json"
check sampler "$PY" benchmarks/sampler.py --device "$DEVICE" "${sampler[@]}" --json "$OUT/sampler_$DEVICE.json"
check training "$PY" benchmarks/training.py --device "$DEVICE" "${training[@]}" --json "$OUT/training_$DEVICE.json"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
echo "all GPU checks done; results in $OUT"
