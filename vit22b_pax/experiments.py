r"""Registered ViT-22B experiments.

Every class here is registered with paxml's experiment registry (keyed by
this module) and is launched with

  python -m paxml.main --fdl_config=vit22b_pax.experiments.ViT22BJFT \
      --job_log_dir=... --fdl.NUM_TRAIN_STEPS=1000

or, equivalently, with the drop-in launcher that also accepts `--exp`:

  python -m vit22b_pax.main --exp=vit22b_pax.experiments.ViT22BJFT \
      --job_log_dir=... --fdl.NUM_TRAIN_STEPS=1000

Every hyperparameter is an UPPER_CASE class attribute (a "knob"). Overrides
are never dropped silently:
  * setting an attribute that is not a knob (a typo) raises and names the
    closest knob;
  * a value of the wrong type raises and names the knob;
  * `validate()` (called by paxml.main before anything is compiled, on every
    launch path) rejects invalid combinations naming the knob, and raises if
    a `--fdl.KNOB=value` on the command line did not reach the instance
    (plain `paxml.main --exp=...` parses such overrides and ignores them);
  * derived values (per-host batch, head dims, mesh, schedule lengths) are
    computed from the knobs where they are used, so overriding a base knob
    updates them.

paxml evaluates during training only with `--eval_on_test` (validate() warns
without it). Progress lines (step, loss, metrics, steps/s, examples/s and,
given PEAK_FLOPS_PER_DEVICE, MFU) come every SUMMARY_INTERVAL_STEPS, and eval
also reports mAP over the whole eval split ('map_dataset').

The family (all on one code path; subclasses only override knobs):
  ViT22BJFT         the paper's pre-training run.
  ViTMid            a mid-size model on synthetic data, for benchmarks.
  ViTShapesCPU      what `make train` runs on the embedded dataset.
  ViTSmoke          trains in seconds on CPU (tiny model, synthetic data).
  <Name>Sequential  every one of the above with sequential blocks.
  <Name>NoQKNorm    every one of the above without QK normalization.
  ViT22BFinetune    fine-tunes a pre-training checkpoint at 448 px.
  ViTSmokeFinetune  the same on CPU from a ViTSmoke checkpoint.
"""

import ast
import difflib
import math
import re
from typing import Any, Sequence

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from paxml import base_experiment
from paxml import experiment_registry
from paxml import learners
from paxml import programs
from paxml import summary_utils
from paxml import tasks_lib
from praxis import base_hyperparams
from praxis import base_input
from praxis import base_layer
from praxis import pax_fiddle
from praxis import py_utils
from praxis import pytypes
import tensorflow as tf

from vit22b_pax import flops
from vit22b_pax import metrics as metrics_lib
from vit22b_pax import models
from vit22b_pax import optim
from vit22b_pax import sharding
from vit22b_pax.input import data_format
from vit22b_pax.input import praxis_input
from vit22b_pax.input import shapes
from vit22b_pax.layers import patch_embedding

NestedMap = py_utils.NestedMap
TrainState = tasks_lib.TrainState
_KNOB_RE = re.compile(r'^[A-Z][A-Z0-9_]*$')
_POS_EMB_RE = re.compile(r'(^|/)pos_emb$')


# ---------------------------------------------------------------------------
# Knob machinery: typo-proof, type-checked attribute overrides.
# ---------------------------------------------------------------------------


def knob_names(cls: type[Any]) -> list[str]:
  """Returns the sorted UPPER_CASE knob names of an experiment class."""
  names = set()
  for klass in cls.__mro__:
    names.update(n for n in vars(klass) if _KNOB_RE.match(n))
  return sorted(names)


def knob_values(exp: Any) -> dict[str, Any]:
  """Returns {knob: value} of an experiment instance (overrides included)."""
  return {n: getattr(exp, n) for n in knob_names(type(exp))}


def closest_name(name: str, candidates: Sequence[str]) -> str | None:
  """The candidate closest to `name` (case-insensitively), if any is close."""
  by_upper = {c.upper(): c for c in candidates}
  match = difflib.get_close_matches(
      name.upper(), list(by_upper), n=1, cutoff=0.5
  )
  return by_upper[match[0]] if match else None


def unknown_knob_message(cls: type[Any], name: str) -> str:
  msg = f'{cls.__name__} has no knob {name!r}'
  close = closest_name(name, knob_names(cls))
  if close:
    msg += f'; did you mean {close!r}?'
  return msg + ' (list them with `python -m vit22b_pax.tools.summarize --exp=' \
      f'{cls.__module__}.{cls.__name__} --list_knobs`).'


# Knobs whose default is None in every class: the type a set value must have.
_OPTIONAL_KNOB_EXAMPLES = {
    'MODEL_DIMS': 0,
    'NUM_LAYERS': 0,
    'HIDDEN_DIMS': 0,
    'NUM_HEADS': 0,
    'PATCH_SIZE': 0,
    'IMAGE_SIZE': 0,
    'INIT_CHECKPOINT_STEP': 0,
}


def _knob_example(cls: type[Any], name: str) -> Any:
  """A value showing the knob's type: the first non-None default in the MRO."""
  for klass in cls.__mro__:
    value = vars(klass).get(name)
    if value is not None:
      return value
  return _OPTIONAL_KNOB_EXAMPLES.get(name)


def _type_ok(default: Any, value: Any) -> bool:
  """Whether `value` may replace a knob whose defaults look like `default`."""
  if default is None or value is None:
    # Any knob may be unset (None); a knob never given a type takes anything.
    return True
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


def parse_override_value(value: str, knob: str) -> Any:
  """Parses a command-line value the way fiddle's `--fdl.X=value` does."""
  if value.lower() == 'false':
    return False
  if value.lower() == 'true':
    return True
  try:
    return ast.literal_eval(value)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f'Could not parse the value {value!r} of knob {knob}. Values go '
        "through ast.literal_eval: strings need quotes, e.g. "
        f"--fdl.{knob}=\"'{value}'\"."
    ) from e


def apply_overrides(exp: Any, assignments: Sequence[str]) -> None:
  """Applies ['KNOB=value', ...] to an experiment instance (like --fdl.*)."""
  for assignment in assignments:
    if '=' not in assignment:
      raise ValueError(
          f'Override {assignment!r} is not of the form KNOB=value.'
      )
    name, value = assignment.split('=', 1)
    name = name.strip()
    setattr(exp, name, parse_override_value(value, name))


class KnobbedExperiment(base_experiment.BaseExperiment):
  """An experiment whose public attributes are exactly its UPPER_CASE knobs."""

  def __setattr__(self, name: str, value: Any) -> None:
    if not name.startswith('_'):
      cls = type(self)
      if not _KNOB_RE.match(name) or not hasattr(cls, name):
        raise AttributeError(unknown_knob_message(cls, name))
      default = _knob_example(cls, name)
      if not _type_ok(default, value):
        raise TypeError(
            f'Knob {name} of {cls.__name__} expects a value like '
            f'{default!r} ({type(default).__name__}), got {value!r} '
            f'({type(value).__name__}).'
        )
    object.__setattr__(self, name, value)

  def check_command_line_overrides(self) -> None:
    """Raises unless every `--fdl.KNOB=value` given reached this instance.

    paxml.main's `--exp` path parses `--fdl.*` flags but never applies them;
    the `--fdl_config` path (and vit22b_pax.main) does. Comparing the parsed
    flag values with the instance catches the first case before training.
    """
    if not flags.FLAGS.is_parsed() or 'fdl_set' not in flags.FLAGS:
      return
    cls = type(self)
    for assignment in flags.FLAGS.fdl_set or ():
      path, value = assignment.split('=', 1)
      path = path.strip()
      name = re.split(r'[.\[]', path, maxsplit=1)[0]
      if not _KNOB_RE.match(name) or not hasattr(cls, name):
        raise ValueError(unknown_knob_message(cls, name))
      if name != path:
        continue  # A nested path: fiddle applied it or failed loudly.
      if getattr(self, name) != parse_override_value(value, name):
        raise ValueError(
            f'The command-line override --fdl.{assignment} did not reach the '
            f'experiment ({name} is {getattr(self, name)!r}): paxml.main '
            '--exp=... ignores --fdl.* overrides. Launch with '
            f'`python -m paxml.main --fdl_config={cls.__module__}.'
            f'{cls.__name__} ...` or `python -m vit22b_pax.main --exp=...`.'
        )


class ValidationError(ValueError):
  """An invalid knob value or combination; the message names the knob."""


# ---------------------------------------------------------------------------
# Inputs that need no files: synthetic data and input specs.
# ---------------------------------------------------------------------------


def _batch_specs(batch_size: int, image_size: int, num_classes: int):
  return NestedMap(
      image=jax.ShapeDtypeStruct(
          (batch_size, image_size, image_size, 3), jnp.float32
      ),
      labels=jax.ShapeDtypeStruct((batch_size, num_classes), jnp.float32),
      weight=jax.ShapeDtypeStruct((batch_size,), jnp.float32),
  )


class ViTInputSpecsProvider(base_input.BaseInputSpecsProvider):
  """Input specs of the shared batch contract, without reading any data.

  Attributes:
    batch_size: Per-process batch size B.
    image_size: Image height = width.
    num_classes: Number of classes C.
  """

  batch_size: int = 1
  image_size: int = 224
  num_classes: int = 1

  def get_input_specs(self) -> pytypes.NestedShapeDtypeStruct:
    return _batch_specs(self.batch_size, self.image_size, self.num_classes)


class SyntheticInput(base_input.BaseInput):
  """Learnable random multi-label images, made in memory (no files).

  Each class c owns a fixed random image pattern P_c; an example's image is
  the mean of the patterns of its labels plus noise, so the labels can be
  read off the image. Training batches are endless; eval yields
  `num_eval_batches` batches per pass (reset() restarts the pass).

  Attributes:
    image_size: Image height = width.
    num_classes: Number of classes C.
    label_prob: Probability that each class is present (at least one is).
    noise: Standard deviation of the additive pixel noise.
    num_eval_batches: Batches per eval pass (is_training=False only).
    seed: Seed of the patterns (shared by train and eval) and the examples.
  """

  image_size: int = 16
  num_classes: int = 8
  label_prob: float = 0.25
  noise: float = 0.1
  num_eval_batches: int = 2
  seed: int = 1234
  _patterns: Any = None
  _rng: Any = None
  _num_emitted: int = 0

  def __post_init__(self):
    super().__post_init__()
    pattern_rng = np.random.default_rng(self.seed)
    self._patterns = pattern_rng.uniform(
        -1.0, 1.0, (self.num_classes, self.image_size, self.image_size, 3)
    ).astype(np.float32)
    self.reset()

  def reset(self) -> None:
    super().reset()
    # Train and eval (and every host) draw disjoint example streams.
    self._rng = np.random.default_rng(
        [self.seed, int(self.is_training), self.infeed_host_index]
    )
    self._num_emitted = 0

  def get_next(self) -> NestedMap:
    if not self.is_training and self._num_emitted >= self.num_eval_batches:
      raise tf.errors.OutOfRangeError(None, None, 'end of synthetic eval')
    self._num_emitted += 1
    b, c = self.batch_size, self.num_classes
    labels = self._rng.random((b, c)) < self.label_prob
    labels[np.arange(b), self._rng.integers(0, c, b)] = True
    labels = labels.astype(np.float32)
    mix = labels / labels.sum(axis=1, keepdims=True)
    image = np.einsum('BC,CHWK->BHWK', mix, self._patterns)
    image += self.noise * self._rng.standard_normal(image.shape)
    return NestedMap(
        image=np.clip(image, -1.0, 1.0).astype(np.float32),
        labels=labels,
        weight=np.ones((b,), np.float32),
    )


# ---------------------------------------------------------------------------
# Training program that also reports examples/s (and MFU when known).
# ---------------------------------------------------------------------------


class ThroughputTrainProgram(programs.SingleTaskTrainProgram):
  """paxml's train program, also logging and summarizing examples/s and MFU.

  paxml reports steps/s only. With the global batch known here, each
  steps/s measurement becomes examples/s (and, with FLOPs per image and the
  chips' peak FLOP/s, model FLOPs utilization), logged and written to the
  train summaries as 'Examples/sec' and 'MFU'.
  """

  def __init__(
      self,
      tokens_per_image: int = 1,
      flops_per_token: float | None = None,
      peak_flops_per_device: float | None = None,
  ):
    super().__init__()
    self._tokens_per_image = tokens_per_image
    self._flops_per_token = flops_per_token
    self._peak_flops_per_device = peak_flops_per_device

  def _compute_steps_per_sec(self, step: int):
    steps_per_sec = super()._compute_steps_per_sec(step)
    examples_per_sec = steps_per_sec * self._train_unpadded_global_batch_size
    message = f'step {step + 1}: {examples_per_sec:.1f} examples/sec'
    scalars = {'Examples/sec': examples_per_sec}
    if self._flops_per_token and self._peak_flops_per_device:
      tokens_per_sec_per_device = (
          examples_per_sec * self._tokens_per_image / jax.device_count()
      )
      mfu = flops.mfu(
          tokens_per_sec_per_device,
          self._flops_per_token,
          self._peak_flops_per_device,
      )
      message += f', MFU {100 * mfu:.1f}%'
      scalars['MFU'] = mfu
    logging.info(message)
    with self._train_summary_writer.as_default():
      for key, value in scalars.items():
        summary_utils.write_summary_tensor(
            step + 1, key, value, base_layer.SummaryType.AGGREGATE_SCALAR
        )
    return steps_per_sec


class DatasetMetricsEvalProgram(programs.SingleTaskEvalProgram):
  """paxml's eval program plus metrics over the whole eval split.

  paxml averages per-batch metrics; mAP is not an average over batches
  (a class's AP depends on every example). This program also computes mAP
  and precision@1 over all eval examples from the model's per-example
  logits/labels/weight and reports them as 'map_dataset' and
  'precision_at_1_dataset'.
  """

  def _run_eval_loop(self, state: TrainState):
    out = super()._run_eval_loop(state)
    metrics, per_example_scores = out[3], out[4]
    try:
      batches = [
          {k: np.asarray(b[k]) for k in ('logits', 'labels', 'weight')}
          for b in per_example_scores
      ]
    except (KeyError, TypeError, RuntimeError) as e:
      # E.g. per-example outputs not addressable from this host.
      logging.warning('Eval %s: no dataset-level metrics (%s).', self._name, e)
      return out
    if not batches:
      return out
    logits, labels, weight = (
        np.concatenate([b[k] for b in batches])
        for k in ('logits', 'labels', 'weight')
    )
    count = np.float32(weight.sum())
    map_all = metrics_lib.np_mean_average_precision(logits, labels, weight)
    p1_all = metrics_lib.np_precision_at_1(logits, labels, weight)
    metrics['map_dataset'].append((np.float32(map_all), count))
    metrics['precision_at_1_dataset'].append((np.float32(p1_all), count))
    return out


# ---------------------------------------------------------------------------
# Fine-tuning: warm start from a checkpoint at another resolution.
# ---------------------------------------------------------------------------


class FinetuneTask(tasks_lib.SingleTask):
  """SingleTask whose warm start resamples the position-embedding table.

  paxml's init_from_checkpoint_rules copy checkpoint variables as they are,
  without a shape check. Here the loaded table of every variable named
  'pos_emb' whose token count differs from the model's is resampled to the
  model's grid (layers.patch_embedding.resample_pos_emb, 2-D bilinear); any
  other shape mismatch raises instead of training on a wrong tensor.
  """

  def apply_init_checkpoint_rules(
      self,
      train_state: TrainState,
      train_state_provenance: Any,
      train_state_partition_specs: TrainState | None = None,
      global_mesh: jax.sharding.Mesh | None = None,
      checkpoint_type: Any = None,
  ):
    target = {
        k: (v.shape, v.dtype)
        for k, v in NestedMap.FromNestedDict(
            train_state.mdl_vars
        ).FlattenItems()
    }
    kwargs = dict(
        train_state_partition_specs=train_state_partition_specs,
        global_mesh=global_mesh,
    )
    if checkpoint_type is not None:
      kwargs['checkpoint_type'] = checkpoint_type
    train_state, provenance, update_opt = super().apply_init_checkpoint_rules(
        train_state, train_state_provenance, **kwargs
    )
    mdl_vars = NestedMap.FromNestedDict(train_state.mdl_vars)
    pspecs = None
    if train_state_partition_specs is not None:
      pspecs = dict(
          NestedMap(train_state_partition_specs.mdl_vars).FlattenItems()
      )
    for name, value in list(mdl_vars.FlattenItems()):
      shape, dtype = target[name]
      if tuple(value.shape) == tuple(shape):
        continue
      slash_name = name.replace('.', '/')
      if not _POS_EMB_RE.search(slash_name) or len(shape) != 2:
        raise ValueError(
            f'Warm start: checkpoint variable {slash_name} has shape '
            f'{tuple(value.shape)} but the model expects {tuple(shape)}.'
        )
      new_grid = math.isqrt(shape[0])
      resampled = patch_embedding.resample_pos_emb(
          jnp.asarray(value, jnp.float32), new_grid
      ).astype(dtype)
      logging.info(
          'Warm start: resampled %s from %s to %s tokens.',
          slash_name, value.shape[0], shape[0],
      )
      if global_mesh is not None and pspecs is not None:
        resampled = jax.device_put(
            resampled, jax.sharding.NamedSharding(global_mesh, pspecs[name])
        )
      mdl_vars.Set(name, resampled)
    train_state = train_state.replace(mdl_vars=mdl_vars.ToNestedDict())
    return train_state, provenance, update_opt


# ---------------------------------------------------------------------------
# The experiments.
# ---------------------------------------------------------------------------


@experiment_registry.register
class ViT22BJFT(KnobbedExperiment):
  """ViT-22B pre-training on JFT (Dehghani et al., 2023).

  Numbers from the paper unless marked: 224 px, patch 14 (256 tokens),
  global batch 65,536, 177k steps (~3 epochs of JFT-4B), peak LR 1e-3 with
  the reciprocal square-root schedule, sigmoid cross-entropy over 29,593
  classes, decoupled weight decay 3.0 head / 0.03 body, bfloat16 compute.
  Schedule lengths and the optimizer come from the ViT-G (Scaling ViT)
  recipe the paper builds on (assumed, see /work/shared/REFERENCE.md).
  """

  # --- Model. Size from models.PRESETS; a non-None knob overrides the preset.
  MODEL_SIZE = 'vit22b'
  MODEL_DIMS = None  # D
  NUM_LAYERS = None  # L
  HIDDEN_DIMS = None  # F (MLP)
  NUM_HEADS = None  # N; the head dim H is derived as D // N.
  PATCH_SIZE = None
  IMAGE_SIZE = None  # Also the training and eval resolution.
  PARALLEL_BLOCK = True  # Parallel (paper) or sequential blocks.
  USE_QK_NORM = True
  HEAD_BIAS_INIT = -10.0  # ViT-G recipe (assumed for 22B): sigmoids start ~0.
  DROPOUT = 0.0
  FPROP_DTYPE = 'bfloat16'
  SCAN_LAYERS = True  # Depth compiles as one scanned layer.
  REMAT_POLICY = 'nothing_saveable'
  LOSS = 'sigmoid'  # 'sigmoid' (multi-label) or 'softmax'.
  # Batch mAP in training steps sorts [B, C] logits: off at JFT scale.
  MAP_IN_TRAINING = False

  # --- Data (JFT is private: bring TFRecords in data/README.md's format).
  DATA_SOURCE = 'tfrecord'  # 'tfrecord' (DATA_DIR) or 'synthetic'.
  DATA_DIR = 'gs://YOUR_BUCKET/jft'
  NUM_CLASSES = 29_593  # big_vision's JFT configs.
  EXPAND_HIERARCHY = True  # Add every label's ancestors.
  CROP_MIN_AREA = 0.05  # Inception crop's smallest area (training).
  GLOBAL_BATCH_SIZE = 65_536
  EVAL_BATCH_SIZE = 4_096
  EVAL_NUM_BATCHES = -1  # -1: the whole eval split.
  TRAIN_SPLIT = 'train'
  EVAL_SPLIT = 'eval'
  INPUT_SEED = 1234

  # --- Optimization.
  NUM_TRAIN_STEPS = 177_000
  PEAK_LR = 1e-3
  WARMUP_STEPS = 10_000  # ViT-G recipe.
  RSQRT_TIMESCALE = 10_000  # ViT-G recipe.
  COOLDOWN_STEPS = 50_000  # ViT-G recipe; linear to zero at the last step.
  HEAD_WEIGHT_DECAY = 3.0
  BODY_WEIGHT_DECAY = 0.03
  GRAD_CLIP_NORM = 1.0
  ADAFACTOR_BETA1 = 0.9
  ADAFACTOR_MOMENTUM_DTYPE = 'bfloat16'
  ADAFACTOR_BETA2_CAP = 0.999
  ADAFACTOR_DECAY_RATE = 0.8  # beta2_t = min(cap, 1 - (t + 1)^-rate).
  RANDOM_SEED = 1234

  # --- Devices. One 1,024-chip TPUv4 slice (v4-2048: 1,024 chips, one JAX
  # device each), 64-way data x 16-way model parallel (assumed: the paper
  # does not give its t x k). 16 divides the 48 heads, D and F; 65,536 / 64
  # = 1,024 images per data shard. None = all devices on the data axis.
  ICI_MESH_SHAPE = (64, 16)
  DCN_MESH_SHAPE = None  # e.g. (num_slices, 1) for multi-slice.
  PEAK_FLOPS_PER_DEVICE = 275e12  # TPUv4 chip, bfloat16; for MFU logging.

  # --- Checkpoints, summaries, eval.
  SAVE_INTERVAL_STEPS = 1_000
  SAVE_MAX_TO_KEEP = 5
  # Every summary write logs a progress line (step, loss, metrics, steps/s)
  # and examples/s (+ MFU); paxml's verbose dump (weighted scalars and
  # per-example outputs) comes every LOG_INTERVAL_STEPS.
  SUMMARY_INTERVAL_STEPS = 100
  LOG_INTERVAL_STEPS = 10_000
  STEPS_PER_SEC_INTERVAL_STEPS = 100
  EVAL_INTERVAL_STEPS = 5_000

  # --- Warm start (fine-tuning). Empty INIT_CHECKPOINT_DIR: from scratch.
  INIT_CHECKPOINT_DIR = ''  # e.g. '<pre-training job_log_dir>/checkpoints'
  INIT_CHECKPOINT_STEP = None  # None: the latest.
  INIT_EXPERIMENT = ''  # The experiment that wrote the checkpoint.
  INIT_OVERRIDES = ()  # Its knob overrides, e.g. ('IMAGE_SIZE=16',).

  # ---- Derived values (computed from the knobs where used). ----

  def model_size(self) -> models.ModelSize:
    """The preset named by MODEL_SIZE with the per-dimension knobs applied."""
    if self.MODEL_SIZE not in models.PRESETS:
      close = closest_name(self.MODEL_SIZE, list(models.PRESETS))
      raise ValidationError(
          f'MODEL_SIZE={self.MODEL_SIZE!r} is not one of '
          f'{sorted(models.PRESETS)}'
          + (f'; did you mean {close!r}?' if close else '.')
      )
    preset = models.PRESETS[self.MODEL_SIZE]
    model_dims = self.MODEL_DIMS or preset.model_dims
    num_heads = self.NUM_HEADS or preset.num_heads
    return models.ModelSize(
        model_dims=model_dims,
        num_layers=self.NUM_LAYERS or preset.num_layers,
        hidden_dims=self.HIDDEN_DIMS or preset.hidden_dims,
        num_heads=num_heads,
        dim_per_head=model_dims // num_heads,
        patch_size=self.PATCH_SIZE or preset.patch_size,
        image_size=self.IMAGE_SIZE or preset.image_size,
    )

  def mesh_shapes(
      self, num_devices: int | None = None
  ) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """(ici_mesh_shape, dcn_mesh_shape) as (data, model) pairs."""
    dcn = tuple(self.DCN_MESH_SHAPE) if self.DCN_MESH_SHAPE else None
    if self.ICI_MESH_SHAPE is None:
      if num_devices is None:
        num_devices = jax.device_count()
      slices = math.prod(dcn) if dcn else 1
      return (max(num_devices // slices, 1), 1), dcn
    return tuple(self.ICI_MESH_SHAPE), dcn

  def data_axis_size(self, num_devices: int | None = None) -> int:
    ici, dcn = self.mesh_shapes(num_devices)
    return ici[0] * (dcn[0] if dcn else 1)

  def per_host_batch_size(self, global_batch: int) -> int:
    return global_batch // jax.process_count()

  def tokens_per_image(self) -> int:
    size = self.model_size()
    return (size.image_size // size.patch_size) ** 2

  def train_flops_per_token(self) -> int:
    """Paper convention (flops.py): 6 N_blocks + 12 L T D."""
    size = self.model_size()
    return flops.train_flops_per_token(
        flops.block_matrix_params(
            size.model_dims, size.hidden_dims, size.num_layers
        ),
        size.num_layers,
        self.tokens_per_image(),
        size.model_dims,
    )

  # ---- Validation: before anything compiles, naming the knob. ----

  def check(self, num_devices: int | None = None) -> None:
    """Raises ValidationError on an invalid knob value or combination.

    Args:
      num_devices: Device count to check the mesh against (default: the
        devices this process sees).
    """
    if num_devices is None:
      num_devices = jax.device_count()
    size = self.model_size()
    errors = []
    if size.model_dims % size.num_heads:
      errors.append(
          f'NUM_HEADS={size.num_heads} does not divide the width MODEL_DIMS='
          f'{size.model_dims} (MODEL_SIZE={self.MODEL_SIZE!r}).'
      )
    if self.PARALLEL_BLOCK and size.hidden_dims % size.num_heads:
      errors.append(
          f'NUM_HEADS={size.num_heads} does not divide HIDDEN_DIMS='
          f'{size.hidden_dims} (the parallel block splits the MLP per head).'
      )
    if size.image_size % size.patch_size:
      errors.append(
          f'IMAGE_SIZE={size.image_size} is not a multiple of PATCH_SIZE='
          f'{size.patch_size}.'
      )
    ici, dcn = self.mesh_shapes(num_devices)
    if len(ici) != 2 or (dcn is not None and len(dcn) != 2):
      errors.append(
          'ICI_MESH_SHAPE and DCN_MESH_SHAPE are (data, model) pairs; got '
          f'ICI_MESH_SHAPE={self.ICI_MESH_SHAPE}, '
          f'DCN_MESH_SHAPE={self.DCN_MESH_SHAPE}.'
      )
    else:
      mesh_devices = math.prod(ici) * (math.prod(dcn) if dcn else 1)
      if mesh_devices != num_devices:
        errors.append(
            f'ICI_MESH_SHAPE={self.ICI_MESH_SHAPE} x DCN_MESH_SHAPE='
            f'{self.DCN_MESH_SHAPE} is {mesh_devices} devices but '
            f'{num_devices} are available.'
        )
      model_axis = ici[1] * (dcn[1] if dcn else 1)
      if size.num_heads % model_axis:
        errors.append(
            f'NUM_HEADS={size.num_heads} is not divisible by the model axis '
            f'size {model_axis} (ICI_MESH_SHAPE={self.ICI_MESH_SHAPE}, '
            f'DCN_MESH_SHAPE={self.DCN_MESH_SHAPE}).'
        )
      data = self.data_axis_size(num_devices)
      for knob in ('GLOBAL_BATCH_SIZE', 'EVAL_BATCH_SIZE'):
        if getattr(self, knob) % data:
          errors.append(
              f'{knob}={getattr(self, knob)} is not divisible by the data '
              f'axis size {data} (ICI_MESH_SHAPE={self.ICI_MESH_SHAPE}, '
              f'DCN_MESH_SHAPE={self.DCN_MESH_SHAPE}).'
          )
    if self.GLOBAL_BATCH_SIZE % jax.process_count():
      errors.append(
          f'GLOBAL_BATCH_SIZE={self.GLOBAL_BATCH_SIZE} is not divisible by '
          f'the {jax.process_count()} processes (hosts).'
      )
    if self.WARMUP_STEPS + self.COOLDOWN_STEPS > self.NUM_TRAIN_STEPS:
      errors.append(
          f'WARMUP_STEPS={self.WARMUP_STEPS} + COOLDOWN_STEPS='
          f'{self.COOLDOWN_STEPS} is longer than NUM_TRAIN_STEPS='
          f'{self.NUM_TRAIN_STEPS}.'
      )
    for knob in ('NUM_TRAIN_STEPS', 'GLOBAL_BATCH_SIZE', 'EVAL_BATCH_SIZE',
                 'NUM_CLASSES', 'RSQRT_TIMESCALE'):
      if getattr(self, knob) <= 0:
        errors.append(f'{knob}={getattr(self, knob)} must be positive.')
    for knob in ('WARMUP_STEPS', 'COOLDOWN_STEPS'):
      if getattr(self, knob) < 0:
        errors.append(f'{knob}={getattr(self, knob)} must be >= 0.')
    choices = {
        'LOSS': ('sigmoid', 'softmax'),
        'DATA_SOURCE': ('tfrecord', 'synthetic'),
        'FPROP_DTYPE': ('float32', 'bfloat16'),
    }
    for knob, allowed in choices.items():
      if getattr(self, knob) not in allowed:
        errors.append(
            f'{knob}={getattr(self, knob)!r} is not one of {allowed}.'
        )
    if self.INIT_CHECKPOINT_DIR and not self.INIT_EXPERIMENT:
      errors.append(
          'INIT_CHECKPOINT_DIR is set but INIT_EXPERIMENT (the experiment '
          'that wrote the checkpoint) is empty.'
      )
    if errors:
      raise ValidationError(
          f'{type(self).__name__}: ' + ' '.join(errors)
      )

  def validate(self) -> None:
    """Called by paxml.main on every launch path before compiling."""
    self.check_command_line_overrides()
    self.check()
    if self.DATA_SOURCE == 'tfrecord':
      data_format.validate_data_dir(
          self.DATA_DIR,
          self.NUM_CLASSES,
          splits=(self.TRAIN_SPLIT, self.EVAL_SPLIT),
      )
    if self.INIT_CHECKPOINT_DIR and not tf.io.gfile.isdir(
        self.INIT_CHECKPOINT_DIR
    ):
      raise ValidationError(
          f'INIT_CHECKPOINT_DIR={self.INIT_CHECKPOINT_DIR!r} is not a '
          'directory (expected <pre-training job_log_dir>/checkpoints).'
      )
    if (
        flags.FLAGS.is_parsed()
        and 'eval_on_test' in flags.FLAGS
        and flags.FLAGS['mode'].value == 'train'
        and not flags.FLAGS.eval_on_test
        and self.EVAL_INTERVAL_STEPS
    ):
      logging.warning(
          'No eval during training: paxml evaluates every EVAL_INTERVAL_STEPS '
          'only with --eval_on_test (or run a separate --mode=eval job).'
      )
    overrides = {
        k: v for k, v in knob_values(self).items()
        if v != getattr(type(self), k)
    }
    logging.info(
        '%s validated; knobs overridden: %s', type(self).__name__, overrides
    )

  # ---- Inputs. ----

  def _input(
      self, is_training: bool
  ) -> pax_fiddle.Config[base_input.BaseInput]:
    size = self.model_size()
    global_batch = (
        self.GLOBAL_BATCH_SIZE if is_training else self.EVAL_BATCH_SIZE
    )
    common = dict(
        name='train' if is_training else 'eval',
        is_training=is_training,
        batch_size=self.per_host_batch_size(global_batch),
        image_size=size.image_size,
        num_classes=self.NUM_CLASSES,
        reset_for_eval=not is_training,
        eval_loop_num_batches=self.EVAL_NUM_BATCHES,
    )
    if self.DATA_SOURCE == 'synthetic':
      return pax_fiddle.Config(
          SyntheticInput,
          seed=self.INPUT_SEED,
          num_eval_batches=max(self.EVAL_NUM_BATCHES, 1),
          **common,
      )
    return pax_fiddle.Config(
        praxis_input.MultiLabelImageInput,
        data_dir=self.DATA_DIR,
        split=self.TRAIN_SPLIT if is_training else self.EVAL_SPLIT,
        expand_hierarchy=self.EXPAND_HIERARCHY,
        crop_min_area=self.CROP_MIN_AREA,
        input_random_seed=self.INPUT_SEED,
        **common,
    )

  def datasets(self) -> list[pax_fiddle.Config[base_input.BaseInput]]:
    return [self._input(is_training=True), self._input(is_training=False)]

  def get_input_specs_provider_params(
      self,
  ) -> pax_fiddle.Config[base_input.BaseInputSpecsProvider]:
    # Model init needs shapes only: never open the data for them.
    return pax_fiddle.Config(
        ViTInputSpecsProvider,
        batch_size=self.per_host_batch_size(self.GLOBAL_BATCH_SIZE),
        image_size=self.model_size().image_size,
        num_classes=self.NUM_CLASSES,
    )

  # ---- Model, optimizer, task. ----

  def model(
      self, sharded: bool = True
  ) -> pax_fiddle.Config[models.ViTClassifier]:
    """The classifier config; sharded=False leaves the mesh unset."""
    model_p = models.classifier_config(
        self.model_size(),
        self.NUM_CLASSES,
        parallel=self.PARALLEL_BLOCK,
        use_qk_norm=self.USE_QK_NORM,
        scan=self.SCAN_LAYERS,
        remat_policy=self.REMAT_POLICY,
        fprop_dtype=getattr(jnp, self.FPROP_DTYPE),
        head_bias_init=self.HEAD_BIAS_INIT,
        dropout=self.DROPOUT,
        loss_type=self.LOSS,
    )
    model_p.map_in_training = self.MAP_IN_TRAINING
    if sharded:
      ici, dcn = self.mesh_shapes()
      sharding.set_sharding(model_p, ici_mesh_shape=ici, dcn_mesh_shape=dcn)
    return model_p

  def abstract_variables(self) -> Any:
    """The model's WeightHParams tree, by jax.eval_shape: nothing allocated."""
    model = base_hyperparams.instantiate(self.model(sharded=False))
    specs = _batch_specs(1, self.model_size().image_size, self.NUM_CLASSES)
    return model.abstract_init_with_metadata(specs)

  def abstract_param_counts(self) -> dict[str, Any]:
    """Total, per-component and paper-comparable parameter counts."""
    tree = self.abstract_variables()
    by_component = flops.count_params(tree)
    total = by_component.pop('total')
    return {
        'total_params': total,
        'params_by_component': by_component,
        'paper_block_matrix_params': flops.paper_param_count(tree),
    }

  def optimizer(self):
    return optim.make_optimizer(
        learning_rate=self.PEAK_LR,
        total_steps=self.NUM_TRAIN_STEPS,
        warmup_steps=self.WARMUP_STEPS,
        timescale=self.RSQRT_TIMESCALE,
        cooldown_steps=self.COOLDOWN_STEPS,
        head_weight_decay=self.HEAD_WEIGHT_DECAY,
        body_weight_decay=self.BODY_WEIGHT_DECAY,
        clip_gradient_norm=self.GRAD_CLIP_NORM,
        beta1=self.ADAFACTOR_BETA1,
        beta2_cap=self.ADAFACTOR_BETA2_CAP,
        decay_rate=self.ADAFACTOR_DECAY_RATE,
        momentum_dtype=self.ADAFACTOR_MOMENTUM_DTYPE,
    )

  def task(self) -> pax_fiddle.Config[tasks_lib.SingleTask]:
    task_cls = (
        FinetuneTask if self.INIT_CHECKPOINT_DIR else tasks_lib.SingleTask
    )
    task_p = pax_fiddle.Config(
        task_cls, name='vit_task', model=self.model(), summary_verbosity=2
    )
    train_p = task_p.train
    train_p.learner = pax_fiddle.Config(
        learners.Learner, loss_name='loss', optimizer=self.optimizer()
    )
    train_p.num_train_steps = self.NUM_TRAIN_STEPS
    train_p.save_interval_steps = self.SAVE_INTERVAL_STEPS
    train_p.save_max_to_keep = self.SAVE_MAX_TO_KEEP
    train_p.summary_interval_steps = self.SUMMARY_INTERVAL_STEPS
    train_p.log_train_output_interval_steps = self.LOG_INTERVAL_STEPS
    train_p.compute_steps_per_sec_interval_steps = (
        self.STEPS_PER_SEC_INTERVAL_STEPS
    )
    train_p.eval_interval_steps = self.EVAL_INTERVAL_STEPS
    train_p.eval_skip_train = True
    train_p.variable_norm_summary = False
    train_p.random_seed = self.RANDOM_SEED
    batch_axes = ('data',)
    train_p.inputs_split_mapping = NestedMap(
        map_1d=(batch_axes,),
        map_2d=(batch_axes, None),
        map_3d=(batch_axes, None, None),
        map_4d=(batch_axes, None, None, None),
    )
    if self.INIT_CHECKPOINT_DIR:
      train_p.init_from_checkpoint_rules = {
          self.INIT_CHECKPOINT_DIR: self.checkpoint_loading_rules()
      }
    return task_p

  def eval_programs(self) -> list[programs.BaseEvalProgram]:
    return [DatasetMetricsEvalProgram(p) for p in self.eval_datasets()]

  def train_programs(self) -> list[programs.BaseTrainProgram]:
    return [
        ThroughputTrainProgram(
            tokens_per_image=self.tokens_per_image(),
            flops_per_token=self.train_flops_per_token(),
            peak_flops_per_device=self.PEAK_FLOPS_PER_DEVICE,
        )
    ]

  # ---- Warm start. ----

  def init_experiment(self) -> 'ViT22BJFT':
    """The experiment (with INIT_OVERRIDES) that wrote INIT_CHECKPOINT_DIR."""
    module_name, _, class_name = self.INIT_EXPERIMENT.rpartition('.')
    cls = experiment_registry.get(self.INIT_EXPERIMENT)
    if cls is None and module_name:
      __import__(module_name)
      cls = experiment_registry.get(self.INIT_EXPERIMENT)
    if cls is None:
      raise ValidationError(
          f'INIT_EXPERIMENT={self.INIT_EXPERIMENT!r} is not a registered '
          f'experiment (class {class_name!r}).'
      )
    exp = cls()
    apply_overrides(exp, list(self.INIT_OVERRIDES))
    return exp

  def checkpoint_loading_rules(self) -> tasks_lib.CheckpointLoadingRules:
    """Loads every variable but the classifier head; pos_emb is resampled."""
    init_exp = self.init_experiment()
    init_task = init_exp.task()
    # Mesh of the restoring job; paxml copies it onto this task for GDA.
    return tasks_lib.CheckpointLoadingRules(
        task_p=init_task,
        load_rules=[(r'(params/.*)', '{}')],
        ignore_rules=[r'^params/head/.*'],
        step=self.INIT_CHECKPOINT_STEP,
        load_step=False,
        load_opt_states=False,
        input_specs_provider_p=init_exp.get_input_specs_provider_params(),
    )


@experiment_registry.register
class ViTMid(ViT22BJFT):
  """A mid-size ViT (models.PRESETS['mid']) on synthetic data: benchmarks.

  ViT-B widths at the paper's 256 tokens (~0.14 TFLOP per training image):
  the defaults take a few steps on a CPU; on an accelerator raise
  GLOBAL_BATCH_SIZE / NUM_TRAIN_STEPS and set PEAK_FLOPS_PER_DEVICE to log
  MFU, e.g. --fdl.PEAK_FLOPS_PER_DEVICE=275e12 on a TPUv4 chip.
  """

  MODEL_SIZE = 'mid'
  MAP_IN_TRAINING = True
  DATA_SOURCE = 'synthetic'
  NUM_CLASSES = 1_000
  GLOBAL_BATCH_SIZE = 8
  EVAL_BATCH_SIZE = 8
  EVAL_NUM_BATCHES = 1
  NUM_TRAIN_STEPS = 20
  WARMUP_STEPS = 2
  RSQRT_TIMESCALE = 10
  COOLDOWN_STEPS = 4
  FPROP_DTYPE = 'float32'
  ICI_MESH_SHAPE = None
  PEAK_FLOPS_PER_DEVICE = None
  SAVE_INTERVAL_STEPS = 1_000
  SUMMARY_INTERVAL_STEPS = 5
  STEPS_PER_SEC_INTERVAL_STEPS = 5
  EVAL_INTERVAL_STEPS = 20


@experiment_registry.register
class ViTShapesCPU(ViT22BJFT):
  """`make train`: the 'small' ViT on the embedded shapes dataset, 2 CPU cores.

  The 'small' preset's transformer (D 192, 6 layers, F 768, 3 heads) on
  32 px crops of the 48 px shapes images, with 8 px patches: 16 tokens keep
  a step ~4x cheaper than the preset's 4 px patches (64 tokens), which buys
  ~4x more examples in the 10-minute budget and learned faster per second
  in our runs. 1,500 steps of 64 = 96k examples (~12 epochs of 8,192).
  Tuned (PEAK_LR, schedule, batch) to reach an eval mAP far above the
  chance level (the label prior, ~0.15) within 10 minutes on 2 cores.
  """

  MODEL_SIZE = 'small'
  MAP_IN_TRAINING = True
  PATCH_SIZE = 8
  REMAT_POLICY = None  # Plenty of memory; recomputation only costs time.
  FPROP_DTYPE = 'float32'
  SCAN_LAYERS = False
  DATA_DIR = 'data/shapes'
  NUM_CLASSES = shapes.shape_classes().num_classes  # 60
  CROP_MIN_AREA = 0.5  # Small crops would cut shapes (and labels) out.
  GLOBAL_BATCH_SIZE = 64
  EVAL_BATCH_SIZE = 256  # The 1,024 eval images in 4 batches.
  EVAL_NUM_BATCHES = -1
  NUM_TRAIN_STEPS = 1_500
  PEAK_LR = 8e-3
  WARMUP_STEPS = 100
  RSQRT_TIMESCALE = 500
  COOLDOWN_STEPS = 300
  HEAD_WEIGHT_DECAY = 1e-4
  BODY_WEIGHT_DECAY = 1e-4
  ICI_MESH_SHAPE = None
  PEAK_FLOPS_PER_DEVICE = None
  SAVE_INTERVAL_STEPS = 500
  SAVE_MAX_TO_KEEP = 2
  SUMMARY_INTERVAL_STEPS = 50
  STEPS_PER_SEC_INTERVAL_STEPS = 50
  EVAL_INTERVAL_STEPS = 500  # Divides NUM_TRAIN_STEPS: the last step evals.


@experiment_registry.register
class ViTSmoke(ViT22BJFT):
  """Trains in seconds on CPU: the tiny preset on synthetic data."""

  MODEL_SIZE = 'tiny'
  MAP_IN_TRAINING = True
  DATA_SOURCE = 'synthetic'
  NUM_CLASSES = 8
  GLOBAL_BATCH_SIZE = 16
  EVAL_BATCH_SIZE = 16
  EVAL_NUM_BATCHES = 2
  NUM_TRAIN_STEPS = 20
  PEAK_LR = 1e-3
  WARMUP_STEPS = 5
  RSQRT_TIMESCALE = 10
  COOLDOWN_STEPS = 5
  FPROP_DTYPE = 'float32'
  ICI_MESH_SHAPE = None
  PEAK_FLOPS_PER_DEVICE = None
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
  """CPU fine-tuning twin: ViTSmoke checkpoint (16 px) -> 24 px, 5 classes."""

  IMAGE_SIZE = 24
  NUM_CLASSES = 5
  LOSS = 'softmax'
  HEAD_BIAS_INIT = 0.0
  NUM_TRAIN_STEPS = 4
  WARMUP_STEPS = 1
  COOLDOWN_STEPS = 1
  SAVE_INTERVAL_STEPS = 4
  EVAL_INTERVAL_STEPS = 4
  INIT_CHECKPOINT_DIR = '/tmp/vit_smoke/checkpoints'
  INIT_EXPERIMENT = 'vit22b_pax.experiments.ViTSmoke'


# Ablation twins, generated (not copied): same class, one knob changed.
_ABLATIONS = {
    'Sequential': ('PARALLEL_BLOCK', False, 'with sequential blocks'),
    'NoQKNorm': ('USE_QK_NORM', False, 'without QK normalization'),
}


def _register_ablations(base: type[ViT22BJFT]) -> None:
  for suffix, (knob, value, what) in _ABLATIONS.items():
    name = base.__name__ + suffix
    cls = type(
        name,
        (base,),
        {
            knob: value,
            '__module__': __name__,
            '__qualname__': name,
            '__doc__': f'{base.__name__} {what} (ablation twin).',
        },
    )
    globals()[name] = experiment_registry.register(cls)


for _base in (ViT22BJFT, ViTMid, ViTShapesCPU, ViTSmoke):
  _register_ablations(_base)
del _base


def registered() -> dict[str, type[ViT22BJFT]]:
  """{name: class} of every experiment this module registers."""
  return {
      name: cls
      for name, cls in globals().items()
      if isinstance(cls, type)
      and issubclass(cls, ViT22BJFT)
      and cls.__module__ == __name__
  }
