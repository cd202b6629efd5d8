"""Tests for vit22b_pax.input.synthetic: synthetic images and input specs."""

from absl.testing import absltest
import numpy as np
from praxis import base_hyperparams
from praxis import pax_fiddle
import tensorflow as tf

from vit22b_pax.input import synthetic


class SyntheticInputTest(absltest.TestCase):

  def _input(self, **kwargs):
    params = dict(batch_size=64, image_size=8, num_classes=6, noise=0.05)
    params.update(kwargs)
    return base_hyperparams.instantiate(
        pax_fiddle.Config(synthetic.SyntheticInput, **params)
    )

  def test_batch_contract_and_learnable_labels(self):
    inp = self._input(is_training=True)
    batch = inp.get_next()
    self.assertEqual(batch.image.shape, (64, 8, 8, 3))
    self.assertEqual(batch.labels.shape, (64, 6))
    self.assertEqual(batch.image.dtype, np.float32)
    self.assertLessEqual(np.abs(batch.image).max(), 1.0)
    np.testing.assert_array_equal(batch.weight, np.ones(64))
    self.assertTrue((batch.labels.sum(axis=1) >= 1).all())
    # Labels are readable from pixels: least squares against the class
    # patterns recovers the label mix, whose top entry is always a label.
    patterns = inp._patterns.reshape(6, -1)
    mix, *_ = np.linalg.lstsq(
        patterns.T, batch.image.reshape(64, -1).T, rcond=None
    )
    top = mix.T.argmax(axis=1)
    self.assertEqual(batch.labels[np.arange(64), top].min(), 1.0)

  def test_eval_is_finite_and_repeatable(self):
    inp = self._input(is_training=False, num_eval_batches=3)
    first = [inp.get_next() for _ in range(3)]
    with self.assertRaises(tf.errors.OutOfRangeError):
      inp.get_next()
    inp.reset()
    np.testing.assert_array_equal(inp.get_next().image, first[0].image)

  def test_specs_match_a_batch(self):
    specs = base_hyperparams.instantiate(
        pax_fiddle.Config(
            synthetic.ViTInputSpecsProvider, batch_size=4, image_size=8,
            num_classes=6,
        )
    ).get_input_specs()
    batch = self._input(batch_size=4, is_training=True).get_next()
    for key in ('image', 'labels', 'weight'):
      self.assertEqual(specs[key].shape, batch[key].shape, key)
      self.assertEqual(specs[key].dtype, batch[key].dtype, key)


if __name__ == '__main__':
  absltest.main()
