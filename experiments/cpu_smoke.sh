#!/usr/bin/env bash
# CPU smoke run: the tiny ViT on synthetic data through paxml's real trainer
# (checkpoints, summaries, eval), about a minute on a laptop including
# compilation. Re-running resumes from the last checkpoint in JOB_DIR.
#
#   experiments/cpu_smoke.sh [extra paxml.main flags, e.g. --fdl.PEAK_LR=3e-3]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOB_DIR=${JOB_DIR:-runs/cpu_smoke}

# Knob overrides go through ast.literal_eval (strings need inner quotes).
"$PY" -m paxml.main \
  --exp=vit22b_pax.experiments.ViTSmoke \
  --job_log_dir="$JOB_DIR" \
  --eval_on_test \
  --fdl.NUM_TRAIN_STEPS=40 \
  --fdl.GLOBAL_BATCH_SIZE=16 \
  --fdl.PEAK_LR=1e-3 \
  --fdl.SAVE_INTERVAL_STEPS=20 \
  "$@"
"$PY" -m vit22b_pax.tools.train_summary --job_log_dir="$JOB_DIR"
