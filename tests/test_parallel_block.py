"""Tests for vit22b_pax.layers.parallel_block (and its praxis stacking)."""

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import numpy as jnp
import numpy as np
from praxis import base_layer
from praxis.layers import attentions

import layer_reference as ref
from vit22b_pax.layers import parallel_block

instantiate = base_layer.instantiate

FLAG_CASES = ref.FLAG_CASES
inputs_and_paddings = ref.inputs_and_paddings
init = ref.init
apply = ref.apply
count = ref.count
block_config = functools.partial(
    ref.block_config, parallel_block.ParallelBlock
)


class ParallelBlockTest(parameterized.TestCase):

  @parameterized.named_parameters(*FLAG_CASES)
  def test_matches_unfused_reference(self, overrides):
    # The reference slices the fused weights into separate Wq, Wk, Wv, W1,
    # Wo, W2 and runs the paper's equations with separate matmuls.
    p, flags = block_config(**overrides)
    layer = instantiate(p)
    x, paddings = inputs_and_paddings()
    mask = attentions.convert_paddings_to_mask(jnp.asarray(paddings))
    variables = ref.perturb(init(layer, x, paddings, mask), seed=2)
    out, probs = apply(layer, variables, x, paddings, mask)
    expected = ref.parallel_block(
        ref.to_np(variables['params']), x.astype(np.float64), flags, paddings
    )
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
    # Padded keys get no attention at all.
    self.assertEqual(float(jnp.max(probs.self_atten[1, :, :, -2:])), 0.0)

  def test_dim_per_head_not_d_over_n(self):
    p, flags = block_config(d=12, f=24, n=2, dim_per_head=8)
    layer = instantiate(p)
    x, paddings = inputs_and_paddings(d=12)
    variables = ref.perturb(init(layer, x, paddings), seed=3)
    self.assertEqual(variables['params']['w_in'].shape, (12, 2, 3 * 8 + 12))
    self.assertEqual(variables['params']['w_out'].shape, (2, 8 + 12, 12))
    out, _ = apply(layer, variables, x, paddings)
    expected = ref.parallel_block(
        ref.to_np(variables['params']), x.astype(np.float64), flags, paddings
    )
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)

  def test_paddings_alone_build_the_mask(self):
    # Without attention_mask, paddings give the same result as the praxis
    # additive mask; and the unpadded tokens of example 1 match running the
    # block on the truncated sequence (padded keys are invisible).
    p, _ = block_config()
    layer = instantiate(p)
    x, paddings = inputs_and_paddings()
    mask = attentions.convert_paddings_to_mask(jnp.asarray(paddings))
    variables = ref.perturb(init(layer, x, paddings), seed=4)
    out_mask, _ = apply(layer, variables, x, None, mask)
    out_pad, _ = apply(layer, variables, x, paddings)
    np.testing.assert_allclose(out_mask, out_pad, atol=1e-6)
    out_short, _ = apply(layer, variables, x[1:, :-2], None)
    np.testing.assert_allclose(out_pad[1:, :-2], out_short, atol=1e-5)
    # Without any mask the padded tokens are attended to and change things.
    out_unmasked, _ = apply(layer, variables, x, None)
    self.assertGreater(float(jnp.max(jnp.abs(out_pad - out_unmasked))), 1e-3)

  @parameterized.named_parameters(
      ('qk_norm', True),
      ('no_qk_norm', False),
  )
  def test_attention_logit_growth(self, use_qk_norm):
    h = 8
    p, flags = block_config(d=32, f=64, n=4, use_qk_norm=use_qk_norm)
    layer = instantiate(p)
    x, paddings = inputs_and_paddings(d=32)
    variables = init(layer, x, paddings)

    def max_logit(v):
      logits = apply(layer, v, x, method=layer.attention_logits)
      expected = ref.parallel_block(
          ref.to_np(v['params']), x.astype(np.float64), flags,
          return_logits=True,
      )
      np.testing.assert_allclose(logits, expected, atol=1e-3, rtol=1e-5)
      return float(jnp.max(jnp.abs(logits)))

    before = max_logit(variables)
    scaled = jax.tree_util.tree_map(lambda a: a, variables)
    w_in = np.array(scaled['params']['w_in'])
    w_in[:, :, : 2 * h] *= 100.0  # q and k columns of every head.
    scaled['params']['w_in'] = jnp.asarray(w_in)
    after = max_logit(scaled)
    if use_qk_norm:
      # Unit-scale normalized q, k have norm <= sqrt(H): |logit| <= sqrt(H).
      self.assertLessEqual(after, math.sqrt(h) * (1 + 1e-5))
    else:
      self.assertGreaterEqual(after, 50.0 * before)

  @parameterized.named_parameters(
      (
          'defaults',
          {},
          {'w_in': (16, 4, 28), 'b_in': (64,), 'w_out': (4, 20, 16),
           'b_out': (16,), 'ln/scale': (16,),
           'attention/q_norm/scale': (4,), 'attention/k_norm/scale': (4,)},
      ),
      (
          'no_biases_no_qk_norm',
          dict(use_mlp_bias=False, use_qk_norm=False),
          {'w_in': (16, 4, 28), 'w_out': (4, 20, 16), 'ln/scale': (16,)},
      ),
      (
          'qkv_and_ln_bias',
          dict(use_qkv_bias=True, use_ln_bias=True),
          {'w_in': (16, 4, 28), 'b_in': (112,), 'w_out': (4, 20, 16),
           'b_out': (16,), 'ln/scale': (16,), 'ln/bias': (16,),
           'attention/q_norm/scale': (4,), 'attention/q_norm/bias': (4,),
           'attention/k_norm/scale': (4,), 'attention/k_norm/bias': (4,)},
      ),
      (
          'qkv_bias_without_mlp_bias',
          dict(use_qkv_bias=True, use_mlp_bias=False, use_qk_norm=False),
          {'w_in': (16, 4, 28), 'b_in': (48,), 'w_out': (4, 20, 16),
           'ln/scale': (16,)},
      ),
  )
  def test_variable_tree(self, overrides, expected):
    p, _ = block_config(**overrides)
    layer = instantiate(p)
    x, paddings = inputs_and_paddings()
    params = init(layer, x, paddings)['params']
    self.assertEqual(ref.flat_shapes(params), expected)

  def test_vit22b_block_parameter_count(self):
    p, _ = block_config(d=6144, f=24576, n=48, dim_per_head=128)
    layer = instantiate(p)
    x = jax.ShapeDtypeStruct((1, 4, 6144), jnp.float32)
    shapes = jax.eval_shape(
        functools.partial(layer.init, jax.random.PRNGKey(0)), x
    )
    self.assertEqual(count(shapes), 453_021_952)
    self.assertEqual(count(shapes, ('w_in', 'w_out')), 452_984_832)
    self.assertEqual(452_984_832, 4 * 6144**2 + 2 * 6144 * 24576)

  def test_vit22b_48_block_scanned_stack_is_paper_size(self):
    # One scanned layer of 48 repeats: matrices are the paper's 21,743M.
    p, _ = block_config(d=6144, f=24576, n=48, dim_per_head=128)
    stack = ref.stack_config(p, num_layers=48, repeated=True)
    layer = instantiate(stack)
    x = jax.ShapeDtypeStruct((1, 4, 6144), jnp.float32)
    pad = jax.ShapeDtypeStruct((1, 4), jnp.float32)
    shapes = jax.eval_shape(
        functools.partial(layer.init, jax.random.PRNGKey(0)), x, pad
    )
    w_in = shapes['params']['repeat']['sub']['x_layers_0']['w_in']
    self.assertEqual(w_in.shape, (48, 6144, 48, 3 * 128 + 512))
    self.assertEqual(count(shapes), 48 * 453_021_952)
    self.assertEqual(count(shapes, ('w_in', 'w_out')), 21_743_271_936)

  @parameterized.named_parameters(
      ('cross_attention', dict(use_cross_attention=True), 'cross attention'),
      ('packed_input', dict(packed_input=True), 'packed'),
      ('mlp_not_divisible_by_heads', dict(hidden_dims=30), 'hidden_dims'),
      ('dropout_out_of_range', dict(relu_dropout_prob=1.0),
       'relu_dropout_prob'),
  )
  def test_rejects_unsupported_fields(self, overrides, message):
    p, _ = block_config()
    p.set(**overrides)
    layer = instantiate(p)
    x, paddings = inputs_and_paddings()
    with self.assertRaisesRegex(ValueError, message):
      init(layer, x, paddings)

  @parameterized.named_parameters(
      ('atten_dropout', 'atten_dropout_prob'),
      ('relu_dropout', 'relu_dropout_prob'),
      ('residual_dropout', 'residual_dropout_prob'),
      ('residual_droppath', 'residual_droppath_prob'),
  )
  def test_dropout_fields_are_used_in_training_only(self, field):
    p, _ = block_config()
    x, paddings = inputs_and_paddings(b=8)
    base = instantiate(p)
    variables = ref.perturb(init(base, x, paddings), seed=5)
    clean, _ = apply(base, variables, x, paddings)
    p_drop = p.clone().set(**{field: 0.5})
    layer = instantiate(p_drop)
    rngs = {'random': jax.random.PRNGKey(7)}
    train_ctx = base_layer.JaxContext.HParams(do_eval=False)
    eval_ctx = base_layer.JaxContext.HParams(do_eval=True)
    with base_layer.JaxContext.new_context(hparams=train_ctx):
      train, _ = layer.apply(variables, x, paddings, rngs=rngs)
    with base_layer.JaxContext.new_context(hparams=eval_ctx):
      evaluated, _ = layer.apply(variables, x, paddings, rngs=rngs)
    np.testing.assert_allclose(evaluated, clean, atol=1e-6)
    self.assertGreater(float(jnp.max(jnp.abs(train - clean))), 1e-2)


class StackingTest(parameterized.TestCase):
  """The block inside praxis StackedTransformer / StackedTransformerRepeated."""

  def _per_layer_params(self, params, repeated, i):
    if repeated:
      sub = params['repeat']['sub']['x_layers_0']
      return jax.tree_util.tree_map(lambda a: a[i], sub)
    return params[f'x_layers_{i}']

  @parameterized.named_parameters(('stacked', False), ('repeated', True))
  def test_two_layer_stack_equals_blocks_in_sequence(self, repeated):
    block_p, _ = block_config()
    stack = instantiate(ref.stack_config(block_p, 2, repeated))
    block = instantiate(block_p)
    x, paddings = inputs_and_paddings()
    variables = ref.perturb(init(stack, x, paddings), seed=6)
    out = apply(stack, variables, x, paddings)

    mask = attentions.convert_paddings_to_mask(jnp.asarray(paddings))

    def two_blocks(params, x):
      for i in range(2):
        layer_params = self._per_layer_params(params, repeated, i)
        x, _ = block.apply({'params': layer_params}, x, paddings, mask)
      return x

    with base_layer.JaxContext.new_context():
      expected = two_blocks(variables['params'], x)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)

    if repeated:
      # Backward through scan + remat equals backward through the loop.
      def loss_stack(params):
        y = stack.apply({'params': params}, x, paddings)
        return jnp.sum(jnp.sin(y))

      def loss_loop(params):
        return jnp.sum(jnp.sin(two_blocks(params, x)))

      with base_layer.JaxContext.new_context():
        g_stack = jax.jit(jax.grad(loss_stack))(variables['params'])
        g_loop = jax.jit(jax.grad(loss_loop))(variables['params'])
      for a, b in zip(
          jax.tree_util.tree_leaves(g_stack), jax.tree_util.tree_leaves(g_loop)
      ):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


class ShardingTest(absltest.TestCase):
  """Split-dims fields reach the variables and a 2-D mesh run is exact."""

  def test_two_d_mesh(self):
    mesh_axes = ('data', 'model')
    block_p, _ = block_config()
    sharded_p = block_p.clone().set(
        ici_mesh_shape=[2, 4], mesh_axis_names=mesh_axes
    )
    wp = sharded_p.weight_split_dims_mapping
    wp.in_proj = ('data', 'model', None)
    wp.out_proj = ('model', None, 'data')
    ap = sharded_p.activation_split_dims_mapping
    ap.bld = ('data', None, None)
    ap.blnh = ('data', None, 'model', None)
    sharded = instantiate(sharded_p)
    x, paddings = inputs_and_paddings()
    with base_layer.JaxContext.new_context():
      meta = sharded.abstract_init_with_metadata(x, paddings)
    specs = base_layer.var_partition_specs(meta, [2, 4], mesh_axes)
    p_spec = jax.sharding.PartitionSpec
    self.assertEqual(specs['params']['w_in'], p_spec('data', 'model', None))
    self.assertEqual(specs['params']['b_in'], p_spec('model'))
    self.assertEqual(specs['params']['w_out'], p_spec('model', None, 'data'))
    self.assertEqual(specs['params']['b_out'], p_spec('data'))

    plain = instantiate(block_p)
    variables = ref.perturb(init(plain, x, paddings), seed=8)
    expected, _ = apply(plain, variables, x, paddings)
    mesh = jax.sharding.Mesh(
        np.array(jax.devices()[:8]).reshape(2, 4), mesh_axes
    )
    shardings = jax.tree_util.tree_map(
        lambda s: jax.sharding.NamedSharding(mesh, s), specs
    )
    with mesh, base_layer.JaxContext.new_context():
      placed = jax.device_put(variables, shardings)
      fn = jax.jit(lambda v, x, p: sharded.apply(v, x, p)[0])
      out = fn(placed, x, paddings)
    self.assertTrue(
        out.sharding.is_equivalent_to(
            jax.sharding.NamedSharding(mesh, p_spec('data', None, None)), 3
        )
    )
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


if __name__ == '__main__':
  absltest.main()
