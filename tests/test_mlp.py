"""Tests for vit22b_pax.layers.mlp."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from praxis import base_layer
from praxis import pax_fiddle

import layer_reference as ref
from vit22b_pax.layers import mlp


class MlpTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('bias_tanh_gelu', True, True, ['b_in', 'b_out', 'w_in', 'w_out']),
      ('no_bias_exact_gelu', False, False, ['w_in', 'w_out']),
  )
  def test_matches_reference(self, use_bias, approximate, names):
    p = pax_fiddle.Config(
        mlp.Mlp, name='mlp', input_dims=6, hidden_dims=10, use_bias=use_bias)
    p.activation_tpl.approximate = approximate
    layer = base_layer.instantiate(p)
    x = np.random.RandomState(0).randn(2, 3, 6).astype(np.float32)
    variables = ref.perturb(ref.init(layer, x), seed=1)
    self.assertEqual(sorted(variables['params']), names)
    out = ref.apply(layer, variables, x)
    expected = ref.mlp(ref.to_np(variables['params']), x.astype(np.float64),
                       use_bias, approximate)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


if __name__ == '__main__':
  absltest.main()
