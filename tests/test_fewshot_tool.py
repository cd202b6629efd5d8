"""End to end: a tiny training run, then `python -m vit22b_pax.tools.fewshot`.

setUpClass writes a tiny multi-label shapes dataset and a tiny few-shot
variant (3 train and 1 eval image per class, 24 px), trains the tiny preset
for 2 steps through `python -m paxml.main` (checkpoints at steps 0 and 2)
and runs the tool on the job directory with --json and no knob overrides
(it must take the run's from the job's experiment_knobs.txt), both as
subprocesses on one CPU device. The tests check the tool's JSON, that it
equals the same evaluation done here on the restored checkpoint, how the
job's experiment is rebuilt, and the job directory's error messages.
"""

import json
import os
import pathlib
import shutil
import tempfile

from absl.testing import absltest
import jax
import numpy as np

import subprocess_runner
from vit22b_pax import experiments
from vit22b_pax import fewshot
from vit22b_pax import fewshot_features
from vit22b_pax import job_checkpoint
from vit22b_pax import knobs
from vit22b_pax.input import shapes

_STEPS = 2
_OVERRIDES = ("MODEL_SIZE='tiny'", 'PATCH_SIZE=4')  # 16 px, D 32.
_TRAIN_OVERRIDES = _OVERRIDES + (
    f'NUM_TRAIN_STEPS={_STEPS}', 'GLOBAL_BATCH_SIZE=8', 'EVAL_BATCH_SIZE=8',
    'WARMUP_STEPS=1', 'COOLDOWN_STEPS=1', 'RSQRT_TIMESCALE=4',
    f'SAVE_INTERVAL_STEPS={_STEPS}', 'SUMMARY_INTERVAL_STEPS=1',
    'STEPS_PER_SEC_INTERVAL_STEPS=1', f'EVAL_INTERVAL_STEPS={_STEPS}',
)
_SHOTS = (1, 2)
_SEEDS = 2
_NUM_CLASSES = 30


def _experiment(*extra):
  exp = experiments.ViTShapesCPU()
  knobs.apply_overrides(exp, list(_OVERRIDES) + list(extra))
  return exp


class FewShotToolTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix='vit22b_fewshot_tool_'))
    cls.data = cls.tmp / 'shapes'
    cls.fewshot_data = cls.tmp / 'shapes_fewshot'
    cls.job = cls.tmp / 'job'
    shapes.generate(str(cls.data), num_train=64, num_eval=16, image_size=24,
                    train_shards=1, eval_shards=1, progress=False)
    shapes.generate(str(cls.fewshot_data), num_train=3 * _NUM_CLASSES,
                    num_eval=_NUM_CLASSES, image_size=24, train_shards=1,
                    eval_shards=1, progress=False, variant=shapes.FEWSHOT)
    cls.train = subprocess_runner.run_module(
        'paxml.main', '--fdl_config=vit22b_pax.experiments.ViTShapesCPU',
        f"--fdl.DATA_DIR='{cls.data}'",
        *(f'--fdl.{o}' for o in _TRAIN_OVERRIDES),
        f'--job_log_dir={cls.job}', timeout=240)
    cls.tool = None
    if cls.train.returncode == 0:
      cls.tool = subprocess_runner.run_module(
          'vit22b_pax.tools.fewshot', f'--job_log_dir={cls.job}',
          f'--data_dir={cls.fewshot_data}',
          f'--shots={",".join(map(str, _SHOTS))}', f'--seeds={_SEEDS}',
          '--batch_size=64', '--json', timeout=240)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def _record(self):
    self.assertEqual(self.train.returncode, 0, self.train.stderr[-4000:])
    self.assertIsNotNone(self.tool)
    self.assertEqual(self.tool.returncode, 0, self.tool.stderr[-4000:])
    return json.loads(self.tool.stdout)

  def test_json_keys_and_ranges(self):
    record = self._record()
    self.assertEqual(record['experiment'],
                     'vit22b_pax.experiments.ViTShapesCPU')
    self.assertEqual(record['step'], _STEPS)  # The latest checkpoint.
    self.assertEqual(record['dataset'], 'shapes_fewshot')
    self.assertEqual(
        (record['num_classes'], record['num_train'], record['num_test'],
         record['feature_dim'], record['num_skipped']),
        (_NUM_CLASSES, 3 * _NUM_CLASSES, _NUM_CLASSES, 32, 0))
    self.assertAlmostEqual(record['chance_accuracy'], 1 / _NUM_CLASSES)
    self.assertEqual(record['l2'], fewshot.DEFAULT_L2)
    self.assertIsNone(record['l2_sweep'])
    self.assertEqual(sorted(record['results']), ['1', '2'])
    for k, result in record['results'].items():
      self.assertLen(result['accuracies'], _SEEDS)
      for acc in result['accuracies']:
        # A multiple of 1/30 (30 test images).
        self.assertBetween(acc, 0.0, 1.0)
        self.assertAlmostEqual(acc * _NUM_CLASSES,
                               round(acc * _NUM_CLASSES), 9)
      self.assertAlmostEqual(result['mean'], np.mean(result['accuracies']))
      self.assertAlmostEqual(result['std'],
                             np.std(result['accuracies'], ddof=1))
      self.assertEqual(result['l2'], [fewshot.DEFAULT_L2] * _SEEDS, k)
    self.assertIn('features train', self.tool.stderr)  # The progress bar.

  def test_equals_the_evaluation_of_the_restored_checkpoint(self):
    record = self._record()
    exp = _experiment()
    mdl_vars, step = job_checkpoint.restore_mdl_vars(exp, str(self.job))
    self.assertEqual(step, _STEPS)
    extractor = fewshot_features.FeatureExtractor.from_experiment(exp, 64)
    report = fewshot_features.evaluate_data_dir(
        extractor, mdl_vars, str(self.fewshot_data), shots=_SHOTS,
        num_seeds=_SEEDS)
    self.assertEqual(fewshot.to_json(report.results), record['results'])
    # Step 0 (random init) is another set of variables.
    initial, step = job_checkpoint.restore_mdl_vars(exp, str(self.job), 0)
    self.assertEqual(step, 0)
    diffs = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
        mdl_vars, initial))
    self.assertGreater(max(diffs), 0.0)

  def test_the_job_experiment_is_the_class_with_the_runs_knobs(self):
    self._record()
    job = str(self.job)
    name, values = job_checkpoint.recorded_knobs(job)
    self.assertEqual(name, 'vit22b_pax.experiments.ViTShapesCPU')
    exp = job_checkpoint.job_experiment(job)
    self.assertIsInstance(exp, experiments.ViTShapesCPU)
    for override in _TRAIN_OVERRIDES:
      knob, value = override.split('=')
      self.assertEqual(getattr(exp, knob), knobs.parse_value(value, knob))
      self.assertEqual(values[knob], getattr(exp, knob))
    self.assertEqual(exp.DATA_DIR, str(self.data))
    job_checkpoint.check_model_config(exp, job)
    # A job without the knobs file: the class from experiment_cls_vars.txt,
    # its defaults (the caller applies the run's overrides).
    old = self.tmp / 'old_job'
    old.mkdir(exist_ok=True)
    shutil.copy(self.job / 'experiment_cls_vars.txt', old)
    exp = job_checkpoint.job_experiment(str(old))
    self.assertIsInstance(exp, experiments.ViTShapesCPU)
    self.assertEqual(exp.MODEL_SIZE, experiments.ViTShapesCPU.MODEL_SIZE)
    (old / knobs.KNOBS_FILE).write_text(
        '# vit22b_pax.experiments.ViTShapesCPU: effective knob values.\n'
        'MODEL_SIZE = tiny\n')
    with self.assertRaisesRegex(
        job_checkpoint.JobError,
        r"experiment_knobs\.txt line 2: expected KNOB = <Python literal>,"
        r" got 'MODEL_SIZE = tiny'"):
      job_checkpoint.job_experiment(str(old))

  def test_job_dir_errors_name_the_path(self):
    self._record()
    job = str(self.job)
    with self.assertRaisesRegex(
        job_checkpoint.JobError,
        rf'No checkpoint of step 7 in {job}/checkpoints; steps saved: \[0,'
        r' 2\]\.'):
      job_checkpoint.restore_mdl_vars(_experiment(), job, 7)
    with self.assertRaisesRegex(
        job_checkpoint.JobError,
        r'model\.patch_embed_tpl\.patch_size is 4 there, 8 here'
        rf' \({job}/model_params\.txt\)'):
      job_checkpoint.check_model_config(_experiment('PATCH_SIZE=8'), job)
    job_checkpoint.check_model_config(_experiment(), job)  # Matches.
    self.assertEqual(job_checkpoint.experiment_name(job),
                     'vit22b_pax.experiments.ViTShapesCPU')
    empty = self.tmp / 'empty'
    empty.mkdir(exist_ok=True)
    with self.assertRaisesRegex(
        job_checkpoint.JobError,
        rf'{empty}/experiment_cls_vars\.txt does not exist'):
      job_checkpoint.experiment_name(str(empty))
    with self.assertRaisesRegex(job_checkpoint.JobError,
                                rf'No checkpoints in {empty}/checkpoints'):
      job_checkpoint.restore_mdl_vars(_experiment(), str(empty))
    # A checkpoint of another model: named variable by variable.
    with self.assertRaisesRegex(
        job_checkpoint.JobError,
        r'checkpoint_00000002 does not hold this model\'s variables: .*'
        r'params\.patch_embed\.pos_emb has shape \(16, 32\) in the'
        r' checkpoint, \(36, 32\) in the model'):
      job_checkpoint.restore_mdl_vars(_experiment("IMAGE_SIZE=24"), job)


if __name__ == '__main__':
  absltest.main()
