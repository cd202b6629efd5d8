"""Multihead attention pooling (MAP) head, as in big_vision's `MAPHead`.

A learned probe token attends over all tokens (q from the probe, k and v
from the tokens), then x = x + MLP(LN(x)); the probe's output is the image
representation [B, D]. Because nothing depends on token order except
through attention (which is permutation invariant over keys), the output is
invariant to permuting the tokens. The values are pooled before they are
projected (the same sum in another order, see `__call__`): the head then
projects B*N pooled vectors instead of B*T tokens.

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

from vit22b_pax.layers import attention_core
from vit22b_pax.layers import block_base
from vit22b_pax.layers import mlp as mlp_lib
from vit22b_pax.layers import weights

JTensor = pytypes.JTensor
template_field = base_layer.template_field
LayerTpl = pax_fiddle.Config[base_layer.BaseLayer]
select_dims = weights.select_dims


class MAPHead(block_base.BlockOptions):
  """Attention-pooling head: [B, T, D] tokens -> [B, D].

  The fields (sizes, use_qk_norm, use_qkv_bias, use_mlp_bias, ln_tpl,
  attention_tpl, activation_tpl) and sharding of `block_base.BlockOptions`,
  shared with the blocks, plus:

  Attributes:
    probe_init: Init of the probe; None uses params_init (praxis default
      Xavier; big_vision uses xavier_uniform).
    mlp_tpl: Template of the MLP (sizes, bias, activation and sharding are
      set here).
  """

  probe_init: base_layer.WeightInit | None = None
  mlp_tpl: LayerTpl = template_field(mlp_lib.Mlp)

  def setup(self) -> None:
    self._validate_dims()
    d, n, h = self.input_dims, self.num_heads, self.head_dim
    wp = self.weight_split_dims_mapping
    ap = self.activation_split_dims_mapping
    wh = weights.weight_hparams
    bh = weights.bias_hparams
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

    self.create_child('attention', self._attention_config())
    self.create_child('ln', self._norm_config())

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
    h = self.head_dim
    inputs = self._shard_bld(inputs)
    probe = jnp.broadcast_to(
        self.theta.probe[jnp.newaxis], (inputs.shape[0], 1, self.input_dims)
    ).astype(inputs.dtype)
    q = jnp.einsum('BTD,DNH->BTNH', probe, self.theta.w_q)
    w_k, w_v = self.theta.w_kv[..., :h], self.theta.w_kv[..., h:]
    b, t, d = inputs.shape
    k = weights.token_matmul(inputs, w_k.reshape(d, -1)).reshape(
        b, t, self.num_heads, h
    )
    if self.use_qkv_bias:
      b_kv = self.theta.b_kv.reshape(self.num_heads, 2 * h)
      q = q + self.theta.b_q.reshape(self.num_heads, h)
      k = k + b_kv[:, :h]
    mask = attention_core.mask_from_paddings(inputs, paddings)
    probs = self.attention.probs(q, k, mask, inputs.dtype)
    # sum_S p (x W_v + b_v) = (sum_S p x) W_v + (sum_S p) b_v: pooling the
    # tokens before projecting them replaces the [B*S, D] x [D, N*H] value
    # projection (a third of the head's FLOPs) with [B, N, D] x [D, N, H].
    pooled = jnp.einsum('BNTS,BSD->BTND', probs, inputs)
    context = jnp.einsum('BTND,DNH->BTNH', pooled, w_v)
    if self.use_qkv_bias:
      # sum_S p is 1 unless dropout dropped some probabilities.
      mass = jnp.einsum('BNTS->BTN', probs)[..., jnp.newaxis]
      context = context + mass * b_kv[:, h:]
    x = jnp.einsum('BTNH,NHD->BTD', context, self.theta.w_atten_out)
    if self.use_qkv_bias:
      x = x + self.theta.b_atten_out
    x = self._shard_bld(x)
    x = x + self.mlp(self.ln(x))
    return x[:, 0]
