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

# XLA flags, before any XLA_FLAGS you set (a flag given twice: the last
# wins, so yours override these).
# Windowed einsum: --xla_gpu_threshold_for_windowed_einsum_mib=0 makes XLA
#   decompose every sharded einsum (operands over 0 MiB; default 100000)
#   into chunk transfers overlapped with chunk multiplies, and
#   --xla_gpu_multi_streamed_windowed_einsum=true runs those multiplies on
#   several compute streams: the compiler's alternative to the
#   COLLECTIVE_MATMUL knob. For the blocks use one or the other: ViT22BJFT
#   sets COLLECTIVE_MATMUL='bidirectional', whose rings run inside
#   shard_map, which XLA's partitioner leaves alone, so the flags then act
#   on the other sharded einsums (MAP head, classifier); to let XLA do the
#   blocks too, add --fdl.COLLECTIVE_MATMUL="'off'".
# --xla_gpu_enable_latency_hiding_scheduler=true: schedule asynchronous
#   collectives (the rings' sends too) to overlap with compute; either
#   approach needs it to gain anything.
# The rest: async collectives and the all-reduce combining threshold.
export XLA_FLAGS="\
 --xla_gpu_threshold_for_windowed_einsum_mib=0\
 --xla_gpu_multi_streamed_windowed_einsum=true\
 --xla_gpu_enable_latency_hiding_scheduler=true\
 --xla_gpu_enable_async_collectives=true\
 --xla_gpu_enable_async_all_gather=true\
 --xla_gpu_enable_async_reduce_scatter=true\
 --xla_gpu_enable_async_all_reduce=true\
 --xla_gpu_enable_highest_priority_async_stream=true\
 --xla_gpu_all_reduce_combine_threshold_bytes=51200\
 --xla_gpu_enable_triton_gemm=false ${XLA_FLAGS:-}"
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
