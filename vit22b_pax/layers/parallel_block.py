"""ViT-22B parallel encoder block (Dehghani et al. 2023, Sec. 2).

  y = x + Attn(LN(x)) + MLP(LN(x))

with ONE shared pre-LN, ONE fused input projection producing q, k, v and
the MLP-in activations, and ONE fused output projection consuming the
attention context and the MLP hidden activations, with one bias.

The projections' weights are always stored fused (below). How they are
multiplied depends on the mesh:
  - heads split over a model axis of several devices: ONE matmul in and
    ONE out by the whole fused weights (or collective matmuls, below), so
    the normed x is all-gathered over 'model' once and the output
    all-reduced once per block and direction, as the paper's layout
    intends;
  - otherwise (one device, or a data-only mesh): one matmul per part on
    slices of the fused weights, the two output products summed. On
    XLA:CPU that is faster than one big matmul whose activation is then
    sliced and concatenated (see `ParallelBlock._project`; BENCHMARKS.md),
    and with no model axis there is no collective to save.

Weight layout. The fused weights are grouped by head so that sharding the
head axis N over the 'model' mesh axis gives every device whole heads plus
an equal F/N slice of the MLP, with no resharding between the fused matmul
and its consumers:

  w_in  [D, N, K], K = 3H + F/N: per head n, columns [q_n | k_n | v_n | m_n]
        where m_n are MLP hidden units n*F/N ... (n+1)*F/N - 1.
  w_out [N, J, D], J = H + F/N: per head n, rows [context_n | m_n].
  b_in  [N * W] read as [N, W]: per head the q, k, v biases (3H, when
        use_qkv_bias) then the MLP-in bias (F/N, when use_mlp_bias); absent
        when both are off, so no parameter exists for a disabled bias.
  b_out [D], present when use_mlp_bias (it is also the attention-out bias).

So w_in is one D x (3NH + F) matrix and w_out one (NH + F) x D matrix; a
flat [q | k | v | mlp] checkpoint (timm, Flax) converts by a reshape and a
transpose. Requires F % N == 0 (true of every ViT preset: N divides D and F
is a multiple of D).

Initialization: WeightHParams name the fan axes (fan-in D for w_in, N*J for
w_out), so fan-in based inits (e.g. WeightInit.GaussianSqrtFanIn) match the
unfused layers; the praxis default Xavier also uses the fused fan-out.

Collective matmul (`collective_matmul`, off by default). On a mesh whose
'model' axis splits the heads, the input projection is then ONE
`collective_matmul.all_gather_matmul` of the normed x [B, T, D] (D split
over 'model') by the whole w_in [D, N, K], and the output projection ONE
`collective_matmul.matmul_reduce_scatter` of [context | MLP hidden]
[B, T, N, J] by the whole w_out [N, J, D]: ppermute rings that overlap
moving a D-chunk of x (or of the output's partial sums) with the multiply
of the chunk in hand, as ViT-22B does (Dehghani et al. 2023, Sec. 3,
"asynchronous parallel linear operations"), instead of XLA's all-gather
of the whole normed x before the input projection and all-reduce of the
whole output after the output projection. The MLP activations are then
head-major [B, T, N, F/N] (the fused activation's columns), not
feature-major. Same variables, same values up to float rounding.

Remat names: 'combined_qkv_proj' (the input projection: q, k, v and the
MLP pre-activations), 'logits', 'context', 'out_proj' (the output
projection), as praxis checkpoint policies expect.
"""

from __future__ import annotations

import math

from jax import numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from praxis import py_utils
from praxis import pytypes

from vit22b_pax.layers import block_base
from vit22b_pax.layers import collective_matmul as cm
from vit22b_pax.layers import weights

JTensor = pytypes.JTensor
NestedMap = py_utils.NestedMap

# Values of ParallelBlock.collective_matmul.
COLLECTIVE_MATMUL_MODES = ('off', 'unidirectional', 'bidirectional')


class ParallelBlock(block_base.BlockBase):
  """ViT-22B parallel block: y = x + Attn(LN(x)) + MLP(LN(x)).

  Fields, sharding and defaults are those of `block_base.BlockBase` (the
  ViT-22B choices: QK-norm on, no q/k/v or LayerNorm biases, MLP biases on).
  Variables: 'ln' (scale [D]; bias [D] only if ln_tpl has one), 'w_in'
  [D, N, K], 'b_in', 'w_out' [N, J, D], 'b_out' [D], 'attention/q_norm'
  and 'attention/k_norm' (scale [H] each) -- see the module docstring.

  Attributes:
    collective_matmul: 'off' (XLA partitions the projections), or
      'unidirectional' / 'bidirectional': compute the fused input and
      output projections as collective matmuls over the 'model' mesh axis
      (module docstring; `collective_matmul` for the two ring variants).
      The axes come from the sharding fields: the batch axis is
      activation_split_dims_mapping.bld[0], the ring axis blnh[2], and the
      weights' D dims are split over weight_split_dims_mapping.in_proj[0]
      and out_proj[2]. Without those mappings (no mesh configured), or
      outside a `with mesh:` (praxis' abstract init), the plain einsums
      run.
  """

  collective_matmul: str = 'off'

  @property
  def mlp_per_head(self) -> int:
    """F / N, the MLP hidden units grouped with each head."""
    return self.hidden_dims // self.num_heads

  @property
  def in_bias_width(self) -> int:
    """Per-head width W of b_in: 3H for q/k/v bias plus F/N for MLP-in."""
    width = 3 * self.head_dim if self.use_qkv_bias else 0
    return width + (self.mlp_per_head if self.use_mlp_bias else 0)

  def setup(self) -> None:
    self._setup_common()
    if self.collective_matmul not in COLLECTIVE_MATMUL_MODES:
      raise ValueError(
          f'ParallelBlock.collective_matmul must be one of '
          f'{COLLECTIVE_MATMUL_MODES}, got {self.collective_matmul!r}.'
      )
    if self.hidden_dims % self.num_heads:
      raise ValueError(
          f'ParallelBlock groups the MLP by head: hidden_dims '
          f'({self.hidden_dims}) must be divisible by num_heads '
          f'({self.num_heads}).'
      )
    d, n, h = self.input_dims, self.num_heads, self.head_dim
    fn = self.mlp_per_head
    wp = self.weight_split_dims_mapping
    self.create_child('ln', self._norm_config())
    self.create_child('activation', self.activation_tpl.clone())
    self.create_child(
        'relu_dropout',
        self.dropout_tpl.clone().set(keep_prob=1.0 - self.relu_dropout_prob),
    )
    self.create_variable(
        'w_in',
        weights.weight_hparams(
            self, [d, n, 3 * h + fn], wp.in_proj,
            fan_in_axes=[0], fan_out_axes=[1, 2],
        ),
    )
    # Biases are 1-D (head-major flattening of [N, W]) so that optimizers
    # and weight-decay rules keyed on rank treat them as vectors.
    if self.in_bias_width:
      self.create_variable(
          'b_in',
          weights.bias_hparams(
              self,
              [n * self.in_bias_width],
              weights.select_dims(wp.in_proj, (1,)),
          ),
      )
    self.create_variable(
        'w_out',
        weights.weight_hparams(
            self, [n, h + fn, d], wp.out_proj,
            fan_in_axes=[0, 1], fan_out_axes=[2],
        ),
    )
    if self.use_mlp_bias:
      self.create_variable(
          'b_out',
          weights.bias_hparams(
              self, [d], weights.select_dims(wp.out_proj, (2,))
          ),
      )

  def _project(
      self, x: JTensor
  ) -> tuple[JTensor, JTensor, JTensor, JTensor]:
    """Input projections of the normed x [B, T, D] by the fused w_in.

    One matmul per part, each on a column slice of w_in [D, N, K]: q, k and
    v by [D, N, H] slices, the MLP by the [D, N, F/N] slice read as [D, F]
    (unit n * F/N + j is head n's j-th, the module docstring's order). On
    XLA:CPU this is faster than one [B, T, N, K] matmul followed by slices:
    the slices of the big activation, and in the backward pass the
    concatenation of their gradients, are copies as large as the matmul's
    output, while slicing the weight copies only weight-sized data. The
    weights stay fused (sharding, checkpoints); only the compute is split.

    The MLP activations are feature-major, [F, M] over the M = B*T tokens:
    XLA:CPU's oneDNN matmul computes [M, D] x [D, F] faster into that layout
    (measured at D 768, F 3072, M 2048: 0.98 vs 0.90 of the float32 matmul
    peak forward, 0.87 vs 0.81 forward + backward), and the MLP-in bias
    gradient becomes a sum over the minor dim, which XLA parallelizes,
    instead of over the major one.

    Returns:
      q, k, v [B, T, N, H] and the MLP pre-activations [F, B*T].
    """
    b, t, d = x.shape
    n, h = self.num_heads, self.head_dim
    w = self.theta.w_in
    parts = []
    for i in range(3):
      part = weights.token_matmul(x, w[..., i * h : (i + 1) * h].reshape(d, n * h))
      parts.append(self._shard_blnh(part.reshape(b, t, n, h)))
    q, k, v = parts
    w_mlp = w[..., 3 * h :].reshape(d, n * self.mlp_per_head)
    mlp = jnp.einsum('MD,DF->FM', x.reshape(b * t, d), w_mlp)
    q, k, v, mlp = self._add_in_bias(
        q, k, v, mlp, lambda b: b.reshape(-1, 1)
    )
    # The same values the fused activation held, under its remat name.
    q, k, v, mlp = (checkpoint_name(a, 'combined_qkv_proj')
                    for a in (q, k, v, mlp))
    return q, k, v, self._shard_fm(mlp)

  def _add_in_bias(self, q, k, v, mlp, mlp_bias_layout):
    """Adds b_in's parts (if any) to q, k, v [B, T, N, H] and the MLP.

    Per part, not on the fused activation: the bias gradients then stay
    [N, H] and [N, F/N] pieces, as the weights' slices are.

    Args:
      q: [B, T, N, H] queries; k, v likewise.
      k: keys.
      v: values.
      mlp: MLP pre-activations, [F, B*T] or [B, T, N, F/N].
      mlp_bias_layout: maps the [N, F/N] MLP bias to mlp's layout.

    Returns:
      (q, k, v, mlp) with the biases added.
    """
    if not self.in_bias_width:
      return q, k, v, mlp
    h = self.head_dim
    bias = self.theta.b_in.reshape(self.num_heads, self.in_bias_width)
    if self.use_qkv_bias:
      q = q + bias[:, :h]
      k = k + bias[:, h : 2 * h]
      v = v + bias[:, 2 * h : 3 * h]
    if self.use_mlp_bias:
      mlp = mlp + mlp_bias_layout(bias[:, -self.mlp_per_head :])
    return q, k, v, mlp

  def _shard_fm(self, x: JTensor) -> JTensor:
    """Shards feature-major MLP activations [F, B*T]: F like the heads."""
    blnh = self.activation_split_dims_mapping.blnh
    return self._shard(x, None if blnh is None else (blnh[2], blnh[0]))

  def attention_logits(self, inputs: JTensor) -> JTensor:
    """Pre-mask attention logits [B, N, T, T] of inputs [B, T, D].

    For diagnostics (logit growth, the reason for QK-norm); the forward pass
    computes the same values.
    """
    q, k, _, _ = self._project(self.ln(inputs))
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
    """Applies the block.

    Args:
      inputs: [B, T, D].
      paddings: [B, T], 1.0 at padded tokens; only used to build the mask when
        attention_mask is None.
      attention_mask: Additive self-attention mask [1|B, 1, 1|T, T] as built
        by praxis StackedTransformer (paddings folded in), or None.
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
    axes = self._collective_axes()
    if axes is not None or self._model_axis_devices() > 1:
      out, probs = self._fused_branches(inputs, mask, axes)
    else:
      out, probs = self._branches(inputs, mask)
    if self.use_mlp_bias:
      out = out + self.theta.b_out
    out = checkpoint_name(out, 'out_proj')
    out = self._shard_bld(out)
    out = self._add_branch(inputs, out)
    return self._shard_bld(out), NestedMap(self_atten=probs)

  def _branches(
      self, inputs: JTensor, mask: JTensor | None
  ) -> tuple[JTensor, JTensor]:
    """Attention + MLP branch sum [B, T, D] (no bias) and the probs."""
    q, k, v, mlp = self._project(self.ln(inputs))
    context, probs = self.attention(q, k, v, mask)
    hidden = self._shard_fm(self.relu_dropout(self.activation(mlp)))
    # Attention-out and MLP-out as two matmuls on row slices of the fused
    # w_out [N, J, D], summed: no [B, T, N, J] concatenation (see _project).
    b, t, d = inputs.shape
    h, w = self.head_dim, self.theta.w_out
    out = weights.token_matmul(context.reshape(b, t, -1), w[:, :h].reshape(-1, d))
    out = out + jnp.einsum(
        'FM,FD->MD', hidden, w[:, h:].reshape(-1, d)
    ).reshape(b, t, d)
    return out, probs

  def _collective_axes(self) -> dict[str, cm.AxisSpec] | None:
    """Keyword axes of the collective matmuls, or None for the plain path.

    None when collective_matmul is 'off' or the sharding fields do not
    split the heads over a mesh axis (no mesh configured).
    """
    if self.collective_matmul == 'off':
      return None
    ap, wp = self.activation_split_dims_mapping, self.weight_split_dims_mapping
    if ap.bld is None or ap.blnh is None or ap.blnh[2] is None:
      return None
    w_in = wp.in_proj or (None, None, None)
    w_out = wp.out_proj or (None, None, None)
    return dict(
        data_axis=ap.bld[0],
        model_axis=ap.blnh[2],
        in_weight_data_axis=w_in[0],
        out_weight_data_axis=w_out[2],
    )

  def _model_axis_devices(self) -> int:
    """Devices of the active mesh on the heads' axis (blnh[2]); 1 if none."""
    blnh = self.activation_split_dims_mapping.blnh
    mesh = cm.current_mesh()
    if blnh is None or blnh[2] is None or mesh is None:
      return 1
    axes = blnh[2] if isinstance(blnh[2], tuple) else (blnh[2],)
    return math.prod(mesh.shape[a] for a in axes)

  def _fused_branches(
      self, inputs: JTensor, mask: JTensor | None,
      axes: dict[str, cm.AxisSpec] | None,
  ) -> tuple[JTensor, JTensor]:
    """_branches with ONE input and ONE output matmul by the fused weights.

    Used when the heads are split over a model axis of several devices: per
    part matmuls (_branches) would each all-gather the normed x over that
    axis and each all-reduce their output product (4 gathers and 2
    reductions per block and direction, seen in the compiled HLO), the fused
    matmuls one of each. With `axes` (collective_matmul on) the two are
    collective matmuls: the normed x stays split on D as the residual stream
    is (sharding.py's training_optimized split; its LayerNorm reduces
    [B, T] statistics over 'model'), and the ring gathers it chunk by chunk.
    The fused activation [B, T, N, K] is sliced per head into q, k, v and
    the MLP's F/N units; [context | hidden] [B, T, N, J] is the output
    matmul's operand.
    """
    h = self.head_dim
    x = self._shard_bld(self.ln(inputs))
    if axes is None:
      fused = jnp.einsum('BTD,DNK->BTNK', x, self.theta.w_in)
    else:
      common = dict(
          data_axis=axes['data_axis'],
          model_axis=axes['model_axis'],
          bidirectional=self.collective_matmul == 'bidirectional',
      )
      fused = cm.all_gather_matmul(
          x, self.theta.w_in,
          weight_data_axis=axes['in_weight_data_axis'], **common,
      )
    fused = self._shard_blnh(checkpoint_name(fused, 'combined_qkv_proj'))
    q, k, v = (self._shard_blnh(fused[..., i * h : (i + 1) * h])
               for i in range(3))
    mlp = self._shard_blnh(fused[..., 3 * h :])
    q, k, v, mlp = self._add_in_bias(q, k, v, mlp, lambda b: b)
    context, probs = self.attention(q, k, v, mask)
    hidden = self._shard_blnh(self.relu_dropout(self.activation(mlp)))
    y = self._shard_blnh(jnp.concatenate([context, hidden], axis=-1))
    if axes is None:
      return jnp.einsum('BTNJ,NJD->BTD', y, self.theta.w_out), probs
    out = cm.matmul_reduce_scatter(
        y, self.theta.w_out,
        weight_data_axis=axes['out_weight_data_axis'], **common,
    )
    return out, probs
