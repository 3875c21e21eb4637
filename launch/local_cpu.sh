#!/usr/bin/env bash
# One process, all local accelerators (or N virtual CPU devices): the simplest launch.
# Usage: launch/local_cpu.sh CONFIG WORKDIR [extra flags]    e.g. launch/local_cpu.sh configs/strong_synthetic.py:runlocal /tmp/s
# DEVICES (default 1) virtual CPU devices exercise the data-parallel path without an accelerator.
set -euo pipefail
CONFIG=${1:?config}; WORKDIR=${2:?workdir}; shift 2
XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES:-1}" exec "${PYTHON:-python}" -m macosnet_jax.main \
  --config "$CONFIG" --workdir "$WORKDIR" "$@"
