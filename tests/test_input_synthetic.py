"""Tests for vit22b_pax.input.synthetic: synthetic images and input specs."""

import os
import shutil
import tempfile

from absl.testing import absltest
import numpy as np
from praxis import base_hyperparams
from praxis import pax_fiddle
import tensorflow as tf

from vit22b_pax.input import resumable
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

  def _stream(self, num, start=0, hosts=1, host=0, is_training=True):
    """(batches, ids) of `num` batches of a (restarted, host-sliced) input."""
    log_dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, log_dir)
    p = pax_fiddle.Config(
        synthetic.SyntheticInput, batch_size=8 // hosts, image_size=8,
        num_classes=6, is_training=is_training, num_infeed_hosts=hosts,
        infeed_host_index=host, num_eval_batches=num, log_example_ids=True,
        id_log_dir=log_dir)
    p.deterministic_input_start_index._latest_model_step = start
    inp = base_hyperparams.instantiate(p)
    batches = [inp.get_next() for _ in range(num)]
    if not is_training:
      return batches, None
    ids = resumable.read_id_log(
        os.path.join(log_dir, 'input_ids', f'train.host{host}.jsonl'))
    return batches, [ids[i] for i in sorted(ids)]

  def test_restart_continues_the_stream(self):
    ref, ref_ids = self._stream(6)
    self.assertEqual(ref_ids[2], [f'train/{g}' for g in range(16, 24)])
    got, got_ids = self._stream(3, start=3)
    self.assertEqual(got_ids, ref_ids[3:])
    for g, r in zip(got, ref[3:]):
      np.testing.assert_array_equal(g.image, r.image)
      np.testing.assert_array_equal(g.labels, r.labels)
    # Example g is the same wherever it appears; batches differ.
    self.assertFalse(np.array_equal(ref[0].image, ref[1].image))

  def test_hosts_make_their_rows_of_the_global_batch(self):
    for is_training in (True, False):
      ref, _ = self._stream(4, is_training=is_training)
      start = 1 if is_training else 0  # Eval always starts at 0.
      hosts = [self._stream(3, start=start, hosts=2, host=h,
                            is_training=is_training) for h in range(2)]
      for i in range(3):
        for key in ('image', 'labels'):
          np.testing.assert_array_equal(
              np.concatenate([b[i][key] for b, _ in hosts]),
              ref[start + i][key])
      if is_training:
        self.assertEqual(hosts[0][1][0] + hosts[1][1][0], [
            f'train/{g}' for g in range(8, 16)])
    # Train and eval examples differ.
    train, _ = self._stream(1)
    evals, _ = self._stream(1, is_training=False)
    self.assertFalse(np.array_equal(train[0].labels, evals[0].labels))

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
