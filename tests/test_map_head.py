"""Tests for vit22b_pax.layers.map_head."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from praxis import base_layer

import layer_reference as ref
from vit22b_pax.layers import map_head

instantiate = base_layer.instantiate
head_config = functools.partial(ref.block_config, map_head.MAPHead)


class MAPHeadTest(parameterized.TestCase):

  @parameterized.named_parameters(*ref.FLAG_CASES)
  def test_matches_reference(self, overrides):
    p, flags = head_config(**overrides)
    layer = instantiate(p)
    x, paddings = ref.inputs_and_paddings(t=7)
    variables = ref.perturb(ref.init(layer, x, paddings), seed=2)
    out = ref.apply(layer, variables, x, paddings)
    self.assertEqual(out.shape, (2, 16))
    expected = ref.map_head(
        ref.to_np(variables['params']), x.astype(np.float64), flags, paddings
    )
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)

  def test_invariant_to_token_permutation(self):
    p, _ = head_config()
    layer = instantiate(p)
    x, _ = ref.inputs_and_paddings(t=9)
    variables = ref.perturb(ref.init(layer, x), seed=3)
    out = ref.apply(layer, variables, x)
    perm = np.random.RandomState(4).permutation(9)
    self.assertFalse(np.array_equal(perm, np.arange(9)))
    permuted = ref.apply(layer, variables, x[:, perm])
    np.testing.assert_allclose(permuted, out, atol=1e-5, rtol=1e-5)
    # Sanity: the output does depend on the token values.
    other = ref.apply(layer, variables, x[::-1])
    self.assertGreater(np.max(np.abs(np.asarray(other) - out)), 1e-3)

  def test_padded_tokens_are_ignored(self):
    p, _ = head_config()
    layer = instantiate(p)
    x, paddings = ref.inputs_and_paddings(t=7)
    variables = ref.perturb(ref.init(layer, x, paddings), seed=5)
    out = ref.apply(layer, variables, x, paddings)
    truncated = ref.apply(layer, variables, x[1:, :-2])
    np.testing.assert_allclose(out[1:], truncated, atol=1e-5, rtol=1e-5)

  def test_variable_tree(self):
    p, _ = head_config()
    layer = instantiate(p)
    x, _ = ref.inputs_and_paddings()
    params = ref.init(layer, x)['params']
    self.assertEqual(
        ref.flat_shapes(params),
        {
            'probe': (1, 16),
            'w_q': (16, 4, 4),
            'w_kv': (16, 4, 8),
            'w_atten_out': (4, 4, 16),
            'attention/q_norm/scale': (4,),
            'attention/k_norm/scale': (4,),
            'ln/scale': (16,),
            'mlp/w_in': (16, 64),
            'mlp/b_in': (64,),
            'mlp/w_out': (64, 16),
            'mlp/b_out': (16,),
        },
    )

  def test_rejects_wrong_width(self):
    p, _ = head_config()
    layer = instantiate(p)
    x, _ = ref.inputs_and_paddings(d=12)
    with self.assertRaisesRegex(ValueError, 'MAPHead expects inputs'):
      ref.init(layer, x)


if __name__ == '__main__':
  absltest.main()
