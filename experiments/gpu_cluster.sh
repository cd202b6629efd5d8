#!/usr/bin/env bash
# ViT-22B (or a smaller MODEL_SIZE) on a multi-host GPU cluster, one process
# per host with all its GPUs. Run on every host, e.g. under SLURM:
#   srun --ntasks-per-node=1 env NUM_HOSTS=$SLURM_NNODES \
#     HOST_IDX=$SLURM_NODEID SERVER_ADDR=$HEAD_NODE:12345 \
#     DATA_DIR=/path/to/jft JOB_DIR=/path/to/shared/runs/vit22b \
#     experiments/gpu_cluster.sh
#
# Example layout: 128 hosts x 8 GPUs = 1,024 devices; within a host (NVLink)
# 8-way model parallel, across hosts 128-way data parallel:
# ICI_MESH_SHAPE=(1, 8), DCN_MESH_SHAPE=(128, 1).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
: "${DATA_DIR:?set DATA_DIR to the TFRecord directory (data/README.md)}"
: "${JOB_DIR:?set JOB_DIR to a directory shared by all hosts}"
: "${NUM_HOSTS:?}" "${HOST_IDX:?}" "${SERVER_ADDR:?host:port of host 0}"
NUM_HOSTS_DATA=${NUM_HOSTS_DATA:-$NUM_HOSTS}
GPUS_PER_HOST=${GPUS_PER_HOST:-8}

# Overlap collectives with compute: latency-hiding scheduler, async
# collectives, and reduce-scatter/all-gather combining thresholds.
export XLA_FLAGS="\
 --xla_gpu_enable_latency_hiding_scheduler=true\
 --xla_gpu_enable_async_collectives=true\
 --xla_gpu_enable_async_all_gather=true\
 --xla_gpu_enable_async_reduce_scatter=true\
 --xla_gpu_enable_async_all_reduce=true\
 --xla_gpu_enable_highest_priority_async_stream=true\
 --xla_gpu_all_reduce_combine_threshold_bytes=51200\
 --xla_gpu_enable_triton_gemm=false"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}

"$PY" -m paxml.main \
  --exp=vit22b_pax.experiments.ViT22BJFT \
  --job_log_dir="$JOB_DIR" \
  --eval_on_test \
  --multiprocess_gpu \
  --server_addr="$SERVER_ADDR" \
  --num_hosts="$NUM_HOSTS" \
  --host_idx="$HOST_IDX" \
  --fdl.DATA_DIR="'$DATA_DIR'" \
  --fdl.ICI_MESH_SHAPE="(1, $GPUS_PER_HOST)" \
  --fdl.DCN_MESH_SHAPE="($NUM_HOSTS_DATA, 1)" \
  --fdl.GLOBAL_BATCH_SIZE=65536 \
  --fdl.PEAK_FLOPS_PER_DEVICE=989e12 \
  "$@"
