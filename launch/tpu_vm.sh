#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice): create, set up every host, run the same command on all workers.
# Usage:
#   launch/tpu_vm.sh create            # TPU_NAME, ZONE, ACCELERATOR (e.g. v4-32), RUNTIME (tpu-ubuntu2204-base)
#   launch/tpu_vm.sh setup             # copy this repo to every host, make a venv, pip install '.[tpu]'
#   launch/tpu_vm.sh run CONFIG WORKDIR  # e.g. configs/weak_pfpascal.py:init_from=gs://b/runs/strong gs://b/runs/weak
#   launch/tpu_vm.sh delete
# Data: build the tfds datasets once (launch/README.md), copy <data_dir> to a GCS bucket, and pass
# data_dir=gs://bucket/tfds in the config arg: every host reads its own slice of the global batch from there.
# Work dirs on GCS (gs://...) are shared by all hosts, as Orbax multi-host checkpointing needs.
set -euo pipefail
: "${TPU_NAME:=macosnet}"; : "${ZONE:=us-central2-b}"; : "${ACCELERATOR:=v4-8}"; : "${RUNTIME:=tpu-ubuntu2204-base}"
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"; }

case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" --accelerator-type "$ACCELERATOR" \
      --version "$RUNTIME" ;;
  setup)
    tar -C "$REPO_DIR" --exclude=.venv --exclude=.git -czf /tmp/macosnet_src.tgz .
    gcloud compute tpus tpu-vm scp /tmp/macosnet_src.tgz "$TPU_NAME":~/ --zone "$ZONE" --worker=all
    ssh_all "mkdir -p ~/macosnet && tar -C ~/macosnet -xzf ~/macosnet_src.tgz && python3 -m venv ~/macosnet_venv \
      && ~/macosnet_venv/bin/pip install -q -U pip && ~/macosnet_venv/bin/pip install -q -e '~/macosnet[tpu]'" ;;
  run)
    CONFIG=${2:?config}; WORKDIR=${3:?workdir}
    # --distributed: jax.distributed.initialize() auto-detects the TPU pod; the same command on every worker.
    ssh_all "cd ~/macosnet && TF_CPP_MIN_LOG_LEVEL=2 nohup ~/macosnet_venv/bin/python -m macosnet_jax.main \
      --distributed --config '$CONFIG' --workdir '$WORKDIR' > ~/macosnet_train.log 2>&1 &" ;;
  logs)
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=0 --command "tail -n 50 ~/macosnet_train.log" ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" --quiet ;;
  *)
    sed -n 2,11p "$0"; exit 2 ;;
esac
