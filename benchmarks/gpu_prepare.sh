#!/usr/bin/env bash
# Packs, on this machine, what the GPU machine lacks for benchmarks/gpu.sh, so that its minutes go to measuring.
# That machine has python3 with PyTorch, numpy, scipy, scikit-image, safetensors and matplotlib, but not SimpleITK or
# isal; it reaches no package index and does not get ../shared; at most 64 MiB travel with the working tree.
# So this writes .gpu/ (git-ignored: it travels only where `carry` names it): the two packages unpacked and
# xz-compressed (a wheel is a zip: 53 MB against 29 MB as .tar.xz) and a copy of ../shared/data (10 MB), and
# checks that the whole fits.
#   bash benchmarks/gpu_prepare.sh    # once, here (about 2 minutes: the xz compression)
# then, through the device tool: command `bash benchmarks/gpu.sh`, carry [".gpu"]; its results land in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${UNLEASH_DATA:-../shared/data}
BUNDLE=.gpu
LIMIT_BYTES=$((64 * 1024 * 1024))
DEVICE_PYTHON=3.12  # the device machine's python3 (its KINDS.md)

[ -d "$DATA/lung250m4b_vessels/val" ] || { echo "gpu_prepare: no data at $DATA (set UNLEASH_DATA)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
versions=$("$PY" -c "import SimpleITK, isal; print(f'SimpleITK=={SimpleITK.__version__} isal=={isal.__version__}')")
# shellcheck disable=SC2086  # two requirement words
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$DEVICE_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$work/wheels" $versions
mkdir -p "$work/site"
for wheel in "$work"/wheels/*.whl; do
    "$PY" -m zipfile -e "$wheel" "$work/site"
done
chmod -R u+w "$BUNDLE.new" "$BUNDLE" 2>/dev/null || true
rm -rf "$BUNDLE.new"
mkdir -p "$BUNDLE.new/data"
XZ_OPT=-T0 tar -cJf "$BUNDLE.new/site.tar.xz" -C "$work/site" .
cp -r "$DATA/lung250m4b_vessels" "$DATA/seed_tokens" "$BUNDLE.new/data/"
chmod -R u+w "$BUNDLE.new"  # the data may be read-only: the next run replaces the copy
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
bundle=$(du -sb "$BUNDLE.new" | cut -f1)
if [ $((tracked + bundle)) -gt $LIMIT_BYTES ]; then
    echo "gpu_prepare: the working tree ($tracked bytes) and $BUNDLE ($bundle bytes) exceed the 64 MiB that travel" >&2
    rm -rf "$BUNDLE.new"
    exit 1
fi
rm -rf "$BUNDLE"
mv "$BUNDLE.new" "$BUNDLE"
echo "$BUNDLE: $versions for python $DEVICE_PYTHON and the data; $(( (tracked + bundle) / 1048576 )) of 64 MiB travel"
echo "device tool: run, command 'bash benchmarks/gpu.sh', carry [\"$BUNDLE\"], timeout_s 600"
