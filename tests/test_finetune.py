"""Tests for vit22b_pax.finetune: warm-start rules and the init experiment.

FinetuneTask's position-embedding resampling at restore time runs through
paxml's trainer in tests/test_launcher.py.
"""

import re

from absl.testing import absltest

from vit22b_pax import experiments
from vit22b_pax import finetune
from vit22b_pax import knobs


class FinetuneConfigTest(absltest.TestCase):

  def test_rules_restore_everything_but_the_head(self):
    exp = experiments.ViTSmokeFinetune()
    task_p = exp.task()
    self.assertIs(task_p.cls, finetune.FinetuneTask)
    (ckpt_dir, rules), = task_p.train.init_from_checkpoint_rules.items()
    self.assertEqual(ckpt_dir, exp.INIT_CHECKPOINT_DIR)
    # The checkpoint's task is the pre-training one, at its resolution.
    self.assertEqual(rules.task_p.model.patch_embed_tpl.image_size, 16)
    self.assertEqual(task_p.model.patch_embed_tpl.image_size, 24)
    names = [
        k for k, _ in finetune.NestedMap.FromNestedDict(
            exp.abstract_variables()['params']
        ).FlattenItems()
    ]
    loaded, ignored = [], []
    for name in names:
      path = 'params/' + name.replace('.', '/')
      if any(re.match(p, path) for p in rules.ignore_rules):
        ignored.append(path)
      elif any(re.match(p, path) for p, _ in rules.load_rules):
        loaded.append(path)
    self.assertCountEqual(ignored, ['params/head/w', 'params/head/b'])
    self.assertIn('params/patch_embed/pos_emb', loaded)
    self.assertEqual(len(loaded) + 2, len(names))
    self.assertFalse(rules.load_opt_states)
    self.assertIsNone(rules.step)  # The latest checkpoint by default.

  def test_init_overrides_reach_the_checkpoint_task(self):
    exp = experiments.ViTSmokeFinetune()
    exp.INIT_OVERRIDES = ('IMAGE_SIZE=20', 'NUM_CLASSES=3')
    exp.INIT_CHECKPOINT_STEP = 10
    rules = exp.checkpoint_loading_rules()
    self.assertEqual(rules.task_p.model.patch_embed_tpl.image_size, 20)
    self.assertEqual(rules.task_p.model.num_classes, 3)
    self.assertEqual(rules.step, 10)

  def test_bad_init_experiment_or_override_names_it(self):
    with self.assertRaisesRegex(
        knobs.ValidationError,
        r"INIT_EXPERIMENT='vit22b_pax.experiments.ViTSmok' is not a "
        'registered experiment',
    ):
      finetune.load_experiment('vit22b_pax.experiments.ViTSmok')
    with self.assertRaisesRegex(
        knobs.ValidationError, "ViTSmoke has no knob 'IMAGE_SIZ'"
    ):
      finetune.load_experiment(
          'vit22b_pax.experiments.ViTSmoke', ['IMAGE_SIZ=20']
      )


if __name__ == '__main__':
  absltest.main()
