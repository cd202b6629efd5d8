"""Tests for vit22b_pax.layers.norms (the praxis norm templates)."""

from absl.testing import absltest
from absl.testing import parameterized
from jax import numpy as jnp
import numpy as np
from praxis import base_layer
from praxis.layers import normalizations

import layer_reference as ref
from vit22b_pax.layers import norms


def _layer(tpl, dim=8, **kwargs):
  return base_layer.instantiate(tpl.set(name='norm', dim=dim, **kwargs))


class NormTemplateTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('layernorm_no_bias', norms.layer_norm(epsilon=1e-3), True, ['scale']),
      ('layernorm_bias', norms.layer_norm(use_bias=True, epsilon=1e-3), True,
       ['bias', 'scale']),
      ('rmsnorm', norms.rms_norm(epsilon=1e-3), False, ['scale']),
  )
  def test_matches_reference(self, tpl, centering, names):
    layer = _layer(tpl)
    # A non-zero mean makes centering matter.
    x = np.random.RandomState(0).randn(3, 5, 8).astype(np.float32) + 2.0
    variables = ref.init(layer, x)
    self.assertEqual(sorted(variables['params']), names)
    # The scale is stored directly: 1.0 at init, multiplied as is.
    np.testing.assert_array_equal(variables['params']['scale'], np.ones(8))
    variables = ref.perturb(variables, seed=1)
    out = ref.apply(layer, variables, x)
    p_np = ref.to_np(variables['params'])
    expected = ref.layer_norm(
        x.astype(np.float64), p_np['scale'], p_np.get('bias'), centering, 1e-3
    )
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)

  def test_vit22b_defaults(self):
    ln = norms.layer_norm()
    self.assertIs(ln.cls, normalizations.LayerNorm)
    self.assertEqual(
        (ln.direct_scale, ln.use_bias, ln.reductions_in_fp32, ln.epsilon),
        (True, False, True, 1e-6),
    )

  def test_rms_differs_from_layernorm_on_shifted_input(self):
    x = np.random.RandomState(2).randn(4, 8).astype(np.float32) + 2.0
    outs = []
    for tpl in (norms.layer_norm(), norms.rms_norm()):
      layer = _layer(tpl)
      outs.append(ref.apply(layer, ref.init(layer, x), x))
    self.assertGreater(np.max(np.abs(outs[0] - outs[1])), 0.5)

  @parameterized.named_parameters(
      ('layernorm', norms.layer_norm(), True),
      ('rmsnorm', norms.rms_norm(), False),
  )
  def test_bfloat16_inputs_get_float32_statistics(self, tpl, centering):
    # Activations with a large mean (100) in bfloat16: the output must be the
    # exact norm of the bfloat16 inputs up to the output's own bfloat16
    # rounding (2^-8 relative).
    x = np.random.RandomState(3).randn(4, 256).astype(np.float32) + 100.0
    xb = jnp.asarray(x, jnp.bfloat16)
    want = ref.layer_norm(np.asarray(xb, np.float64), 1.0, None, centering)
    bound = 2**-8 * np.max(np.abs(want))

    def error(p):
      layer = _layer(p, dim=256, fprop_dtype=jnp.bfloat16)
      out = ref.apply(layer, ref.init(layer, xb), xb)
      self.assertEqual(out.dtype, jnp.bfloat16)
      return np.max(np.abs(np.asarray(out, np.float64) - want))

    self.assertLess(error(tpl.clone()), bound)
    if centering:
      # The same LayerNorm with bfloat16 statistics misses the bound (by
      # 2.9x here): the check above can tell.
      self.assertGreater(
          error(tpl.clone().set(reductions_in_fp32=False)), 2 * bound
      )


if __name__ == '__main__':
  absltest.main()
