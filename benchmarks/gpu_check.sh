#!/usr/bin/env bash
# The GPU checks, in one run from the repository root (~8 minutes on an H100/H200; results in docs/measurements.md,
# "GPU", and docs/gpu/):
#   bash benchmarks/gpu_check.sh OUTDIR
# 1. the op/model tests (geometry, correlation, losses, ResNet, matching model, decoder, MaCoSNet, weight import)
#    at true float32 (JAX_DEFAULT_MATMUL_PRECISION=highest): the fixtures' 1e-4 tolerances hold on the GPU too;
# 2. the parity table at the backend's default precision (TF32 convolutions allowed) and at 'highest';
# 3. op timings (bench_ops) and a paper-scale joint train step (bench_joint_step) at both precisions.
# Needs jax (with CUDA), flax, optax, orbax-checkpoint, ml_collections, numpy and pytest; TensorFlow and tfds are
# not needed. On a machine without network access, put wheels of the missing packages in .whl/ first: they are
# installed into a temporary folder for this run only.
set -uo pipefail
OUTDIR=${1:-/tmp/gpu_check}
mkdir -p "$OUTDIR"
if ls .whl/*.whl >/dev/null 2>&1; then
  SITE=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    && export PYTHONPATH=$SITE
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
export TF_CPP_MIN_LOG_LEVEL=2
{ nvidia-smi -L; python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"; } \
  2>&1 | tee "$OUTDIR/env.log"
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 240 python3 -m pytest -q -p no:cacheprovider \
  tests/test_geometry.py tests/test_correlation.py tests/test_losses.py tests/test_resnet.py \
  tests/test_matching_model.py tests/test_decoder.py tests/test_macosnet.py tests/test_weights.py 2>&1 | tee "$OUTDIR/tests_highest_precision.log" | tail -n 25
for precision in default highest; do
  if [ "$precision" = highest ]; then export JAX_DEFAULT_MATMUL_PRECISION=highest; fi
  timeout 150 python3 scripts/parity_report.py 2>&1 | tee "$OUTDIR/parity_${precision}_precision.log" | grep -E "largest rel err|outside" | tail -n 12
done
unset JAX_DEFAULT_MATMUL_PRECISION
timeout 150 python3 benchmarks/bench_ops.py 2>&1 | tee "$OUTDIR/bench_ops.log" | tail -n 8
timeout 240 python3 benchmarks/bench_joint_step.py --batch 4 --precision default,highest 2>&1 | tee "$OUTDIR/bench_joint_step.log" | tail -n 5
