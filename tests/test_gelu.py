"""Tests for vit22b_pax.layers.gelu."""

import math

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import numpy as jnp
import numpy as np
from praxis import base_layer
from praxis import pax_fiddle
from praxis.layers import activations

from vit22b_pax.layers import block_base
from vit22b_pax.layers import gelu
from vit22b_pax.layers import mlp

instantiate = base_layer.instantiate


def _points():
  # Both tails (where tanh saturates), the origin and everything between.
  x = np.concatenate([np.linspace(-9.0, 9.0, 1001), [0.0, -1e-3, 1e-3]])
  return x.astype(np.float32)


def _derivative_float64(x):
  """d/dx of x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), by hand."""
  x = x.astype(np.float64)
  c = math.sqrt(2.0 / math.pi)
  t = np.tanh(c * (x + 0.044715 * x**3))
  return 0.5 * (1 + t) + 0.5 * x * (1 - t**2) * c * (1 + 3 * 0.044715 * x**2)


def _apply(layer_p, x):
  layer = instantiate(layer_p.clone().set(name='act'))
  with base_layer.JaxContext.new_context():
    return layer.apply({}, x)


class GeluTest(parameterized.TestCase):

  def test_forward_is_jax_gelu_bitwise(self):
    x = jnp.asarray(_points())
    np.testing.assert_array_equal(
        gelu.gelu_tanh(x), jax.nn.gelu(x, approximate=True)
    )

  def test_derivative_matches_closed_form(self):
    x = _points()
    got = jax.vmap(jax.grad(gelu.gelu_tanh))(jnp.asarray(x))
    # float32: 1 - t^2 loses digits where tanh saturates (as jax's does).
    np.testing.assert_allclose(got, _derivative_float64(x), atol=5e-6)

  def test_derivative_matches_jax(self):
    x = jnp.asarray(_points())
    cotangent = jnp.asarray(np.random.RandomState(0).randn(x.size), x.dtype)
    ours = jax.vjp(gelu.gelu_tanh, x)[1](cotangent)[0]
    theirs = jax.vjp(lambda v: jax.nn.gelu(v, approximate=True), x)[1](
        cotangent
    )[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)

  @parameterized.parameters(True, False)
  def test_layer_equals_praxis_gelu(self, approximate):
    x = jnp.asarray(_points())
    ours = pax_fiddle.Config(gelu.GELU, approximate=approximate)
    praxis_p = pax_fiddle.Config(activations.GELU, approximate=approximate)
    np.testing.assert_array_equal(_apply(ours, x), _apply(praxis_p, x))
    if not approximate:  # The erf form is praxis' own, derivative included.
      grad = jax.grad(lambda v: jnp.sum(_apply(ours, v)))(x)
      expected = jax.grad(lambda v: jnp.sum(_apply(praxis_p, v)))(x)
      np.testing.assert_array_equal(grad, expected)

  def test_is_the_default_activation(self):
    for cls in (block_base.BlockOptions, mlp.Mlp):
      self.assertIs(pax_fiddle.Config(cls).activation_tpl.cls, gelu.GELU)


if __name__ == '__main__':
  absltest.main()
