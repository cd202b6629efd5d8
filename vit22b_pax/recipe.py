"""The ViT-22B training recipe's numbers, in one place.

Every other module (optim.py's defaults, models.classifier_config's
defaults, the experiments' knobs) refers to these names instead of repeating
a number. Each comment names the number's source:

  * "paper": Dehghani et al., "Scaling Vision Transformers to 22 Billion
    Parameters", ICML 2023 (arXiv:2302.05442);
  * "ViT-G recipe": Zhai et al., "Scaling Vision Transformers", CVPR 2022
    (arXiv:2106.04560), the recipe the paper's training descends from, as
    google-research/big_vision implements it;
  * "assumed": no primary source was checked for ViT-22B; the value is the
    one the ViT-G recipe uses, or ours where said. Keep such values knobs.

docs/recipe.md explains the recipe with the same numbers and sources.
"""

# --- Data.
JFT_NUM_CLASSES = 29_593  # big_vision's JFT configs (JFT-4B, ~30k labels).
# Inception crop's smallest area fraction in training: big_vision's
# `inception_crop` default (area_min=5%); ViT-G recipe, assumed for 22B.
CROP_MIN_AREA = 0.05

# --- Loss and head.
LOSS = 'sigmoid'  # paper: sigmoid cross-entropy over multi-hot labels.
# ViT-G recipe (assumed for 22B): zero-initialized head kernel and bias -10,
# so every sigmoid starts at ~4.5e-5 (the prior of a huge label set).
HEAD_BIAS_INIT = -10.0
HEAD_ZERO_INIT = True
LN_EPSILON = 1e-6  # Flax/big_vision LayerNorm default (assumed for 22B).

# --- Schedule.
GLOBAL_BATCH_SIZE = 65_536  # paper.
NUM_TRAIN_STEPS = 177_000  # paper (~3 epochs of JFT-4B at batch 65,536).
PEAK_LR = 1e-3  # paper; reciprocal square-root schedule.
WARMUP_STEPS = 10_000  # ViT-G recipe (assumed for 22B): linear warmup.
RSQRT_TIMESCALE = 10_000  # ViT-G recipe (assumed for 22B).
COOLDOWN_STEPS = 50_000  # ViT-G recipe (assumed): linear to 0 at the end.

# --- Optimizer: the ViT-G recipe's Adafactor variant (assumed for 22B).
HEAD_WEIGHT_DECAY = 3.0  # paper: decoupled, on the head kernel.
BODY_WEIGHT_DECAY = 0.03  # paper: decoupled, on every other kernel.
GRAD_CLIP_NORM = 1.0  # ViT-G recipe (assumed): global-norm clipping.
ADAFACTOR_BETA1 = 0.9  # ViT-G recipe (assumed): first moment...
ADAFACTOR_MOMENTUM_DTYPE = 'bfloat16'  # ...stored in bfloat16.
ADAFACTOR_BETA2_CAP = 0.999  # ViT-G recipe (assumed): beta2_t = min(cap,
ADAFACTOR_DECAY_RATE = 0.8  # 1 - (t + 1)^-rate).
# big_vision's `scale_by_adafactor` default: smaller dimensions keep a full
# (unfactored) second moment.
MIN_DIM_SIZE_TO_FACTOR = 32

# --- Devices: the paper trains on TPUv4 with a 2-D (data, model) mesh.
# One 1,024-chip TPUv4 slice (v4-2048: one JAX device per chip), 64-way data
# x 16-way model parallel. Assumed: the paper does not give its mesh; 16
# divides the 48 heads, D and F, and 65,536 / 64 = 1,024 images per shard.
TPU_POD_MESH_SHAPE = (64, 16)
# bfloat16 peak of one TPUv4 chip (Google Cloud TPU v4 specification); the
# paper's 54.9% MFU is measured against it.
TPU_V4_PEAK_FLOPS = 275e12
# paper, Sec. 3: ViT-22B trains at 54.9% model FLOPs utilization on TPUv4
# (docs/recipe.md derives it; vit22b_pax.plan assumes it by default).
PAPER_MFU = 0.549
