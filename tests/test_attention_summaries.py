"""Tests for vit22b_pax.attention_summaries: per-layer diagnostic names.

The stack tests run a 3-layer praxis stack of tiny parallel blocks, unrolled
(StackedTransformer) and scanned (StackedTransformerRepeated), and compare
every renamed per-layer summary with an independent float64 numpy forward
pass (tests/layer_reference.py) through the same layers in order: a layer
mixed up with another, a scanned iteration read as the wrong layer, or a
wrong max-logit / entropy formula fails.
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
from paxml import summary_utils
from praxis import base_layer

import layer_reference as ref
from vit22b_pax import attention_summaries
from vit22b_pax.layers import parallel_block

_LAYERS = 3


class RenameTest(absltest.TestCase):

  def test_renames_unrolled_scanned_and_head_keys(self):
    summaries = {
        'encoder/x_layers_0/attention/max_logit_scalar': 1,
        'encoder/x_layers_11/attention/entropy_scalar': 2,
        'map_head/attention/entropy_scalar': 3,
        'learning/lr_aggregate_scalar': 4,
    }
    self.assertEqual(attention_summaries.rename(summaries), {
        'attention/layer_00/max_logit_scalar': 1,
        'attention/layer_11/entropy_scalar': 2,
        'attention/map_head/entropy_scalar': 3,
        'learning/lr_aggregate_scalar': 4,
    })

  def test_scanned_blocks_of_two_layers(self):
    # Iteration R of a repeated 2-layer block holds layers 2R and 2R + 1.
    prefix = 'encoder/repeat/sub/x_layers_'
    summaries = {
        f'{prefix}{j}/attention/max_logit_{r}_scalar': 10 * r + j
        for r in range(3) for j in range(2)
    }
    renamed = attention_summaries.rename(summaries)
    self.assertEqual(renamed, {
        f'attention/layer_{2 * r + j:02d}/max_logit_scalar': 10 * r + j
        for r in range(3) for j in range(2)
    })
    # paxml writes these keys as TensorBoard tags unchanged.
    for key in renamed:
      self.assertTrue(attention_summaries.TAG.match(key), key)


class StackDiagnosticsTest(parameterized.TestCase):

  @parameterized.named_parameters(('unrolled', False), ('scanned', True))
  def test_per_layer_values_match_reference(self, scanned):
    block_p, flags = ref.block_config(
        parallel_block.ParallelBlock, use_qk_norm=False
    )
    block_p.attention_tpl.diagnostics = True
    stack = base_layer.instantiate(ref.stack_config(block_p, _LAYERS, scanned))
    x, paddings = ref.inputs_and_paddings()
    params = ref.init(stack, x, paddings)['params']
    # Larger weights: logits of a few units, entropies well below log(T).
    params = ref.perturb(params, seed=4, scale=1.0)
    with base_layer.JaxContext.new_context():
      _, updated = stack.apply(
          {'params': params}, x, paddings, mutable=['summaries']
      )
    flat = summary_utils.flatten_flax_summaries(updated['summaries'])
    # As the classifier names its stack.
    got = attention_summaries.rename(
        {'encoder/' + k: v for k, v in flat.items()}
    )
    self.assertLen(got, 2 * _LAYERS)

    padded = paddings[:, None, None, :] > 0.5
    h = ref.to_np(x)
    for i in range(_LAYERS):
      if scanned:
        layer = jax.tree_util.tree_map(
            lambda a, i=i: a[i], params['repeat']['sub']['x_layers_0']
        )
      else:
        layer = params[f'x_layers_{i}']
      layer = ref.to_np(layer)
      logits = ref.parallel_block(layer, h, flags, paddings,
                                  return_logits=True)
      probs = ref.softmax(np.where(padded, -np.inf, logits))
      entropy = -np.sum(probs * np.log(np.maximum(probs, 1e-300)), -1).mean()
      name = attention_summaries.layer_name(i)
      np.testing.assert_allclose(
          float(np.asarray(got[f'attention/{name}/max_logit_scalar']).item()),
          np.where(padded, -np.inf, logits).max(), rtol=1e-4,
      )
      np.testing.assert_allclose(
          float(np.asarray(got[f'attention/{name}/entropy_scalar']).item()),
          entropy, rtol=1e-4,
      )
      self.assertLess(entropy, 0.9 * np.log(x.shape[1]))
      h = ref.parallel_block(layer, h, flags, paddings)


if __name__ == '__main__':
  absltest.main()
