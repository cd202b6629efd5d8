"""Tests for vit22b_pax.flops: the paper's FLOP/MFU convention, param counts."""

import collections
import math

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import numpy as jnp
from praxis import base_hyperparams
from praxis import base_layer
from praxis import pax_fiddle
from praxis.layers import transformers

from vit22b_pax import flops

# ViT-22B (docs/recipe.md, the paper's Table 1): D 6144, L 48, F 24576,
# 224 px, patch 14 -> T 256.
D, L, F, T = 6144, 48, 24576, 256

Size = collections.namedtuple(
    'Size', 'model_dims num_layers hidden_dims patch_size image_size'
)


class PaperFlopsTest(absltest.TestCase):

  def test_vit22b_block_params_match_paper_table(self):
    # The paper's table: 21,743M; L (4 D^2 + 2 D F) gives the exact integer.
    self.assertEqual(flops.block_matrix_params(D, F, L), 21_743_271_936)

  def test_vit22b_flops_per_token(self):
    # By hand: 6 FLOPs per block-matrix parameter + non-causal attention.
    expected = 6 * 48 * (4 * 6144**2 + 2 * 6144 * 24576) + 12 * 48 * 256 * 6144
    got = flops.train_flops_per_token(
        flops.block_matrix_params(D, F, L), L, T, D
    )
    self.assertEqual(got, expected)
    self.assertIsInstance(got, int)
    # docs/recipe.md: 131.37 GFLOP per token.
    self.assertAlmostEqual(got / 1e9, 131.37, delta=0.005)
    self.assertEqual(
        flops.train_flops_per_image(flops.block_matrix_params(D, F, L), L, T,
                                    D),
        256 * expected,
    )
    size = Size(D, L, F, 14, 224)
    self.assertEqual(flops.size_train_flops_per_token(size), expected)

  def test_vit22b_mfu(self):
    per_token = flops.train_flops_per_token(
        flops.block_matrix_params(D, F, L), L, T, D
    )
    got = flops.mfu(1150, per_token, 275e12)
    self.assertAlmostEqual(got, 1150 * per_token / 275e12, places=12)
    # The paper's 54.9%.
    self.assertAlmostEqual(got, 0.549, delta=0.0005)
    # Halving attention FLOPs (a causal-LM habit) would not reproduce it.
    halved = per_token - 6 * 48 * 256 * 6144
    self.assertGreater(abs(flops.mfu(1150, halved, 275e12) - 0.549), 0.0005)
    self.assertEqual(flops.mfu(1150, per_token), got)  # TPUv4 default peak.

  def test_num_tokens(self):
    self.assertEqual(flops.num_tokens(224, 14), 256)
    with self.assertRaisesRegex(ValueError, 'patch_size'):
      flops.num_tokens(224, 15)


def _sds(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


class ParamCountTest(parameterized.TestCase):

  def test_hand_built_tree(self):
    # A ViT-22B-like parallel block laid out as vit22b_pax.layers does:
    # fused w_in [D, N, 3H + F/N], a rank-2 MLP-in bias [N, F/N], fused w_out
    # [N, H + F/N, D], bias [D], LN scale [D], QK-norm scales [H].
    d, n, h, f, l, c, p = 24, 3, 8, 36, 2, 5, 4
    fn = f // n

    def block(*prefix):
      return {
          'w_in': _sds(*prefix, d, n, 3 * h + fn),
          'b_in': _sds(*prefix, n, fn),
          'w_out': _sds(*prefix, n, h + fn, d),
          'b_out': _sds(*prefix, d),
          'ln': {'scale': _sds(*prefix, d)},
          'attention': {
              'q_norm': {'scale': _sds(*prefix, h)},
              'k_norm': {'scale': _sds(*prefix, h)},
          },
      }

    rest = {
        'patch_embed': {'w': _sds(p * p * 3, d), 'pos_emb': _sds(9, d)},
        'final_ln': {'scale': _sds(d)},
        'map_head': {'probe': _sds(1, d), 'w_q': _sds(d, n, h)},
        'head': {'w': _sds(d, c), 'b': _sds(c)},
    }
    per_block = (
        d * n * (3 * h + fn) + n * fn + n * (h + fn) * d + d + d + 2 * h
    )
    matrices = l * (4 * d * d + 2 * d * f)
    unstacked = {'params': dict(
        encoder={f'x_layers_{i}': block() for i in range(l)}, **rest)}
    stacked = {'params': dict(
        encoder={'repeat': {'sub': {'x_layers_0': block(l)}}}, **rest)}
    for tree in (unstacked, stacked):
      counts = flops.count_params(tree)
      self.assertEqual(counts['encoder'], l * per_block)
      self.assertEqual(counts['patch_embed'], p * p * 3 * d + 9 * d)
      self.assertEqual(counts['final_ln'], d)
      self.assertEqual(counts['map_head'], d + d * n * h)
      self.assertEqual(counts['head'], d * c + c)
      self.assertEqual(
          counts['total'],
          sum(v for k, v in counts.items() if k != 'total'),
      )
      # Paper count: the rank-2 bias [N, F/N] and stacked vectors excluded.
      self.assertEqual(flops.paper_param_count(tree), matrices)

  @parameterized.named_parameters(('unstacked', False), ('stacked', True))
  def test_praxis_stacked_transformer(self, repeated):
    # praxis' own layer: separate q/k/v/post [D, N, H] with [N, H] biases.
    d, f, l, n = 16, 40, 3, 4
    p = pax_fiddle.Config(
        transformers.StackedTransformer, name='encoder', model_dims=d,
        hidden_dims=f, num_heads=n, num_layers=l,
    )
    if repeated:
      p.num_layers = 1
      p = pax_fiddle.Config(
          transformers.StackedTransformerRepeated, name='encoder', block=p,
          x_times=l,
      )
    layer = base_hyperparams.instantiate(p)
    x, pad = jnp.zeros((1, 3, d)), jnp.zeros((1, 3))
    shapes = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x, pad)
    tree = {'params': {'encoder': shapes['params']}}
    self.assertEqual(flops.paper_param_count(tree), l * (4 * d * d + 2 * d * f))
    total = sum(
        math.prod(a.shape) for a in jax.tree_util.tree_leaves(shapes)
    )
    self.assertEqual(flops.count_params(tree)['encoder'], total)
    # WeightHParams trees (repeat_prefix instead of a path rule) agree.
    hparams = layer.abstract_init_with_metadata(x, pad)
    wtree = {'params': {'encoder': hparams['params']}}
    self.assertIsInstance(
        jax.tree_util.tree_leaves(wtree)[0], base_layer.WeightHParams
    )
    self.assertEqual(flops.paper_param_count(wtree),
                     l * (4 * d * d + 2 * d * f))
    self.assertEqual(flops.count_params(wtree)['total'], total)


if __name__ == '__main__':
  absltest.main()
