"""Tests for vit22b_pax.input.resumable: the restored step reaches the input.

paxml's own hook (executors._maybe_update_latest_model_step, what the
trainer calls before instantiating the train input) must set the step our
inputs start at; the id log must survive a kill between lines.
"""

import os
import shutil
import tempfile

from absl.testing import absltest
from paxml import executors
from praxis import base_hyperparams
from praxis import pax_fiddle

from vit22b_pax import experiments
from vit22b_pax.input import resumable
from vit22b_pax.input import synthetic


def _config(**kwargs):
  return pax_fiddle.Config(
      synthetic.SyntheticInput, batch_size=2, image_size=4, num_classes=3,
      **kwargs)


class StartIndexTest(absltest.TestCase):

  def test_paxml_hook_sets_the_start_step(self):
    # The hook reads task.train fields: the experiments' task config has
    # them (paxml passes the instantiated task).
    task = experiments.ViTSmoke().task()
    for restored, want in ((None, 0), (0, 0), (37, 37)):
      p = _config(is_training=True)
      executors._maybe_update_latest_model_step(p, restored, task)  # pylint: disable=protected-access
      inp = base_hyperparams.instantiate(p)
      self.assertEqual(inp.start_batch, want)
    # Eval passes always start at example 0.
    p = _config(is_training=False)
    executors._maybe_update_latest_model_step(p, 37, task)  # pylint: disable=protected-access
    self.assertEqual(base_hyperparams.instantiate(p).start_batch, 0)

  def test_host_rows(self):
    inp = base_hyperparams.instantiate(
        _config(is_training=True, num_infeed_hosts=3, infeed_host_index=2))
    self.assertEqual(inp.global_batch_size, 6)
    self.assertEqual(inp.host_rows().tolist(), [4, 5])
    with self.assertRaisesRegex(ValueError, r'infeed_host_index 3 is not in'):
      base_hyperparams.instantiate(
          _config(num_infeed_hosts=3, infeed_host_index=3))


class IdLogTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir)

  def test_lines_per_batch_and_last_line_wins(self):
    inp = base_hyperparams.instantiate(_config(
        is_training=True, log_example_ids=True, id_log_dir=self.dir))
    inp.log_ids(4, ['a', 'b'])
    inp.log_ids(5, ['c', 'd'])
    inp.log_ids(4, ['e', 'f'])  # A rerun of batch 4 after a restart.
    path = os.path.join(self.dir, 'input_ids', 'train.host0.jsonl')
    with open(path) as f:
      self.assertLen(f.readlines(), 3)
    self.assertEqual(resumable.read_id_log(path),
                     {4: ['e', 'f'], 5: ['c', 'd']})

  def test_needs_a_directory(self):
    with self.assertRaisesRegex(ValueError, 'log_example_ids needs'):
      base_hyperparams.instantiate(
          _config(is_training=True, log_example_ids=True))


if __name__ == '__main__':
  absltest.main()
