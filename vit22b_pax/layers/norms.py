"""The ViT-22B norm templates, built on praxis' normalization layers.

ViT-22B drops the LayerNorm bias (Dehghani et al. 2023, Sec. 2: ~3% faster
training) and keeps the scale as stored by Flax / big_vision (multiplied
directly, initialized to 1.0), so converted checkpoints map 1:1. praxis
`normalizations.LayerNorm` does exactly that with `direct_scale=True,
use_bias=False`, and `reductions_in_fp32=True` computes the mean and
variance in float32 whatever the activation dtype (with bfloat16 statistics,
bfloat16 activations of mean 100 come out with ~3x the error of the output's
own rounding; tests/test_norms.py). `RmsNorm` (no centering, no bias) is the
RMSNorm variant.

These functions return the templates; the layers take them as template
fields (`ln_tpl` on the blocks and the MAP head, `qk_norm_tpl` on the
attention core, `final_ln_tpl` on the classifier) and set only `dim`. A
variant is a different template, e.g. `block.ln_tpl = norms.rms_norm()`,
not a flag repeated on every layer. Applied to [B, T, N, H] with dim = H the
same layer is the QK-norm: the [H] scale broadcasts over the heads, i.e. it
is shared across heads like Flax's
`MultiHeadDotProductAttention(normalize_qk=True)`.

Variables: 'scale' [dim] (init 1.0), plus 'bias' [dim] (init 0.0) only for
`layer_norm(use_bias=True)`.

These replaced a hand-written LayerNorm computing the same values (same
variables, gradients equal to 5e-7). On its own praxis' LayerNorm was ~14%
slower forward+backward on [8, 196, 768] float32 on a CPU (its gradient has
188 HLO instructions against 147): ~2 ms of a ~2 s block forward+backward
there (D 768, F 3072, 12 heads, batch 8 x 196), and 4-block stacks timed
old vs new, interleaved, differed by less than their noise. No reason to
keep a copy.
"""

from __future__ import annotations

from jax import numpy as jnp
from praxis import base_layer
from praxis import pax_fiddle
from praxis.layers import normalizations

from vit22b_pax import recipe

LayerTpl = pax_fiddle.Config[base_layer.BaseLayer]

EPSILON = recipe.LN_EPSILON


def layer_norm(*, use_bias: bool = False, epsilon: float = EPSILON) -> LayerTpl:
  """LayerNorm over the last dim; the defaults are ViT-22B's.

  y = (x - mean(x)) / sqrt(var(x) + epsilon) * scale (+ bias), statistics in
  float32, the result cast back to the input dtype before the scale.

  Args:
    use_bias: Whether the norm has a learned 'bias' (ViT-22B: no).
    epsilon: Added to the variance before the rsqrt.

  Returns:
    A praxis `normalizations.LayerNorm` template (dim unset).
  """
  return pax_fiddle.Config(
      normalizations.LayerNorm,
      direct_scale=True,
      use_bias=use_bias,
      reductions_in_fp32=True,
      epsilon=epsilon,
  )


def rms_norm(*, epsilon: float = EPSILON) -> LayerTpl:
  """RMSNorm over the last dim: y = x / sqrt(mean(x^2) + epsilon) * scale.

  Statistics in float32, the result cast to the layer's fprop_dtype before
  the scale; no centering and no bias.

  Args:
    epsilon: Added to the mean square before the rsqrt.

  Returns:
    A praxis `normalizations.RmsNorm` template (dim unset).
  """
  return pax_fiddle.Config(
      normalizations.RmsNorm,
      direct_scale=True,
      intermediate_dtype=jnp.float32,
      epsilon=epsilon,
  )
