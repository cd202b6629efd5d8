"""ParallelBlock.collective_matmul on 8 simulated CPU devices.

The block is laid out by sharding.set_sharding (as the experiments do) on a
('data', 'model') mesh and run with collective matmul on and off: forward,
gradients and the compiled HLO of its training step (forward + backward).
Shapes keep every model-axis chunk of D (and half chunk) at least 4 wide,
so XLA keeps the ring's multiplies as dots.
"""

import collections

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import numpy as jnp
import numpy as np
from praxis import base_layer
from praxis import pax_fiddle

import hlo_text
import layer_reference as ref
from vit22b_pax import models
from vit22b_pax import sharding
from vit22b_pax.layers import parallel_block

P = jax.sharding.PartitionSpec
NamedSharding = jax.sharding.NamedSharding
AXES = ('data', 'model')
B, T, D, N, F = 4, 6, 64, 8, 128
H = D // N
MESHES = ((2, 4), (1, 8))
MODES = ('unidirectional', 'bidirectional')


def _mesh(shape):
  return jax.sharding.Mesh(
      np.asarray(jax.devices()[:8]).reshape(shape), AXES)


def _config(mode, mesh_shape, **overrides):
  """The block template of a classifier laid out by set_sharding."""
  size = models.ModelSize(D, 1, F, N, H, 4, 8)
  model_cfg = sharding.set_sharding(
      models.classifier_config(size, 8, remat_policy=None), mesh_shape)
  block = model_cfg.encoder_tpl.transformer_layer_params_tpl.clone()
  # What praxis' StackedTransformer and the model set on the block.
  block.set(
      name='block', input_dims=D, hidden_dims=F, num_heads=N,
      dim_per_head=H, ici_mesh_shape=list(mesh_shape),
      mesh_axis_names=list(AXES), collective_matmul=mode, **overrides,
  )
  return block


def _variables(layer, x, paddings, mesh_shape):
  """Perturbed variables and their partition specs."""
  with base_layer.JaxContext.new_context():
    variables = layer.init(jax.random.PRNGKey(1), x, paddings)
    meta = layer.abstract_init_with_metadata(x, paddings)
  specs = base_layer.var_partition_specs(
      meta, mesh_shape=list(mesh_shape), device_axis_names=list(AXES))
  return ref.perturb(variables, seed=3), specs


def _loss_fn(layer, paddings, cot):
  def loss(variables, x):
    with base_layer.JaxContext.new_context():
      out, _ = layer.apply(variables, x, paddings)
    return jnp.sum(out * cot), out
  return loss


def _step(layer, mesh, specs, paddings, cot):
  """Jitted (loss, out), (d variables, d x): the block's train step."""
  shard = lambda s: NamedSharding(mesh, s)
  var_sh = jax.tree_util.tree_map(shard, specs)
  x_sh = shard(P('data', None, 'model'))
  return jax.jit(
      jax.value_and_grad(_loss_fn(layer, paddings, cot), argnums=(0, 1),
                         has_aux=True),
      in_shardings=(var_sh, x_sh),
  ), var_sh, x_sh


def _inputs(seed=0):
  x, paddings = ref.inputs_and_paddings(b=B, t=T, d=D, seed=seed)
  cot = np.random.RandomState(seed + 1).randn(B, T, D).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(paddings), jnp.asarray(cot)


def _run(mode, mesh_shape, **overrides):
  """(loss, out, grads, jaxpr text) of one step of the block on the mesh."""
  layer = pax_fiddle.instantiate(_config(mode, mesh_shape, **overrides))
  x, paddings, cot = _inputs()
  variables, specs = _variables(layer, x, paddings, mesh_shape)
  mesh = _mesh(mesh_shape)
  step, var_sh, x_sh = _step(layer, mesh, specs, paddings, cot)
  with mesh:
    (loss, out), grads = step(
        jax.device_put(variables, var_sh), jax.device_put(x, x_sh))
    jaxpr = str(jax.make_jaxpr(step)(variables, x))
  return loss, out, grads, jaxpr


def _hlo(mode, mesh_shape):
  layer = pax_fiddle.instantiate(_config(mode, mesh_shape))
  x, paddings, cot = _inputs()
  variables, specs = _variables(layer, x, paddings, mesh_shape)
  mesh = _mesh(mesh_shape)
  step, _, _ = _step(layer, mesh, specs, paddings, cot)
  with mesh:
    return hlo_text.Hlo(step.lower(variables, x).compile().as_text(), mesh)


def _whole_activation(hlo, mesh_shape):
  """Kinds of the collectives over 'model' of a whole [B/d, T, D] tensor.

  Matched by element count with a whole D dim: XLA may reshape it to
  [B/d * T, D].
  """
  size = B // mesh_shape[0] * T * D
  return [kind for kind, axes, dims in hlo.collectives()
          if 'model' in axes and dims and D in dims
          and int(np.prod(dims)) == size]


def _assert_close(got, want):
  # float32 sums in another order; a wrong chunk errs by the array's scale.
  np.testing.assert_allclose(
      got, want, rtol=1e-5, atol=1e-5 * max(float(np.abs(want).max()), 1.0))


CASES = [
    dict(testcase_name=f'{d}x{m}_{mode}', mesh_shape=(d, m), mode=mode)
    for (d, m) in MESHES for mode in MODES
]


class CollectiveBlockTest(parameterized.TestCase):

  @parameterized.named_parameters(*CASES)
  def test_forward_and_gradients_equal_plain(self, mesh_shape, mode):
    loss, out, grads, jaxpr = _run(mode, mesh_shape)
    want_loss, want_out, want_grads, plain_jaxpr = _run('off', mesh_shape)
    # The knob really switches the path (else this test proves nothing).
    self.assertIn('shard_map', jaxpr)
    self.assertNotIn('shard_map', plain_jaxpr)
    _assert_close(out, want_out)
    _assert_close(loss, want_loss)
    got = jax.tree_util.tree_flatten_with_path(grads)[0]
    want = jax.tree_util.tree_leaves(want_grads)
    self.assertLen(got, len(want))
    self.assertLen(got, 8)  # x and the 7 variables of the defaults.
    for (path, g), w in zip(got, want):
      with self.subTest(jax.tree_util.keystr(path)):
        _assert_close(g, w)

  @parameterized.named_parameters(
      ('qkv_bias_only', dict(use_qkv_bias=True, use_mlp_bias=False)),
      ('both_biases', dict(use_qkv_bias=True)),
      ('no_biases', dict(use_mlp_bias=False)),
  )
  def test_bias_variants_equal_plain(self, overrides):
    # b_in holds different per-head columns in each case (module docstring).
    _, out, grads, _ = _run('unidirectional', (2, 4), **overrides)
    _, want_out, want_grads, _ = _run('off', (2, 4), **overrides)
    _assert_close(out, want_out)
    for g, w in zip(jax.tree_util.tree_leaves(grads),
                    jax.tree_util.tree_leaves(want_grads)):
      _assert_close(g, w)

  @parameterized.named_parameters(*CASES)
  def test_train_step_hlo(self, mesh_shape, mode):
    # Four rings, each of `sends` ppermutes round the model axis: forward,
    # the input projection's all-gather-matmul (x's chunks travel left;
    # they are reused for dW) and the output projection's
    # matmul-reduce-scatter (partial sums travel right); backward, their
    # transposes: dX of the input projection, sums travelling right, and
    # the output projection's cotangent, chunks travelling left (an
    # all-gather-matmul).
    _, m = mesh_shape
    rounds = m // 2
    bidi = mode == 'bidirectional'
    sends = 2 * rounds if bidi else m - 1
    hlo = _hlo(mode, mesh_shape)
    ring = [(name, s) for name, _, s in hlo.permutes()
            if len(s) == 1 and s <= {1, -1}]
    self.assertLen(ring, 4 * sends)
    # Other permutes are XLA moving a vector (b_out between its 'data' and
    # 'model' splits).
    others = [dims for name, dims, _ in hlo.permutes()
              if name not in dict(ring)]
    self.assertTrue(all(np.prod(dims) <= D for dims in others), others)
    self.assertEqual(_whole_activation(hlo, mesh_shape), [])
    # Interleaved, gathering rings: a multiply uses a chunk as soon as it
    # arrived, so the multiplies that do not depend on every send of the
    # forward input ring depend on 0, 1, 2, ... sends (bidirectional:
    # round r's two on r sends of their direction): the forward input
    # ring's and the backward cotangent ring's. Gather-then-multiply
    # gives all 0.
    # (Unidirectional: the last multiply, after all m - 1 sends, is not
    # among them.)
    per_ring = ([0] + [r for r in range(1, rounds + 1) for _ in range(2)]
                if bidi else list(range(m - 1)))
    counts = [hlo.upstream(d, hlo_text.is_permute) for d in hlo.dots()]
    self.assertEqual(sorted(c for c in counts if c < sends),
                     sorted(2 * per_ring))
    # Interleaved, reducing rings: each send carries one more partial
    # product than the one before it (bidirectional: one per direction).
    # Multiply-then-reduce gives one count for all sends of a ring.
    carried = sorted(hlo.upstream(name, hlo_text.is_dot) for name, _ in ring)
    self.assertEqual(carried[:2 * sends], [0] * (2 * sends))
    steps = ([k for k in range(rounds) for _ in range(2)] if bidi
             else list(range(sends)))
    for part in (carried[2 * sends:3 * sends], carried[3 * sends:]):
      self.assertEqual(part, [part[0] + k for k in steps])

  def test_hlo_check_catches_the_plain_block(self):
    # The same check on the plain path finds the whole normed residual
    # gathered over 'model' (and there are no ring sends).
    hlo = _hlo('off', (2, 4))
    self.assertIn('all-gather', _whole_activation(hlo, (2, 4)))
    self.assertEqual(
        [s for _, _, s in hlo.permutes() if len(s) == 1 and s <= {1, -1}],
        [])

  def test_no_sharding_annotations_is_the_plain_path(self):
    p, _ = ref.block_config(parallel_block.ParallelBlock, d=D, f=F, n=N)
    x, paddings, _ = _inputs()
    layers = [pax_fiddle.instantiate(p.clone().set(collective_matmul=mode))
              for mode in ('off', 'bidirectional')]
    variables = ref.perturb(ref.init(layers[0], x, paddings), seed=4)
    mesh = _mesh((2, 4))
    with mesh:
      outs = [jax.jit(lambda v, x, l=l: ref.apply(l, v, x, paddings)[0])(
          variables, x) for l in layers]
      jaxpr = str(jax.make_jaxpr(
          lambda v: ref.apply(layers[1], v, x, paddings)[0])(variables))
    self.assertNotIn('shard_map', jaxpr)
    np.testing.assert_array_equal(outs[0], outs[1])

  def test_bfloat16(self):
    # The TPU experiments' dtype: the ring's running sums are rounded to
    # bfloat16 at each step, so agreement is to bfloat16 precision (a
    # wrong chunk errs by the output's scale).
    _, out, _, _ = _run('bidirectional', (2, 4), fprop_dtype=jnp.bfloat16)
    _, want, _, _ = _run('off', (2, 4), fprop_dtype=jnp.bfloat16)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(out, want, atol=2e-2 * scale)

  def test_classifier_config(self):
    size = models.ModelSize(D, 1, F, N, H, 4, 8)
    p = models.classifier_config(size, 8, collective_matmul='unidirectional')
    block = p.encoder_tpl.transformer_layer_params_tpl
    self.assertEqual(block.collective_matmul, 'unidirectional')
    with self.assertRaisesRegex(ValueError, 'needs the parallel block'):
      models.classifier_config(size, 8, parallel=False,
                               collective_matmul='bidirectional')

  def test_rejects_unknown_mode(self):
    p, _ = ref.block_config(parallel_block.ParallelBlock)
    layer = pax_fiddle.instantiate(p.set(collective_matmul='on'))
    x, paddings = ref.inputs_and_paddings()
    with self.assertRaisesRegex(ValueError, r'collective_matmul .*\'on\''):
      ref.init(layer, x, paddings)


if __name__ == '__main__':
  absltest.main()
