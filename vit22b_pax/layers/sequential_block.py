"""Standard (sequential) pre-LN encoder block with the ViT-22B options.

  x = x + Attn(LN1(x));  y = x + MLP(LN2(x))

The ablation partner of `parallel_block.ParallelBlock`: same fields, same
attention core, norms, QK-norm, bias rules, dropout and sharding fields, so
switching the block class is the only change. Weights:

  w_qkv       [D, N, 3H]  q, k, v fused per head (one matmul)
  b_qkv       [N*3H]      if use_qkv_bias (read as [N, 3H])
  w_atten_out [N, H, D];  b_atten_out [D] if use_qkv_bias
  mlp/w_in    [D, F];     mlp/b_in [F] if use_mlp_bias
  mlp/w_out   [F, D];     mlp/b_out [D] if use_mlp_bias
  ln_atten, ln_mlp        norm scale [D] each (+ bias if ln_tpl has one)

With the default flags it has the parallel block's parameters plus one more
LayerNorm scale [D] (two pre-LNs instead of one shared).

Remat names: 'combined_qkv_proj', 'logits', 'context', 'out_proj', 'ffn1'
(MLP-in pre-activation), 'ffn2' (MLP-out), as praxis checkpoint policies
expect.
"""

from __future__ import annotations

from jax import numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from praxis import py_utils
from praxis import pytypes

from vit22b_pax.layers import block_base
from vit22b_pax.layers import mlp as mlp_lib
from vit22b_pax.layers import weights

JTensor = pytypes.JTensor
NestedMap = py_utils.NestedMap
select_dims = weights.select_dims


class SequentialBlock(block_base.BlockBase):
  """Pre-LN block: x = x + Attn(LN1(x)); y = x + MLP(LN2(x)).

  Fields, sharding and defaults are those of `block_base.BlockBase`, plus:

  Attributes:
    mlp_tpl: Template of the MLP (sizes, bias, activation, dropout and
      sharding are set from the block's fields).
  """

  mlp_tpl: block_base.LayerTpl = block_base.template_field(mlp_lib.Mlp)

  def setup(self) -> None:
    self._setup_common()
    d, n, h = self.input_dims, self.num_heads, self.head_dim
    f = self.hidden_dims
    wp = self.weight_split_dims_mapping
    wh = weights.weight_hparams
    bh = weights.bias_hparams
    self.create_child('ln_atten', self._norm_config())
    self.create_child('ln_mlp', self._norm_config())
    self.create_variable(
        'w_qkv',
        wh(self, [d, n, 3 * h], wp.in_proj, fan_in_axes=[0],
           fan_out_axes=[1, 2]),
    )
    self.create_variable(
        'w_atten_out',
        wh(self, [n, h, d], wp.out_proj, fan_in_axes=[0, 1],
           fan_out_axes=[2]),
    )
    if self.use_qkv_bias:
      self.create_variable(
          'b_qkv', bh(self, [n * 3 * h], select_dims(wp.in_proj, (1,)))
      )
      self.create_variable(
          'b_atten_out', bh(self, [d], select_dims(wp.out_proj, (2,)))
      )
    mlp_p = self.mlp_tpl.clone().set(
        input_dims=d,
        hidden_dims=f,
        use_bias=self.use_mlp_bias,
        relu_dropout_prob=self.relu_dropout_prob,
        activation_tpl=self.activation_tpl.clone(),
        dropout_tpl=self.dropout_tpl.clone(),
    )
    mlp_p.weight_split_dims_mapping.w_in = select_dims(wp.in_proj, (0, 1))
    mlp_p.weight_split_dims_mapping.w_out = select_dims(wp.out_proj, (0, 2))
    mlp_p.activation_split_dims_mapping.hidden = select_dims(
        self.activation_split_dims_mapping.blnh, (0, 1, 2)
    )
    self.create_child('mlp', mlp_p)

  def _project_qkv(self, x: JTensor) -> tuple[JTensor, JTensor, JTensor]:
    """q, k, v [B, T, N, H] of the normed x [B, T, D]."""
    h = self.head_dim
    qkv = jnp.einsum('BTD,DNK->BTNK', x, self.theta.w_qkv)
    qkv = checkpoint_name(qkv, 'combined_qkv_proj')
    qkv = self._shard_blnh(qkv)
    if self.use_qkv_bias:
      qkv = qkv + self.theta.b_qkv.reshape(self.num_heads, 3 * h)
    return qkv[..., :h], qkv[..., h : 2 * h], qkv[..., 2 * h :]

  def attention_logits(self, inputs: JTensor) -> JTensor:
    """Pre-mask attention logits [B, N, T, T] of inputs [B, T, D]."""
    q, k, _ = self._project_qkv(self.ln_atten(inputs))
    return self.attention.logits(q, k)

  def __call__(
      self,
      inputs: JTensor,
      paddings: JTensor | None = None,
      attention_mask: JTensor | None = None,
      cross_inputs: JTensor | None = None,
      cross_attention_mask: JTensor | None = None,
      segment_pos: JTensor | None = None,
      segment_ids: JTensor | None = None,
  ) -> tuple[JTensor, NestedMap]:
    """Applies the block; arguments as `ParallelBlock.__call__`.

    Args:
      inputs: [B, T, D].
      paddings: [B, T], 1.0 at padded tokens; only used to build the mask when
        attention_mask is None.
      attention_mask: Additive self-attention mask [1|B, 1, 1|T, T], or None.
      cross_inputs: Must be None (no cross attention).
      cross_attention_mask: Ignored when cross_inputs is None.
      segment_pos: Unused: positions come from the patch embedding.
      segment_ids: Unused (packed inputs are rejected in setup).

    Returns:
      (outputs [B, T, D], NestedMap(self_atten=probs [B, N, T, T])).
    """
    del cross_attention_mask, segment_pos, segment_ids
    mask = self._atten_mask(inputs, paddings, attention_mask, cross_inputs)
    inputs = self._shard_bld(inputs)
    q, k, v = self._project_qkv(self.ln_atten(inputs))
    context, probs = self.attention(q, k, v, mask)
    atten_out = jnp.einsum('BTNH,NHD->BTD', context, self.theta.w_atten_out)
    if self.use_qkv_bias:
      atten_out = atten_out + self.theta.b_atten_out
    atten_out = checkpoint_name(atten_out, 'out_proj')
    x = self._add_branch(inputs, self._shard_bld(atten_out))
    x = self._shard_bld(x)
    mlp_out = self._shard_bld(self.mlp(self.ln_mlp(x)))
    out = self._add_branch(x, mlp_out)
    return self._shard_bld(out), NestedMap(self_atten=probs)
