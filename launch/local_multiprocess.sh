#!/usr/bin/env bash
# N JAX processes on this machine, one coordinator on 127.0.0.1 -- a multi-host run in miniature.
# Usage: launch/local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS CONFIG WORKDIR [extra flags...]
#   e.g. launch/local_multiprocess.sh 2 2 configs/strong_synthetic.py:runlocal /tmp/mp_run
# On CPU each process gets DEVICES_PER_PROCESS virtual devices; on a GPU box set CUDA_VISIBLE_DEVICES per
# process instead (see README.md). Logs: WORKDIR/logs/process_<i>.log. Exits non-zero if any process failed.
set -euo pipefail
N=${1:?number of processes}; DEV=${2:?devices per process}; CONFIG=${3:?config}; WORKDIR=${4:?workdir}
shift 4
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
PYTHON=${PYTHON:-python}
mkdir -p "$WORKDIR/logs"
pids=()
for ((i = 0; i < N; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$DEV" "$PYTHON" -m macosnet_jax.main \
    --config "$CONFIG" --workdir "$WORKDIR" --coordinator_address "127.0.0.1:$PORT" \
    --num_processes "$N" --process_id "$i" "$@" > "$WORKDIR/logs/process_$i.log" 2>&1 &
  pids+=($!)
done
# Forward Ctrl-C / SIGTERM to every process (each saves a checkpoint at the agreed step, then exits).
trap 'kill -TERM "${pids[@]}" 2>/dev/null' INT TERM
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
echo "processes finished, status $status; logs in $WORKDIR/logs"
exit "$status"
