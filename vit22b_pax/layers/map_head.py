"""Multihead attention pooling (MAP) head, as in big_vision's `MAPHead`.

A learned probe token attends over all tokens (q from the probe, k and v
from the tokens), then x = x + MLP(LN(x)); the probe's output is the image
representation [B, D]. Because nothing depends on token order except
through attention (which is permutation invariant over keys), the output is
invariant to permuting the tokens.

Variables: 'probe' [1, D]; 'w_q' [D, N, H]; 'w_kv' [D, N, 2H] (k and v
fused, they read the same tokens); 'w_atten_out' [N, H, D]; 'b_q' [N*H],
'b_kv' [N*2H] (head-major) and 'b_atten_out' [D] when use_qkv_bias;
'attention/{q,k}_norm' when use_qk_norm; 'ln'; 'mlp/{w_in, b_in, w_out,
b_out}'.
"""

from __future__ import annotations

from jax import numpy as jnp
from praxis import base_layer
from praxis import pax_fiddle
from praxis import pytypes
from praxis.layers import activations

from vit22b_pax.layers import attention_core
from vit22b_pax.layers import block_base
from vit22b_pax.layers import mlp as mlp_lib
from vit22b_pax.layers import norms

JTensor = pytypes.JTensor
SplitDimsMapping = pytypes.SplitDimsMapping
template_field = base_layer.template_field
LayerTpl = pax_fiddle.Config[base_layer.BaseLayer]
select_dims = attention_core.select_dims


class MAPHead(base_layer.BaseLayer):
  """Attention-pooling head: [B, T, D] tokens -> [B, D].

  Attributes:
    input_dims: D, the token width (also the output width).
    hidden_dims: F, the MLP hidden width.
    num_heads: N.
    dim_per_head: H; None means input_dims // num_heads.
    use_qk_norm: Normalize the probe's queries and the tokens' keys per head.
    qk_norm_type: 'layernorm' or 'rmsnorm'.
    use_qkv_bias: Biases on the q, k, v and attention-out projections.
    use_ln_bias: Biases on the LayerNorm and the QK-norms.
    ln_centering: Whether the LayerNorm subtracts the mean.
    use_mlp_bias: Biases on the MLP dense layers.
    ln_epsilon: Epsilon of every norm in the head.
    probe_init: Init of the probe; None uses params_init (praxis default
      Xavier; big_vision uses xavier_uniform).
    activation_tpl: MLP activation (default praxis GELU, tanh approximation).
    norm_tpl: Template of the norm layers.
    attention_tpl: Template of the attention core.
    mlp_tpl: Template of the MLP.
  """

  input_dims: int = 0
  hidden_dims: int = 0
  num_heads: int = 0
  dim_per_head: int | None = None
  use_qk_norm: bool = True
  qk_norm_type: str = 'layernorm'
  use_qkv_bias: bool = False
  use_ln_bias: bool = False
  ln_centering: bool = True
  use_mlp_bias: bool = True
  ln_epsilon: float = 1e-6
  probe_init: base_layer.WeightInit | None = None
  activation_tpl: pax_fiddle.Config[activations.BaseActivation] = (
      template_field(activations.GELU)
  )
  norm_tpl: LayerTpl = template_field(norms.LayerNorm)
  attention_tpl: LayerTpl = template_field(attention_core.AttentionCore)
  mlp_tpl: LayerTpl = template_field(mlp_lib.Mlp)

  class WeightSharding(base_layer.BaseLayer.WeightSharding):
    """Weight split-dims mappings (same meaning as on the blocks).

    Attributes:
      in_proj: Mapping of w_q / w_kv [D, N, *]; the MLP-in [D, F] uses its D
        and N entries.
      out_proj: Mapping of w_atten_out [N, H, D]; the MLP-out [F, D] uses its
        N and D entries; the probe [1, D] its D entry.
      ln: Mapping of the LayerNorm scale/bias [D].
    """

    in_proj: SplitDimsMapping = None
    out_proj: SplitDimsMapping = None
    ln: SplitDimsMapping = None

  class ActivationSharding(base_layer.BaseLayer.ActivationSharding):
    """Activation split-dims mappings.

    Attributes:
      bld: Mapping of [B, T, D] tensors (tokens, the pooled [B, 1, D]).
      blnh: Mapping of [B, T, N, H] tensors (q, k, v, context).
    """

    bld: SplitDimsMapping = None
    blnh: SplitDimsMapping = None

  @property
  def head_dim(self) -> int:
    """H: dim_per_head, or input_dims // num_heads when it is None."""
    if self.dim_per_head:
      return self.dim_per_head
    return self.input_dims // self.num_heads

  def setup(self) -> None:
    for field in ('input_dims', 'hidden_dims', 'num_heads'):
      if getattr(self, field) <= 0:
        raise ValueError(
            f'MAPHead.{field} must be positive, got {getattr(self, field)}.'
        )
    if not self.dim_per_head and self.input_dims % self.num_heads:
      raise ValueError(
          f'MAPHead: input_dims ({self.input_dims}) must be divisible by '
          f'num_heads ({self.num_heads}) when dim_per_head is not set.'
      )
    d, n, h = self.input_dims, self.num_heads, self.head_dim
    wp = self.weight_split_dims_mapping
    ap = self.activation_split_dims_mapping
    wh = attention_core.weight_hparams
    bh = attention_core.bias_hparams
    probe_split = None if wp.out_proj is None else (None, wp.out_proj[2])
    self.create_variable(
        'probe', wh(self, [1, d], probe_split, init=self.probe_init)
    )
    self.create_variable(
        'w_q',
        wh(self, [d, n, h], wp.in_proj, fan_in_axes=[0], fan_out_axes=[1, 2]),
    )
    self.create_variable(
        'w_kv',
        wh(self, [d, n, 2 * h], wp.in_proj, fan_in_axes=[0],
           fan_out_axes=[1, 2]),
    )
    self.create_variable(
        'w_atten_out',
        wh(self, [n, h, d], wp.out_proj, fan_in_axes=[0, 1],
           fan_out_axes=[2]),
    )
    if self.use_qkv_bias:
      in_bias = select_dims(wp.in_proj, (1,))
      self.create_variable('b_q', bh(self, [n * h], in_bias))
      self.create_variable('b_kv', bh(self, [n * 2 * h], in_bias))
      self.create_variable(
          'b_atten_out', bh(self, [d], select_dims(wp.out_proj, (2,)))
      )

    self.create_child('attention', block_base.attention_config(self))
    self.create_child('ln', block_base.norm_config(self))

    mlp_p = self.mlp_tpl.clone().set(
        input_dims=d,
        hidden_dims=self.hidden_dims,
        use_bias=self.use_mlp_bias,
        activation_tpl=self.activation_tpl.clone(),
    )
    mlp_p.weight_split_dims_mapping.w_in = select_dims(wp.in_proj, (0, 1))
    mlp_p.weight_split_dims_mapping.w_out = select_dims(wp.out_proj, (0, 2))
    mlp_p.activation_split_dims_mapping.hidden = select_dims(
        ap.blnh, (0, 1, 2)
    )
    self.create_child('mlp', mlp_p)

  def __call__(
      self, inputs: JTensor, paddings: JTensor | None = None
  ) -> JTensor:
    """Pools tokens.

    Args:
      inputs: [B, T, D] tokens.
      paddings: Optional [B, T], 1.0 at tokens the probe must not attend to.

    Returns:
      [B, D] pooled representation.
    """
    if inputs.ndim != 3 or inputs.shape[-1] != self.input_dims:
      raise ValueError(
          f'MAPHead expects inputs [B, T, {self.input_dims}], got '
          f'{inputs.shape}.'
      )
    ap = self.activation_split_dims_mapping
    h = self.head_dim
    inputs = base_layer.maybe_shard(inputs, ap.bld, self.mesh_axis_names)
    probe = jnp.broadcast_to(
        self.theta.probe[jnp.newaxis], (inputs.shape[0], 1, self.input_dims)
    ).astype(inputs.dtype)
    q = jnp.einsum('BTD,DNH->BTNH', probe, self.theta.w_q)
    kv = jnp.einsum('BSD,DNK->BSNK', inputs, self.theta.w_kv)
    if self.use_qkv_bias:
      q = q + self.theta.b_q.reshape(self.num_heads, h)
      kv = kv + self.theta.b_kv.reshape(self.num_heads, 2 * h)
    mask = attention_core.mask_from_paddings(inputs, paddings)
    context, _ = self.attention(q, kv[..., :h], kv[..., h:], mask)
    x = jnp.einsum('BTNH,NHD->BTD', context, self.theta.w_atten_out)
    if self.use_qkv_bias:
      x = x + self.theta.b_atten_out
    x = base_layer.maybe_shard(x, ap.bld, self.mesh_axis_names)
    x = x + self.mlp(self.ln(x))
    return x[:, 0]
