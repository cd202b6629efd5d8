"""Two-layer MLP (dense -> activation -> dropout -> dense), unfused.

Used by the sequential block and the MAP head; the parallel block fuses its
MLP into the attention projections instead.
"""

from __future__ import annotations

from jax import numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from praxis import base_layer
from praxis import pax_fiddle
from praxis import pytypes
from praxis.layers import activations
from praxis.layers import stochastics

from vit22b_pax.layers import gelu
from vit22b_pax.layers import weights

JTensor = pytypes.JTensor
SplitDimsMapping = pytypes.SplitDimsMapping
template_field = base_layer.template_field
LayerTpl = pax_fiddle.Config[base_layer.BaseLayer]
select_dims = weights.select_dims


class Mlp(base_layer.BaseLayer):
  """y = act(x W_in + b_in) W_out + b_out over the last dim.

  Variables: 'w_in' [D, F], 'w_out' [F, D], and 'b_in' [F], 'b_out' [D] when
  use_bias (no bias variables otherwise).

  Attributes:
    input_dims: D.
    hidden_dims: F.
    use_bias: Whether both dense layers have a bias.
    relu_dropout_prob: Dropout on the hidden activations.
    activation_tpl: Activation (default `gelu.GELU`, tanh approximation).
    dropout_tpl: Template of the hidden dropout.
  """

  input_dims: int = 0
  hidden_dims: int = 0
  use_bias: bool = True
  relu_dropout_prob: float = 0.0
  activation_tpl: pax_fiddle.Config[activations.BaseActivation] = (
      template_field(gelu.GELU)
  )
  dropout_tpl: LayerTpl = template_field(stochastics.Dropout)

  class WeightSharding(base_layer.BaseLayer.WeightSharding):
    """Weight split-dims mappings.

    Attributes:
      w_in: Mapping of w_in [D, F]; b_in uses its F entry.
      w_out: Mapping of w_out [F, D]; b_out uses its D entry.
    """

    w_in: SplitDimsMapping = None
    w_out: SplitDimsMapping = None

  class ActivationSharding(base_layer.BaseLayer.ActivationSharding):
    """Activation split-dims mappings.

    Attributes:
      hidden: Mapping of the hidden activations [B, T, F].
    """

    hidden: SplitDimsMapping = None

  def setup(self) -> None:
    if self.input_dims <= 0 or self.hidden_dims <= 0:
      raise ValueError(
          f'Mlp.input_dims ({self.input_dims}) and hidden_dims '
          f'({self.hidden_dims}) must be positive.'
      )
    d, f = self.input_dims, self.hidden_dims
    wp = self.weight_split_dims_mapping
    self.create_variable(
        'w_in', weights.weight_hparams(self, [d, f], wp.w_in)
    )
    self.create_variable(
        'w_out', weights.weight_hparams(self, [f, d], wp.w_out)
    )
    if self.use_bias:
      self.create_variable(
          'b_in',
          weights.bias_hparams(self, [f], select_dims(wp.w_in, (1,))),
      )
      self.create_variable(
          'b_out',
          weights.bias_hparams(self, [d], select_dims(wp.w_out, (1,))),
      )
    self.create_child('activation', self.activation_tpl.clone())
    self.create_child(
        'relu_dropout',
        self.dropout_tpl.clone().set(keep_prob=1.0 - self.relu_dropout_prob),
    )

  def __call__(self, inputs: JTensor) -> JTensor:
    """Applies the MLP to inputs [B, T, D] (any leading dims) -> [B, T, D]."""
    hidden = jnp.einsum('...D,DF->...F', inputs, self.theta.w_in)
    if self.use_bias:
      hidden = hidden + self.theta.b_in
    hidden = checkpoint_name(hidden, 'ffn1')
    hidden = base_layer.maybe_shard(
        hidden, self.activation_split_dims_mapping.hidden, self.mesh_axis_names
    )
    hidden = self.relu_dropout(self.activation(hidden))
    out = jnp.einsum('...F,FD->...D', hidden, self.theta.w_out)
    if self.use_bias:
      out = out + self.theta.b_out
    return checkpoint_name(out, 'ffn2')
