r"""Registered ViT-22B experiments: each a docstring and a few knob overrides.

paxml's registry keys an experiment by the module that defines it, so every
registered class is defined here, and launched with

  python -m paxml.main --exp=vit22b_pax.experiments.ViT22BJFT \
      --job_log_dir=... --eval_on_test --fdl.NUM_TRAIN_STEPS=1000

(`--fdl_config=vit22b_pax.experiments.ViT22BJFT` works the same way).
The knobs, their types and defaults, and the logic that builds the task
from them are in experiment_base.py; the override rules in knobs.py; the
recipe's numbers and their sources in recipe.py.

  ViT22BJFT         the paper's pre-training run on a 1,024-chip TPUv4 slice.
  ViTMid            a mid-size model on synthetic data, for benchmarks.
  ViTShapesCPU      what `make train` runs on the embedded dataset.
  ViTSmoke          trains in seconds on CPU (tiny model, synthetic data).
  <Name>Sequential  each of the four above with sequential blocks.
  <Name>NoQKNorm    each of the four above without QK normalization.
  ViT22BFinetune    fine-tunes a ViT22BJFT checkpoint at 448 px.
  ViTSmokeFinetune  the same on CPU from a ViTSmoke checkpoint.
"""

from paxml import experiment_registry

from vit22b_pax import experiment_base
from vit22b_pax.input import shapes


@experiment_registry.register
class ViT22BJFT(experiment_base.TpuV4Pod, experiment_base.ViTExperiment):
  """ViT-22B pre-training on JFT (Dehghani et al., 2023).

  The recipe of recipe.py (docs/recipe.md): 224 px, patch 14 (256 tokens),
  global batch 65,536, 177k steps, peak LR 1e-3 with the reciprocal
  square-root schedule, sigmoid cross-entropy over 29,593 classes,
  decoupled weight decay 3.0 head / 0.03 body, the Scaling-ViT Adafactor;
  bfloat16 on a (64, 16) (data, model) mesh of TPUv4 chips. JFT is private:
  bring TFRecords in data/README.md's format.
  """

  MODEL_SIZE = 'vit22b'
  DATA_DIR = 'gs://YOUR_BUCKET/jft'
  MAP_IN_TRAINING = False  # Sorting [65,536 x 29,593] logits costs a step.


@experiment_registry.register
class ViTMid(experiment_base.SyntheticData, experiment_base.ViTExperiment):
  """A mid-size ViT (models.PRESETS['mid']) on synthetic data: benchmarks.

  ViT-B widths at the paper's 256 tokens (~0.14 TFLOP per training image):
  the defaults take a few steps on a CPU; on an accelerator raise
  GLOBAL_BATCH_SIZE / NUM_TRAIN_STEPS and set PEAK_FLOPS_PER_DEVICE to log
  MFU, e.g. --fdl.PEAK_FLOPS_PER_DEVICE=275e12 on a TPUv4 chip.
  """

  MODEL_SIZE = 'mid'
  NUM_CLASSES = 1_000
  GLOBAL_BATCH_SIZE = 8
  EVAL_BATCH_SIZE = 8
  EVAL_NUM_BATCHES = 1
  NUM_TRAIN_STEPS = 20
  WARMUP_STEPS = 2
  RSQRT_TIMESCALE = 10
  COOLDOWN_STEPS = 4
  SUMMARY_INTERVAL_STEPS = 5
  STEPS_PER_SEC_INTERVAL_STEPS = 5
  EVAL_INTERVAL_STEPS = 20


@experiment_registry.register
class ViTShapesCPU(experiment_base.ViTExperiment):
  """`make train`: the 'small' ViT on the embedded shapes dataset, 2 CPU cores.

  The 'small' preset's transformer (D 192, 6 layers, F 768, 3 heads) on
  32 px crops of the 48 px shapes images, with 8 px patches: 16 tokens keep
  a step ~4x cheaper than the preset's 4 px patches (64 tokens), which buys
  ~4x more examples in the 10-minute budget and learned faster per second
  in our runs. 1,500 steps of 64 = 96k examples (~12 epochs of 8,192).
  Tuned (PEAK_LR, schedule, batch) to reach an eval mAP far above the
  chance level (the label prior, ~0.15) within 10 minutes on 2 cores.
  `make train` also passes FEWSHOT_DATASETS=('data/shapes_fewshot',): the
  frozen features' few-shot probes on 30 new classes at every eval.
  """

  MODEL_SIZE = 'small'
  PATCH_SIZE = 8
  SCAN_LAYERS = False  # 6 layers compile quickly unrolled.
  REMAT_POLICY = None  # Plenty of memory; recomputation only costs time.
  DATA_DIR = 'data/shapes'
  NUM_CLASSES = shapes.shape_classes().num_classes  # 60
  CROP_MIN_AREA = 0.5  # Small crops would cut shapes (and labels) out.
  GLOBAL_BATCH_SIZE = 64
  EVAL_BATCH_SIZE = 256  # The 1,024 eval images in 4 batches.
  NUM_TRAIN_STEPS = 1_500
  PEAK_LR = 8e-3
  WARMUP_STEPS = 100
  RSQRT_TIMESCALE = 500
  COOLDOWN_STEPS = 300
  HEAD_WEIGHT_DECAY = 1e-4
  BODY_WEIGHT_DECAY = 1e-4
  SAVE_INTERVAL_STEPS = 500
  SAVE_MAX_TO_KEEP = 2
  SUMMARY_INTERVAL_STEPS = 50
  STEPS_PER_SEC_INTERVAL_STEPS = 50
  EVAL_INTERVAL_STEPS = 500  # Divides NUM_TRAIN_STEPS: the last step evals.
  FEWSHOT_INTERVAL_STEPS = 500  # With FEWSHOT_DATASETS: at every eval.


@experiment_registry.register
class ViTSmoke(experiment_base.SyntheticData, experiment_base.ViTExperiment):
  """Trains in seconds on CPU: the tiny preset on synthetic data."""

  MODEL_SIZE = 'tiny'
  NUM_CLASSES = 8
  GLOBAL_BATCH_SIZE = 16
  EVAL_BATCH_SIZE = 16
  EVAL_NUM_BATCHES = 2
  NUM_TRAIN_STEPS = 20
  PEAK_LR = 1e-3
  WARMUP_STEPS = 1  # Short: any NUM_TRAIN_STEPS >= 2 passes the checks.
  RSQRT_TIMESCALE = 10
  COOLDOWN_STEPS = 1
  SAVE_INTERVAL_STEPS = 10
  SAVE_MAX_TO_KEEP = 3
  SUMMARY_INTERVAL_STEPS = 5
  STEPS_PER_SEC_INTERVAL_STEPS = 5
  EVAL_INTERVAL_STEPS = 10


@experiment_registry.register
class ViT22BFinetune(ViT22BJFT):
  """ViT-22B fine-tuned at 448 px (patch 14: 1,024 tokens) on a new label set.

  Starts from a ViT22BJFT checkpoint (INIT_CHECKPOINT_DIR): every variable
  is restored except the classifier head, which is trained fresh for
  NUM_CLASSES labels; the 16x16 position-embedding grid is resampled to
  32x32. Recipe numbers here are assumptions (the paper gives no 22B
  fine-tuning recipe): ImageNet-1k-sized, softmax, short schedule, no weight
  decay on the body.
  """

  IMAGE_SIZE = 448
  NUM_CLASSES = 1_000
  LOSS = 'softmax'
  HEAD_BIAS_INIT = 0.0
  DATA_DIR = 'gs://YOUR_BUCKET/imagenet'
  EXPAND_HIERARCHY = False
  GLOBAL_BATCH_SIZE = 512
  EVAL_BATCH_SIZE = 512
  NUM_TRAIN_STEPS = 20_000
  PEAK_LR = 3e-4
  WARMUP_STEPS = 500
  RSQRT_TIMESCALE = 10_000
  COOLDOWN_STEPS = 5_000
  HEAD_WEIGHT_DECAY = 0.0
  BODY_WEIGHT_DECAY = 0.0
  INIT_CHECKPOINT_DIR = 'gs://YOUR_BUCKET/vit22b_jft/checkpoints'
  INIT_EXPERIMENT = 'vit22b_pax.experiments.ViT22BJFT'


@experiment_registry.register
class ViTSmokeFinetune(ViTSmoke):
  """CPU fine-tuning twin: ViTSmoke checkpoint (16 px) -> 24 px, 5 classes.

  The default checkpoint is what experiments/cpu_smoke.sh writes (relative
  to the repository root, where the launch recipes run).
  """

  IMAGE_SIZE = 24
  NUM_CLASSES = 5
  LOSS = 'softmax'
  HEAD_BIAS_INIT = 0.0
  NUM_TRAIN_STEPS = 4
  SAVE_INTERVAL_STEPS = 4
  EVAL_INTERVAL_STEPS = 4
  INIT_CHECKPOINT_DIR = 'runs/cpu_smoke/checkpoints'
  INIT_EXPERIMENT = 'vit22b_pax.experiments.ViTSmoke'


# Ablation twins: the same experiment with one knob changed.


@experiment_registry.register
class ViT22BJFTSequential(ViT22BJFT):
  """ViT22BJFT with sequential blocks (ablation twin)."""

  PARALLEL_BLOCK = False
  COLLECTIVE_MATMUL = 'off'  # The parallel block's fused projections only.


@experiment_registry.register
class ViT22BJFTNoQKNorm(ViT22BJFT):
  """ViT22BJFT without QK normalization (ablation twin)."""

  USE_QK_NORM = False


@experiment_registry.register
class ViTMidSequential(ViTMid):
  """ViTMid with sequential blocks (ablation twin)."""

  PARALLEL_BLOCK = False


@experiment_registry.register
class ViTMidNoQKNorm(ViTMid):
  """ViTMid without QK normalization (ablation twin)."""

  USE_QK_NORM = False


@experiment_registry.register
class ViTShapesCPUSequential(ViTShapesCPU):
  """ViTShapesCPU with sequential blocks (ablation twin)."""

  PARALLEL_BLOCK = False


@experiment_registry.register
class ViTShapesCPUNoQKNorm(ViTShapesCPU):
  """ViTShapesCPU without QK normalization (ablation twin)."""

  USE_QK_NORM = False


@experiment_registry.register
class ViTSmokeSequential(ViTSmoke):
  """ViTSmoke with sequential blocks (ablation twin)."""

  PARALLEL_BLOCK = False


@experiment_registry.register
class ViTSmokeNoQKNorm(ViTSmoke):
  """ViTSmoke without QK normalization (ablation twin)."""

  USE_QK_NORM = False


def registered() -> dict[str, type[experiment_base.ViTExperiment]]:
  """{name: class} of every experiment this module registers."""
  return {
      name: cls
      for name, cls in globals().items()
      if isinstance(cls, type)
      and issubclass(cls, experiment_base.ViTExperiment)
      and cls.__module__ == __name__
  }
