#!/usr/bin/env bash
# Fine-tune a ViT-22B pre-training checkpoint at 448 px on a new label set.
# Every variable is restored except the classifier head (trained fresh for
# NUM_CLASSES labels); the 16x16 position-embedding grid of the 224 px
# checkpoint is resampled (bilinear) to 32x32.
#
#   INIT_DIR=gs://.../vit22b_jft/checkpoints DATA_DIR=gs://.../imagenet \
#   JOB_DIR=gs://.../vit22b_ft448 experiments/finetune.sh
#
# CPU demo of the same path (what tests/test_launcher.py does):
#   experiments/cpu_smoke.sh   # writes runs/cpu_smoke/checkpoints
#   CPU=1 experiments/finetune.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${CPU:-0}" == 1 ]]; then
  PY=${PY:-.venv/bin/python}
  INIT_DIR=${INIT_DIR:-runs/cpu_smoke/checkpoints}
  exec "$PY" -m paxml.main \
    --exp=vit22b_pax.experiments.ViTSmokeFinetune \
    --job_log_dir="${JOB_DIR:-runs/cpu_finetune}" \
    --eval_on_test \
    --fdl.INIT_CHECKPOINT_DIR="'$INIT_DIR'" \
    --fdl.INIT_EXPERIMENT="'vit22b_pax.experiments.ViTSmoke'" \
    --fdl.IMAGE_SIZE=24 \
    --fdl.NUM_CLASSES=5 \
    --fdl.LOSS="'softmax'" \
    "$@"
fi

PY=${PY:-python3}
: "${INIT_DIR:?set INIT_DIR to <pre-training job dir>/checkpoints}"
: "${DATA_DIR:?set DATA_DIR to the fine-tuning TFRecords}"
: "${JOB_DIR:?set JOB_DIR}"
export LIBTPU_INIT_ARGS="\
 --xla_jf_spmd_threshold_for_windowed_einsum_mib=0\
 --xla_tpu_enable_latency_hiding_scheduler=true\
 --xla_enable_async_all_gather=true"
"$PY" -m paxml.main \
  --exp=vit22b_pax.experiments.ViT22BFinetune \
  --job_log_dir="$JOB_DIR" \
  --eval_on_test \
  --fdl.INIT_CHECKPOINT_DIR="'$INIT_DIR'" \
  --fdl.INIT_EXPERIMENT="'vit22b_pax.experiments.ViT22BJFT'" \
  --fdl.DATA_DIR="'$DATA_DIR'" \
  --fdl.IMAGE_SIZE=448 \
  --fdl.NUM_CLASSES=1000 \
  --fdl.LOSS="'softmax'" \
  --fdl.GLOBAL_BATCH_SIZE=512 \
  --fdl.NUM_TRAIN_STEPS=20000 \
  --fdl.PEAK_LR=3e-4 \
  "$@"
