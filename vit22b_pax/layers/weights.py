"""Weight helpers shared by the ViT-22B layers: WeightHParams, token matmul.

Every layer creates its variables through these, so that each variable
carries the layer's mesh and its own split-dims mapping (praxis shards a
variable from its WeightHParams), and a bias takes the mapping entries of
the weight dims it runs along.
"""

from __future__ import annotations

from typing import Sequence

from jax import numpy as jnp
from praxis import base_layer
from praxis import pytypes

JTensor = pytypes.JTensor
SplitDimsMapping = pytypes.SplitDimsMapping
WeightHParams = base_layer.WeightHParams


def select_dims(
    mapping: SplitDimsMapping, dims: Sequence[int]
) -> SplitDimsMapping:
  """Returns mapping restricted to `dims` (e.g. a bias from its weight)."""
  if mapping is None:
    return None
  return tuple(mapping[d] for d in dims)


def weight_hparams(
    layer: base_layer.BaseLayer,
    shape: Sequence[int],
    split: SplitDimsMapping,
    *,
    fan_in_axes: Sequence[int] | None = None,
    fan_out_axes: Sequence[int] | None = None,
    init: base_layer.WeightInit | None = None,
) -> WeightHParams:
  """WeightHParams carrying the layer's mesh and the given split mapping.

  Args:
    layer: The layer creating the variable (gives mesh_shape).
    shape: Variable shape.
    split: Split-dims mapping over `shape` (None: replicated).
    fan_in_axes: Axes whose product is the fan-in (for Xavier / fan-in inits).
    fan_out_axes: Axes whose product is the fan-out.
    init: Initializer; None uses the layer's params_init.

  Returns:
    The WeightHParams.
  """
  if split is not None and len(split) != len(shape):
    raise ValueError(
        f'{type(layer).__name__}: split-dims mapping {split} has rank '
        f'{len(split)} but the weight has shape {list(shape)}.'
    )
  return WeightHParams(
      shape=list(shape),
      init=init,
      mesh_shape=layer.mesh_shape,
      tensor_split_dims_mapping=split if layer.mesh_shape is not None else None,
      fan_in_axes=fan_in_axes,
      fan_out_axes=fan_out_axes,
  )


def bias_hparams(
    layer: base_layer.BaseLayer, shape: Sequence[int], split: SplitDimsMapping
) -> WeightHParams:
  """Zero-initialized bias WeightHParams."""
  return weight_hparams(
      layer, shape, split, init=base_layer.WeightInit.Constant(0.0)
  )


def token_matmul(x: JTensor, w: JTensor) -> JTensor:
  """x [B, T, I] times w [I, O] -> [B, T, O], as a 2-D matmul on [B*T, I].

  Why not a [B, T, I] einsum: its weight gradient contracts two dims (B, T),
  which XLA:CPU's oneDNN matmul cannot take as a transposed operand, so XLA
  copies the output gradient into a transposed layout (recomputing the
  fusion that produces it); over M = B*T tokens it is one contracting dim,
  passed to oneDNN as a transpose flag.

  Args:
    x: [B, T, I] activations.
    w: [I, O] weights.

  Returns:
    [B, T, O].
  """
  b, t, i = x.shape
  return jnp.einsum('MI,IO->MO', x.reshape(b * t, i), w).reshape(b, t, -1)
