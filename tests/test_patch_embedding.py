"""Tests for vit22b_pax.layers.patch_embedding."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import numpy as jnp
import numpy as np
from praxis import base_layer
from praxis import pax_fiddle

import layer_reference as ref
from vit22b_pax.layers import patch_embedding

instantiate = base_layer.instantiate


def embed_config(image_size=28, patch_size=7, model_dims=8):
  return pax_fiddle.Config(
      patch_embedding.PatchEmbedding,
      name='patch_embed',
      image_size=image_size,
      patch_size=patch_size,
      model_dims=model_dims,
  )


def ramp_table(n, d, seed=0):
  """[n*n, d] table, each column a linear function of (row, col) / (n - 1)."""
  rng = np.random.RandomState(seed)
  a, b, c = rng.randn(3, d)
  r, s = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n),
                     indexing='ij')
  return (r[..., None] * a + s[..., None] * b + c).reshape(n * n, d), (a, b, c)


class PatchEmbeddingTest(parameterized.TestCase):

  def test_matches_per_patch_reference(self):
    layer = instantiate(embed_config())
    images = np.random.RandomState(0).uniform(-1, 1, (2, 28, 28, 3))
    images = images.astype(np.float32)
    variables = ref.perturb(ref.init(layer, images), seed=1)
    out = ref.apply(layer, variables, images)
    self.assertEqual(out.shape, (2, 16, 8))
    p = ref.to_np(variables['params'])
    expected = np.zeros((2, 16, 8))
    for i in range(4):
      for j in range(4):
        patch = images[:, 7 * i : 7 * i + 7, 7 * j : 7 * j + 7, :]
        token = 4 * i + j  # Row-major over the patch grid.
        expected[:, token] = (
            patch.reshape(2, -1) @ p['w'].reshape(-1, 8)
            + p['b'] + p['pos_emb'][token]
        )
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)

  def test_vit22b_geometry(self):
    layer = instantiate(embed_config(224, 14, 8))
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    shapes = jax.eval_shape(
        lambda x: layer.init(jax.random.PRNGKey(0), x), images
    )['params']
    self.assertEqual(shapes['pos_emb'].shape, (256, 8))
    self.assertEqual(shapes['w'].shape, (14, 14, 3, 8))

  def test_higher_resolution_resamples_table(self):
    # 224 -> 448 px at patch 14: grid 16 -> 32, 1024 tokens; the layer's
    # on-the-fly table equals resample_pos_emb of the stored one.
    layer = instantiate(embed_config(224, 14, 8))
    small = np.zeros((1, 224, 224, 3), np.float32)
    variables = ref.perturb(ref.init(layer, small), seed=2)
    big = np.random.RandomState(3).uniform(-1, 1, (1, 448, 448, 3))
    big = big.astype(np.float32)
    out = ref.apply(layer, variables, big)
    self.assertEqual(out.shape, (1, 1024, 8))
    table = patch_embedding.resample_pos_emb(
        variables['params']['pos_emb'], 32
    )
    self.assertEqual(table.shape, (1024, 8))
    no_pos = out - table[None]
    # What remains is the patch projection of the first 14x14 patch + bias.
    p = ref.to_np(variables['params'])
    first = big[0, :14, :14].reshape(-1) @ p['w'].reshape(-1, 8) + p['b']
    np.testing.assert_allclose(no_pos[0, 0], first, atol=1e-5, rtol=1e-5)

  def test_resample_identity_on_same_grid(self):
    table = np.random.RandomState(4).randn(16, 5).astype(np.float32)
    np.testing.assert_allclose(
        patch_embedding.resample_pos_emb(jnp.asarray(table), 4), table,
        atol=1e-6,
    )

  @parameterized.named_parameters(
      ('upsample_16_to_32', 16, 32),
      ('downsample_16_to_7', 16, 7),
      ('upsample_3_to_5', 3, 5),
  )
  def test_resample_exact_on_linear_ramp(self, n, m):
    table, _ = ramp_table(n, 6)
    out = patch_embedding.resample_pos_emb(
        jnp.asarray(table, jnp.float32), m
    )
    expected, _ = ramp_table(m, 6)
    self.assertEqual(out.shape, (m * m, 6))
    np.testing.assert_allclose(out, expected, atol=1e-5)

  def test_resample_rejects_non_square_table(self):
    with self.assertRaisesRegex(ValueError, 'not a square'):
      patch_embedding.resample_pos_emb(jnp.zeros((15, 4)), 4)

  def test_rejects_image_size_not_multiple_of_patch(self):
    layer = instantiate(embed_config(image_size=30, patch_size=7))
    with self.assertRaisesRegex(ValueError, 'image_size.*patch_size'):
      ref.init(layer, np.zeros((1, 28, 28, 3), np.float32))

  def test_rejects_input_not_multiple_of_patch(self):
    layer = instantiate(embed_config())
    with self.assertRaisesRegex(ValueError, 'patch_size'):
      ref.init(layer, np.zeros((1, 30, 28, 3), np.float32))

  def test_rejects_wrong_channels(self):
    layer = instantiate(embed_config())
    with self.assertRaisesRegex(ValueError, 'input_channels'):
      ref.init(layer, np.zeros((1, 28, 28, 1), np.float32))


if __name__ == '__main__':
  absltest.main()
