"""ViT-22B optimizer recipe for praxis: schedule, Adafactor variant, WD groups.

The recipe (REFERENCE.md "Training recipe"; Dehghani et al. 2023 train with the
Scaling-ViT optimizer of Zhai et al. 2021, as big_vision implements it):

  * RsqrtSchedule: linear warmup, reciprocal-square-root decay, linear
    cooldown to exactly 0 (big_vision `decay_type='rsqrt'`).
  * ScalingViTAdafactor: Adafactor with a factored second moment whose decay
    is capped, beta2_t = min(0.999, 1 - (t + 1)^-0.8); a first moment
    (beta1 0.9) stored in bfloat16; no parameter-scale multiplication. Like
    big_vision's `scale_by_adafactor` there is no per-tensor update clipping
    by default (a knob). Global-norm gradient clipping at 1.0 is the praxis
    `clip_gradient_norm_to_value` field, which paxml's Learner applies to the
    raw gradients before this optimizer sees them.
  * Decoupled weight decay in groups, `param -= wd * lr(t) * param`: 3.0 on
    the classifier head kernel (params/head/w), 0.03 on every other kernel
    (variables named 'w' / 'w_*': patch embedding, blocks, MAP head). As in
    big_vision (which decays `.*/kernel$` only), biases, norm scales, the
    position embedding and the MAP probe are not decayed.

Everything an experiment needs is built by make_optimizer(); the praxis
Learner (paxml.learners.Learner, vectorize_on_repeat_prefix=True, the
default) then runs the optimizer per layer on stacked (scanned) variables.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
from jax import numpy as jnp
import numpy as np
import optax
from praxis import base_hyperparams
from praxis import base_layer
from praxis import gshard_utils
from praxis import optimizers
from praxis import pax_fiddle
from praxis import py_utils
from praxis import pytypes
from praxis import schedules

from vit22b_pax import recipe

JTensor = pytypes.JTensor
NestedJTensor = pytypes.NestedJTensor
NestedWeightHParams = base_layer.NestedWeightHParams
WeightHParams = base_layer.WeightHParams

# The recipe's defaults; the numbers and their sources are in recipe.py.
PEAK_LEARNING_RATE = recipe.PEAK_LR
TOTAL_STEPS = recipe.NUM_TRAIN_STEPS
WARMUP_STEPS = recipe.WARMUP_STEPS
TIMESCALE = recipe.RSQRT_TIMESCALE
COOLDOWN_STEPS = recipe.COOLDOWN_STEPS
HEAD_WEIGHT_DECAY = recipe.HEAD_WEIGHT_DECAY
BODY_WEIGHT_DECAY = recipe.BODY_WEIGHT_DECAY
CLIP_GRADIENT_NORM = recipe.GRAD_CLIP_NORM
BETA1 = recipe.ADAFACTOR_BETA1
BETA2_CAP = recipe.ADAFACTOR_BETA2_CAP
DECAY_RATE = recipe.ADAFACTOR_DECAY_RATE
# praxis ShardedAdafactor uses 128.
MIN_DIM_SIZE_TO_FACTOR = recipe.MIN_DIM_SIZE_TO_FACTOR

# Weight-decay rules match variable paths as praxis names them, e.g.
# 'params/head/w', 'params/encoder/x_layers_0/w_in' (StackedTransformer) or
# 'params/encoder/repeat/sub/x_layers_0/w_in' (StackedTransformerRepeated).
# Kernels are the variables named 'w' or 'w_*' (praxis and vit22b_pax.layers
# naming; 'kernel' for Flax-style layers), the analogue of big_vision's
# '.*/kernel$'. Biases ('b', 'b_*'), norm 'scale'/'bias', 'pos_emb' and the
# MAP 'probe' match no rule and are not decayed.
HEAD_KERNEL_REGEX = r'^params/head/w$'
KERNEL_REGEX = r'(^|/)(w|w_\w+|kernel)$'


def default_weight_decay_rules(
    head: float = HEAD_WEIGHT_DECAY, body: float = BODY_WEIGHT_DECAY
) -> tuple[tuple[str, float], ...]:
  """Returns the recipe's (regex, decay) rules: head kernel, then the body."""
  return ((HEAD_KERNEL_REGEX, float(head)), (KERNEL_REGEX, float(body)))


def _validate_rules(
    rules: Sequence[tuple[str, float]], field: str
) -> list[tuple[re.Pattern[str], float]]:
  """Compiles (regex, decay) rules; errors name the field and the rule."""
  compiled = []
  for i, rule in enumerate(rules):
    if len(rule) != 2:
      raise ValueError(
          f'{field}[{i}] must be a (regex, decay) pair, got {rule!r}.'
      )
    pattern, decay = rule
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise ValueError(f'{field}[{i}]: bad regex {pattern!r}: {e}') from e
    if not decay >= 0.0:
      raise ValueError(f'{field}[{i}]: decay must be >= 0, got {decay!r}.')
    compiled.append((regex, float(decay)))
  return compiled


def _decay_for(
    name: str,
    rank: int,
    rules: Sequence[tuple[re.Pattern[str], float]],
    min_rank: int,
) -> float:
  """The first rule whose regex matches `name` wins; unmatched -> 0."""
  if rank < min_rank:
    return 0.0
  for regex, decay in rules:
    if regex.search(name):
      return decay
  return 0.0


def describe_weight_decay(
    var_weight_hparams: NestedWeightHParams,
    rules: Sequence[tuple[str, float]] | None = None,
    min_rank: int = 2,
) -> dict[str, float]:
  """Maps each variable path to the decoupled weight decay it receives.

  Args:
    var_weight_hparams: the model's WeightHParams tree (e.g. from
      model.abstract_init_with_metadata), with the top 'params' key.
    rules: (regex, decay) rules; default default_weight_decay_rules().
    min_rank: variables whose per-layer rank (repeat prefix excluded) is lower
      are not decayed.

  Returns:
    {'params/head/w': 3.0, ...} for every variable, including the 0.0 ones.
  """
  compiled = _validate_rules(
      default_weight_decay_rules() if rules is None else rules, 'rules'
  )
  names = py_utils.extract_prefixed_keys_from_nested_map(var_weight_hparams)
  flat_names = jax.tree_util.tree_leaves(names)
  flat_hparams = jax.tree_util.tree_leaves(var_weight_hparams)
  return {
      n: _decay_for(n, len(p.shape), compiled, min_rank)
      for n, p in zip(flat_names, flat_hparams)
  }


class RsqrtSchedule(schedules.BaseSchedule):
  """Linear warmup, reciprocal-square-root decay, linear cooldown.

  value(t) = min(1, t / warmup)
             * 1 / sqrt(1 + max(0, t - warmup) / timescale)
             * clip((total - t) / cooldown, 0, 1),

  a multiplier of the optimizer's learning_rate (the peak): 0 at t = 0, 1 at
  the end of warmup, exactly 0 at t = total_steps and after. praxis evaluates
  it at the optimizer's 0-based update count, so update k uses value(k) (as
  big_vision does). warmup_steps = 0 or cooldown_steps = 0 drop that factor.

  Attributes:
    warmup_steps: length of the linear warmup from 0.
    timescale: rsqrt decay time scale; the value after warmup is
      1 / sqrt(1 + (t - warmup) / timescale).
    cooldown_steps: length of the final linear decay to 0.
    total_steps: the step at which the value reaches 0.
  """

  warmup_steps: int = WARMUP_STEPS
  timescale: int = TIMESCALE
  cooldown_steps: int = COOLDOWN_STEPS
  total_steps: int = TOTAL_STEPS

  def __post_init__(self):
    super().__post_init__()
    name = type(self).__name__
    for field in ('warmup_steps', 'cooldown_steps'):
      if getattr(self, field) < 0:
        raise ValueError(
            f'{name}: {field} must be >= 0, got {getattr(self, field)}.'
        )
    if self.timescale <= 0:
      raise ValueError(f'{name}: timescale must be > 0, got {self.timescale}.')
    if self.total_steps <= 0:
      raise ValueError(
          f'{name}: total_steps must be > 0, got {self.total_steps}.'
      )
    if self.warmup_steps + self.cooldown_steps > self.total_steps:
      raise ValueError(
          f'{name}: warmup_steps ({self.warmup_steps}) + cooldown_steps '
          f'({self.cooldown_steps}) must not exceed total_steps '
          f'({self.total_steps}).'
      )

  def value_at(self, step: JTensor) -> JTensor:
    t = jnp.asarray(step).astype(jnp.float32)
    value = jax.lax.rsqrt(
        1.0 + jnp.maximum(0.0, t - self.warmup_steps) / self.timescale
    )
    if self.warmup_steps:
      value *= jnp.minimum(1.0, t / self.warmup_steps)
    if self.cooldown_steps:
      value *= jnp.clip((self.total_steps - t) / self.cooldown_steps, 0.0, 1.0)
    return value


class ScalingViTAdafactorState(NamedTuple):
  """State of ScalingViTAdafactor; trees hold (1,) placeholders where unused.

  Attributes:
    count: number of updates done so far (int32 scalar).
    m: first moment, in momentum_dtype.
    v_row: factored second moment, the param's shape without its largest dim.
    v_col: factored second moment, the param's shape without its second
      largest dim.
    v: full second moment of variables that are not factored.
  """

  count: JTensor
  m: NestedJTensor
  v_row: NestedJTensor
  v_col: NestedJTensor
  v: NestedJTensor


@dataclasses.dataclass(frozen=True)
class _VarResult:
  """Per-variable results; not a pytree, so tree_map leaves it whole."""

  update: Any
  m: Any
  v_row: Any
  v_col: Any
  v: Any


def _split_results(count, results) -> ScalingViTAdafactorState:
  get = lambda field: jax.tree_util.tree_map(
      lambda r: getattr(r, field), results
  )
  return ScalingViTAdafactorState(
      count=count,
      m=get('m'),
      v_row=get('v_row'),
      v_col=get('v_col'),
      v=get('v'),
  )


def _drop(shape: Sequence[int], dim: int) -> list[int]:
  """`shape` without dim `dim`."""
  return [int(d) for i, d in enumerate(shape) if i != dim]


def factored_dims(
    shape: Sequence[int], min_dim_size_to_factor: int
) -> tuple[int, int] | None:
  """(second largest, largest) dim indices to factor over, or None.

  As optax.scale_by_factored_rms: factor when rank >= 2 and the second
  largest dim is >= min_dim_size_to_factor. A stable sort breaks ties, so a
  square [D, D] kernel gets row statistics over its last dim.

  Rank-3 weights factor over their two largest dims, as optax and praxis do
  for [D, N, H] attention weights: the parallel block's w_in [D, N, K] keeps
  statistics [N, K] and [D, N], finer than the [D] x [3NH + F] a flat 2-D
  fused kernel would get (big_vision), and not identical to what the
  sequential block's separate q/k/v and MLP kernels get.

  Args:
    shape: the per-layer variable shape (repeat prefix excluded).
    min_dim_size_to_factor: the factoring threshold.

  Returns:
    (d1, d0) with d0 the largest dim, or None for a full second moment.
  """
  if len(shape) < 2:
    return None
  order = np.argsort(np.asarray(shape), kind='stable')
  d1, d0 = int(order[-2]), int(order[-1])
  if shape[d1] < min_dim_size_to_factor:
    return None
  return d1, d0


def scaling_vit_adafactor(
    learning_rate_fn: optax.Schedule,
    *,
    beta1: float = BETA1,
    decay_rate: float = DECAY_RATE,
    beta2_cap: float = BETA2_CAP,
    step_offset: int = 0,
    min_dim_size_to_factor: int = MIN_DIM_SIZE_TO_FACTOR,
    epsilon: float = 1e-30,
    momentum_dtype: Any = jnp.bfloat16,
    update_clip_threshold: float | None = None,
    weight_decay_rules: Sequence[tuple[str, float]] = (),
    weight_decay_min_rank: int = 2,
) -> optimizers.ShardedGradientTransformation:
  """The Scaling-ViT Adafactor with decoupled weight decay groups.

  For a gradient g at update count t (0-based), per variable:
    beta2 = min(beta2_cap, 1 - (max(t - step_offset, 0) + 1)^-decay_rate)
    factored [.., R, .., C]: v_row = beta2 v_row + (1-beta2) mean_C(g^2 + eps)
      v_col = beta2 v_col + (1-beta2) mean_R(g^2 + eps)
      u = g / sqrt(v_row / mean_R(v_row)) / sqrt(v_col)
    else: v = beta2 v + (1-beta2) (g^2 + eps); u = g / sqrt(v)
    u /= max(1, rms(u) / update_clip_threshold)        (if the threshold is set)
    m = beta1 m + (1-beta1) u; u = m (m stored rounded to momentum_dtype)
    update = -lr(t) u - lr(t) wd(name) param

  This mirrors big_vision's scale_by_adafactor (optax.scale_by_factored_rms,
  optional clip_by_block_rms, optax.ema(debias=False)) and its decoupled
  weight decay, with a praxis init_partition_spec so that the state is
  sharded like the variables under pjit. Variables with a repeat prefix must
  go through praxis' prefix vectorization (paxml Learner does it), as with
  praxis' ShardedAdafactor, so that each stacked layer is its own variable.

  Args:
    learning_rate_fn: count -> learning rate (peak times schedule).
    beta1: first-moment decay; 0 disables the first moment.
    decay_rate: exponent of the second-moment decay schedule.
    beta2_cap: upper bound of the second-moment decay.
    step_offset: count at which the decay schedule restarts (fine-tuning).
    min_dim_size_to_factor: see factored_dims().
    epsilon: added to g^2.
    momentum_dtype: storage dtype of the first moment.
    update_clip_threshold: per-variable RMS bound of u; None disables it.
    weight_decay_rules: (regex, decay) pairs matched (re.search, first match
      wins) against the variable path; unmatched variables are not decayed.
    weight_decay_min_rank: variables of lower per-layer rank are not decayed.

  Returns:
    A praxis ShardedGradientTransformation.
  """
  rules = _validate_rules(weight_decay_rules, 'weight_decay_rules')
  momentum_dtype = jnp.dtype(momentum_dtype)

  def placeholder():
    return jnp.zeros((1,), jnp.float32)

  def init_one(param):
    shape = param.shape
    m = jnp.zeros(shape, momentum_dtype) if beta1 else placeholder()
    dims = factored_dims(shape, min_dim_size_to_factor)
    if dims is None:
      return _VarResult(
          None, m, placeholder(), placeholder(), jnp.zeros(shape, jnp.float32)
      )
    d1, d0 = dims
    v_row = jnp.zeros(_drop(shape, d0), jnp.float32)
    v_col = jnp.zeros(_drop(shape, d1), jnp.float32)
    return _VarResult(None, m, v_row, v_col, placeholder())

  def init_fn(params):
    results = jax.tree_util.tree_map(init_one, params)
    return _split_results(jnp.zeros([], jnp.int32), results)

  def spec(shape, dtype, var_hparams, split=None):
    return WeightHParams(
        shape=list(shape),
        init=None,
        dtype=dtype,
        collections=None,
        mesh_shape=var_hparams.mesh_shape,
        tensor_split_dims_mapping=split,
    )

  def init_partition_spec_one(var_hparams: WeightHParams) -> _VarResult:
    if var_hparams.repeat_prefix:
      raise ValueError(
          'ScalingViTAdafactor: a variable has repeat_prefix '
          f'{var_hparams.repeat_prefix}; vectorize the optimizer on repeat '
          'prefixes (paxml Learner vectorize_on_repeat_prefix=True, or '
          'optimizer_prefix_vectorization.'
          'get_transformations_with_vectorized_repeat_prefix).'
      )
    shape = list(var_hparams.shape)
    split = var_hparams.tensor_split_dims_mapping
    if split is not None and len(split) != len(shape):
      raise ValueError(
          f'tensor_split_dims_mapping {split} does not match shape {shape}.'
      )
    placeholder_spec = spec([1], jnp.float32, var_hparams)
    if beta1:
      m = spec(shape, momentum_dtype, var_hparams, split)
    else:
      m = placeholder_spec
    dims = factored_dims(shape, min_dim_size_to_factor)
    if dims is None:
      v = spec(shape, jnp.float32, var_hparams, split)
      return _VarResult(None, m, placeholder_spec, placeholder_spec, v)
    d1, d0 = dims
    # A state dim keeps the sharding of the variable dim it comes from.
    drop = lambda d: split and gshard_utils.remove_dim(d, split)
    v_row = spec(_drop(shape, d0), jnp.float32, var_hparams, drop(d0))
    v_col = spec(_drop(shape, d1), jnp.float32, var_hparams, drop(d1))
    return _VarResult(None, m, v_row, v_col, placeholder_spec)

  def init_partition_spec_fn(var_hparams):
    results = jax.tree_util.tree_map(init_partition_spec_one, var_hparams)
    count = WeightHParams(
        shape=[],
        init=None,
        dtype=jnp.int32,
        collections=None,
        tensor_split_dims_mapping=[],
    )
    return _split_results(count, results)

  def update_one(count, lr, grad, m, v_row, v_col, v, param, name):
    g = grad.astype(jnp.float32)
    g_sq = g * g + epsilon
    t = jnp.maximum(count - step_offset, 0).astype(jnp.float32) + 1.0
    beta2 = jnp.minimum(beta2_cap, 1.0 - t ** (-decay_rate))
    dims = factored_dims(param.shape, min_dim_size_to_factor)
    if dims is None:
      v = beta2 * v + (1.0 - beta2) * g_sq
      u = g * jax.lax.rsqrt(v)
    else:
      d1, d0 = dims
      v_row = beta2 * v_row + (1.0 - beta2) * jnp.mean(g_sq, axis=d0)
      v_col = beta2 * v_col + (1.0 - beta2) * jnp.mean(g_sq, axis=d1)
      # d1 in v_row's coordinates (d0 was removed from it).
      row_axis = d1 - 1 if d1 > d0 else d1
      row_mean = jnp.mean(v_row, axis=row_axis, keepdims=True)
      u = (
          g
          * jnp.expand_dims(jax.lax.rsqrt(v_row / row_mean), d0)
          * jnp.expand_dims(jax.lax.rsqrt(v_col), d1)
      )
    if update_clip_threshold:
      rms = jnp.sqrt(jnp.mean(u * u))
      u = u / jnp.maximum(1.0, rms / update_clip_threshold)
    if beta1:
      # The update uses the float32 average; only the stored copy is rounded.
      u = beta1 * m.astype(jnp.float32) + (1.0 - beta1) * u
      m = u.astype(momentum_dtype)
    update = -lr * u
    decay = _decay_for(name, param.ndim, rules, weight_decay_min_rank)
    if decay:
      update = update - (lr * decay) * param.astype(jnp.float32)
    return _VarResult(update.astype(param.dtype), m, v_row, v_col, v)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          'ScalingViTAdafactor needs params (weight decay): pass them to '
          'update().'
      )
    lr = learning_rate_fn(state.count)
    names = py_utils.extract_prefixed_keys_from_nested_map(updates)
    results = jax.tree_util.tree_map(
        lambda *args: update_one(state.count, lr, *args),
        updates,
        state.m,
        state.v_row,
        state.v_col,
        state.v,
        params,
        names,
    )
    new_updates = jax.tree_util.tree_map(lambda r: r.update, results)
    return new_updates, _split_results(state.count + 1, results)

  return optimizers.ShardedGradientTransformation(
      init=init_fn,
      update=update_fn,
      init_partition_spec=init_partition_spec_fn,
  )


class ScalingViTAdafactor(optimizers.BaseOptimizer):
  """The Scaling-ViT Adafactor (Zhai et al. 2021) with weight-decay groups.

  See scaling_vit_adafactor() for the update. Use the inherited fields
  learning_rate (peak), lr_schedule (e.g. RsqrtSchedule) and
  clip_gradient_norm_to_value (global norm, applied by paxml's Learner).
  Weight decay is decoupled and grouped by weight_decay_rules; the inherited
  decoupled_weight_decay / l1 / l2 fields must stay unset.

  Attributes:
    beta1: first-moment decay; 0 disables the first moment.
    decay_rate: second-moment decay exponent: beta2_t = 1 - (t+1)^-decay_rate.
    beta2_cap: upper bound of beta2_t.
    step_offset: count at which the beta2 schedule restarts (fine-tuning).
    min_dim_size_to_factor: factor the second moment of a variable when its
      second largest dim is at least this.
    epsilon: added to squared gradients.
    momentum_dtype: storage dtype of the first moment ('bfloat16' or
      'float32').
    update_clip_threshold: if set, clip each variable's update u to this RMS
      (classic Adafactor); big_vision leaves it off.
    weight_decay_rules: (regex, decay) pairs; the first regex that re.search-es
      the variable path (e.g. 'params/head/w') sets its decoupled decay, the
      update being -lr(t) * decay * param. Unmatched variables: no decay.
    weight_decay_min_rank: variables whose per-layer rank (stacked repeat dims
      excluded) is below this are never decayed: biases and norm scales.
  """

  beta1: float = BETA1
  decay_rate: float = DECAY_RATE
  beta2_cap: float = BETA2_CAP
  step_offset: int = 0
  min_dim_size_to_factor: int = MIN_DIM_SIZE_TO_FACTOR
  epsilon: float = 1e-30
  momentum_dtype: str = 'bfloat16'
  update_clip_threshold: float | None = None
  weight_decay_rules: Sequence[tuple[str, float]] = (
      default_weight_decay_rules()
  )
  weight_decay_min_rank: int = 2

  def __post_init__(self):
    super().__post_init__()
    name = type(self).__name__
    if self.decoupled_weight_decay or self.l1_regularizer_weight or (
        self.l2_regularizer_weight
    ):
      raise ValueError(
          f'{name}: set weight_decay_rules instead of decoupled_weight_decay, '
          'l1_regularizer_weight or l2_regularizer_weight.'
      )
    if self.learning_rate < 0:
      raise ValueError(
          f'{name}: learning_rate must be >= 0, got {self.learning_rate}.'
      )
    if not 0.0 <= self.beta1 < 1.0:
      raise ValueError(f'{name}: beta1 must be in [0, 1), got {self.beta1}.')
    if not 0.0 < self.beta2_cap <= 1.0:
      raise ValueError(
          f'{name}: beta2_cap must be in (0, 1], got {self.beta2_cap}.'
      )
    if self.decay_rate <= 0:
      raise ValueError(
          f'{name}: decay_rate must be > 0, got {self.decay_rate}.'
      )
    if self.min_dim_size_to_factor < 1:
      raise ValueError(
          f'{name}: min_dim_size_to_factor must be >= 1, got '
          f'{self.min_dim_size_to_factor}.'
      )
    if self.momentum_dtype not in ('bfloat16', 'float32'):
      raise ValueError(
          f"{name}: momentum_dtype must be 'bfloat16' or 'float32', got "
          f'{self.momentum_dtype!r}.'
      )
    if self.update_clip_threshold is not None and (
        self.update_clip_threshold <= 0
    ):
      raise ValueError(
          f'{name}: update_clip_threshold must be > 0 or None, got '
          f'{self.update_clip_threshold}.'
      )
    if self.clip_gradient_norm_to_value < 0:
      raise ValueError(
          f'{name}: clip_gradient_norm_to_value must be >= 0, got '
          f'{self.clip_gradient_norm_to_value}.'
      )
    _validate_rules(self.weight_decay_rules, f'{name}.weight_decay_rules')

  def _get_raw_grad_transformation(
      self, lr: optax.Schedule
  ) -> optimizers.ShardedGradientTransformation:
    return scaling_vit_adafactor(
        lr,
        beta1=self.beta1,
        decay_rate=self.decay_rate,
        beta2_cap=self.beta2_cap,
        step_offset=self.step_offset,
        min_dim_size_to_factor=self.min_dim_size_to_factor,
        epsilon=self.epsilon,
        momentum_dtype=getattr(jnp, self.momentum_dtype),
        update_clip_threshold=self.update_clip_threshold,
        weight_decay_rules=self.weight_decay_rules,
        weight_decay_min_rank=self.weight_decay_min_rank,
    )


def make_optimizer(
    *,
    learning_rate: float = PEAK_LEARNING_RATE,
    total_steps: int = TOTAL_STEPS,
    warmup_steps: int = WARMUP_STEPS,
    timescale: int = TIMESCALE,
    cooldown_steps: int = COOLDOWN_STEPS,
    head_weight_decay: float = HEAD_WEIGHT_DECAY,
    body_weight_decay: float = BODY_WEIGHT_DECAY,
    clip_gradient_norm: float = CLIP_GRADIENT_NORM,
    beta1: float = BETA1,
    beta2_cap: float = BETA2_CAP,
    decay_rate: float = DECAY_RATE,
    momentum_dtype: str = recipe.ADAFACTOR_MOMENTUM_DTYPE,
    min_dim_size_to_factor: int = MIN_DIM_SIZE_TO_FACTOR,
    update_clip_threshold: float | None = None,
    rules: Sequence[tuple[str, float]] | None = None,
    ema_decay: float = 0.0,
) -> pax_fiddle.Config[ScalingViTAdafactor]:
  """Builds the praxis optimizer config of the recipe from knobs.

  Set it as task.train.learner.optimizer. The config is instantiated once
  here, so a bad knob raises now (naming it), not at compilation.

  Args:
    learning_rate: peak learning rate.
    total_steps: training steps; the schedule reaches 0 here.
    warmup_steps: linear warmup length.
    timescale: rsqrt decay time scale.
    cooldown_steps: linear cooldown length.
    head_weight_decay: decoupled decay of the head kernel (params/head/w).
    body_weight_decay: decoupled decay of the other weight matrices.
    clip_gradient_norm: global gradient-norm clip; 0 disables it.
    beta1: first-moment decay.
    beta2_cap: cap of the second-moment decay.
    decay_rate: second-moment decay exponent.
    momentum_dtype: 'bfloat16' (recipe) or 'float32'.
    min_dim_size_to_factor: second-moment factoring threshold.
    update_clip_threshold: per-variable update RMS clip; None (recipe) = off.
    rules: (regex, decay) rules replacing the head/body ones.
    ema_decay: praxis EMA of the weights if > 0.

  Returns:
    pax_fiddle.Config[ScalingViTAdafactor].
  """
  if not learning_rate > 0:
    raise ValueError(f'learning_rate must be > 0, got {learning_rate}.')
  if head_weight_decay < 0 or body_weight_decay < 0:
    raise ValueError(
        'head_weight_decay and body_weight_decay must be >= 0, got '
        f'{head_weight_decay} and {body_weight_decay}.'
    )
  if rules is None:
    rules = default_weight_decay_rules(head_weight_decay, body_weight_decay)
  config = pax_fiddle.Config(
      ScalingViTAdafactor,
      learning_rate=learning_rate,
      lr_schedule=pax_fiddle.Config(
          RsqrtSchedule,
          warmup_steps=warmup_steps,
          timescale=timescale,
          cooldown_steps=cooldown_steps,
          total_steps=total_steps,
      ),
      clip_gradient_norm_to_value=clip_gradient_norm,
      beta1=beta1,
      beta2_cap=beta2_cap,
      decay_rate=decay_rate,
      momentum_dtype=momentum_dtype,
      min_dim_size_to_factor=min_dim_size_to_factor,
      update_clip_threshold=update_clip_threshold,
      weight_decay_rules=tuple((str(r), float(d)) for r, d in rules),
      ema_decay=ema_decay,
  )
  base_hyperparams.instantiate(config)  # Validates every knob now.
  return config


def learning_rate_fn(
    config: pax_fiddle.Config[optimizers.BaseOptimizer],
) -> Callable[[JTensor], JTensor]:
  """step -> learning rate of an optimizer config (for plots and logs)."""
  return base_hyperparams.instantiate(config).get_learning_rate
