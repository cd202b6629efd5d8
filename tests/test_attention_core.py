"""Tests for vit22b_pax.layers.attention_core."""

import math

from absl.testing import absltest
from absl.testing import parameterized
from jax import numpy as jnp
import numpy as np
from praxis import base_layer
from praxis import pax_fiddle
from praxis.layers import attentions

import layer_reference as ref
from vit22b_pax.layers import attention_core


def core(**kwargs):
  return base_layer.instantiate(pax_fiddle.Config(
      attention_core.AttentionCore, name='core', dim_per_head=4, **kwargs))


def qkv(b=2, t=3, s=5, n=2, h=4, seed=0):
  rng = np.random.RandomState(seed)
  return (rng.randn(b, t, n, h).astype(np.float32),
          rng.randn(b, s, n, h).astype(np.float32),
          rng.randn(b, s, n, h).astype(np.float32))


class AttentionCoreTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('qk_layernorm', 'layernorm'), ('qk_rmsnorm', 'rmsnorm'), ('plain', None)
  )
  def test_matches_reference_with_padding_mask(self, qk_norm):
    use_qk_norm = qk_norm is not None
    layer = core(
        use_qk_norm=use_qk_norm,
        qk_norm_tpl=ref.norm_tpl(qk_norm == 'layernorm', False, 1e-6),
    )
    q, k, v = qkv()
    paddings = np.zeros((2, 5), np.float32)
    paddings[0, 3:] = 1.0
    mask = attentions.convert_paddings_to_mask(jnp.asarray(paddings))
    variables = ref.init(layer, q, k, v, mask)
    if use_qk_norm:
      variables = ref.perturb(variables, seed=1)
    (context, probs) = ref.apply(layer, variables, q, k, v, mask)
    norms = [None, None]
    if use_qk_norm:
      p = ref.to_np(variables['params'])
      centering = qk_norm == 'layernorm'
      norms = [lambda x, n=n: ref.layer_norm(x, p[n]['scale'], None,
                                             centering)
               for n in ('q_norm', 'k_norm')]
    expected, _ = ref.attention(
        q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
        paddings, *norms)
    np.testing.assert_allclose(context, expected, atol=1e-5, rtol=1e-5)
    self.assertEqual(float(jnp.max(probs[0, :, :, 3:])), 0.0)
    np.testing.assert_allclose(jnp.sum(probs, -1), 1.0, atol=1e-6)

  def test_logits_are_scaled_by_rsqrt_head_dim(self):
    layer = core(use_qk_norm=False)
    q, k, _ = qkv()
    logits = ref.apply(layer, {}, q, k, method=layer.logits)
    expected = np.einsum('btnh,bsnh->bnts', q, k) / math.sqrt(4)
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)

  def test_rejects_bad_mask_shape(self):
    layer = core(use_qk_norm=False)
    q, k, v = qkv()
    with self.assertRaisesRegex(ValueError, 'attention_mask must have shape'):
      ref.init(layer, q, k, v, jnp.zeros((2, 5)))

  def _diagnostics(self, layer, q, k, v, mask):
    variables = {'params': ref.init(layer, q, k, v, mask).get('params', {})}
    with base_layer.JaxContext.new_context():
      _, updated = layer.apply(variables, q, k, v, mask, mutable=['summaries'])
    summaries = updated.get('summaries', {})
    return {name: float(value) for name, value in summaries.items()}

  def test_no_diagnostics_unless_asked(self):
    q, k, v = qkv()
    self.assertEqual(self._diagnostics(core(use_qk_norm=False), q, k, v, None),
                     {})

  @parameterized.named_parameters(('qk_norm', True), ('plain', False))
  def test_diagnostics_match_reference(self, use_qk_norm):
    layer = core(use_qk_norm=use_qk_norm, diagnostics=True)
    q, k, v = qkv(b=2, t=3, s=5, seed=2)
    paddings = np.zeros((2, 5), np.float32)
    paddings[1, 3:] = 1.0
    # Padded keys get the largest plain logits: the maximum must skip them.
    k[1, 3:] = 4.0 * np.abs(q[1]).max() * np.sign(q[1, 0])
    mask = attentions.convert_paddings_to_mask(jnp.asarray(paddings))
    norm = None
    if use_qk_norm:
      norm = lambda x: ref.layer_norm(x, np.ones(4))
    _, logits = ref.attention(
        q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
        paddings, norm, norm,
    )
    padded = paddings[:, None, None, :] > 0.5
    probs = ref.softmax(np.where(padded, -np.inf, logits))
    terms = np.where(probs > 0, -probs * np.log(np.where(probs > 0, probs, 1)),
                     0.0)
    expected = {
        'max_logit_scalar': np.where(padded, -np.inf, logits).max(),
        'entropy_scalar': terms.sum(-1).mean(),  # nats, mean over B, N, T
    }
    got = self._diagnostics(layer, q, k, v, mask)
    self.assertEqual(set(got), set(expected))
    for name, value in expected.items():
      self.assertAlmostEqual(got[name], value, delta=1e-5 * max(1, abs(value)),
                             msg=name)
    if not use_qk_norm:  # (QK-normed logits are bounded by sqrt(H) = 2.)
      # The padded keys would have raised the maximum.
      self.assertGreater(logits.max(), expected['max_logit_scalar'] + 1.0)

  def test_qk_norm_scale_is_shared_across_heads(self):
    layer = core()
    q, k, v = qkv(n=3)
    params = ref.init(layer, q, k, v, None)['params']
    self.assertEqual(ref.flat_shapes(params),
                     {'q_norm/scale': (4,), 'k_norm/scale': (4,)})


if __name__ == '__main__':
  absltest.main()
