"""Fields, sharding and helpers shared by the blocks and the MAP head.

`BlockOptions` holds the fields the encoder blocks and the MAP head share
(sizes, bias switches, norm / attention templates, sharding); `BlockBase`
adds what the blocks need inside a praxis stack. Both blocks expose the same
fields so that a parallel-vs-sequential ablation changes nothing but the
block class, and both fit praxis'
`StackedTransformer.transformer_layer_params_tpl` (which sets name,
use_cross_attention, num_heads, dim_per_head, input_dims, packed_input, the
dropout probabilities, hidden_dims and residual_droppath_prob) and
`StackedTransformerRepeated` (nn.scan over depth).

Shape letters: B batch, T tokens, D model dims, N heads, H dims per head,
F MLP hidden dims.
"""

from __future__ import annotations

from praxis import base_layer
from praxis import pax_fiddle
from praxis import pytypes
from praxis.layers import activations
from praxis.layers import stochastics

from vit22b_pax.layers import attention_core
from vit22b_pax.layers import gelu
from vit22b_pax.layers import norms

JTensor = pytypes.JTensor
SplitDimsMapping = pytypes.SplitDimsMapping
template_field = base_layer.template_field
LayerTpl = pax_fiddle.Config[base_layer.BaseLayer]


class BlockOptions(base_layer.BaseLayer):
  """Fields shared by the encoder blocks and the MAP head (not used alone).

  Sizes, the bias and QK-norm switches, the norm / activation / attention
  templates and the sharding fields, so that the MAP head takes the same
  options as the blocks (`models.classifier_config` sets them once).

  Attributes:
    input_dims: D, the model (residual stream) width.
    hidden_dims: F, the MLP hidden width.
    num_heads: N, the number of attention heads.
    dim_per_head: H; None means input_dims // num_heads.
    use_qk_norm: Normalize each head's queries and keys before the dot
      product (ViT-22B: True); the norm is attention_tpl.qk_norm_tpl.
    use_qkv_bias: Biases on the q/k/v projections (and on the attention
      output projection where that is its own matmul). ViT-22B: False.
    use_mlp_bias: Biases on the MLP dense layers. ViT-22B: True.
    activation_tpl: MLP activation. Default `gelu.GELU` (praxis' GELU with
      a lighter backward pass) with approximate=True, i.e. the tanh form,
      which is what flax `nn.gelu` (big_vision) computes; set
      approximate=False for the exact erf form.
    ln_tpl: Template of the LayerNorm(s) over D (praxis' field name; dim and
      sharding are set here). Default: ViT-22B's LayerNorm, no bias, scale
      used directly, float32 statistics, epsilon 1e-6 (`norms.layer_norm`);
      `norms.rms_norm()` or `norms.layer_norm(use_bias=True)` for variants.
    attention_tpl: Template of the attention core (its qk_norm_tpl is the
      QK-norm; dim_per_head, use_qk_norm and sharding are set here).
  """

  input_dims: int = 0
  hidden_dims: int = 0
  num_heads: int = 0
  dim_per_head: int | None = None
  use_qk_norm: bool = True
  use_qkv_bias: bool = False
  use_mlp_bias: bool = True
  activation_tpl: pax_fiddle.Config[activations.BaseActivation] = (
      template_field(gelu.GELU)
  )
  ln_tpl: LayerTpl = template_field(norms.layer_norm)
  attention_tpl: LayerTpl = template_field(attention_core.AttentionCore)

  class WeightSharding(base_layer.BaseLayer.WeightSharding):
    """Weight split-dims mappings (entries: mesh axis name, index or None).

    Attributes:
      in_proj: Mapping of the input projections, laid out [D, N, K] with the
        per-head fused width K last (parallel block: q, k, v and the head's
        F/N MLP-in columns; sequential block: q, k, v; MAP head: w_q, w_kv).
        The MLP-in [D, F] of the sequential block and the MAP head uses its D
        and N entries. E.g. ('data', 'model', None) shards D over 'data' and
        heads over 'model'.
      out_proj: Mapping of the output projections, laid out [N, J, D]
        (parallel: attention context and the head's F/N MLP-out rows; the
        attention out-projection [N, H, D] elsewhere); the MLP-out [F, D]
        uses its N and D entries, the MAP probe [1, D] its D entry. E.g.
        ('model', None, 'data').
      ln: Mapping of the LayerNorm scale/bias [D]; None replicates.
    Biases are 1-D (head-major where per-head) and take the mapping entry
    of their weight's N (input side) or D (output side) dim.
    """

    in_proj: SplitDimsMapping = None
    out_proj: SplitDimsMapping = None
    ln: SplitDimsMapping = None

  class ActivationSharding(base_layer.BaseLayer.ActivationSharding):
    """Activation split-dims mappings.

    Attributes:
      bld: Mapping of [B, T, D] tensors: layer input, output and branch
        outputs. E.g. ('data', None, None).
      blnh: Mapping of per-head tensors [B, T, N, *]: q, k, v, the attention
        context and the fused projections. An MLP hidden [B, T, F] uses its
        first three entries. E.g. ('data', None, 'model', None).
    """

    bld: SplitDimsMapping = None
    blnh: SplitDimsMapping = None

  @property
  def head_dim(self) -> int:
    """H: dim_per_head, or input_dims // num_heads when it is None."""
    if self.dim_per_head:
      return self.dim_per_head
    return self.input_dims // self.num_heads

  def _validate_dims(self) -> None:
    name = type(self).__name__
    for field in ('input_dims', 'hidden_dims', 'num_heads'):
      if getattr(self, field) <= 0:
        raise ValueError(
            f'{name}.{field} must be positive, got {getattr(self, field)}.'
        )
    if not self.dim_per_head and self.input_dims % self.num_heads:
      raise ValueError(
          f'{name}: input_dims ({self.input_dims}) must be divisible by '
          f'num_heads ({self.num_heads}) when dim_per_head is not set.'
      )

  def _norm_config(self) -> LayerTpl:
    """A LayerNorm over D from ln_tpl."""
    p = self.ln_tpl.clone().set(dim=self.input_dims)
    p.weight_split_dims_mapping.wt = self.weight_split_dims_mapping.ln
    return p

  def _attention_config(self) -> LayerTpl:
    """The attention core from attention_tpl."""
    p = self.attention_tpl.clone().set(
        dim_per_head=self.head_dim, use_qk_norm=self.use_qk_norm
    )
    p.activation_split_dims_mapping.blnh = (
        self.activation_split_dims_mapping.blnh
    )
    return p

  def _shard(self, x: JTensor, mapping: SplitDimsMapping) -> JTensor:
    return base_layer.maybe_shard(x, mapping, self.mesh_axis_names)

  def _shard_bld(self, x: JTensor) -> JTensor:
    return self._shard(x, self.activation_split_dims_mapping.bld)

  def _shard_blnh(self, x: JTensor) -> JTensor:
    return self._shard(x, self.activation_split_dims_mapping.blnh)


class BlockBase(BlockOptions):
  """Common fields of the ViT-22B encoder blocks (not used on its own).

  The fields of `BlockOptions`, plus those praxis StackedTransformer sets:

  Attributes:
    atten_dropout_prob: Dropout on the attention probabilities.
    residual_dropout_prob: Dropout on each branch output before it is added to
      the residual stream.
    relu_dropout_prob: Dropout on the MLP hidden activations (praxis' name).
    residual_droppath_prob: Probability of dropping a whole branch per example
      (stochastic depth, praxis StochasticResidual).
    use_cross_attention: Not supported; must stay False (set by
      StackedTransformer).
    packed_input: Not supported; must stay False (set by StackedTransformer).
    dropout_tpl: Template of the dropout layers.
  """

  atten_dropout_prob: float = 0.0
  residual_dropout_prob: float = 0.0
  relu_dropout_prob: float = 0.0
  residual_droppath_prob: float = 0.0
  use_cross_attention: bool = False
  packed_input: bool = False
  dropout_tpl: LayerTpl = template_field(stochastics.Dropout)

  def _validate(self) -> None:
    name = type(self).__name__
    if self.use_cross_attention:
      raise ValueError(
          f'{name} does not support cross attention: set '
          'use_cross_attention=False (on the StackedTransformer).'
      )
    if self.packed_input:
      raise ValueError(
          f'{name} does not support packed inputs: set packed_input=False '
          '(on the StackedTransformer).'
      )
    self._validate_dims()
    for field in (
        'atten_dropout_prob',
        'residual_dropout_prob',
        'relu_dropout_prob',
        'residual_droppath_prob',
    ):
      if not 0.0 <= getattr(self, field) < 1.0:
        raise ValueError(
            f'{name}.{field} must be in [0, 1), got {getattr(self, field)}.'
        )

  def _setup_common(self) -> None:
    """Validates fields; creates the attention core and residual dropouts."""
    self._validate()
    self.create_child(
        'attention',
        self._attention_config().set(
            atten_dropout_prob=self.atten_dropout_prob,
            dropout_tpl=self.dropout_tpl.clone(),
        ),
    )
    self.create_child(
        'residual_dropout',
        self.dropout_tpl.clone().set(
            keep_prob=1.0 - self.residual_dropout_prob
        ),
    )
    if self.residual_droppath_prob > 0.0:
      self.create_child(
          'residual_droppath',
          pax_fiddle.Config(
              stochastics.StochasticResidual,
              survival_prob=1.0 - self.residual_droppath_prob,
          ),
      )

  def _add_branch(self, residual: JTensor, branch: JTensor) -> JTensor:
    """residual + droppath(dropout(branch))."""
    branch = self.residual_dropout(branch)
    if self.residual_droppath_prob > 0.0:
      return self.residual_droppath(residual, branch)
    return residual + branch

  def _atten_mask(
      self,
      inputs: JTensor,
      paddings: JTensor | None,
      attention_mask: JTensor | None,
      cross_inputs: JTensor | None,
  ) -> JTensor | None:
    """The additive self-attention mask to use."""
    if cross_inputs is not None:
      raise ValueError(
          f'{type(self).__name__} has no cross attention; got cross_inputs.'
      )
    if attention_mask is not None:
      return attention_mask
    return attention_core.mask_from_paddings(inputs, paddings)

