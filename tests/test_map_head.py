"""Tests for vit22b_pax.layers.map_head."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import numpy as jnp
import numpy as np
from praxis import base_layer

import layer_reference as ref
from vit22b_pax.layers import map_head

instantiate = base_layer.instantiate
head_config = functools.partial(ref.block_config, map_head.MAPHead)


class ProjectedValuesMAPHead(map_head.MAPHead):
  """MAPHead with the values projected per token, then attended.

  The textbook order of the head's value path, for comparison with
  MAPHead's pool-then-project (same variables, same dropout draws).
  """

  def __call__(self, inputs, paddings=None):
    h = self.head_dim
    probe = jnp.broadcast_to(
        self.theta.probe[jnp.newaxis], (inputs.shape[0], 1, self.input_dims)
    )
    q = jnp.einsum('BTD,DNH->BTNH', probe, self.theta.w_q)
    kv = jnp.einsum('BSD,DNK->BSNK', inputs, self.theta.w_kv)
    if self.use_qkv_bias:
      q = q + self.theta.b_q.reshape(self.num_heads, h)
      kv = kv + self.theta.b_kv.reshape(self.num_heads, 2 * h)
    mask = map_head.attention_core.mask_from_paddings(inputs, paddings)
    context, _ = self.attention(q, kv[..., :h], kv[..., h:], mask)
    x = jnp.einsum('BTNH,NHD->BTD', context, self.theta.w_atten_out)
    if self.use_qkv_bias:
      x = x + self.theta.b_atten_out
    x = x + self.mlp(self.ln(x))
    return x[:, 0]


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

  @parameterized.parameters(0.0, 0.5)
  def test_pooled_values_equal_projected_values(self, dropout):
    # With dropout the kept probabilities no longer sum to 1: the value
    # bias then enters with their sum, which a wrong bias term fails.
    p, _ = head_config(use_qkv_bias=True)
    p.attention_tpl.atten_dropout_prob = dropout
    x, paddings = ref.inputs_and_paddings(b=4, t=9)
    layer = instantiate(p)
    variables = ref.perturb(ref.init(layer, x, paddings), seed=6)
    reference = instantiate(p.clone().set(cls=ProjectedValuesMAPHead))
    rngs = {'random': jax.random.PRNGKey(8)}
    train_ctx = base_layer.JaxContext.HParams(do_eval=False)
    outs = []
    for head in (layer, reference):
      with base_layer.JaxContext.new_context(hparams=train_ctx):
        outs.append(head.apply(variables, x, paddings, rngs=rngs))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    if dropout:
      with base_layer.JaxContext.new_context(hparams=train_ctx):
        other = layer.apply(
            variables, x, paddings, rngs={'random': jax.random.PRNGKey(9)}
        )
      self.assertGreater(float(jnp.max(jnp.abs(other - outs[0]))), 1e-3)

  def test_rejects_wrong_width(self):
    p, _ = head_config()
    layer = instantiate(p)
    x, _ = ref.inputs_and_paddings(d=12)
    with self.assertRaisesRegex(ValueError, 'MAPHead expects inputs'):
      ref.init(layer, x)


if __name__ == '__main__':
  absltest.main()
