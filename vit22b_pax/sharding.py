"""Device mesh axes and the ViTClassifier's weight/activation split mappings.

ViT-22B trains on a 2-D logical mesh ('data', 'model') (Dehghani et al. 2023,
Sec. 3): the batch is split over 'data'; each block's fused projections are
split Megatron-style over 'model' (the fused input projection by its output
heads N, the fused output projection by its input heads N), so the attention
and MLP of a head run where its weights are with one all-reduce per block;
and parameters are additionally split over 'data' on their D dim, so each
device holds 1 / (data * model) of every block matrix (the paper shards
parameters on both axes; XLA all-gathers them over 'data' for the matmul,
as in praxis' set_sharding_params_v1, which this module mirrors).

What is split, for weights (W) and activations (A), with d = 'data' and
m = 'model' (entries fall back to None where noted):

  W block w_in / w_qkv    [D, N, K]   (d, m, None)
  W block w_out / w_atten_out [N, J, D] (m, None, d)
  W block MLP [D, F] / [F, D] (sequential block; MAP head): (d, m) / (m, d)
  W LayerNorm scales      [D]         replicated (tiny)
  W patch_embed.w         [P, P, C, D] (None, None, None, m)
  W patch_embed.pos_emb   [T, D]      (None, m)
  W map_head.probe        [1, D]      (None, d)
  W head.w [D, C], b [C]  (d, m), (m)
  A [B, T, D]             (d, None, m) if training_optimized else (d, None,
                          None)
  A [B, T, N, *]          (d, None, m, None)
  A logits [B, C]         (d, m)

training_optimized (praxis' name) also splits the residual stream [B, T, D]
over 'model', which saves activation memory between forward and backward at
the cost of gathering it before each block's LayerNorm.

Divisibility: the D entry over 'data' and the class dim C over 'model' fall
back to None (replicated) when the mesh axis does not divide them (e.g.
JFT's 29,593 classes over any even 'model' axis). num_heads, hidden_dims
and model_dims must be divisible by the 'model' axis, else ValueError names
the field: without that there is no model parallelism.
"""

from __future__ import annotations

from typing import Sequence

from absl import logging
from praxis import pax_fiddle
from praxis.layers import transformers

MESH_AXIS_NAMES = ('data', 'model')


def _axis_size(
    axis: str,
    mesh_axis_names: Sequence[str],
    ici_mesh_shape: Sequence[int],
    dcn_mesh_shape: Sequence[int] | None,
) -> int:
  idx = list(mesh_axis_names).index(axis)
  size = ici_mesh_shape[idx]
  if dcn_mesh_shape is not None:
    size *= dcn_mesh_shape[idx]
  return size


def _block_templates(encoder_p) -> list[pax_fiddle.Config]:
  """The block template(s) of a StackedTransformer(Repeated) config."""
  stack_p = encoder_p
  if issubclass(stack_p.cls, transformers.StackedTransformerRepeated):
    stack_p = stack_p.block
  if not issubclass(stack_p.cls, transformers.StackedTransformer):
    raise ValueError(
        'set_sharding expects the encoder to be a StackedTransformer or '
        f'StackedTransformerRepeated, got {stack_p.cls.__name__}.'
    )
  tpl = stack_p.transformer_layer_params_tpl
  return list(tpl) if isinstance(tpl, (list, tuple)) else [tpl]


def set_sharding(
    model_cfg: pax_fiddle.Config,
    ici_mesh_shape: Sequence[int],
    dcn_mesh_shape: Sequence[int] | None = None,
    mesh_axis_names: Sequence[str] = MESH_AXIS_NAMES,
    *,
    training_optimized: bool = True,
) -> pax_fiddle.Config:
  """Lays a ViTClassifier config out on a 2-D ('data', 'model') mesh.

  Sets the mesh fields on the model config (children inherit them) and the
  weight/activation split-dims mappings of every layer template, as the
  module docstring lists. Mutates and returns `model_cfg`.

  Args:
    model_cfg: pax_fiddle.Config[models.ViTClassifier], e.g. from
      models.classifier_config.
    ici_mesh_shape: Devices per mesh axis within a slice, e.g. (4, 2).
    dcn_mesh_shape: Slices per mesh axis (multi-slice), or None.
    mesh_axis_names: Names of the (data, model) axes, in mesh order.
    training_optimized: Also split the residual stream [B, T, D] over
      'model' (see module docstring).

  Returns:
    model_cfg.
  """
  if len(mesh_axis_names) != 2:
    raise ValueError(
        f'mesh_axis_names must name (data, model) axes, got {mesh_axis_names}.'
    )
  if len(ici_mesh_shape) != 2:
    raise ValueError(
        f'ici_mesh_shape must be 2-D (data, model), got {ici_mesh_shape}.'
    )
  if dcn_mesh_shape is not None and len(dcn_mesh_shape) != 2:
    raise ValueError(
        f'dcn_mesh_shape must be 2-D (data, model), got {dcn_mesh_shape}.'
    )
  data, model = mesh_axis_names
  n_data = _axis_size(data, mesh_axis_names, ici_mesh_shape, dcn_mesh_shape)
  n_model = _axis_size(model, mesh_axis_names, ici_mesh_shape, dcn_mesh_shape)

  d = model_cfg.model_dims
  c = model_cfg.num_classes
  stack_p = model_cfg.encoder_tpl
  if issubclass(stack_p.cls, transformers.StackedTransformerRepeated):
    stack_p = stack_p.block
  num_heads = stack_p.num_heads
  if num_heads % n_model:
    raise ValueError(
        f'num_heads ({num_heads}) must be divisible by the {model!r} mesh '
        f'axis ({n_model}) to split heads over it.'
    )
  if stack_p.hidden_dims % n_model:
    raise ValueError(
        f'hidden_dims ({stack_p.hidden_dims}) must be divisible by the '
        f'{model!r} mesh axis ({n_model}).'
    )
  if d % n_model:
    raise ValueError(
        f'model_dims ({d}) must be divisible by the {model!r} mesh axis '
        f'({n_model}).'
    )
  # Parameters' D split over 'data' is an optimization (memory); fall back.
  w_data = data if d % n_data == 0 else None
  if w_data is None:
    logging.warning(
        'model_dims %d is not divisible by the %r axis (%d): weights are '
        'replicated over it.', d, data, n_data,
    )
  c_model = model if c % n_model == 0 else None

  model_cfg.ici_mesh_shape = list(ici_mesh_shape)
  model_cfg.dcn_mesh_shape = (
      None if dcn_mesh_shape is None else list(dcn_mesh_shape)
  )
  model_cfg.mesh_axis_names = list(mesh_axis_names)

  w_in = (w_data, model, None)  # [D, N, K]
  w_out = (model, None, w_data)  # [N, J, D]
  a_bld = (data, None, model if training_optimized else None)
  a_blnh = (data, None, model, None)

  for block_p in _block_templates(model_cfg.encoder_tpl):
    block_p.weight_split_dims_mapping.in_proj = w_in
    block_p.weight_split_dims_mapping.out_proj = w_out
    block_p.weight_split_dims_mapping.ln = None
    block_p.activation_split_dims_mapping.bld = a_bld
    block_p.activation_split_dims_mapping.blnh = a_blnh

  patch_p = model_cfg.patch_embed_tpl
  patch_p.weight_split_dims_mapping.wt = (None, None, None, model)
  patch_p.weight_split_dims_mapping.pos_emb = (None, model)
  patch_p.activation_split_dims_mapping.out = a_bld

  map_p = model_cfg.map_head_tpl
  map_p.weight_split_dims_mapping.in_proj = w_in
  map_p.weight_split_dims_mapping.out_proj = w_out
  map_p.weight_split_dims_mapping.ln = None
  map_p.activation_split_dims_mapping.bld = a_bld
  map_p.activation_split_dims_mapping.blnh = a_blnh

  head_p = model_cfg.head_tpl
  head_p.weight_split_dims_mapping.wt = (w_data, c_model)
  head_p.activation_split_dims_mapping.out = (data, c_model)
  return model_cfg
