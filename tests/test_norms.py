"""Tests for vit22b_pax.layers.norms."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from praxis import base_layer
from praxis import pax_fiddle

import layer_reference as ref
from vit22b_pax.layers import norms


class LayerNormTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('layernorm_no_bias', True, False, ['scale']),
      ('layernorm_bias', True, True, ['bias', 'scale']),
      ('rmsnorm_no_bias', False, False, ['scale']),
  )
  def test_matches_reference(self, centering, use_bias, names):
    p = pax_fiddle.Config(
        norms.LayerNorm, name='ln', dim=8, use_bias=use_bias,
        use_centering=centering, epsilon=1e-3,
    )
    layer = base_layer.instantiate(p)
    # A non-zero mean makes centering matter.
    x = np.random.RandomState(0).randn(3, 5, 8).astype(np.float32) + 2.0
    variables = ref.init(layer, x)
    self.assertEqual(sorted(variables['params']), names)
    np.testing.assert_array_equal(variables['params']['scale'], np.ones(8))
    variables = ref.perturb(variables, seed=1)
    out = ref.apply(layer, variables, x)
    p_np = ref.to_np(variables['params'])
    expected = ref.layer_norm(
        x.astype(np.float64), p_np['scale'], p_np.get('bias'), centering, 1e-3
    )
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)

  def test_rms_differs_from_layernorm_on_shifted_input(self):
    x = np.random.RandomState(2).randn(4, 8).astype(np.float32) + 2.0
    outs = []
    for centering in (True, False):
      layer = base_layer.instantiate(pax_fiddle.Config(
          norms.LayerNorm, name='ln', dim=8, use_centering=centering))
      outs.append(ref.apply(layer, ref.init(layer, x), x))
    self.assertGreater(np.max(np.abs(outs[0] - outs[1])), 0.5)


if __name__ == '__main__':
  absltest.main()
