"""Multi-head dot-product attention core shared by the ViT-22B layers.

The core takes already projected queries, keys and values [B, T|S, N, H] and
computes softmax(norm(Q) norm(K)^T / sqrt(H) + mask) V. Projections live in
the blocks (the parallel block fuses them with the MLP), so the same core
serves ParallelBlock, SequentialBlock and MAPHead.

Masks follow praxis `DotProductAttention`: `atten_mask` is additive, shape
[1|B, 1, 1|T, S], 0 where attention is allowed and a large negative number
where it is not (`attentions.convert_paddings_to_mask`), applied with
`py_utils.apply_mask_to_logits` to float32 logits.

Also holds the mask helpers the blocks and the MAP head share: turning
paddings into a mask, checking a mask's shape.
"""

from __future__ import annotations

import jax
from jax import numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from praxis import base_layer
from praxis import pax_fiddle
from praxis import py_utils
from praxis import pytypes
from praxis.layers import attentions
from praxis.layers import stochastics

from vit22b_pax.layers import norms

JTensor = pytypes.JTensor
SplitDimsMapping = pytypes.SplitDimsMapping
template_field = base_layer.template_field
LayerTpl = pax_fiddle.Config[base_layer.BaseLayer]


def mask_from_paddings(
    inputs: JTensor, paddings: JTensor | None
) -> JTensor | None:
  """Additive [B, 1, 1, T] mask from paddings [B, T] (1 = padded), or None."""
  if paddings is None:
    return None
  return attentions.convert_paddings_to_mask(paddings, inputs.dtype)


def check_mask(atten_mask: JTensor | None, b: int, t: int, s: int) -> None:
  """Raises ValueError unless atten_mask is [1|B, 1, 1|T, S] (or None)."""
  if atten_mask is None:
    return
  shape = tuple(atten_mask.shape)
  if (
      len(shape) != 4
      or shape[0] not in (1, b)
      or shape[1] != 1
      or shape[2] not in (1, t)
      or shape[3] != s
  ):
    raise ValueError(
        f'attention_mask must have shape [1|{b}, 1, 1|{t}, {s}] (additive, '
        f'as praxis StackedTransformer builds it); got {list(shape)}.'
    )


def _softmax(logits: JTensor) -> tuple[JTensor, JTensor, JTensor]:
  """Softmax over the last axis, with its row max and denominator.

  The same computation as `jax.nn.softmax` (jax 0.4.26's default: the row
  max is shifted out under stop_gradient), returning the intermediates the
  diagnostics reuse.

  Args:
    logits: [..., S] float32 logits.

  Returns:
    (probs [..., S], row max [..., 1], denominator [..., 1]).
  """
  row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  unnormalized = jnp.exp(logits - row_max)
  denominator = jnp.sum(unnormalized, axis=-1, keepdims=True)
  return unnormalized / denominator, row_max, denominator


class AttentionCore(base_layer.BaseLayer):
  """Scaled dot-product attention over N heads with optional QK-norm.

  logits = norm_q(Q) . norm_k(K) / sqrt(H)          [B, N, T, S]
  probs  = dropout(softmax(mask(logits)))           [B, N, T, S]
  out    = probs . V                                [B, T, N, H]

  QK-norm (Dehghani et al. 2023, Sec. 2) normalizes each head's H-dim query
  and key vector: children 'q_norm' and 'k_norm', each built from
  qk_norm_tpl with dim = H, so their scale [H] is shared across heads.

  With `diagnostics`, two scalar summaries watch for the instability
  QK-norm exists to prevent (logits growing until the softmax is one-hot):
  'max_logit', the largest masked pre-softmax logit of the batch, and
  'entropy', the attention entropy -sum_S p log p in nats averaged over
  B, N and T. Both come from the softmax's row max and denominator.

  Attributes:
    dim_per_head: H, the per-head query/key/value size.
    use_qk_norm: Whether to normalize queries and keys before the dot product.
    atten_dropout_prob: Dropout probability on the attention probabilities.
    diagnostics: Add the 'max_logit' and 'entropy' summaries.
    qk_norm_tpl: Template of the q and k norms (dim is set here). Default:
      ViT-22B's LayerNorm (no bias, direct scale, float32 statistics, epsilon
      1e-6); `norms.rms_norm()` gives RMSNorm.
    dropout_tpl: Template of the attention-probability dropout.
  """

  dim_per_head: int = 0
  use_qk_norm: bool = True
  atten_dropout_prob: float = 0.0
  diagnostics: bool = False
  qk_norm_tpl: LayerTpl = template_field(norms.layer_norm)
  dropout_tpl: LayerTpl = template_field(stochastics.Dropout)

  class ActivationSharding(base_layer.BaseLayer.ActivationSharding):
    """Activation split-dims mappings.

    Attributes:
      blnh: Mapping of q, k, v and the context [B, T, N, H]; the logits
        [B, N, T, S] use its batch and head entries.
    """

    blnh: SplitDimsMapping = None

  def setup(self) -> None:
    if self.dim_per_head <= 0:
      raise ValueError(
          f'AttentionCore.dim_per_head must be positive, got '
          f'{self.dim_per_head}.'
      )
    if not 0.0 <= self.atten_dropout_prob < 1.0:
      raise ValueError(
          'atten_dropout_prob must be in [0, 1), got '
          f'{self.atten_dropout_prob}.'
      )
    if self.use_qk_norm:
      norm_p = self.qk_norm_tpl.clone().set(dim=self.dim_per_head)
      self.create_child('q_norm', norm_p)
      self.create_child('k_norm', norm_p)
    self.create_child(
        'atten_dropout',
        self.dropout_tpl.clone().set(keep_prob=1.0 - self.atten_dropout_prob),
    )

  def _shard_blnh(self, x: JTensor) -> JTensor:
    return base_layer.maybe_shard(
        x, self.activation_split_dims_mapping.blnh, self.mesh_axis_names
    )

  def logits(self, query: JTensor, key: JTensor) -> JTensor:
    """Pre-mask attention logits.

    Args:
      query: [B, T, N, H] projected queries.
      key: [B, S, N, H] projected keys.

    Returns:
      float32 logits [B, N, T, S], QK-normed and scaled by 1/sqrt(H).
    """
    if self.use_qk_norm:
      query = self.q_norm(query)
      key = self.k_norm(key)
    # Scaling the [B, T, N, H] query is cheaper than the [B, N, T, S] logits.
    query = query * jnp.asarray(self.dim_per_head**-0.5, query.dtype)
    logits = jnp.einsum('BTNH,BSNH->BNTS', query, key)
    blnh = self.activation_split_dims_mapping.blnh
    bnts = None if blnh is None else (blnh[0], blnh[2], None, None)
    logits = base_layer.maybe_shard(logits, bnts, self.mesh_axis_names)
    return logits.astype(jnp.float32)

  def _add_diagnostics(
      self,
      logits: JTensor,
      probs: JTensor,
      row_max: JTensor,
      denominator: JTensor,
  ) -> None:
    """Adds the 'max_logit' and 'entropy' summaries from the softmax's stats.

    max_logit is the max of the [B, N, T] row maxima, not a second pass
    over the [B, N, T, S] logits (on XLA:CPU that reduction took ~1.2% of
    a 2-layer ViTMid train step per layer). With log p = (l - m) - log z,
    the entropy of a row is log z - sum_S p (l - m): one multiply-and-sum
    over the softmax's own output. Masked keys have p = 0 and a finite
    l - m, so they add nothing. Under stop_gradient: jax would otherwise
    keep the summaries' derivative work in the backward pass.

    Args:
      logits: [B, N, T, S] masked logits.
      probs: [B, N, T, S] their softmax.
      row_max: [B, N, T, 1] their row max.
      denominator: [B, N, T, 1] sum_S exp(l - m).
    """
    logits, probs, row_max, denominator = jax.lax.stop_gradient(
        (logits, probs, row_max, denominator)
    )
    self.add_summary('max_logit', jnp.max(row_max))
    weighted = jnp.sum(probs * (logits - row_max), axis=-1, keepdims=True)
    self.add_summary('entropy', jnp.mean(jnp.log(denominator) - weighted))

  def probs(
      self,
      query: JTensor,
      key: JTensor,
      atten_mask: JTensor | None,
      dtype: jnp.dtype | None = None,
  ) -> JTensor:
    """Attention probabilities of `query` over `key`, after dropout.

    For callers that contract them with something other than projected
    values (MAPHead pools the tokens first).

    Args:
      query: [B, T, N, H].
      key: [B, S, N, H].
      atten_mask: Additive mask [1|B, 1, 1|T, S], or None for no mask.
      dtype: dtype of the returned probabilities; None keeps the key's.

    Returns:
      probs [B, N, T, S].
    """
    b, s, n, h = key.shape
    if h != self.dim_per_head:
      raise ValueError(
          f'key must be [B, S, N, {self.dim_per_head}]; got {key.shape}.'
      )
    if query.shape[0] != b or query.shape[2:] != (n, h):
      raise ValueError(f'query {query.shape} does not match key {key.shape}.')
    check_mask(atten_mask, b, query.shape[1], s)
    logits = self.logits(self._shard_blnh(query), self._shard_blnh(key))
    logits = checkpoint_name(logits, 'logits')
    if atten_mask is not None:
      logits = py_utils.apply_mask_to_logits(logits, atten_mask)
    probs, row_max, denominator = _softmax(logits)
    if self.diagnostics:
      self._add_diagnostics(logits, probs, row_max, denominator)
    probs = probs.astype(key.dtype if dtype is None else dtype)
    return self.atten_dropout(probs)

  def __call__(
      self,
      query: JTensor,
      key: JTensor,
      value: JTensor,
      atten_mask: JTensor | None,
  ) -> tuple[JTensor, JTensor]:
    """Attends `query` over `key`/`value`.

    Args:
      query: [B, T, N, H].
      key: [B, S, N, H].
      value: [B, S, N, H].
      atten_mask: Additive mask [1|B, 1, 1|T, S], or None for no mask.

    Returns:
      (context [B, T, N, H], probs [B, N, T, S]).
    """
    if value.shape != key.shape:
      raise ValueError(
          f'key/value must be [B, S, N, {self.dim_per_head}]; got key '
          f'{key.shape}, value {value.shape}.'
      )
    probs = self.probs(query, key, atten_mask, value.dtype)
    context = jnp.einsum('BNTS,BSNH->BTNH', probs, self._shard_blnh(value))
    context = checkpoint_name(context, 'context')
    return self._shard_blnh(context), probs
