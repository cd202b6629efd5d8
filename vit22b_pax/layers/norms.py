"""Layer normalization as ViT-22B uses it.

ViT-22B drops the LayerNorm bias (Dehghani et al. 2023, Sec. 2: ~3% faster)
and some descriptions also drop the mean subtraction (RMSNorm-like), so both
are flags here. The same layer normalizes each attention head's query and key
vectors (QK-norm) when built with dim = H and applied to [B, T, N, H]: the
[H] scale then broadcasts over heads, i.e. it is shared across heads like
Flax's `MultiHeadDotProductAttention(normalize_qk=True)`.

Differences from praxis `normalizations.LayerNorm`: the scale is stored
directly (initialized to 1.0, the Flax/big_vision convention, so converted
checkpoints map 1:1) instead of as `1 + scale`, and centering is optional.
"""

import jax
from jax import numpy as jnp
from praxis import base_layer
from praxis import pytypes
from praxis.layers import normalizations

JTensor = pytypes.JTensor
WeightHParams = base_layer.WeightHParams
WeightInit = base_layer.WeightInit


class LayerNorm(normalizations.BaseNormalization):
  """LayerNorm over the last dim with optional bias and optional centering.

  y = (x - mean(x)) / sqrt(var(x) + epsilon) * scale (+ bias), statistics over
  the last dim, computed in float32 and cast back to the input dtype. With
  use_centering=False the mean is not subtracted and var(x) is mean(x^2),
  i.e. RMSNorm.

  Attributes:
    epsilon: Tiny value added to the variance before rsqrt.
    use_bias: Whether to add a learned bias 'bias' [dim]. When False no bias
      variable is created.
    use_centering: Whether to subtract the mean (LayerNorm); False gives
      RMSNorm.
  """

  epsilon: float = 1e-6
  use_bias: bool = False
  use_centering: bool = True

  def setup(self) -> None:
    if self.dim <= 0:
      raise ValueError(f'LayerNorm.dim must be positive, got {self.dim}.')
    wt = self.weight_split_dims_mapping.wt
    if self.mesh_shape is not None and wt is None:
      wt = (-1,)
    # Norm parameters are excluded from (decoupled) weight decay, as in praxis.
    collections = [base_layer.WeightHParamsCollection.SKIP_LP_REGULARIZATION]
    self.create_variable(
        'scale',
        WeightHParams(
            shape=[self.dim],
            init=WeightInit.Constant(1.0),
            mesh_shape=self.mesh_shape,
            tensor_split_dims_mapping=wt,
            collections=collections,
        ),
    )
    if self.use_bias:
      self.create_variable(
          'bias',
          WeightHParams(
              shape=[self.dim],
              init=WeightInit.Constant(0.0),
              mesh_shape=self.mesh_shape,
              tensor_split_dims_mapping=wt,
              collections=collections,
          ),
      )

  def __call__(
      self, inputs: JTensor, paddings: JTensor | None = None
  ) -> JTensor:
    """Normalizes the last dim of `inputs` [..., dim]; `paddings` unused."""
    del paddings  # Per-token normalization does not mix positions.
    dtype = inputs.dtype
    x = inputs.astype(jnp.float32)
    if self.use_centering:
      x = x - jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    y = (x * jax.lax.rsqrt(var + self.epsilon)).astype(dtype)
    y = y * self.theta.scale
    if self.use_bias:
      y = y + self.theta.bias
    return y
