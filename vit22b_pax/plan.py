r"""Plans a training run before the chips are booked: memory, fit, speed.

For an experiment (overrides applied) on N chips of a kind, `make_plan`
gives the per-chip memory of a training step, whether it fits the chip's
HBM, the global and per-chip batch, the step's FLOPs and the step time and
images/s at a stated MFU; when it does not fit, it says which part is too
big and searches a small space of meshes, remat policies and batches for
the closest layout that fits.

Per-chip memory, in parts:

  parameters, optimizer  exact: the abstract train state paxml builds from
                         the experiment's task and learner (shapes by
                         jax.eval_shape, nothing allocated), each leaf's
                         shard size summed from its partition spec on the
                         mesh (an axis that does not divide a dim leaves it
                         whole, as sharding.set_sharding falls back).
  gradients              the parameters' size again (same dtypes, sharded
                         alike; XLA keeps the stacked block gradients
                         whole through the backward scan).
  activations            per device, b = global batch / data axis examples:
                         the L layer inputs [b, T, D/m] kept between the
                         forward and backward passes (and whatever else the
                         remat policy saves), one block's recomputed
                         forward and backward working set (2 x its
                         intermediates), the block matrices gathered over
                         'data' (and their gradients before the reduction),
                         the patch embedding's saved input and the
                         classifier's logits; see `_block_tensors`.
  inputs                 the step's input batch, split over every chip.

The activation model is checked against XLA's buffer assignment of the
real train step (`compiled_memory`, on simulated CPU devices) for the smoke
and mid-size experiments; tests/test_plan.py states the tolerance.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import glob
import math
import os
import re
import tempfile
from typing import Any

import jax
from jax import ad_checkpoint
import jax.numpy as jnp
import numpy as np
from paxml import partitioning
from paxml import trainer_lib
from praxis import pax_fiddle
from praxis.layers import checkpoint_policy

from vit22b_pax import flops
from vit22b_pax import models
from vit22b_pax import recipe
from vit22b_pax.input import synthetic

GIB = 2**30
# Headroom for XLA's runtime, fragmentation and the program itself: a plan
# fits when its estimate is at most this fraction of the chip's HBM.
USABLE_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class Chip:
  """An accelerator's memory and bf16 peak, with where the numbers are from.

  Attributes:
    name: Marketing name.
    hbm_bytes: High-bandwidth memory per chip, in bytes (GB = 1e9 bytes and
      GiB = 2^30 bytes, as the vendor states it).
    peak_flops: Dense bfloat16 peak FLOP/s per chip (no sparsity).
    source: The vendor's specification page.
  """

  name: str
  hbm_bytes: float
  peak_flops: float
  source: str


# Checked against the pages named (TPU pages directly; NVIDIA's datasheets
# through copies of their tables).
CHIPS = {
    'tpu-v4': Chip(
        'TPU v4', 32 * GIB, 275e12, 'https://cloud.google.com/tpu/docs/v4'
    ),  # "32 GiB" HBM2, "275 teraflops (bf16 or int8)" per chip.
    'tpu-v5e': Chip(
        'TPU v5e', 16e9, 197e12, 'https://cloud.google.com/tpu/docs/v5e'
    ),  # "16 GB" HBM2, "197 TFLOPs" bf16 per chip.
    'tpu-v5p': Chip(
        'TPU v5p', 95e9, 459e12, 'https://cloud.google.com/tpu/docs/v5p'
    ),  # "95 GB" HBM2e, "459 TFLOPs" bf16 per chip.
    'a100-80g': Chip(
        'NVIDIA A100 80GB SXM', 80e9, 312e12,
        'https://www.nvidia.com/en-us/data-center/a100/',
    ),  # 80 GB HBM2e; BF16 Tensor Core 312 TFLOPS (624 with sparsity).
    'h100': Chip(
        'NVIDIA H100 SXM', 80e9, 989e12,
        'https://www.nvidia.com/en-us/data-center/h100/',
    ),  # 80 GB HBM3; BF16 Tensor Core 1,979 TFLOPS with sparsity, half dense.
}

# Remat policies the search tries, in order of increasing recomputation,
# from the experiment's own. Not None (no remat): without it XLA keeps
# more per layer than `_block_tensors` lists (the estimate is ~25% low),
# so a suggestion without remat would be unsafe.
REMAT_ORDER = ('dots_saveable', 'nothing_saveable')


@dataclasses.dataclass(frozen=True)
class Layout:
  """What the plan varies: the mesh, the global batch, the remat policy.

  Attributes:
    ici: (data, model) devices per slice.
    dcn: (data, model) slices, or None.
    global_batch: Images per step.
    remat_policy: The REMAT_POLICY knob's value.
  """

  ici: tuple[int, int]
  dcn: tuple[int, int] | None
  global_batch: int
  remat_policy: str | None

  @property
  def data(self) -> int:
    return self.ici[0] * (self.dcn[0] if self.dcn else 1)

  @property
  def model(self) -> int:
    return self.ici[1] * (self.dcn[1] if self.dcn else 1)

  @property
  def chips(self) -> int:
    return self.data * self.model

  def overrides(self) -> dict[str, Any]:
    return {
        'ICI_MESH_SHAPE': self.ici,
        'DCN_MESH_SHAPE': self.dcn,
        'GLOBAL_BATCH_SIZE': self.global_batch,
        'REMAT_POLICY': self.remat_policy,
    }


def with_knobs(exp: Any, **overrides: Any) -> Any:
  """A copy of the experiment with some knobs set (each type-checked)."""
  out = copy.copy(exp)
  for name, value in overrides.items():
    setattr(out, name, value)
  return out


def layout_of(exp: Any, chips: int | None = None) -> Layout:
  """The experiment's own layout (mesh from its knobs, or chips x 1)."""
  ici, dcn = exp.mesh_shapes(chips)
  return Layout(tuple(ici), dcn and tuple(dcn), exp.GLOBAL_BATCH_SIZE,
                exp.REMAT_POLICY)


# ---------------------------------------------------------------------------
# Parameters and optimizer state: exact, from the abstract train state.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Leaf:
  path: str
  shape: tuple[int, ...]
  itemsize: int
  spec: tuple[Any, ...]


def _task(exp: Any):
  return pax_fiddle.instantiate(exp.task())


def abstract_train_state(exp: Any) -> tuple[list[_Leaf], list[_Leaf]]:
  """(parameter leaves, the rest of the train state's) with mesh-free specs.

  The rest is the optimizer state plus paxml's step counter.

  Built on a (1, 1) mesh, where sharding.set_sharding names an axis for
  every dim its rules split (nothing falls back); `state_bytes` then
  applies a mesh's sizes. Shapes come from jax.eval_shape over the model's
  init and the learner's optimizer init (paxml's TrainState metadata).
  """
  exp = with_knobs(exp, ICI_MESH_SHAPE=(1, 1), DCN_MESH_SHAPE=None)
  task = _task(exp)
  specs = synthetic.batch_specs(
      1, exp.model_size().image_size, exp.NUM_CLASSES
  )
  var_hparams = task.model.abstract_init_with_metadata(specs)
  shapes = task.create_train_state_padded_shapes(var_hparams)
  pspecs = task.create_train_state_partition_specs(var_hparams)

  def leaves(tree, spec_tree):
    is_leaf = lambda x: isinstance(x, jax.ShapeDtypeStruct)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    flat_specs = jax.tree_util.tree_leaves(
        spec_tree, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    if len(flat) != len(flat_specs):
      raise AssertionError('train state and its specs differ in structure')
    return [
        _Leaf(jax.tree_util.keystr(path), tuple(s.shape), s.dtype.itemsize,
              tuple(spec))
        for (path, s), spec in zip(flat, flat_specs)
    ]

  rest = lambda state: (state.step, state.opt_states, state.extra_state)
  return (leaves(shapes.mdl_vars, pspecs.mdl_vars),
          leaves(rest(shapes), rest(pspecs)))


def shard_bytes(leaf: _Leaf, axis_sizes: dict[str, int]) -> int:
  """Bytes of one device's shard of a leaf on a mesh of these axis sizes."""
  n = leaf.itemsize
  for i, dim in enumerate(leaf.shape):
    entry = leaf.spec[i] if i < len(leaf.spec) else None
    axes = () if entry is None else (
        (entry,) if isinstance(entry, str) else tuple(entry)
    )
    split = math.prod(axis_sizes[a] for a in axes)
    # sharding.set_sharding replicates a dim an axis does not divide.
    n *= dim // split if dim % split == 0 else dim
  return n


def state_bytes(
    state: tuple[list[_Leaf], list[_Leaf]], layout: Layout
) -> dict[str, int]:
  """Per-device bytes of the parameters and the optimizer state."""
  sizes = {'data': layout.data, 'model': layout.model}
  params, opt = state
  return {
      'parameters': sum(shard_bytes(l, sizes) for l in params),
      'optimizer': sum(shard_bytes(l, sizes) for l in opt),
  }


# ---------------------------------------------------------------------------
# Activations: the analytic model.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """A per-example intermediate of one block on one device.

  Attributes:
    name: Its remat name (checkpoint_name), or a description.
    elements: Elements per example per device.
    itemsize: Bytes per element.
    dot: 'nobatch' (a projection), 'batch' (attention's einsums) or None.
    saved_elements: Its size when saved for the backward pass (the
      residual stream's D is split over 'model' then), default elements.
    saveable: False for values no policy can save (XLA's gathers).
  """

  name: str
  elements: int
  itemsize: int
  dot: str | None = None
  saved_elements: int | None = None
  saveable: bool = True

  @property
  def bytes(self) -> int:
    return self.elements * self.itemsize

  @property
  def saved_bytes(self) -> int:
    n = self.elements if self.saved_elements is None else self.saved_elements
    return n * self.itemsize


_NAMED = {'combined_qkv_proj', 'logits', 'context', 'out_proj', 'ffn1',
          'ffn2'}


def _block_tensors(exp: Any, model_axis: int) -> list[list[_Tensor]]:
  """One block's intermediates per example on one device, in phases.

  A parallel block is one phase; a sequential block two (attention, then
  MLP), whose backward passes do not overlap. Sizes: T tokens, D width
  (D/m where the residual stream is split over 'model'), n = N/m heads of
  H dims, F/N MLP units per head (parallel) or F/m (sequential); logits
  are float32, everything else in the activation dtype.
  """
  s = exp.model_size()
  a = jnp.dtype(exp.FPROP_DTYPE).itemsize
  t, d, h = s.num_tokens, s.model_dims, s.dim_per_head
  m = model_axis
  n, dm = s.num_heads // m, s.model_dims // m

  def attention(qkv_width):
    return [
        _Tensor('ln_out', t * dm, a),
        _Tensor('x_gathered', t * d, a, saveable=False),
        _Tensor('combined_qkv_proj', t * n * qkv_width, a, 'nobatch'),
        _Tensor('qk_normed', t * n * 2 * h, a),
        _Tensor('logits', n * t * t, 4, 'batch'),
        _Tensor('probs', n * t * t, a),
        _Tensor('context', t * n * h, a, 'batch'),
    ]

  if exp.PARALLEL_BLOCK:
    fn = s.hidden_dims // s.num_heads
    return [attention(3 * h + fn) + [
        _Tensor('mlp_hidden', t * n * fn, a),
        _Tensor('out_in', t * n * (h + fn), a),
        _Tensor('out_proj', t * d, a, 'nobatch', saved_elements=t * dm),
    ]]
  f = s.hidden_dims // m
  return [
      attention(3 * h) + [
          _Tensor('out_proj', t * d, a, 'nobatch', saved_elements=t * dm),
      ],
      [
          _Tensor('residual_mid', t * dm, a),
          _Tensor('ln_out', t * dm, a),
          _Tensor('x_gathered', t * d, a, saveable=False),
          _Tensor('ffn1', t * f, a, 'nobatch'),
          _Tensor('mlp_hidden', t * f, a),
          _Tensor('ffn2', t * d, a, 'nobatch', saved_elements=t * dm),
      ],
  ]


@functools.cache
def _name_primitive() -> Any:
  """checkpoint_name's primitive (not public in jax: traced to get it)."""
  jaxpr = jax.make_jaxpr(
      lambda x: ad_checkpoint.checkpoint_name(x, 'probe')
  )(0.0)
  return jaxpr.eqns[0].primitive


def _saved(tensor: _Tensor, policy_type: Any) -> bool:
  """Whether praxis' checkpoint policy saves this tensor for backward."""
  if policy_type is None:  # No remat: every intermediate stays.
    return tensor.saveable
  if not tensor.saveable:
    return False
  policy = checkpoint_policy.custom_policy(policy_type)
  if tensor.name in _NAMED and policy(_name_primitive(), name=tensor.name):
    return True
  if tensor.dot:
    batch = ((0,), (0,)) if tensor.dot == 'batch' else ((), ())
    dims = (((1,), (1,)), batch)
    return bool(policy(jax.lax.dot_general_p, dimension_numbers=dims,
                       precision=None, preferred_element_type=None))
  # Other values: only the save-everything policy keeps them.
  return policy_type == checkpoint_policy.AutodiffCheckpointType.SAVE_EVERYTHING


def _policy_type(exp: Any, remat_policy: str | None) -> Any:
  """praxis' AutodiffCheckpointType the encoder runs with, or None."""
  policy = models.remat_checkpoint_type(remat_policy)
  if policy is None and exp.SCAN_LAYERS:
    # models.classifier_config scans with SAVE_EVERYTHING then.
    return checkpoint_policy.AutodiffCheckpointType.SAVE_EVERYTHING
  return policy


def _gathered_matrix_bytes(
    exp: Any, state: tuple[list[_Leaf], list[_Leaf]], model_axis: int
) -> int:
  """Bytes of one block's matrices with 'data' gathered, 'model' split."""
  num_layers = exp.model_size().num_layers
  total = 0
  for leaf in state[0]:
    if not leaf.path.startswith("['params']['encoder']"):
      continue
    if re.search(flops.NOT_A_MATRIX_REGEX, _slash_path(leaf.path)):
      continue
    if len(leaf.shape) < 2:
      continue
    total += shard_bytes(leaf, {'data': 1, 'model': model_axis})
  return total // num_layers


def _slash_path(keystr: str) -> str:
  """"['params']['encoder']['w_in']" -> 'params/encoder/w_in'."""
  return '/'.join(re.findall(r"\['([^']*)'\]", keystr))


def activation_bytes(
    exp: Any, layout: Layout, state: tuple[list[_Leaf], list[_Leaf]]
) -> dict[str, int]:
  """Per-device activation bytes of a training step, by part.

  Args:
    exp: The experiment (its model size, block kind, dtype, classes).
    layout: Mesh, global batch and remat policy.
    state: abstract_train_state(exp), for the block matrices' sizes.

  Returns:
    {'saved_layer_activations', 'block_working_set', 'gathered_weights',
     'patch_embedding', 'classifier'} in bytes per device.
  """
  s = exp.model_size()
  a = jnp.dtype(exp.FPROP_DTYPE).itemsize
  b = layout.global_batch // layout.data
  m = layout.model
  policy = _policy_type(exp, layout.remat_policy)
  phases = _block_tensors(exp, m)
  saved = sum(t.saved_bytes for p in phases for t in p if _saved(t, policy))
  layer_input = s.num_tokens * (s.model_dims // m) * a
  # Backward of one block: its recomputed forward values and their
  # cotangents (2x), less what the stack already holds; sequential blocks
  # go through MLP and attention one after the other.
  working = max(
      2 * sum(t.bytes for t in p)
      - sum(t.saved_bytes for t in p if _saved(t, policy))
      for p in phases
  )
  gathered = 0
  if layout.data > 1:
    # Gathered over 'data' for the matmuls and, as gradients, reduced.
    gathered = 2 * _gathered_matrix_bytes(exp, state, m)
  classes = exp.NUM_CLASSES
  classes_per_device = classes // m if classes % m == 0 else classes
  return {
      'saved_layer_activations': s.num_layers * b * (layer_input + saved),
      'block_working_set': b * working,
      'gathered_weights': gathered,
      # Kept until the end of the backward pass: the float32 images and
      # their patches.
      'patch_embedding': b * (
          s.image_size**2 * 3 * 4 + s.num_tokens * s.patch_size**2 * 3 * a
      ),
      # float32 logits and their gradient.
      'classifier': 2 * b * classes_per_device * 4,
  }


def input_bytes(exp: Any, layout: Layout) -> int:
  """Per-chip bytes of the step's input batch (split over every chip)."""
  s = exp.model_size()
  per_image = (s.image_size**2 * 3 + exp.NUM_CLASSES + 1) * 4
  return math.ceil(layout.global_batch / layout.chips) * per_image


def memory(
    exp: Any, layout: Layout, state: tuple[list[_Leaf], list[_Leaf]]
) -> dict[str, Any]:
  """Per-chip bytes by part ('total' included) and the activation parts."""
  parts = state_bytes(state, layout)
  acts = activation_bytes(exp, layout, state)
  parts['gradients'] = parts['parameters']
  parts['activations'] = sum(acts.values())
  parts['inputs'] = input_bytes(exp, layout)
  parts['total'] = sum(parts.values())
  return {'bytes': parts, 'activation_bytes': acts}


# ---------------------------------------------------------------------------
# The plan: fit, speed, and a layout that fits when the asked one does not.
# ---------------------------------------------------------------------------


def _valid(exp: Any, layout: Layout) -> str | None:
  """Why the layout cannot run the experiment, or None if it can."""
  s = exp.model_size()
  m = layout.model
  for what, value in (('NUM_HEADS', s.num_heads),
                      ('MODEL_DIMS', s.model_dims),
                      ('HIDDEN_DIMS', s.hidden_dims)):
    if value % m:
      return f'{what}={value} is not divisible by the model axis {m}'
  if layout.global_batch % layout.data:
    return (f'GLOBAL_BATCH_SIZE={layout.global_batch} is not divisible by '
            f'the data axis {layout.data}')
  return None


def _gib(n: float) -> float:
  return round(n / GIB, 6)


def _evaluate(exp, layout, state, hbm_bytes) -> dict[str, Any]:
  mem = memory(exp, layout, state)
  total = mem['bytes']['total']
  return {
      'layout': layout,
      'bytes': mem['bytes'],
      'activation_bytes': mem['activation_bytes'],
      'fits': total <= USABLE_FRACTION * hbm_bytes,
  }


def _candidates(exp: Any, chips: int, asked: Layout) -> list[Layout]:
  """Layouts near the asked one, in order of preference.

  Keep the global batch and remat policy and change the mesh least (model
  axis closest to the asked one, ties to the smaller: less activation
  traffic); then more recomputation; then halve the batch.
  """
  s = exp.model_size()
  models_ = [m for m in range(1, chips + 1)
             if chips % m == 0 and s.num_heads % m == 0]
  models_.sort(key=lambda m: (abs(math.log2(m) - math.log2(asked.model)), m))
  start = REMAT_ORDER.index(asked.remat_policy) if (
      asked.remat_policy in REMAT_ORDER) else 0
  remats = [asked.remat_policy] + [
      p for p in REMAT_ORDER[start:] if p != asked.remat_policy
  ]
  batches, batch = [], asked.global_batch
  while batch >= 1:
    batches.append(batch)
    if batch % 2:
      break
    batch //= 2
  out = []
  for batch in batches:
    for remat in remats:
      for m in models_:
        layout = Layout((chips // m, m), None, batch, remat)
        if _valid(exp, layout) is None:
          out.append(layout)
  return out


def _why(result: dict[str, Any], hbm_bytes: float) -> str:
  parts = result['bytes']
  acts = result['activation_bytes']
  biggest = max((k for k in parts if k != 'total'), key=parts.get)
  text = (
      f"needs {_gib(parts['total']):.2f} GiB per chip, more than "
      f'{USABLE_FRACTION:.0%} of {_gib(hbm_bytes):.2f} GiB; the largest part '
      f"is {biggest} ({_gib(parts[biggest]):.2f} GiB)"
  )
  if biggest == 'activations':
    top = max(acts, key=acts.get)
    text += f', mostly {top} ({_gib(acts[top]):.2f} GiB)'
  return text


def _summary(exp, result, chips, chip, mfu) -> dict[str, Any]:
  layout = result['layout']
  step_flops = (exp.train_flops_per_token() * exp.tokens_per_image()
                * layout.global_batch)
  step_seconds = step_flops / (chips * chip.peak_flops * mfu)
  return {
      'fits': result['fits'],
      'mesh': {'ici': list(layout.ici),
               'dcn': list(layout.dcn) if layout.dcn else None,
               'data': layout.data, 'model': layout.model},
      'remat_policy': layout.remat_policy,
      'global_batch': layout.global_batch,
      'per_chip_batch': layout.global_batch / chips,
      'batch_per_data_shard': layout.global_batch // layout.data,
      'per_chip_gib': {k: _gib(v) for k, v in result['bytes'].items()},
      'per_chip_bytes': dict(result['bytes']),
      'activations_gib': {
          k: _gib(v) for k, v in result['activation_bytes'].items()
      },
      'step_flops': step_flops,
      'step_seconds_at_mfu': step_seconds,
      'images_per_second_at_mfu': layout.global_batch / step_seconds,
      'overrides': {
          k: v for k, v in layout.overrides().items()
          if getattr(exp, k) != v
      },
  }


def make_plan(
    exp: Any,
    chips: int,
    chip: str = 'tpu-v4',
    mfu: float = recipe.PAPER_MFU,
) -> dict[str, Any]:
  """The plan of a training run: memory per chip, fit, batch, FLOPs, speed.

  Args:
    exp: The experiment instance (overrides applied).
    chips: Number of chips (one JAX device each).
    chip: A key of CHIPS.
    mfu: Model FLOPs utilization assumed for the step time (the paper's
      convention, flops.py).

  Returns:
    A JSON-able dict: 'fits', 'mesh', 'global_batch', 'per_chip_batch',
    'per_chip_gib' (parameters, optimizer, gradients, activations, inputs,
    total), 'activations_gib', 'step_flops', 'step_seconds_at_mfu',
    'images_per_second_at_mfu', the chip and its sources; when it does not
    fit, 'why' and 'suggestion' (the same keys for the closest layout that
    fits, with the knob overrides that give it; None if none does).

  Raises:
    ValueError: unknown chip, chips < 1, mfu out of (0, 1], or a mesh that
      does not match `chips` or the model.
  """
  if chip not in CHIPS:
    raise ValueError(f'Unknown chip {chip!r}; one of {sorted(CHIPS)}.')
  if chips < 1:
    raise ValueError(f'chips must be >= 1, got {chips}.')
  if not 0 < mfu <= 1:
    raise ValueError(f'mfu must be in (0, 1], got {mfu}.')
  spec = CHIPS[chip]
  asked = layout_of(exp, chips)
  note = None
  if asked.chips != chips:
    # The experiment's mesh is for another slice size: keep its model axis
    # where it divides the chips, else the nearest valid one.
    m = next((c.model for c in _candidates(exp, chips, asked)), None)
    if m is None:
      raise ValueError(
          f'{type(exp).__name__}: no (data, model) mesh of {chips} chips '
          f'fits NUM_HEADS and a batch of at most {asked.global_batch}.'
      )
    note = (f'mesh {tuple(asked.ici)} x DCN {asked.dcn} is '
            f'{asked.chips} devices, not {chips}: planned on '
            f'({chips // m}, {m})')
    asked = dataclasses.replace(asked, ici=(chips // m, m), dcn=None)
  invalid = _valid(exp, asked)
  if invalid:
    raise ValueError(f'{type(exp).__name__} on {chips} chips: {invalid}.')
  state = abstract_train_state(exp)
  result = _evaluate(exp, asked, state, spec.hbm_bytes)
  out = {
      'experiment': type(exp).__name__,
      'chips': chips,
      'chip': dataclasses.asdict(spec),
      'mfu': mfu,
      'usable_fraction': USABLE_FRACTION,
      **_summary(exp, result, chips, spec, mfu),
  }
  if note:
    out['note'] = note
  if not result['fits']:
    out['why'] = _why(result, spec.hbm_bytes)
    out['suggestion'] = None
    for layout in _candidates(exp, chips, asked):
      candidate = _evaluate(exp, layout, state, spec.hbm_bytes)
      if candidate['fits']:
        out['suggestion'] = _summary(exp, candidate, chips, spec, mfu)
        break
  return out


def format_plan(plan: dict[str, Any]) -> str:
  """The plan as a few lines of text."""

  def block(p, indent=''):
    mesh = p['mesh']
    gib = p['per_chip_gib']
    acts = p['activations_gib']
    lines = [
        f"mesh (data, model) = ({mesh['data']}, {mesh['model']})"
        f" [ICI {tuple(mesh['ici'])}, DCN "
        f"{tuple(mesh['dcn']) if mesh['dcn'] else None}], remat "
        f"{p['remat_policy']}",
        f"global batch {p['global_batch']:,d}: {p['per_chip_batch']:g} per "
        f"chip, {p['batch_per_data_shard']:,d} per data shard",
        'per chip (GiB): ' + ', '.join(
            f'{k} {v:.3f}' for k, v in gib.items() if k != 'total'
        ) + f"; total {gib['total']:.3f}",
        '  activations (GiB): ' + ', '.join(
            f'{k} {v:.3f}' for k, v in acts.items()
        ),
        f"step {p['step_flops']:.4e} FLOP: {p['step_seconds_at_mfu']:.3f} s, "
        f"{p['images_per_second_at_mfu']:,.0f} images/s at MFU "
        f"{plan['mfu']:.1%}",
    ]
    return [indent + l for l in lines]

  chip = plan['chip']
  lines = [
      f"{plan['experiment']} on {plan['chips']:,d} x {chip['name']} "
      f"({chip['hbm_bytes'] / GIB:.2f} GiB HBM, "
      f"{chip['peak_flops'] / 1e12:g} TFLOP/s bf16): "
      + ('fits' if plan['fits'] else 'does NOT fit')
      + f" (usable {plan['usable_fraction']:.0%} of HBM)",
  ]
  if 'note' in plan:
    lines.append(f"note: {plan['note']}")
  lines += block(plan, '  ')
  if not plan['fits']:
    lines.append(f"why: {plan['why']}")
    suggestion = plan['suggestion']
    if suggestion is None:
      lines.append('no mesh, remat policy or batch in the search fits.')
    else:
      overrides = ' '.join(
          f'--fdl.{k}="{v!r}"' for k, v in suggestion['overrides'].items()
      )
      lines.append(f'suggestion (fits): {overrides}')
      lines += block(suggestion, '  ')
  return '\n'.join(lines)


# ---------------------------------------------------------------------------
# Cross-check: XLA's buffer assignment of the real train step.
# ---------------------------------------------------------------------------


def abstract_train_step(exp: Any, devices: np.ndarray):
  """paxml's partitioned train step, lowered with abstract inputs.

  The same step paxml.main builds (PjitPartitioner over the experiment's
  task and learner, trainer_lib.train_step_single_learner) on the given
  device mesh; the train state, key and batch are ShapeDtypeStructs with
  their shardings, so nothing is allocated.

  Args:
    exp: The experiment; its ICI/DCN mesh must match devices.shape.
    devices: Device array shaped like the (data, model) mesh.

  Returns:
    The jax Lowered step.
  """
  task = _task(exp)
  part = partitioning.PjitPartitioner(
      init_is_eval=False, reshard_inputs=True, task=task,
      device_mesh=devices,
  )
  provider = pax_fiddle.instantiate(exp.get_input_specs_provider_params())
  specs = trainer_lib.get_train_input_specs_for_model_init(task, provider)
  part.setup(task, jax.random.PRNGKey(0), specs, None, None)
  metadata = part.get_train_state_metadata()
  step, input_specs = part.partition(
      trainer_lib.train_step_single_learner, specs, is_eval=False
  )
  mesh = part.global_mesh
  is_leaf = lambda x: isinstance(x, jax.ShapeDtypeStruct)

  def place(shapes, pspecs):
    return jax.tree_util.tree_map(
        lambda s, p: jax.ShapeDtypeStruct(
            s.shape, s.dtype, sharding=jax.sharding.NamedSharding(mesh, p)
        ),
        shapes, pspecs, is_leaf=is_leaf,
    )

  key = jax.ShapeDtypeStruct(
      (2,), jnp.uint32,
      sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
  )
  return step.lower(
      place(metadata.padded_global_shapes, metadata.partition_specs),
      key,
      place(specs, input_specs),
      trainer_lib.BaseStepFnStaticArgs(
          unpadded_global_batch_size=exp.GLOBAL_BATCH_SIZE
      ),
  )


def parse_buffer_assignment(text: str) -> dict[str, int]:
  """Bytes per device of an XLA buffer assignment, by allocation kind.

  Args:
    text: A `*buffer-assignment.txt` file of --xla_dump_to.

  Returns:
    {'total': "Total bytes used", 'parameters': entry parameters (train
    state, key, batch), 'temp': the temporary buffer, 'other': the rest
    (outputs not aliased to parameters, constants, thread-local)}.
  """
  total = re.search(r'^Total bytes used: (\d+)', text, re.M)
  if total is None:
    raise ValueError('no "Total bytes used" line in the buffer assignment')
  out = {'total': int(total.group(1)), 'parameters': 0, 'temp': 0,
         'other': 0}
  for found in re.finditer(r'^allocation \d+: size (\d+), (.*)$', text,
                           re.M):
    kind = ('parameters' if 'parameter' in found.group(2)
            else 'temp' if 'temp' in found.group(2) else 'other')
    out[kind] += int(found.group(1))
  return out


def buffer_assignment_bytes(lowered: Any) -> dict[str, int]:
  """Compiles a jax Lowered and returns its buffer assignment's bytes.

  Compiles with --xla_dump_to (a per-compilation option, so the process'
  XLA_FLAGS stay as they are) and parses the entry computation's buffer
  assignment (compiled.memory_analysis() is all zeros on CPU in jax
  0.4.26). Returns parse_buffer_assignment's dict.
  """
  with tempfile.TemporaryDirectory(prefix='vit22b_plan_') as dump:
    lowered.compile(compiler_options={'xla_dump_to': dump})
    files = glob.glob(
        os.path.join(dump, '*after_optimizations-buffer-assignment.txt')
    )
    # One module per compilation; the jitted function's is the last.
    if not files:
      raise RuntimeError(f'XLA wrote no buffer assignment into {dump}')
    with open(sorted(files)[-1]) as f:
      return parse_buffer_assignment(f.read())


def compiled_memory(exp: Any, devices: np.ndarray) -> dict[str, int]:
  """XLA's per-device memory of the experiment's train step on `devices`."""
  return buffer_assignment_bytes(abstract_train_step(exp, devices))
