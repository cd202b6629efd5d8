"""The shared experiment logic: an unregistered base and small mixins.

ViTExperiment declares every knob (typed, with its default) and builds the
task, datasets and programs from them. Its defaults are the ViT-22B recipe
(recipe.py) on neutral devices: float32 activations, every device on the
data axis, no peak FLOP/s (so no MFU). The mixins set one concern each:

  TpuV4Pod       the paper's hardware: bfloat16, a (64, 16) mesh, TPUv4 peak,
                 collective matmul.
  SyntheticData  in-memory synthetic images instead of TFRecords.

Registered experiments (experiments.py) combine them and override a few
knobs; nothing registered lives here, so `vit22b_pax.experiments.X` stays
the registry key paxml resolves.
"""

import math
from typing import Any, Literal

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from paxml import programs as pax_programs
from paxml import tasks_lib
from praxis import base_hyperparams
from praxis import base_input
from praxis import pax_fiddle
from praxis import py_utils
import tensorflow as tf

from vit22b_pax import fewshot
from vit22b_pax import fewshot_program
from vit22b_pax import finetune
from vit22b_pax import flops
from vit22b_pax import health
from vit22b_pax import knobs
from vit22b_pax import learner
from vit22b_pax import models
from vit22b_pax import optim
from vit22b_pax import programs
from vit22b_pax import recipe
from vit22b_pax import sharding
from vit22b_pax.input import data_format
from vit22b_pax.input import praxis_input
from vit22b_pax.input import synthetic

NestedMap = py_utils.NestedMap
ValidationError = knobs.ValidationError


class ViTExperiment(knobs.KnobbedExperiment):
  """A ViT classifier trained with the ViT-22B recipe (never registered).

  Every hyperparameter is a typed UPPER_CASE knob below. Derived values
  (per-host batch, head dims, mesh, schedule lengths, FLOPs) are computed
  from the knobs where they are used, so overriding a base knob updates
  them. paxml evaluates during training only with `--eval_on_test`; eval
  also reports mAP over the whole eval split ('map_dataset') and, with
  FEWSHOT_DATASETS, few-shot linear probes of the frozen features.
  """

  # --- Model. Size from models.PRESETS; a non-None knob overrides the preset.
  MODEL_SIZE: str = 'vit22b'
  MODEL_DIMS: int | None = None  # D
  NUM_LAYERS: int | None = None  # L
  HIDDEN_DIMS: int | None = None  # F (MLP)
  NUM_HEADS: int | None = None  # N; the head dim H is derived as D // N.
  PATCH_SIZE: int | None = None
  IMAGE_SIZE: int | None = None  # Also the training and eval resolution.
  PARALLEL_BLOCK: bool = True  # Parallel (paper) or sequential blocks.
  USE_QK_NORM: bool = True
  HEAD_BIAS_INIT: float = recipe.HEAD_BIAS_INIT
  DROPOUT: float = 0.0
  FPROP_DTYPE: Literal['float32', 'bfloat16'] = 'float32'
  SCAN_LAYERS: bool = True  # Depth compiles as one scanned layer.
  REMAT_POLICY: str | None = 'nothing_saveable'  # None: no remat.
  LOSS: Literal['sigmoid', 'softmax'] = recipe.LOSS
  # Batch mAP in training steps sorts the [B, C] logits per class.
  MAP_IN_TRAINING: bool = True

  # --- Data: TFRecords in data/README.md's format, or synthetic images.
  DATA_SOURCE: Literal['tfrecord', 'synthetic'] = 'tfrecord'
  DATA_DIR: str = ''
  NUM_CLASSES: int = recipe.JFT_NUM_CLASSES
  EXPAND_HIERARCHY: bool = True  # Add every label's ancestors.
  CROP_MIN_AREA: float = recipe.CROP_MIN_AREA  # Inception crop (training).
  GLOBAL_BATCH_SIZE: int = recipe.GLOBAL_BATCH_SIZE
  EVAL_BATCH_SIZE: int = 4_096
  EVAL_NUM_BATCHES: int = -1  # -1: the whole eval split.
  TRAIN_SPLIT: str = 'train'
  EVAL_SPLIT: str = 'eval'
  INPUT_SEED: int = 1234
  # TFRecord training reads INPUT_SLICES disjoint slices of the shards, each
  # feeding its rows of every global batch (input/praxis_input.py): the
  # batches depend on the seed and this, not on the number of hosts it
  # divides. None: one slice per host.
  INPUT_SLICES: int | None = None
  # Training examples decoded and augmented at once per host; None: 4 per
  # CPU core (praxis_input.PARALLEL_CALLS_PER_CORE), -1: tf.data.AUTOTUNE.
  INPUT_PARALLEL_CALLS: int | None = None
  # Each host appends every training batch's example ids to
  # <job_log_dir>/input_ids/train.host<k>.jsonl (input/resumable.py).
  LOG_EXAMPLE_IDS: bool = False

  # --- Optimization.
  NUM_TRAIN_STEPS: int = recipe.NUM_TRAIN_STEPS
  PEAK_LR: float = recipe.PEAK_LR
  WARMUP_STEPS: int = recipe.WARMUP_STEPS
  RSQRT_TIMESCALE: int = recipe.RSQRT_TIMESCALE
  COOLDOWN_STEPS: int = recipe.COOLDOWN_STEPS  # Linear to 0 at the end.
  HEAD_WEIGHT_DECAY: float = recipe.HEAD_WEIGHT_DECAY
  BODY_WEIGHT_DECAY: float = recipe.BODY_WEIGHT_DECAY
  GRAD_CLIP_NORM: float = recipe.GRAD_CLIP_NORM
  ADAFACTOR_BETA1: float = recipe.ADAFACTOR_BETA1
  ADAFACTOR_MOMENTUM_DTYPE: Literal['bfloat16', 'float32'] = (
      recipe.ADAFACTOR_MOMENTUM_DTYPE
  )
  ADAFACTOR_BETA2_CAP: float = recipe.ADAFACTOR_BETA2_CAP
  ADAFACTOR_DECAY_RATE: float = recipe.ADAFACTOR_DECAY_RATE
  RANDOM_SEED: int = 1234

  # --- Devices: a (data, model) mesh. None: every device on the data axis.
  ICI_MESH_SHAPE: tuple[int, int] | None = None
  DCN_MESH_SHAPE: tuple[int, int] | None = None  # e.g. (num_slices, 1).
  PEAK_FLOPS_PER_DEVICE: float | None = None  # FLOP/s; None: no MFU logged.
  # The parallel blocks' fused input and output projections as collective
  # matmuls over the 'model' axis (ppermute rings overlapping each chunk's
  # transfer with the multiply of the one in hand; layers/collective_matmul
  # .py): 'unidirectional' or 'bidirectional' (half the chunks each way
  # round the ring). Parallel blocks only (check() rejects it with
  # PARALLEL_BLOCK=False); on a model axis of 1 the plain einsums run. The
  # XLA alternative is windowed einsum (experiments/*.sh flags); use one or
  # the other for the blocks.
  COLLECTIVE_MATMUL: Literal['off', 'unidirectional', 'bidirectional'] = (
      'off'
  )

  # --- Checkpoints, summaries, eval.
  SAVE_INTERVAL_STEPS: int = 1_000
  SAVE_MAX_TO_KEEP: int = 5
  # Every summary write logs a progress line (step, loss, metrics, steps/s)
  # and examples/s (+ MFU); paxml's verbose dump (weighted scalars and
  # per-example outputs) comes every LOG_INTERVAL_STEPS.
  SUMMARY_INTERVAL_STEPS: int = 100
  LOG_INTERVAL_STEPS: int = 10_000
  STEPS_PER_SEC_INTERVAL_STEPS: int = 100
  EVAL_INTERVAL_STEPS: int = 5_000

  # --- Few-shot linear probes on the frozen features during training
  # (fewshot_program.py), an eval program: it runs with --eval_on_test, at
  # the eval steps that are multiples of FEWSHOT_INTERVAL_STEPS and at the
  # last step (0: the last step only); single-process jobs only.
  FEWSHOT_DATASETS: tuple[str, ...] = ()  # Data dirs, one label per image.
  FEWSHOT_SHOTS: tuple[int, ...] = fewshot.DEFAULT_SHOTS  # Per class.
  FEWSHOT_INTERVAL_STEPS: int = 0  # A multiple of EVAL_INTERVAL_STEPS.
  FEWSHOT_NUM_SEEDS: int = fewshot.DEFAULT_NUM_SEEDS  # Draws of the shots.
  FEWSHOT_L2: float = fewshot.DEFAULT_L2
  # Non-empty: each probe of >= 2 shots picks its l2 from these values by
  # leave-one-out on its shots (never the test split).
  FEWSHOT_L2_SWEEP: tuple[float, ...] = ()
  # --- Training health (health.py, attention_summaries.py).
  # A step whose loss or gradients are not finite is skipped (no update of
  # the weights or optimizer state), logged and counted; more than this many
  # in a row stop the run.
  MAX_CONSECUTIVE_BAD_STEPS: int = health.MAX_CONSECUTIVE_BAD_STEPS
  # Every attention's largest logit and mean entropy as per-layer train
  # summaries ('attention/layer_LL/max_logit', '.../entropy').
  ATTENTION_DIAGNOSTICS: bool = True
  # The learner always writes 'learning/raw_grad_norm'; True adds paxml's
  # clipped and applied gradient norms (two more global norms per step,
  # ~4% of a ViTMid step on CPU; learner.py).
  GRAD_NORM_SUMMARIES: bool = False
  # Testing/debugging only: these steps (paxml's 0-based step numbers) get
  # NaN images, to exercise the guard.
  INJECT_NAN_AT_STEPS: tuple[int, ...] = ()

  # --- Warm start (fine-tuning). Empty INIT_CHECKPOINT_DIR: from scratch.
  INIT_CHECKPOINT_DIR: str = ''  # e.g. '<pre-training job_log_dir>/checkpoints'
  INIT_CHECKPOINT_STEP: int | None = None  # None: the latest.
  INIT_EXPERIMENT: str = ''  # The experiment that wrote the checkpoint.
  INIT_OVERRIDES: tuple[str, ...] = ()  # Its overrides, e.g. ('IMAGE_SIZE=16',)

  # ---- Derived values (computed from the knobs where used). ----

  def model_size(self) -> models.ModelSize:
    """The preset named by MODEL_SIZE with the per-dimension knobs applied."""
    if self.MODEL_SIZE not in models.PRESETS:
      close = knobs.closest_name(self.MODEL_SIZE, list(models.PRESETS))
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
    """Raises ValidationError on an invalid knob combination.

    Single knobs are type-checked when set (knobs.py); this checks how they
    fit together and with the devices.

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
    errors += self._collective_matmul_errors(size, model_axis)
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
    if self.INPUT_SLICES is not None and (
        self.INPUT_SLICES <= 0
        or self.INPUT_SLICES % jax.process_count()
        or self.GLOBAL_BATCH_SIZE % self.INPUT_SLICES
    ):
      errors.append(
          f'INPUT_SLICES={self.INPUT_SLICES} must be a positive multiple of '
          f'the {jax.process_count()} processes (hosts) and divide '
          f'GLOBAL_BATCH_SIZE={self.GLOBAL_BATCH_SIZE}.'
      )
    calls = self.INPUT_PARALLEL_CALLS
    if calls is not None and calls != -1 and calls <= 0:
      errors.append(
          f'INPUT_PARALLEL_CALLS={calls} must be positive, None'
          f' ({praxis_input.PARALLEL_CALLS_PER_CORE} per CPU core) or -1'
          ' (tf.data.AUTOTUNE).'
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
    if self.MAX_CONSECUTIVE_BAD_STEPS < 1:
      errors.append(
          f'MAX_CONSECUTIVE_BAD_STEPS={self.MAX_CONSECUTIVE_BAD_STEPS} must '
          'be >= 1.'
      )
    outside = [
        s for s in self.INJECT_NAN_AT_STEPS
        if not 0 <= s < self.NUM_TRAIN_STEPS
    ]
    if outside:
      errors.append(
          f'INJECT_NAN_AT_STEPS={tuple(self.INJECT_NAN_AT_STEPS)}: steps '
          f'{outside} are outside [0, NUM_TRAIN_STEPS={self.NUM_TRAIN_STEPS}).'
      )
    if self.INIT_CHECKPOINT_DIR and not self.INIT_EXPERIMENT:
      errors.append(
          'INIT_CHECKPOINT_DIR is set but INIT_EXPERIMENT (the experiment '
          'that wrote the checkpoint) is empty.'
      )
    errors += self._fewshot_errors()
    if errors:
      raise ValidationError(f'{type(self).__name__}: ' + ' '.join(errors))

  def _collective_matmul_errors(
      self, size: models.ModelSize, model_axis: int
  ) -> list[str]:
    """check()'s COLLECTIVE_MATMUL part (collective_matmul's preconditions)."""
    if self.COLLECTIVE_MATMUL == 'off':
      return []
    knob = f'COLLECTIVE_MATMUL={self.COLLECTIVE_MATMUL!r}'
    if not self.PARALLEL_BLOCK:
      return [f'{knob} needs PARALLEL_BLOCK=True (the sequential block has '
              "no fused projections); set COLLECTIVE_MATMUL='off'."]
    # D / model_axis is whole: the NUM_HEADS checks above imply it.
    if (self.COLLECTIVE_MATMUL == 'bidirectional' and model_axis % 2 == 0
        and size.model_dims // model_axis % 2):
      return [f'{knob}: on an even model axis ({model_axis}) each chunk '
              f'MODEL_DIMS / {model_axis} = {size.model_dims // model_axis} '
              "is sent in two halves and must be even; use 'unidirectional'."]
    return []

  def _fewshot_errors(self) -> list[str]:
    """check()'s few-shot part: the knobs, with paxml's eval schedule."""
    errors = []
    if not self.FEWSHOT_SHOTS or min(self.FEWSHOT_SHOTS) < 1:
      errors.append(
          f'FEWSHOT_SHOTS={self.FEWSHOT_SHOTS} must be positive integers.')
    if self.FEWSHOT_NUM_SEEDS < 1:
      errors.append(f'FEWSHOT_NUM_SEEDS={self.FEWSHOT_NUM_SEEDS} must be >= 1.')
    if not self.FEWSHOT_L2 > 0 or any(
        not v > 0 for v in self.FEWSHOT_L2_SWEEP):
      errors.append(
          f'FEWSHOT_L2={self.FEWSHOT_L2} and FEWSHOT_L2_SWEEP='
          f'{self.FEWSHOT_L2_SWEEP} must be positive.')
    if self.FEWSHOT_INTERVAL_STEPS < 0:
      errors.append(
          f'FEWSHOT_INTERVAL_STEPS={self.FEWSHOT_INTERVAL_STEPS} must be'
          ' >= 0 (0: at the last step only).')
    if not self.FEWSHOT_DATASETS:
      return errors
    # paxml 1.4.0 creates and calls eval programs only for these.
    if self.EVAL_INTERVAL_STEPS <= 0:
      errors.append(
          f'FEWSHOT_DATASETS is set but EVAL_INTERVAL_STEPS='
          f'{self.EVAL_INTERVAL_STEPS}: paxml runs eval programs (the'
          ' few-shot one too) only when EVAL_INTERVAL_STEPS > 0.')
    elif self.FEWSHOT_INTERVAL_STEPS % self.EVAL_INTERVAL_STEPS:
      errors.append(
          f'FEWSHOT_INTERVAL_STEPS={self.FEWSHOT_INTERVAL_STEPS} is not a'
          f' multiple of EVAL_INTERVAL_STEPS={self.EVAL_INTERVAL_STEPS}:'
          ' paxml calls eval programs only at eval steps.')
    try:
      fewshot_program.check_names(self.FEWSHOT_DATASETS)
    except ValueError as e:
      errors.append(f'FEWSHOT_DATASETS={e}')
    try:
      fewshot_program.check_single_process()
    except fewshot_program.MultiProcessError as e:
      errors.append(f'FEWSHOT_DATASETS is set but {e}')
    return errors

  def check_knobs(self) -> None:
    """validate()'s checks: the combination, then the files it will read."""
    self.check()
    if self.DATA_SOURCE == 'tfrecord':
      data_format.validate_data_dir(
          self.DATA_DIR,
          self.NUM_CLASSES,
          splits=(self.TRAIN_SPLIT, self.EVAL_SPLIT),
      )
    for data_dir in self.FEWSHOT_DATASETS:
      try:
        fewshot_program.check_dataset(data_dir, max(self.FEWSHOT_SHOTS))
      except ValueError as e:
        raise ValidationError(
            f'FEWSHOT_DATASETS entry {data_dir!r}: {e}'
        ) from None
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
          'No eval during training%s: paxml evaluates every '
          'EVAL_INTERVAL_STEPS only with --eval_on_test (or run a separate '
          '--mode=eval job).',
          ' (nor few-shot probes of FEWSHOT_DATASETS)'
          if self.FEWSHOT_DATASETS else '',
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
        log_example_ids=self.LOG_EXAMPLE_IDS and is_training,
    )
    if self.DATA_SOURCE == 'synthetic':
      return pax_fiddle.Config(
          synthetic.SyntheticInput,
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
        num_input_slices=self.INPUT_SLICES,
        num_parallel_calls=self.INPUT_PARALLEL_CALLS,
        **common,
    )

  def datasets(self) -> list[pax_fiddle.Config[base_input.BaseInput]]:
    return [self._input(is_training=True), self._input(is_training=False)]

  def get_input_specs_provider_params(
      self,
  ) -> pax_fiddle.Config[base_input.BaseInputSpecsProvider]:
    # Model init needs shapes only: never open the data for them.
    return pax_fiddle.Config(
        synthetic.ViTInputSpecsProvider,
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
        attention_diagnostics=self.ATTENTION_DIAGNOSTICS,
        collective_matmul=self.COLLECTIVE_MATMUL,
    )
    model_p.map_in_training = self.MAP_IN_TRAINING
    if sharded:
      ici, dcn = self.mesh_shapes()
      sharding.set_sharding(model_p, ici_mesh_shape=ici, dcn_mesh_shape=dcn)
    return model_p

  def abstract_variables(self) -> Any:
    """The model's WeightHParams tree, by jax.eval_shape: nothing allocated."""
    model = base_hyperparams.instantiate(self.model(sharded=False))
    specs = synthetic.batch_specs(
        1, self.model_size().image_size, self.NUM_CLASSES
    )
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
        finetune.FinetuneTask if self.INIT_CHECKPOINT_DIR
        else tasks_lib.SingleTask
    )
    task_p = pax_fiddle.Config(
        task_cls, name='vit_task', model=self.model(), summary_verbosity=2
    )
    # The learner skips non-finite steps (health.py); the aggregator makes
    # a non-finite loss count as one.
    task_p.loss_aggregator = pax_fiddle.Config(
        health.NonFiniteLossAggregator, loss_key='loss'
    )
    train_p = task_p.train
    train_p.learner = pax_fiddle.Config(
        learner.Learner,
        optimizer=self.optimizer(),
        grad_norm_summary=self.GRAD_NORM_SUMMARIES,
        check_valid_step=True,
        enable_skip_step_on_gradient_anomalies=True,
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

  def eval_programs(self) -> list[pax_programs.Program]:
    out = [
        programs.DatasetMetricsEvalProgram(p) for p in self.eval_datasets()
    ]
    if self.FEWSHOT_DATASETS:
      out.append(self.fewshot_eval_program())
    return out

  def fewshot_eval_program(self) -> fewshot_program.FewShotEvalProgram:
    """The few-shot probes of FEWSHOT_DATASETS, EVAL_BATCH_SIZE per pass."""
    return fewshot_program.FewShotEvalProgram(
        self.model(),
        self.FEWSHOT_DATASETS,
        shots=self.FEWSHOT_SHOTS,
        num_seeds=self.FEWSHOT_NUM_SEEDS,
        l2=self.FEWSHOT_L2,
        l2_sweep=self.FEWSHOT_L2_SWEEP or None,
        interval_steps=self.FEWSHOT_INTERVAL_STEPS,
        num_train_steps=self.NUM_TRAIN_STEPS,
        batch_size=self.EVAL_BATCH_SIZE,
    )

  def train_programs(self) -> list[pax_programs.BaseTrainProgram]:
    return [
        programs.ThroughputTrainProgram(
            tokens_per_image=self.tokens_per_image(),
            flops_per_token=self.train_flops_per_token(),
            peak_flops_per_device=self.PEAK_FLOPS_PER_DEVICE,
            max_consecutive_bad_steps=self.MAX_CONSECUTIVE_BAD_STEPS,
            inject_nan_at_steps=tuple(self.INJECT_NAN_AT_STEPS),
            inject_nan_field=self.model(sharded=False).image_field,
        )
    ]

  # ---- Warm start. ----

  def init_experiment(self) -> 'ViTExperiment':
    """The experiment (with INIT_OVERRIDES) that wrote INIT_CHECKPOINT_DIR."""
    return finetune.load_experiment(
        self.INIT_EXPERIMENT, self.INIT_OVERRIDES
    )

  def checkpoint_loading_rules(self) -> tasks_lib.CheckpointLoadingRules:
    """Loads every variable but the classifier head; pos_emb is resampled."""
    return finetune.checkpoint_loading_rules(
        self.init_experiment(), self.INIT_CHECKPOINT_STEP
    )


class TpuV4Pod(ViTExperiment):
  """Mixin: the paper's hardware, one 1,024-chip TPUv4 slice (recipe.py).

  With collective matmul, as ViT-22B trains ("asynchronous parallel linear
  operations", Dehghani et al. 2023, Sec. 3); bidirectional because TPU ICI
  links carry both directions at once, which halves the sequential sends
  (8 instead of 15 on the 16-way model axis). In bfloat16 the ring's
  running sums are rounded to bfloat16 at each step, where XLA's one dot
  rounds once (layers/collective_matmul.py, "Numerics").
  """

  FPROP_DTYPE = 'bfloat16'
  ICI_MESH_SHAPE = recipe.TPU_POD_MESH_SHAPE
  PEAK_FLOPS_PER_DEVICE = recipe.TPU_V4_PEAK_FLOPS
  COLLECTIVE_MATMUL = 'bidirectional'


class SyntheticData(ViTExperiment):
  """Mixin: learnable synthetic images made in memory (no files to read)."""

  DATA_SOURCE = 'synthetic'
