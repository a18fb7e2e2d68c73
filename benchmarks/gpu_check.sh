#!/usr/bin/env bash
# The checks a lent GPU machine is for (issues "scale out" and "alanine dipeptide experiments"), in one call of
# under 10 minutes. The device machine reaches no package registry and runs its own image's python3 (with JAX for
# CUDA, equinox and optax, but no OpenMM), so prepare the OpenMM wheels here first (they are git-ignored):
#
#   pip download --no-deps --only-binary :all: --python-version 3.12 --platform manylinux_2_34_x86_64 \
#       --implementation cp -d runs/gpu_wheels openmm==8.6.1
#   pip download --no-deps -d runs/gpu_wheels openmmtools==0.27.0
#
# then call the device tool with   command: bash benchmarks/gpu_check.sh   carry: ["runs/gpu_wheels"]   timeout_s: 590.
# What comes back in $OUT: env.txt, tests.log, train.log, summary.json (time per iteration on the GPU and on the same
# machine's CPU, wall-clock to flow ESS 0.5 / 0.9, the final evaluation of each preset). Each step has its own time
# limit (seconds below; GPU_CHECK_SCALE=0.1 shrinks them all for a dry run on a CPU machine).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-runs/gpu_check}
SCALE=${GPU_CHECK_SCALE:-1}
PY=${PYTHON:-python3}
RUNS=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
secs() { $PY -c "print(max(5, int($1 * $SCALE)))"; }

if ls runs/gpu_wheels/*.whl >/dev/null 2>&1 && ! $PY -c "import openmm" 2>/dev/null; then
  $PY -m pip install -q --no-deps --no-index runs/gpu_wheels/*.whl
fi
{ nvidia-smi 2>&1 | head -15
  $PY -c "import sys, jax, equinox, optax; print(sys.version); print('jax', jax.__version__, 'equinox',
equinox.__version__, 'optax', optax.__version__); print(jax.devices())"
  $PY -c "import openmm; print('openmm', openmm.__version__)"; } > "$OUT/env.txt" 2>&1

# the fast tests of the numerical core on the GPU (OpenMM's own tests need its CPU platform: they run, or skip)
timeout "$(secs 150)" $PY -m pytest -q -x -p no:cacheprovider tests/test_estimators.py tests/test_flows.py \
  tests/test_spline.py tests/test_ais.py tests/test_fab.py tests/test_forcefield.py > "$OUT/tests.log" 2>&1
echo "pytest exit status $?" >> "$OUT/tests.log"

# presets through the command users run: on the GPU, then the same preset on this machine's CPU (the baseline of the
# speed-up is measured in the same call, never taken from another machine)
train() {  # NAME LABEL SECONDS [extra args]
  local name=$1 label=$2 t=$3; shift 3
  echo "== $label: boltzflow train $name --time-limit $t $*" >> "$OUT/train.log"
  timeout "$((t + $(secs 120)))" $PY -m boltzflow.cli train "$name" --out "$RUNS/$label" --time-limit "$t" \
    --no-progress --eval-samples 20000 "$@" >> "$OUT/train.log" 2>&1
  echo "exit status $?" >> "$OUT/train.log"
}
train gmm40 gmm40_gpu "$(secs 90)"
JAX_PLATFORMS=cpu train gmm40 gmm40_cpu "$(secs 30)"
train many_well_32 many_well_32_gpu "$(secs 90)"
JAX_PLATFORMS=cpu train many_well_32 many_well_32_cpu "$(secs 30)"
train aldp_fab aldp_fab_gpu "$(secs 100)"

$PY benchmarks/run_summary.py "$RUNS" --pair gmm40 --pair many_well_32 --out "$OUT/summary.json"
rm -rf "$RUNS"
