"""ViT-22B optimizer recipe for praxis: schedule, Adafactor variant, WD groups.

The recipe (Dehghani et al. 2023, "Scaling Vision Transformers to 22 Billion
Parameters", which trains with the Scaling-ViT recipe of Zhai et al. 2021,
"Scaling Vision Transformers", as big_vision implements it; docs/recipe.md
lists the numbers with their sources):

  * RsqrtSchedule: linear warmup, reciprocal-square-root decay, linear
    cooldown to exactly 0 (big_vision `decay_type='rsqrt'`).
  * ScalingViTAdafactor: Adafactor with a factored second moment whose decay
    is capped, beta2_t = min(0.999, 1 - (t + 1)^-0.8); a first moment
    (beta1 0.9) stored in bfloat16; no parameter-scale multiplication. Built
    like big_vision's `scale_by_adafactor`, from optax's
    scale_by_factored_rms and ema (plus the partition specs praxis needs to
    shard the state); no per-tensor update clipping by default (a knob,
    optax's clip_by_block_rms). Global-norm gradient clipping at 1.0 is the
    praxis `clip_gradient_norm_to_value` field, which paxml's Learner applies
    to the raw gradients before this optimizer sees them.
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

import re
from typing import Any, Callable, Sequence

import jax
from jax import numpy as jnp
import numpy as np
import optax
from optax._src import factorized
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


def _rule_index(
    name: str,
    rank: int,
    rules: Sequence[tuple[re.Pattern[str], float]],
    min_rank: int,
) -> int | None:
  """Index of the rule deciding `name`'s decay: the first regex that matches.

  None when no rule matches or the per-layer rank is below min_rank (no
  decay).
  """
  if rank < min_rank:
    return None
  for i, (regex, _) in enumerate(rules):
    if regex.search(name):
      return i
  return None


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
  decays = {}
  for name, p in zip(flat_names, flat_hparams):
    i = _rule_index(name, len(p.shape), compiled, min_rank)
    decays[name] = 0.0 if i is None else compiled[i][1]
  return decays


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


def beta2_schedule(
    beta2_cap: float = BETA2_CAP,
) -> Callable[[JTensor, float], JTensor]:
  """The capped second-moment decay, as optax's `decay_rate_fn`.

  beta2_t = min(beta2_cap, 1 - (t + 1)^-decay_rate) (Zhai et al. 2021;
  big_vision `scale_by_adafactor`). optax passes t = count - step_offset;
  before the offset t is taken as 0 (the schedule's start) instead of giving
  a power of a negative number.

  Args:
    beta2_cap: upper bound of beta2_t.

  Returns:
    (t, decay_rate) -> beta2_t.
  """

  def decay_rate_fn(step: JTensor, decay_rate: float) -> JTensor:
    t = jnp.maximum(jnp.asarray(step, jnp.float32), 0.0) + 1.0
    return jnp.minimum(beta2_cap, 1.0 - t ** (-decay_rate))

  return decay_rate_fn


def factored_dims(
    shape: Sequence[int], min_dim_size_to_factor: int
) -> tuple[int, int] | None:
  """(d1, d0): the dims optax.scale_by_factored_rms factors over, or None.

  d0 is the largest dim, d1 the second largest; None (a full second moment)
  when the rank is < 2 or shape[d1] < min_dim_size_to_factor. v_row has the
  shape without d0, v_col the shape without d1, and a factored variable's
  update is g / sqrt(v_row / mean_d1(v_row)) / sqrt(v_col).

  This is optax's own (private) helper, so that the partition specs always
  describe the state optax creates. Its argsort is numpy's default, not a
  stable sort: on this stack it breaks ties like a stable sort for rank <= 3
  (every shape with dims in {8, 32, 64, 128}) but not always for rank 4
  ([64, 64, 32, 32] -> d1 1, d0 0). The update does not depend on which of
  two equal dims is d0 (v_row v_col / mean(v_row) is the same product), only
  the state layout does.

  Rank-3 weights ([D, N, K] fused attention/MLP weights, [N, J, D]) factor
  over their two largest dims: the parallel block's w_in [D, N, K] keeps
  statistics [N, K] and [D, N], i.e. each head's [D, K] slice is factored as
  its own matrix (the mean in the update runs over K per head). That is
  finer than the [D] x [3NH + F] statistics of a flat 2-D fused kernel
  (big_vision), and not identical to what the sequential block's separate
  q/k/v and MLP kernels get.

  Args:
    shape: the per-layer variable shape (repeat prefix excluded).
    min_dim_size_to_factor: the factoring threshold.

  Returns:
    (d1, d0), or None for a full second moment.
  """
  return factorized._factored_dims(  # pylint: disable=protected-access
      tuple(shape), True, min_dim_size_to_factor
  )


def _count_spec() -> WeightHParams:
  """Partition spec of an optimizer step counter (replicated int32)."""
  return WeightHParams(
      shape=[],
      init=None,
      dtype=jnp.int32,
      collections=None,
      tensor_split_dims_mapping=[],
  )


def _slot_spec(
    var_hparams: WeightHParams,
    shape: Sequence[int],
    dtype: Any,
    split: pytypes.SplitDimsMapping = None,
) -> WeightHParams:
  """Partition spec of one optimizer slot of the variable `var_hparams`."""
  if var_hparams.repeat_prefix:
    raise ValueError(
        'scaling_vit_adafactor: a variable has repeat_prefix '
        f'{var_hparams.repeat_prefix}; vectorize the optimizer on repeat '
        'prefixes (paxml Learner vectorize_on_repeat_prefix=True, or '
        'optimizer_prefix_vectorization.'
        'get_transformations_with_vectorized_repeat_prefix).'
    )
  split_rank = None if split is None else len(split)
  if split_rank is not None and split_rank != len(shape):
    raise ValueError(
        f'tensor_split_dims_mapping {split} does not match shape {shape}.'
    )
  return WeightHParams(
      shape=[int(d) for d in shape],
      init=None,
      dtype=dtype,
      collections=None,
      mesh_shape=var_hparams.mesh_shape,
      tensor_split_dims_mapping=split,
  )


def _factored_rms_spec(min_dim_size_to_factor: int):
  """init_partition_spec of optax.scale_by_factored_rms.

  A state dim keeps the sharding of the variable dim it comes from; the (1,)
  placeholders optax keeps for unused slots are replicated.
  """

  def slots(vh: WeightHParams) -> tuple[Any, Any, Any]:
    shape, split = list(vh.shape), vh.tensor_split_dims_mapping
    if split is not None and len(split) != len(shape):
      raise ValueError(
          f'tensor_split_dims_mapping {split} does not match shape {shape}.'
      )
    placeholder = _slot_spec(vh, [1], jnp.float32)
    dims = factored_dims(shape, min_dim_size_to_factor)
    if dims is None:
      return placeholder, placeholder, _slot_spec(vh, shape, jnp.float32, split)
    d1, d0 = dims
    drop = lambda d: split and gshard_utils.remove_dim(d, split)
    v_row = _slot_spec(vh, np.delete(shape, d0), jnp.float32, drop(d0))
    v_col = _slot_spec(vh, np.delete(shape, d1), jnp.float32, drop(d1))
    return v_row, v_col, placeholder

  def spec_fn(var_hparams: NestedWeightHParams) -> optax.FactoredState:
    part = lambda i: jax.tree_util.tree_map(
        lambda vh: slots(vh)[i], var_hparams
    )
    return optax.FactoredState(
        count=_count_spec(), v_row=part(0), v_col=part(1), v=part(2)
    )

  return spec_fn


def _ema_spec(dtype: Any):
  """init_partition_spec of optax.ema: a slot like each variable in dtype."""

  def spec_fn(var_hparams: NestedWeightHParams) -> optax.EmaState:
    return optax.EmaState(
        count=_count_spec(),
        ema=jax.tree_util.tree_map(
            lambda vh: _slot_spec(
                vh, vh.shape, dtype, vh.tensor_split_dims_mapping
            ),
            var_hparams,
        ),
    )

  return spec_fn


def _weight_decay_masks(
    rules: Sequence[tuple[re.Pattern[str], float]], min_rank: int
) -> list[Callable[[NestedJTensor], NestedJTensor]]:
  """mask_i(tree): True at the variables whose decay comes from rules[i].

  The first rule whose regex matches the variable path wins (see
  _rule_index); the masks are static (paths and ranks), as optax.masked
  needs under jit.
  """

  def mask(i: int) -> Callable[[NestedJTensor], NestedJTensor]:
    def fn(tree):
      names = py_utils.extract_prefixed_keys_from_nested_map(tree)
      return jax.tree_util.tree_map(
          lambda x, name: _rule_index(name, x.ndim, rules, min_rank) == i,
          tree,
          names,
      )

    return fn

  return [mask(i) for i in range(len(rules))]


def _sharded_chain(
    *parts: tuple[optax.GradientTransformation, Callable[..., Any]],
) -> optimizers.ShardedGradientTransformation:
  """optax.chain of (transformation, init_partition_spec) pairs.

  Not praxis' sharded_chain: that wraps the specs in an optax.MaskedState
  which paxml (tasks_lib.create_state_partition_specs) removes only at the
  outermost level, where BaseOptimizer's own sharded_chain puts one; nested
  one level down it would no longer match the state's plain tuple.
  """
  chained = optax.chain(*(tx for tx, _ in parts))
  return optimizers.ShardedGradientTransformation(
      init=chained.init,
      update=chained.update,
      init_partition_spec=lambda var_hparams: tuple(
          spec(var_hparams) for _, spec in parts
      ),
  )


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

  The optax chain big_vision builds (`big_vision/optax.py`:
  `scale_by_adafactor`, then its learning-rate and weight-decay steps), with
  a praxis init_partition_spec so that the state is sharded like the
  variables under pjit:

    optax.scale_by_factored_rms(decay_rate_fn=beta2_schedule(beta2_cap))
    optax.clip_by_block_rms(update_clip_threshold)       (if set)
    optax.ema(beta1, debias=False, accumulator_dtype=momentum_dtype)
    optax.add_decayed_weights(decay, mask) per rule      (decay > 0)
    optax.scale_by_learning_rate(learning_rate_fn)

  For a gradient g at update count t (0-based), per variable:
    beta2 = min(beta2_cap, 1 - (max(t - step_offset, 0) + 1)^-decay_rate)
    factored (see factored_dims): v_row = beta2 v_row + (1-beta2) mean_d0(g^2
      + eps); v_col = beta2 v_col + (1-beta2) mean_d1(g^2 + eps);
      u = g / sqrt(v_row / mean_d1(v_row)) / sqrt(v_col)
    else: v = beta2 v + (1-beta2) (g^2 + eps); u = g / sqrt(v)
    u /= max(1, rms(u) / update_clip_threshold)        (if the threshold is set)
    m = beta1 m + (1-beta1) u; u = m (only the stored m is rounded to
      momentum_dtype)
    update = -lr(t) (u + wd(name) param)

  Variables with a repeat prefix must go through praxis' prefix
  vectorization (paxml's Learner does it), as with praxis' ShardedAdafactor,
  so that each stacked layer is its own variable.

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
  empty_spec = lambda _: optax.EmptyState()
  parts = [(
      optax.scale_by_factored_rms(
          factored=True,
          decay_rate=decay_rate,
          step_offset=step_offset,
          min_dim_size_to_factor=min_dim_size_to_factor,
          epsilon=epsilon,
          decay_rate_fn=beta2_schedule(beta2_cap),
      ),
      _factored_rms_spec(min_dim_size_to_factor),
  )]
  if update_clip_threshold:
    parts.append((optax.clip_by_block_rms(update_clip_threshold), empty_spec))
  if beta1:
    momentum_dtype = jnp.dtype(momentum_dtype)
    # A float32 decay, not the Python float big_vision passes: optax computes
    # decay * m with m in momentum_dtype, and jax's weak typing would then
    # round 0.9 to bfloat16 (0.900390625) and the product to bfloat16 before
    # the float32 sum. So only the stored m is rounded (AdafactorReferenceTest
    # in tests/test_optim.py tells the two apart).
    parts.append((
        optax.ema(
            jnp.asarray(beta1, jnp.float32),
            debias=False,
            accumulator_dtype=momentum_dtype,
        ),
        _ema_spec(momentum_dtype),
    ))
  masks = _weight_decay_masks(rules, weight_decay_min_rank)
  for (_, decay), mask in zip(rules, masks):
    if decay:
      parts.append((
          optax.add_decayed_weights(decay, mask),
          lambda _: optax.MaskedState(inner_state=optax.EmptyState()),
      ))
  parts.append((
      optax.scale_by_learning_rate(learning_rate_fn),
      lambda _: optax.ScaleByScheduleState(count=_count_spec()),
  ))
  return _sharded_chain(*parts)


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
