"""Tests for vit22b_pax.layers.sequential_block."""

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import numpy as jnp
import numpy as np
from praxis import base_layer
from praxis import pax_fiddle
from praxis.layers import attentions
from praxis.layers import transformers

import layer_reference as ref
from vit22b_pax.layers import parallel_block
from vit22b_pax.layers import sequential_block

instantiate = base_layer.instantiate
block_config = functools.partial(
    ref.block_config, sequential_block.SequentialBlock
)


class SequentialBlockTest(parameterized.TestCase):

  @parameterized.named_parameters(*ref.FLAG_CASES)
  def test_matches_reference(self, overrides):
    p, flags = block_config(**overrides)
    layer = instantiate(p)
    x, paddings = ref.inputs_and_paddings()
    mask = attentions.convert_paddings_to_mask(jnp.asarray(paddings))
    variables = ref.perturb(ref.init(layer, x, paddings, mask), seed=2)
    out, _ = ref.apply(layer, variables, x, paddings, mask)
    expected = ref.sequential_block(
        ref.to_np(variables['params']), x.astype(np.float64), flags, paddings
    )
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)

  def test_differs_from_parallel_form(self):
    # Same weights fed to the parallel equations give a different answer,
    # so the reference comparison above really pins the sequential form.
    p, flags = block_config()
    layer = instantiate(p)
    x, paddings = ref.inputs_and_paddings()
    variables = ref.perturb(ref.init(layer, x, paddings), seed=3)
    out, _ = ref.apply(layer, variables, x, paddings)
    params = ref.to_np(variables['params'])
    h = flags['head_dim']
    as_parallel = {
        'ln': params['ln_atten'],
        'attention': params['attention'],
        'w_in': np.concatenate(
            [params['w_qkv'],
             params['mlp']['w_in'].reshape(16, 4, -1)], axis=-1),
        'b_in': params['mlp']['b_in'],
        'w_out': np.concatenate(
            [params['w_atten_out'],
             params['mlp']['w_out'].reshape(4, -1, 16)], axis=1),
        'b_out': params['mlp']['b_out'],
    }
    self.assertEqual(as_parallel['w_in'].shape[-1], 3 * h + 16)
    parallel_out = ref.parallel_block(
        as_parallel, x.astype(np.float64), flags, paddings
    )
    self.assertGreater(np.max(np.abs(out - parallel_out)), 1e-2)

  @parameterized.named_parameters(('qk_norm', True), ('no_qk_norm', False))
  def test_attention_logit_growth(self, use_qk_norm):
    h = 8
    p, _ = block_config(d=32, f=64, n=4, use_qk_norm=use_qk_norm)
    layer = instantiate(p)
    x, paddings = ref.inputs_and_paddings(d=32)
    variables = ref.init(layer, x, paddings)

    def max_logit(v):
      logits = ref.apply(layer, v, x, method=layer.attention_logits)
      return float(jnp.max(jnp.abs(logits)))

    before = max_logit(variables)
    w_qkv = np.array(variables['params']['w_qkv'])
    w_qkv[:, :, : 2 * h] *= 100.0
    variables['params']['w_qkv'] = jnp.asarray(w_qkv)
    after = max_logit(variables)
    if use_qk_norm:
      self.assertLessEqual(after, math.sqrt(h) * (1 + 1e-5))
    else:
      self.assertGreaterEqual(after, 50.0 * before)

  @parameterized.named_parameters(
      (
          'defaults',
          {},
          {'w_qkv': (16, 4, 12), 'w_atten_out': (4, 4, 16),
           'ln_atten/scale': (16,), 'ln_mlp/scale': (16,),
           'mlp/w_in': (16, 64), 'mlp/b_in': (64,), 'mlp/w_out': (64, 16),
           'mlp/b_out': (16,),
           'attention/q_norm/scale': (4,), 'attention/k_norm/scale': (4,)},
      ),
      (
          'no_biases_no_qk_norm',
          dict(use_mlp_bias=False, use_qk_norm=False),
          {'w_qkv': (16, 4, 12), 'w_atten_out': (4, 4, 16),
           'ln_atten/scale': (16,), 'ln_mlp/scale': (16,),
           'mlp/w_in': (16, 64), 'mlp/w_out': (64, 16)},
      ),
      (
          'qkv_and_ln_bias',
          dict(use_qkv_bias=True, use_ln_bias=True, use_qk_norm=False),
          {'w_qkv': (16, 4, 12), 'b_qkv': (48,), 'w_atten_out': (4, 4, 16),
           'b_atten_out': (16,),
           'ln_atten/scale': (16,), 'ln_atten/bias': (16,),
           'ln_mlp/scale': (16,), 'ln_mlp/bias': (16,),
           'mlp/w_in': (16, 64), 'mlp/b_in': (64,), 'mlp/w_out': (64, 16),
           'mlp/b_out': (16,)},
      ),
  )
  def test_variable_tree(self, overrides, expected):
    p, _ = block_config(**overrides)
    layer = instantiate(p)
    x, paddings = ref.inputs_and_paddings()
    params = ref.init(layer, x, paddings)['params']
    self.assertEqual(ref.flat_shapes(params), expected)

  def test_vit22b_parameter_count_is_parallel_plus_one_norm(self):
    d = 6144
    x = jax.ShapeDtypeStruct((1, 4, d), jnp.float32)
    counts = {}
    for cls in (sequential_block.SequentialBlock, parallel_block.ParallelBlock):
      p, _ = ref.block_config(cls, d=d, f=24576, n=48, dim_per_head=128)
      layer = instantiate(p)
      counts[cls] = ref.count(
          jax.eval_shape(
              functools.partial(layer.init, jax.random.PRNGKey(0)), x
          )
      )
    self.assertEqual(counts[sequential_block.SequentialBlock], 453_028_096)
    self.assertEqual(
        counts[sequential_block.SequentialBlock]
        - counts[parallel_block.ParallelBlock],
        d,
    )

  def test_repeated_stack_equals_blocks_in_sequence(self):
    block_p, _ = block_config()
    stack_p = pax_fiddle.Config(
        transformers.StackedTransformerRepeated,
        name='repeated',
        x_times=2,
        block=pax_fiddle.Config(
            transformers.StackedTransformer,
            model_dims=16,
            hidden_dims=64,
            num_heads=4,
            num_layers=1,
            transformer_layer_params_tpl=block_p.clone(),
        ),
    )
    stack = instantiate(stack_p)
    block = instantiate(block_p)
    x, paddings = ref.inputs_and_paddings()
    variables = ref.perturb(ref.init(stack, x, paddings), seed=6)
    out = ref.apply(stack, variables, x, paddings)
    sub = variables['params']['repeat']['sub']['x_layers_0']
    expected = x
    for i in range(2):
      layer_params = jax.tree_util.tree_map(lambda a, i=i: a[i], sub)
      expected, _ = ref.apply(
          block, {'params': layer_params}, expected, paddings
      )
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)

  @parameterized.named_parameters(
      ('cross_attention', dict(use_cross_attention=True), 'cross attention'),
      ('packed_input', dict(packed_input=True), 'packed'),
      ('heads_do_not_divide', dict(num_heads=5), 'num_heads'),
  )
  def test_rejects_unsupported_fields(self, overrides, message):
    p, _ = block_config()
    p.set(**overrides)
    layer = instantiate(p)
    x, paddings = ref.inputs_and_paddings()
    with self.assertRaisesRegex(ValueError, message):
      ref.init(layer, x, paddings)


if __name__ == '__main__':
  absltest.main()
