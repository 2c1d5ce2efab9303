#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command on every host, which find each other through
# jax.distributed.initialize()'s TPU detection. Run from your workstation:
#
#   TPU=my-v5p-64 ZONE=us-east5-a bash launch/tpu_pod.sh \
#       --config configs/hour_llava.py:7b,stage=3 --workdir /mnt/runs/hl7b-s3 \
#       data.root=/mnt/data train.init=/mnt/runs/hl7b-s2/params mesh.fsdp=-1
#
# The workdir must be one filesystem every host sees (NFS, Filestore, or a bucket mounted with
# gcsfuse): checkpoints, metrics and the Grain state are plain files.
# Assumes the repository is checked out at ~/hourjax on every host (e.g. by a startup script or
# `gcloud compute tpus tpu-vm scp --worker=all`) and the data mounted at the same path.
# The TPU runtime needs the `tpu` extra's libtpu; launch/setup.sh installs it.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
ARGS=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd ~/hourjax && source launch/setup.sh && python -m launch.train $ARGS 2>&1 | tee -a ~/hourjax_train.log"
