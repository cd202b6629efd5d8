#!/usr/bin/env bash
# ViT-22B pre-training on a 1,024-chip TPUv4 slice (v4-2048). Run this same
# script on every host of the slice, e.g.
#   gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all \
#     --command="cd vit22b_pax && DATA_DIR=gs://... JOB_DIR=gs://... \
#                experiments/tpu_pod.sh"
#
# Devices form a 2-D (data, model) mesh: ICI_MESH_SHAPE=(64, 16) is 64-way
# data x 16-way model parallelism (16 divides the 48 heads, D=6144 and
# F=24576). For several slices over the data-center network use
# DCN_MESH_SHAPE=(num_slices, 1) and keep ICI_MESH_SHAPE per slice.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
: "${DATA_DIR:?set DATA_DIR to the TFRecord directory (data/README.md)}"
: "${JOB_DIR:?set JOB_DIR to a gs:// directory shared by all hosts}"

# libtpu flags, before any LIBTPU_INIT_ARGS you set (a flag given twice:
# the last wins, so yours override these).
# Windowed einsum: --xla_jf_spmd_threshold_for_windowed_einsum_mib=0 makes
#   XLA decompose every sharded einsum (operands over 0 MiB) into a loop
#   of chunk transfers overlapped with chunk multiplies: the compiler's
#   alternative to the COLLECTIVE_MATMUL knob. For the blocks use one or
#   the other: ViT22BJFT sets COLLECTIVE_MATMUL='bidirectional', whose
#   rings run inside shard_map, which XLA's partitioner leaves alone, so
#   the flag then acts on the other sharded einsums (MAP head, classifier);
#   to let XLA do the blocks too, add --fdl.COLLECTIVE_MATMUL="'off'".
# --xla_tpu_enable_latency_hiding_scheduler=true: schedule asynchronous
#   collectives (the rings' sends too) to overlap with compute; either
#   approach needs it to gain anything.
# The rest: async all-gather / collective-permute and collective fusion.
export LIBTPU_INIT_ARGS="\
 --xla_jf_spmd_threshold_for_windowed_einsum_mib=0\
 --xla_tpu_enable_latency_hiding_scheduler=true\
 --xla_tpu_spmd_threshold_for_allgather_cse=10000\
 --xla_tpu_spmd_rewrite_einsum_with_reshape=true\
 --xla_enable_async_all_gather=true\
 --xla_enable_async_collective_permute=true\
 --xla_tpu_enable_async_collective_fusion=true\
 --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true\
 --xla_tpu_enable_async_collective_fusion_multiple_steps=true\
 --xla_tpu_overlap_compute_collective_tc=true\
 ${LIBTPU_INIT_ARGS:-}"

"$PY" -m paxml.main \
  --exp=vit22b_pax.experiments.ViT22BJFT \
  --job_log_dir="$JOB_DIR" \
  --eval_on_test \
  --fdl.DATA_DIR="'$DATA_DIR'" \
  --fdl.NUM_CLASSES=29593 \
  --fdl.GLOBAL_BATCH_SIZE=65536 \
  --fdl.NUM_TRAIN_STEPS=177000 \
  --fdl.PEAK_LR=1e-3 \
  --fdl.WARMUP_STEPS=10000 \
  --fdl.COOLDOWN_STEPS=50000 \
  --fdl.ICI_MESH_SHAPE='(64, 16)' \
  --fdl.DCN_MESH_SHAPE=None \
  "$@"
