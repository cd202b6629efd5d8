"""Tests for vit22b_pax.sharding on 8 simulated CPU devices (conftest)."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from praxis import base_layer
from praxis import pax_fiddle
from praxis import py_utils

from vit22b_pax import models
from vit22b_pax import sharding

NestedMap = py_utils.NestedMap
P = jax.sharding.PartitionSpec
TINY = models.PRESETS['tiny']
MESH = (4, 2)  # data 4, model 2


def _batch(num_classes, batch=8):
  rng = np.random.default_rng(0)
  s = TINY.image_size
  return NestedMap(
      image=jnp.asarray(rng.uniform(-1, 1, (batch, s, s, 3)), jnp.float32),
      labels=jnp.asarray(rng.random((batch, num_classes)) < 0.5, jnp.float32),
      weight=jnp.ones((batch,), jnp.float32),
  )


def _flat(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    path = f'{prefix}/{k}' if prefix else k
    if isinstance(v, dict):
      out.update(_flat(v, path))
    else:
      out[path] = v
  return out


def _config(num_classes, scan):
  return models.classifier_config(
      TINY, num_classes, scan=scan, head_zero_init=False, remat_policy=None
  )


def _specs(model, batch):
  with base_layer.JaxContext.new_context():
    meta = model.abstract_init_with_metadata(batch)
  return base_layer.var_partition_specs(
      meta, mesh_shape=list(MESH), device_axis_names=sharding.MESH_AXIS_NAMES
  )


class ShardingTest(parameterized.TestCase):

  def test_partition_specs(self):
    c = 8
    cfg = sharding.set_sharding(_config(c, scan=True), MESH)
    self.assertEqual(tuple(cfg.mesh_axis_names), ('data', 'model'))
    model = pax_fiddle.instantiate(cfg)
    specs = _flat(_specs(model, _batch(c))['params'])
    blk = 'encoder/repeat/sub/x_layers_0/'
    expected = {
        # Scanned stack: leading layer axis replicated.
        blk + 'w_in': P(None, 'data', 'model', None),
        blk + 'b_in': P(None, 'model'),  # [L, F], F grouped by head
        blk + 'w_out': P(None, 'model', None, 'data'),
        blk + 'b_out': P(None, 'data'),
        blk + 'ln/scale': P(None, None),
        blk + 'attention/q_norm/scale': P(None, None),
        'patch_embed/w': P(None, None, None, 'model'),
        'patch_embed/b': P('model'),
        'patch_embed/pos_emb': P(None, 'model'),
        'map_head/probe': P(None, 'data'),
        'map_head/w_q': P('data', 'model', None),
        'map_head/w_kv': P('data', 'model', None),
        'map_head/w_atten_out': P('model', None, 'data'),
        'map_head/mlp/w_in': P('data', 'model'),
        'map_head/mlp/w_out': P('model', 'data'),
        'final_ln/scale': P(None),
        'head/w': P('data', 'model'),
        'head/b': P('model'),
    }
    for path, spec in expected.items():
      self.assertEqual(specs[path], spec, path)

  def test_classes_not_divisible_by_model_axis_are_replicated(self):
    c = 5
    cfg = sharding.set_sharding(_config(c, scan=False), MESH)
    model = pax_fiddle.instantiate(cfg)
    specs = _flat(_specs(model, _batch(c))['params'])
    self.assertEqual(specs['head/w'], P('data', None))
    self.assertEqual(specs['head/b'], P(None))
    self.assertEqual(specs['encoder/x_layers_1/w_in'],
                     P('data', 'model', None))

  def test_heads_must_divide_model_axis(self):
    with self.assertRaisesRegex(ValueError, r'num_heads \(2\)'):
      sharding.set_sharding(_config(8, scan=False), (2, 4))
    # Across slices the model axis is ici x dcn = 1 x 4.
    with self.assertRaisesRegex(ValueError, r'num_heads \(2\)'):
      sharding.set_sharding(_config(8, scan=False), (4, 1), (1, 4))
    cfg = sharding.set_sharding(_config(8, scan=False), (2, 2), (2, 1))
    self.assertEqual(list(cfg.dcn_mesh_shape), [2, 1])
    self.assertEqual(list(cfg.ici_mesh_shape), [2, 2])

  @parameterized.named_parameters(('scan', True), ('unrolled', False))
  def test_sharded_forward_equals_unsharded(self, scan):
    c = 8
    batch = _batch(c)
    plain = pax_fiddle.instantiate(_config(c, scan))
    sharded = pax_fiddle.instantiate(
        sharding.set_sharding(_config(c, scan), MESH)
    )
    devices = np.asarray(jax.devices()[:8]).reshape(MESH)
    mesh = jax.sharding.Mesh(devices, sharding.MESH_AXIS_NAMES)
    var_shardings = jax.tree_util.tree_map(
        lambda spec: jax.sharding.NamedSharding(mesh, spec),
        _specs(sharded, batch),
    )
    batch_sharding = jax.tree_util.tree_map(
        lambda x: jax.sharding.NamedSharding(
            mesh, P('data', *([None] * (x.ndim - 1)))
        ),
        batch,
    )

    def init(key, b):
      with base_layer.JaxContext.new_context():
        return sharded.init(key, b)

    def logits(model, variables, b):
      with base_layer.JaxContext.new_context():
        return model.apply(
            variables, b, method=model.compute_predictions
        ).logits

    with mesh:
      variables = jax.jit(init, out_shardings=var_shardings)(
          jax.random.PRNGKey(0), batch
      )
      # The variables really are laid out as their WeightHParams say: each
      # device holds a D/4 x N/2 block of the fused input projection.
      params = _flat(variables['params'])
      if scan:
        w_in = params['encoder/repeat/sub/x_layers_0/w_in']
        self.assertEqual(w_in.sharding.spec, P(None, 'data', 'model', None))
      else:
        w_in = params['encoder/x_layers_0/w_in']
        self.assertEqual(w_in.sharding.spec, P('data', 'model', None))
      d, n = TINY.model_dims, TINY.num_heads
      self.assertEqual(w_in.sharding.shard_shape(w_in.shape)[-3:-1],
                       (d // MESH[0], n // MESH[1]))
      sharded_logits = jax.jit(
          lambda v, b: logits(sharded, v, b),
          in_shardings=(var_shardings, batch_sharding),
      )(variables, batch)
      # The head's activation annotation reached the output.
      self.assertTrue(sharded_logits.sharding.is_equivalent_to(
          jax.sharding.NamedSharding(mesh, P('data', 'model')), 2))
    host_vars = jax.device_get(variables)
    plain_logits = jax.jit(lambda v, b: logits(plain, v, b))(
        host_vars, batch
    )
    self.assertGreater(float(jnp.std(plain_logits)), 1e-3)  # not constant
    np.testing.assert_allclose(
        np.asarray(sharded_logits), np.asarray(plain_logits), atol=1e-5
    )


if __name__ == '__main__':
  absltest.main()
