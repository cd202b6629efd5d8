"""Tests for vit22b_pax.models: presets, parameter counts, loss, training."""

import dataclasses

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax
from praxis import base_layer
from praxis import pax_fiddle
from praxis import py_utils
from praxis.layers import checkpoint_policy
from praxis.layers import transformers

from vit22b_pax import metrics as metrics_lib
from vit22b_pax import models
from vit22b_pax.layers import norms
from vit22b_pax.layers import parallel_block
from vit22b_pax.layers import sequential_block

NestedMap = py_utils.NestedMap
TINY = models.PRESETS['tiny']


def _batch(size, num_classes, batch=4, seed=0, weight=None):
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1, 1, (batch, size.image_size, size.image_size, 3))
  labels = (rng.random((batch, num_classes)) < 0.4).astype(np.float32)
  labels[:, 0] = 1.0  # every example has a label
  if weight is None:
    weight = np.ones((batch,), np.float32)
  return NestedMap(
      image=jnp.asarray(images, jnp.float32),
      labels=jnp.asarray(labels),
      weight=jnp.asarray(weight, jnp.float32),
  )


def _abstract_params(cfg):
  """Parameter shapes of cfg's model via jax.eval_shape (nothing allocated)."""
  model = pax_fiddle.instantiate(cfg)
  size = cfg.patch_embed_tpl.image_size
  batch = NestedMap(
      image=jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
      labels=jax.ShapeDtypeStruct((1, cfg.num_classes), jnp.float32),
      weight=jax.ShapeDtypeStruct((1,), jnp.float32),
  )
  with base_layer.JaxContext.new_context():
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
  return variables['params']


def _leaves(tree, prefix=''):
  """{'a/b/c': leaf} of a nested dict."""
  out = {}
  for k, v in tree.items():
    path = f'{prefix}/{k}' if prefix else k
    if isinstance(v, dict):
      out.update(_leaves(v, path))
    else:
      out[path] = v
  return out


def _init(cfg, batch, seed=0):
  model = pax_fiddle.instantiate(cfg)

  def init(key, b):
    with base_layer.JaxContext.new_context():
      return model.init(key, b)

  # Compiled: praxis run op by op is slower than the compile at this size.
  return model, jax.jit(init)(jax.random.PRNGKey(seed), batch)


def _apply(model, variables, batch, method=None):
  def apply(v, b):
    with base_layer.JaxContext.new_context():
      return model.apply(v, b, method=method)

  return jax.jit(apply)(variables, batch)


class PresetTest(absltest.TestCase):

  def test_paper_sizes(self):
    # Dehghani et al. 2023, Table 1, and the ViT-e / ViT-G rows.
    p = models.PRESETS
    self.assertEqual(dataclasses.astuple(p['vit22b']),
                     (6144, 48, 24576, 48, 128, 14, 224))
    self.assertEqual(dataclasses.astuple(p['vit_e']),
                     (1792, 56, 15360, 16, 112, 14, 224))
    self.assertEqual(dataclasses.astuple(p['vit_g']),
                     (1664, 48, 8192, 16, 104, 14, 224))
    self.assertEqual(p['vit22b'].num_tokens, 256)
    self.assertEqual(set(p), {'vit22b', 'vit_e', 'vit_g', 'mid', 'small',
                              'tiny'})
    for name, s in p.items():
      self.assertEqual(s.image_size % s.patch_size, 0, name)
      self.assertEqual(s.hidden_dims % s.num_heads, 0, name)


class ParamCountTest(parameterized.TestCase):

  def test_vit22b_encoder_blocks_match_paper(self):
    s = models.PRESETS['vit22b']
    d, f, n, h, l = (s.model_dims, s.hidden_dims, s.num_heads,
                     s.dim_per_head, s.num_layers)
    cfg = models.classifier_config(s, 1000, scan=True,
                                   fprop_dtype=jnp.bfloat16)
    params = _abstract_params(cfg)
    enc = _leaves(params['encoder'])
    # Scanned: one block's variables with a leading [L] axis.
    self.assertEqual(enc['repeat/sub/x_layers_0/w_in'].shape,
                     (l, d, n, 3 * h + f // n))
    matrices = sum(int(np.prod(v.shape)) for k, v in enc.items()
                   if k.split('/')[-1].startswith('w_'))
    self.assertEqual(matrices, 21_743_271_936)
    self.assertEqual(matrices, l * (4 * d * d + 2 * d * f))
    # Bias rules: LN scale D, MLP-in bias F, one fused out bias D, QK-norm
    # scales 2H; no q/k/v bias, no LayerNorm bias.
    total = sum(int(np.prod(v.shape)) for v in enc.values())
    self.assertEqual(total, l * 453_021_952)
    names = {k.split('/')[-1] for k in enc}
    self.assertEqual(names, {'w_in', 'b_in', 'w_out', 'b_out', 'scale'})
    self.assertEqual(enc['repeat/sub/x_layers_0/b_in'].shape, (l, f))
    # Rest of the model.
    self.assertEqual(params['head']['w'].shape, (d, 1000))
    self.assertEqual(params['head']['b'].shape, (1000,))
    self.assertEqual(params['patch_embed']['pos_emb'].shape, (256, d))
    self.assertNotIn('bias', params['final_ln'])

  def test_vit22b_without_mlp_bias_has_no_bias_at_all(self):
    s = models.PRESETS['vit22b']
    cfg = models.classifier_config(s, 10, scan=True, use_mlp_bias=False)
    enc = _leaves(_abstract_params(cfg)['encoder'])
    total = sum(int(np.prod(v.shape)) for v in enc.values())
    d, h = s.model_dims, s.dim_per_head
    self.assertEqual(total, s.num_layers * (452_984_832 + d + 2 * h))
    self.assertFalse([k for k in enc if k.split('/')[-1].startswith('b')])

  @parameterized.named_parameters(
      ('parallel', True, True),
      ('sequential', False, True),
      ('sequential_no_qk_norm', False, False),
  )
  def test_tiny_encoder_count(self, parallel, qk_norm):
    d, f, n, h, l = (TINY.model_dims, TINY.hidden_dims, TINY.num_heads,
                     TINY.dim_per_head, TINY.num_layers)
    cfg = models.classifier_config(TINY, 7, parallel=parallel,
                                   use_qk_norm=qk_norm)
    block_cls = (parallel_block.ParallelBlock if parallel
                 else sequential_block.SequentialBlock)
    self.assertIs(cfg.encoder_tpl.transformer_layer_params_tpl.cls, block_cls)
    enc = _leaves(_abstract_params(cfg)['encoder'])
    per_block = 4 * d * n * h + 2 * d * f + f + d  # matrices + MLP biases
    per_block += d if parallel else 2 * d  # one shared LN or two LNs
    per_block += 2 * h if qk_norm else 0
    self.assertEqual(sum(int(np.prod(v.shape)) for v in enc.values()),
                     l * per_block)


class NormTemplateTest(parameterized.TestCase):

  @parameterized.named_parameters(('parallel', True), ('sequential', False))
  def test_ln_tpl_reaches_every_norm(self, parallel):
    # One argument sets the blocks' LayerNorms, the QK-norms, the final norm
    # and the MAP head's norms: with a biased LayerNorm each gets a bias.
    cfg = models.classifier_config(TINY, 7, parallel=parallel,
                                   ln_tpl=norms.layer_norm(use_bias=True))
    params = _leaves(_abstract_params(cfg))
    scales = {k.rsplit('/', 1)[0] for k in params if k.endswith('/scale')}
    biases = {k.rsplit('/', 1)[0] for k in params if k.endswith('/bias')}
    self.assertEqual(biases, scales)
    # Per block 2 QK-norms and 1 (parallel) or 2 (sequential) LayerNorms;
    # the final norm; the MAP head's LayerNorm and 2 QK-norms.
    per_block = 3 if parallel else 4
    self.assertLen(scales, TINY.num_layers * per_block + 1 + 3)
    for path in scales:
      self.assertEqual(params[path + '/bias'].shape,
                       params[path + '/scale'].shape)


class ClassifierTest(parameterized.TestCase):

  def test_initial_loss_is_closed_form(self):
    # Zero kernel + bias -10: every logit is -10 whatever the image, so the
    # per-example loss is npos * softplus(10) + nneg * softplus(-10).
    c = 6
    batch = _batch(TINY, c, batch=4, weight=[1, 1, 1, 0])
    cfg = models.classifier_config(TINY, c)
    model, variables = _init(cfg, batch)
    metrics, per_example = _apply(model, variables, batch)
    np.testing.assert_array_equal(np.asarray(per_example['logits']),
                                  np.full((4, c), -10.0, np.float32))
    labels = np.asarray(batch.labels)[:3]
    npos = labels.sum(axis=1)
    sp = lambda z: np.log1p(np.exp(z))
    expected = np.mean(npos * sp(10.0) + (c - npos) * sp(-10.0))
    loss, weight = metrics['loss']
    self.assertAlmostEqual(float(loss), expected, places=4)
    self.assertEqual(float(weight), 3.0)

  @parameterized.parameters('sigmoid', 'softmax')
  def test_metrics_follow_logits_and_ignore_padding(self, loss_type):
    c = 5
    cfg = models.classifier_config(TINY, c, head_zero_init=False,
                                   head_bias_init=0.0, loss_type=loss_type)
    real = _batch(TINY, c, batch=4, seed=1)
    model, variables = _init(cfg, real)
    # Same batch plus a padded example with other content: nothing changes.
    junk = _batch(TINY, c, batch=1, seed=2)
    padded = NestedMap(
        image=jnp.concatenate([real.image, junk.image]),
        labels=jnp.concatenate([real.labels, 1.0 - junk.labels]),
        weight=jnp.concatenate([real.weight, jnp.zeros((1,))]),
    )
    m_real, out = _apply(model, variables, real)
    m_pad, _ = _apply(model, variables, padded)
    for key in ('loss', 'precision_at_1', 'map'):
      self.assertAlmostEqual(float(m_real[key][0]), float(m_pad[key][0]),
                             places=5, msg=key)
      self.assertEqual(float(m_pad[key][1]), 4.0, key)
    # The values are the formulas applied to the model's logits.
    z = np.asarray(out['logits'], np.float64)
    y = np.asarray(real.labels, np.float64)
    self.assertFalse(np.allclose(z, z[0]))  # a non-trivial head
    if loss_type == 'sigmoid':
      ref = np.mean(np.sum(np.logaddexp(0, -z) * y
                           + np.logaddexp(0, z) * (1 - y), axis=1))
    else:
      log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
      ref = np.mean(-np.sum(y / y.sum(axis=1, keepdims=True) * log_p, 1))
    self.assertAlmostEqual(float(m_real['loss'][0]), ref, places=4)
    p1 = np.mean(y[np.arange(4), z.argmax(axis=1)])
    self.assertAlmostEqual(float(m_real['precision_at_1'][0]), p1, places=6)
    # (metrics.np_mean_average_precision is checked against a by-definition
    # reference in test_metrics.)
    self.assertAlmostEqual(float(m_real['map'][0]),
                           metrics_lib.np_mean_average_precision(z, y),
                           places=5)

  def test_map_in_training_flag(self):
    c = 3
    cfg = models.classifier_config(TINY, c, map_in_training=False)
    batch = _batch(TINY, c, batch=2)
    model, variables = _init(cfg, batch)
    train_metrics, _ = _apply(model, variables, batch)
    self.assertEqual(set(train_metrics), {'loss', 'precision_at_1'})
    eval_context = base_layer.JaxContext.HParams(do_eval=True)

    @jax.jit
    def evaluate(v, b):
      with base_layer.JaxContext.new_context(hparams=eval_context):
        return model.apply(v, b)[0]

    eval_metrics = evaluate(variables, batch)
    self.assertEqual(set(eval_metrics), {'loss', 'precision_at_1', 'map'})

  def test_predictions_are_invariant_to_batch_order(self):
    c = 3
    cfg = models.classifier_config(TINY, c, head_zero_init=False)
    batch = _batch(TINY, c, batch=3)
    model, variables = _init(cfg, batch)
    pred = _apply(model, variables, batch, method=model.compute_predictions)
    perm = np.array([2, 0, 1])
    flipped = NestedMap(image=batch.image[perm], labels=batch.labels[perm],
                        weight=batch.weight[perm])
    pred_p = _apply(model, variables, flipped,
                    method=model.compute_predictions)
    np.testing.assert_allclose(pred_p.logits, pred.logits[perm], atol=1e-5)
    self.assertEqual(pred.pre_logits.shape, (3, TINY.model_dims))

  def test_bfloat16_body_float32_head(self):
    c = 3
    cfg = models.classifier_config(TINY, c, head_zero_init=False,
                                   head_bias_init=-10.0,
                                   fprop_dtype=jnp.bfloat16)
    batch = _batch(TINY, c, batch=2)
    model, variables = _init(cfg, batch)
    pred = _apply(model, variables, batch, method=model.compute_predictions)
    self.assertEqual(pred.pre_logits.dtype, jnp.bfloat16)
    self.assertEqual(pred.logits.dtype, jnp.float32)
    head = variables['params']['head']
    expected = (np.asarray(pred.pre_logits, np.float32) @ head['w']
                + head['b'])
    # A bfloat16 head would be off by up to ~0.03 near -10.
    np.testing.assert_allclose(pred.logits, expected, atol=1e-4)

  def test_scan_equals_unrolled(self):
    c = 4
    batch = _batch(TINY, c, batch=2)
    unrolled = models.classifier_config(TINY, c, head_zero_init=False,
                                        remat_policy=None)
    scanned = models.classifier_config(TINY, c, head_zero_init=False,
                                       scan=True)
    self.assertIs(scanned.encoder_tpl.cls,
                  transformers.StackedTransformerRepeated)
    self.assertEqual(scanned.encoder_tpl.x_times, TINY.num_layers)
    self.assertEqual(scanned.encoder_tpl.checkpoint_policy,
                     checkpoint_policy.AutodiffCheckpointType.SAVE_NOTHING)
    self.assertFalse(unrolled.encoder_tpl.remat)
    model_u, var_u = _init(unrolled, batch)
    model_s, var_s = _init(scanned, batch)
    # Stack the unrolled per-layer weights into the scanned layout.
    layers = [var_u['params']['encoder'][f'x_layers_{i}']
              for i in range(TINY.num_layers)]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
    var_s = jax.tree_util.tree_map(lambda x: x, var_s)
    for k in var_u['params']:
      if k != 'encoder':
        var_s['params'][k] = var_u['params'][k]
    var_s['params']['encoder'] = {'repeat': {'sub': {'x_layers_0': stacked}}}
    out_u = _apply(model_u, var_u, batch, method=model_u.compute_predictions)
    out_s = _apply(model_s, var_s, batch, method=model_s.compute_predictions)
    np.testing.assert_allclose(out_s.logits, out_u.logits, atol=1e-5)

  def test_adam_steps_lower_the_loss(self):
    c = 4
    cfg = models.classifier_config(TINY, c, remat_policy=None)
    batch = _batch(TINY, c, batch=8, seed=3)
    model, variables = _init(cfg, batch)
    params = variables['params']

    def loss_fn(p):
      metrics, _ = model.apply({'params': p}, batch)
      return metrics['loss'][0]

    opt = optax.adam(2e-2)

    @jax.jit
    def step(p, state):
      with base_layer.JaxContext.new_context():
        loss, grads = jax.value_and_grad(loss_fn)(p)
      updates, state = opt.update(grads, state, p)
      return optax.apply_updates(p, updates), state, loss

    state = opt.init(params)
    losses = []
    for _ in range(25):
      params, state, loss = step(params, state)
      losses.append(float(loss))
    self.assertLess(losses[-1], 0.05 * losses[0])
    # Moving the head bias alone cannot beat the label entropy (the loss of
    # the best image-independent predictor); fitting the images must.
    pos = np.asarray(batch.labels).mean(axis=0)
    floor = -np.sum(pos * np.log(np.maximum(pos, 1e-12))
                    + (1 - pos) * np.log(np.maximum(1 - pos, 1e-12)))
    self.assertLess(losses[-1], 0.5 * floor)
    # The encoder trained too, not just the head bias.
    before = variables['params']['encoder']['x_layers_0']['w_in']
    after = params['encoder']['x_layers_0']['w_in']
    self.assertGreater(float(jnp.max(jnp.abs(after - before))), 1e-3)


class ConfigTest(absltest.TestCase):

  def test_remat_policy_names(self):
    t = checkpoint_policy.AutodiffCheckpointType
    self.assertEqual(models.remat_checkpoint_type('nothing_saveable'),
                     t.SAVE_NOTHING)
    self.assertEqual(models.remat_checkpoint_type('save_qkv_out_proj'),
                     t.SAVE_QKV_OUT_PROJ)
    self.assertIsNone(models.remat_checkpoint_type(None))
    with self.assertRaisesRegex(ValueError, 'nothing_saveable'):
      models.remat_checkpoint_type('nothing_savable')
    cfg = models.classifier_config(TINY, 3, remat_policy='dots_saveable')
    self.assertTrue(cfg.encoder_tpl.remat)
    self.assertEqual(cfg.encoder_tpl.checkpoint_policy, t.SAVE_DOT_ONLY)

  def test_invalid_sizes_fail_early(self):
    with self.assertRaisesRegex(ValueError, 'patch_size'):
      models.classifier_config(dataclasses.replace(TINY, image_size=18), 3)
    with self.assertRaisesRegex(ValueError, 'num_heads'):
      models.classifier_config(dataclasses.replace(TINY, hidden_dims=63), 3)
    with self.assertRaisesRegex(ValueError, 'droppath'):
      models.classifier_config(TINY, 3, scan=True, droppath=0.1)

  def test_children_and_head_init(self):
    cfg = models.classifier_config(TINY, 3, head_bias_init=-4.0)
    params = _abstract_params(cfg)
    self.assertEqual(set(params),
                     {'patch_embed', 'encoder', 'final_ln', 'map_head',
                      'head'})
    model, variables = _init(cfg, _batch(TINY, 3, batch=1))
    del model
    np.testing.assert_array_equal(variables['params']['head']['b'],
                                  [-4.0] * 3)
    np.testing.assert_array_equal(variables['params']['head']['w'],
                                  np.zeros((TINY.model_dims, 3)))


if __name__ == '__main__':
  absltest.main()
