"""Checkpoint layout: the variable trees of the layers and the classifier.

The expected trees are literal data, written down from the layers as they
were before the norms became praxis templates (main at 2ab0786), so that a
checkpoint written then still restores: same paths, same shapes, norm
'scale' stored directly (initialized to 1.0), no norm 'bias' unless asked.
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import numpy as jnp
import numpy as np
from praxis import base_layer
from praxis import pax_fiddle
from praxis import py_utils

import layer_reference as ref
from vit22b_pax import models
from vit22b_pax.layers import map_head
from vit22b_pax.layers import parallel_block
from vit22b_pax.layers import sequential_block

# Layers at ref.block_config's sizes: D 16, F 64, N 4, H 4.
PARALLEL = {
    'params/attention/k_norm/scale': (4,),
    'params/attention/q_norm/scale': (4,),
    'params/b_in': (64,),
    'params/b_out': (16,),
    'params/ln/scale': (16,),
    'params/w_in': (16, 4, 28),
    'params/w_out': (4, 20, 16),
}
PARALLEL_BIASES = {
    'params/attention/k_norm/bias': (4,),
    'params/attention/k_norm/scale': (4,),
    'params/attention/q_norm/bias': (4,),
    'params/attention/q_norm/scale': (4,),
    'params/b_in': (112,),
    'params/b_out': (16,),
    'params/ln/bias': (16,),
    'params/ln/scale': (16,),
    'params/w_in': (16, 4, 28),
    'params/w_out': (4, 20, 16),
}
SEQUENTIAL = {
    'params/attention/k_norm/scale': (4,),
    'params/attention/q_norm/scale': (4,),
    'params/ln_atten/scale': (16,),
    'params/ln_mlp/scale': (16,),
    'params/mlp/b_in': (64,),
    'params/mlp/b_out': (16,),
    'params/mlp/w_in': (16, 64),
    'params/mlp/w_out': (64, 16),
    'params/w_atten_out': (4, 4, 16),
    'params/w_qkv': (16, 4, 12),
}
SEQUENTIAL_BIASES = {
    'params/attention/k_norm/bias': (4,),
    'params/attention/k_norm/scale': (4,),
    'params/attention/q_norm/bias': (4,),
    'params/attention/q_norm/scale': (4,),
    'params/b_atten_out': (16,),
    'params/b_qkv': (48,),
    'params/ln_atten/bias': (16,),
    'params/ln_atten/scale': (16,),
    'params/ln_mlp/bias': (16,),
    'params/ln_mlp/scale': (16,),
    'params/mlp/b_in': (64,),
    'params/mlp/b_out': (16,),
    'params/mlp/w_in': (16, 64),
    'params/mlp/w_out': (64, 16),
    'params/w_atten_out': (4, 4, 16),
    'params/w_qkv': (16, 4, 12),
}
MAP_HEAD = {
    'params/attention/k_norm/scale': (4,),
    'params/attention/q_norm/scale': (4,),
    'params/ln/scale': (16,),
    'params/mlp/b_in': (64,),
    'params/mlp/b_out': (16,),
    'params/mlp/w_in': (16, 64),
    'params/mlp/w_out': (64, 16),
    'params/probe': (1, 16),
    'params/w_atten_out': (4, 4, 16),
    'params/w_kv': (16, 4, 8),
    'params/w_q': (16, 4, 4),
}
MAP_HEAD_BIASES = {
    'params/attention/k_norm/bias': (4,),
    'params/attention/k_norm/scale': (4,),
    'params/attention/q_norm/bias': (4,),
    'params/attention/q_norm/scale': (4,),
    'params/b_atten_out': (16,),
    'params/b_kv': (32,),
    'params/b_q': (16,),
    'params/ln/bias': (16,),
    'params/ln/scale': (16,),
    'params/mlp/b_in': (64,),
    'params/mlp/b_out': (16,),
    'params/mlp/w_in': (16, 64),
    'params/mlp/w_out': (64, 16),
    'params/probe': (1, 16),
    'params/w_atten_out': (4, 4, 16),
    'params/w_kv': (16, 4, 8),
    'params/w_q': (16, 4, 4),
}
# models.classifier_config(PRESETS['tiny'], 10): D 32, L 2, F 64, N 2, H 16.
CLASSIFIER_PARALLEL = {
    'params/encoder/x_layers_0/attention/k_norm/scale': (16,),
    'params/encoder/x_layers_0/attention/q_norm/scale': (16,),
    'params/encoder/x_layers_0/b_in': (64,),
    'params/encoder/x_layers_0/b_out': (32,),
    'params/encoder/x_layers_0/ln/scale': (32,),
    'params/encoder/x_layers_0/w_in': (32, 2, 80),
    'params/encoder/x_layers_0/w_out': (2, 48, 32),
    'params/encoder/x_layers_1/attention/k_norm/scale': (16,),
    'params/encoder/x_layers_1/attention/q_norm/scale': (16,),
    'params/encoder/x_layers_1/b_in': (64,),
    'params/encoder/x_layers_1/b_out': (32,),
    'params/encoder/x_layers_1/ln/scale': (32,),
    'params/encoder/x_layers_1/w_in': (32, 2, 80),
    'params/encoder/x_layers_1/w_out': (2, 48, 32),
    'params/final_ln/scale': (32,),
    'params/head/b': (10,),
    'params/head/w': (32, 10),
    'params/map_head/attention/k_norm/scale': (16,),
    'params/map_head/attention/q_norm/scale': (16,),
    'params/map_head/ln/scale': (32,),
    'params/map_head/mlp/b_in': (64,),
    'params/map_head/mlp/b_out': (32,),
    'params/map_head/mlp/w_in': (32, 64),
    'params/map_head/mlp/w_out': (64, 32),
    'params/map_head/probe': (1, 32),
    'params/map_head/w_atten_out': (2, 16, 32),
    'params/map_head/w_kv': (32, 2, 32),
    'params/map_head/w_q': (32, 2, 16),
    'params/patch_embed/b': (32,),
    'params/patch_embed/pos_emb': (16, 32),
    'params/patch_embed/w': (4, 4, 3, 32),
}
CLASSIFIER_SEQUENTIAL = {
    'params/encoder/x_layers_0/attention/k_norm/scale': (16,),
    'params/encoder/x_layers_0/attention/q_norm/scale': (16,),
    'params/encoder/x_layers_0/ln_atten/scale': (32,),
    'params/encoder/x_layers_0/ln_mlp/scale': (32,),
    'params/encoder/x_layers_0/mlp/b_in': (64,),
    'params/encoder/x_layers_0/mlp/b_out': (32,),
    'params/encoder/x_layers_0/mlp/w_in': (32, 64),
    'params/encoder/x_layers_0/mlp/w_out': (64, 32),
    'params/encoder/x_layers_0/w_atten_out': (2, 16, 32),
    'params/encoder/x_layers_0/w_qkv': (32, 2, 48),
    'params/encoder/x_layers_1/attention/k_norm/scale': (16,),
    'params/encoder/x_layers_1/attention/q_norm/scale': (16,),
    'params/encoder/x_layers_1/ln_atten/scale': (32,),
    'params/encoder/x_layers_1/ln_mlp/scale': (32,),
    'params/encoder/x_layers_1/mlp/b_in': (64,),
    'params/encoder/x_layers_1/mlp/b_out': (32,),
    'params/encoder/x_layers_1/mlp/w_in': (32, 64),
    'params/encoder/x_layers_1/mlp/w_out': (64, 32),
    'params/encoder/x_layers_1/w_atten_out': (2, 16, 32),
    'params/encoder/x_layers_1/w_qkv': (32, 2, 48),
    'params/final_ln/scale': (32,),
    'params/head/b': (10,),
    'params/head/w': (32, 10),
    'params/map_head/attention/k_norm/scale': (16,),
    'params/map_head/attention/q_norm/scale': (16,),
    'params/map_head/ln/scale': (32,),
    'params/map_head/mlp/b_in': (64,),
    'params/map_head/mlp/b_out': (32,),
    'params/map_head/mlp/w_in': (32, 64),
    'params/map_head/mlp/w_out': (64, 32),
    'params/map_head/probe': (1, 32),
    'params/map_head/w_atten_out': (2, 16, 32),
    'params/map_head/w_kv': (32, 2, 32),
    'params/map_head/w_q': (32, 2, 16),
    'params/patch_embed/b': (32,),
    'params/patch_embed/pos_emb': (16, 32),
    'params/patch_embed/w': (4, 4, 3, 32),
}


def _flat(variables):
  """{'collection/a/b': array} of a variable tree (every collection)."""
  return {
      '/'.join(k.key for k in path): v
      for path, v in jax.tree_util.tree_flatten_with_path(variables)[0]
  }


def _check_norms(test, flat):
  """Norm scales are stored directly (1.0), biases start at 0.0."""
  norms = [k for k in flat if k.endswith(('/scale', '/bias'))]
  test.assertNotEmpty(norms)
  for key in norms:
    want = 1.0 if key.endswith('/scale') else 0.0
    np.testing.assert_array_equal(flat[key], np.full(flat[key].shape, want),
                                  err_msg=key)
    test.assertEqual(flat[key].dtype, jnp.float32, key)


class VariableTreeTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('parallel', parallel_block.ParallelBlock, {}, PARALLEL),
      ('parallel_biases', parallel_block.ParallelBlock,
       dict(use_qkv_bias=True, use_ln_bias=True), PARALLEL_BIASES),
      ('sequential', sequential_block.SequentialBlock, {}, SEQUENTIAL),
      ('sequential_biases', sequential_block.SequentialBlock,
       dict(use_qkv_bias=True, use_ln_bias=True), SEQUENTIAL_BIASES),
      ('map_head', map_head.MAPHead, {}, MAP_HEAD),
      ('map_head_biases', map_head.MAPHead,
       dict(use_qkv_bias=True, use_ln_bias=True), MAP_HEAD_BIASES),
  )
  def test_layer(self, cls, overrides, expected):
    # ref.block_config puts the ViT-22B norms (or, with use_ln_bias, the
    # LayerNorm with a bias) on the layer as templates.
    p, _ = ref.block_config(cls, **overrides)
    layer = base_layer.instantiate(p)
    x, paddings = ref.inputs_and_paddings()
    flat = _flat(ref.init(layer, x, paddings))
    self.assertEqual({k: tuple(v.shape) for k, v in flat.items()}, expected)
    _check_norms(self, flat)

  @parameterized.named_parameters(
      ('parallel', True, CLASSIFIER_PARALLEL),
      ('sequential', False, CLASSIFIER_SEQUENTIAL),
  )
  def test_tiny_classifier(self, parallel, expected):
    cfg = models.classifier_config(
        models.PRESETS['tiny'], 10, parallel=parallel
    )
    model = pax_fiddle.instantiate(cfg)
    batch = py_utils.NestedMap(
        image=jnp.zeros((1, 16, 16, 3), jnp.float32),
        labels=jnp.zeros((1, 10), jnp.float32),
        weight=jnp.ones((1,), jnp.float32),
    )

    def init(key, b):
      with base_layer.JaxContext.new_context():
        return model.init(key, b)

    flat = _flat(jax.jit(init)(jax.random.PRNGKey(0), batch))
    self.assertEqual({k: tuple(v.shape) for k, v in flat.items()}, expected)
    _check_norms(self, flat)


if __name__ == '__main__':
  absltest.main()
