"""One end-to-end training run on a generated dataset with a corrupt record.

setUpClass does the expensive work once, as subprocesses on one CPU device:

1. `python -m vit22b_pax.tools.make_dataset shapes` writes a small shapes
   dataset (1,536 train / 64 eval images at 24 px); a small few-shot
   variant (10 train and 1 eval image per class of its 30) is written in
   process;
2. one record of train shard 0 that the run will read (row 5 of step 2's
   batch, found by its id through the training input, which is
   deterministic) is replaced in place by a corrupt one (a valid
   tf.Example whose image/encoded is not an image);
3. `python -m vit22b_pax.tools.train --exp=...ViTShapesCPU` (what
   `make train` runs) trains the tiny preset on it for 8 steps through
   paxml.main, evaluating on the eval split (--eval_on_test) every 2 steps
   and few-shot probes on the few-shot variant every 4, with a progress
   line per logged loss on stdout and paxml's log in train.log;
4. `python -m vit22b_pax.tools.train_summary` writes summary.json and
   training.png.

The tests check the summary (step count, losses, eval mAPs over all and
leaf classes, the chance levels, exactly one bad record, the few-shot
accuracies), the progress lines against the summaries, the log file, the
checkpoints and the TensorBoard files, and that the few-shot scalars of
the last step equal fewshot_features.evaluate_data_dir on the variables of
the last checkpoint. The 8 steps read 128 of the 1,536 training records,
none twice, so the corrupt record is read (and counted) exactly once.
"""

import json
import pathlib
import re
import shutil
import subprocess
import tempfile

from absl.testing import absltest
from praxis import base_hyperparams
import tensorflow as tf

import subprocess_runner
from vit22b_pax import experiments
from vit22b_pax import fewshot_features
from vit22b_pax import job_checkpoint
from vit22b_pax.input import data_format
from vit22b_pax.input import praxis_input
from vit22b_pax.input import resumable
from vit22b_pax.input import shapes
from vit22b_pax.input import stats
from vit22b_pax.tools import train
from vit22b_pax.tools import train_summary

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_STEPS = 8
_NUM_TRAIN = 1536
_NUM_EVAL = 64
_EVAL_INTERVAL = 2
_FEWSHOT_INTERVAL = 4
_FEWSHOT_CLASSES = 30
_FEWSHOT_SHOTS = (1, 10)
_SUMMARY_KEYS = (
    'steps', 'train_loss_first', 'train_loss_last', 'eval_step', 'eval_map',
    'chance_map', 'eval_precision_at_1', 'chance_precision_at_1',
    'eval_map_leaf', 'chance_map_leaf', 'eval_precision_at_1_leaf',
    'chance_precision_at_1_leaf', 'num_classes', 'num_leaf_classes',
    'examples_per_sec', 'bad_records', 'skipped_steps',
    'skipped_step_numbers', 'fewshot_step', 'fewshot_10shot',
    'fewshot_chance', 'fewshot',
)
# What ignore_errors logs (WARNING) for each record it skips.
_SKIP_LOG = 'Error raised with error message'


def _run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
  # WARNING level: TensorFlow's log of each skipped record stays visible.
  return subprocess_runner.run_module(*args, timeout=timeout, tf_log_level='1')


def _id_at(data_dir: pathlib.Path, step: int, row: int) -> str:
  """The id of the training example at (step, row) of the run below."""
  log_dir = data_dir.parent / 'ids'
  p = praxis_input.MultiLabelImageInput.config(
      data_dir=str(data_dir), split='train', image_size=16,
      num_classes=shapes.shape_classes().num_classes, batch_size=16,
      is_training=True, crop_min_area=experiments.ViTShapesCPU.CROP_MIN_AREA,
      input_random_seed=experiments.ViTShapesCPU.INPUT_SEED, stats_dir='',
      log_example_ids=True, id_log_dir=str(log_dir))
  inp = base_hyperparams.instantiate(p)
  for _ in range(step + 1):
    inp.get_next()
  ids = resumable.read_id_log(
      str(log_dir / resumable.ID_LOG_DIR / 'train.host0.jsonl'))
  return ids[step][row]


def _corrupt_record(data_dir: pathlib.Path, image_id: str) -> int:
  """Replaces the training record `image_id` by one whose image does not
  decode, in place: every record keeps its position (and dataset_info.json
  its counts). Returns the number of records replaced."""
  bad = data_format.make_example(b'not an image', [0], 'corrupt')
  replaced = 0
  for path in data_format.list_shards(str(data_dir), 'train'):
    records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    ids = [data_format.parse_example(r)['id'] for r in records]
    if image_id in ids:
      replaced += ids.count(image_id)
      with tf.io.TFRecordWriter(path) as w:
        for record, i in zip(records, ids):
          w.write(bad if i == image_id else record)
  return replaced


class TrainEndToEndTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix='vit22b_train_e2e_'))
    cls.data = cls.tmp / 'shapes'
    cls.fewshot_data = cls.tmp / 'shapes_fewshot'
    cls.job = cls.tmp / 'job'
    cls.make = _run(
        'vit22b_pax.tools.make_dataset', 'shapes', f'--out={cls.data}',
        f'--num_train={_NUM_TRAIN}', f'--num_eval={_NUM_EVAL}',
        '--image_size=24', '--train_shards=2', '--eval_shards=1',
    )
    cls.train = cls.summary_proc = None
    if cls.make.returncode != 0:
      return
    cls.replaced = _corrupt_record(cls.data, _id_at(cls.data, 2, row=5))
    shapes.generate(
        str(cls.fewshot_data), num_train=10 * _FEWSHOT_CLASSES,
        num_eval=_FEWSHOT_CLASSES, image_size=24, train_shards=1,
        eval_shards=1, progress=False, variant=shapes.FEWSHOT,
    )
    cls.train = _run(
        'vit22b_pax.tools.train',
        '--exp=vit22b_pax.experiments.ViTShapesCPU',
        f"--fdl.DATA_DIR='{cls.data}'",
        "--fdl.MODEL_SIZE='tiny'",
        '--fdl.PATCH_SIZE=4',  # tiny: 16 px / 4 = 16 tokens.
        f'--fdl.NUM_TRAIN_STEPS={_STEPS}',
        '--fdl.GLOBAL_BATCH_SIZE=16',
        '--fdl.EVAL_BATCH_SIZE=32',  # The 64 eval images in 2 batches.
        '--fdl.WARMUP_STEPS=2',
        '--fdl.COOLDOWN_STEPS=2',
        '--fdl.RSQRT_TIMESCALE=4',
        f'--fdl.SAVE_INTERVAL_STEPS={_STEPS}',
        '--fdl.SUMMARY_INTERVAL_STEPS=4',
        '--fdl.STEPS_PER_SEC_INTERVAL_STEPS=4',
        # Divides the steps: the last evals.
        f'--fdl.EVAL_INTERVAL_STEPS={_EVAL_INTERVAL}',
        f"--fdl.FEWSHOT_DATASETS=('{cls.fewshot_data}',)",
        f'--fdl.FEWSHOT_SHOTS={_FEWSHOT_SHOTS}',
        '--fdl.FEWSHOT_NUM_SEEDS=2',
        f'--fdl.FEWSHOT_INTERVAL_STEPS={_FEWSHOT_INTERVAL}',
        f'--job_log_dir={cls.job}',
        '--eval_on_test',
    )
    if cls.train.returncode != 0:
      return
    cls.log = (cls.job / train.LOG_FILE).read_text()
    cls.summary_proc = _run(
        'vit22b_pax.tools.train_summary', f'--job_log_dir={cls.job}',
        f'--data_dir={cls.data}',
    )

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def _assert_ok(self, proc):
    self.assertIsNotNone(proc, 'an earlier step failed')
    self.assertEqual(proc.returncode, 0, proc.stderr[-4000:])

  def _summary(self):
    for proc in (self.make, self.train, self.summary_proc):
      self._assert_ok(proc)
    path = self.job / 'summary.json'
    self.assertTrue(path.exists(), f'no {path}')
    return json.loads(path.read_text())

  def test_summary_has_every_key_and_the_step_count(self):
    summary = self._summary()
    for key in _SUMMARY_KEYS:
      self.assertIn(key, summary)
    self.assertEqual(summary['steps'], _STEPS)  # The class default is 1,500.
    self.assertEqual(summary['eval_step'], _STEPS)
    for key in ('train_loss_first', 'train_loss_last'):
      self.assertIsInstance(summary[key], float)
      self.assertGreater(summary[key], 0.0)
    self.assertGreater(summary['examples_per_sec'], 0.0)
    # The non-finite guard ran (its file exists) and skipped nothing.
    self.assertEqual(summary['skipped_steps'], 0)
    self.assertEqual(summary['skipped_step_numbers'], [])

  def test_eval_metrics_and_chance_level(self):
    summary = self._summary()
    for key in ('eval_map', 'eval_map_leaf'):
      self.assertIsInstance(summary[key], float)
      self.assertGreater(summary[key], 0.0)
      self.assertLessEqual(summary[key], 1.0)
    for key in ('eval_precision_at_1', 'eval_precision_at_1_leaf'):
      self.assertBetween(summary[key], 0.0, 1.0)
    # Over the whole eval split, hierarchy expanded (what the run reports).
    self.assertAlmostEqual(
        summary['chance_map'], stats.chance_map(str(self.data), 'eval'),
        places=12,
    )
    # The shapes hierarchy: 60 classes, the 42 coloured shapes are leaves.
    self.assertEqual(summary['num_classes'], 60)
    self.assertEqual(summary['num_leaf_classes'], 42)
    self.assertAlmostEqual(
        summary['chance_map_leaf'],
        stats.chance_map(str(self.data), 'eval',
                         classes=stats.leaf_classes(str(self.data))),
        places=12,
    )
    self.assertLess(summary['chance_map_leaf'], summary['chance_map'])
    self.assertTrue((self.job / train_summary.PLOT_FILE).exists())

  def test_progress_lines_match_the_summaries(self):
    self._assert_ok(self.train)
    # Not a terminal: one line per logged loss or eval, then the end line.
    lines = self.train.stdout.splitlines()
    self.assertEqual(lines[0], train.Progress().line(0.0))
    self.assertRegex(
        lines[-1], r'^paxml\.main finished in \w+\. Log: '
        + re.escape(str(self.job / train.LOG_FILE)) + '$')
    scalars, evals = train_summary.read_run(self.job)
    losses = {s: v for s, _, v in scalars['loss']}
    self.assertEqual(sorted(losses), [4, 8])  # SUMMARY_INTERVAL_STEPS=4.
    for step, loss in losses.items():
      self.assertTrue(
          any(l.startswith(f'step {step}/{_STEPS} ') and
              f'| loss {loss:.4f} |' in l for l in lines),
          (step, loss, lines))
    eval_map = evals['Metrics/map_dataset'][-1][2]
    eval_leaf = evals['Metrics/map_leaf_dataset'][-1][2]
    self.assertIn(
        f'| eval mAP {eval_map:.3f}, leaves {eval_leaf:.3f} @{_STEPS}',
        lines[-2])
    # paxml's log went to the file, not to the terminal.
    self.assertEqual(self.train.stderr, '')
    self.assertIn('[PAX STATUS]', self.log)
    self.assertNotIn('[PAX STATUS]', self.train.stdout)

  def test_the_corrupt_record_is_counted_once(self):
    summary = self._summary()
    self.assertEqual(self.replaced, 1)
    # The pipeline read the corrupt record exactly once (paxml's log is in
    # the job directory's train.log) ...
    self.assertEqual(
        self.log.count(_SKIP_LOG), 1,
        [l for l in self.log.splitlines() if _SKIP_LOG in l],
    )
    self.assertIn('Unknown image file format', self.log)
    # ... so the training input counted one and the eval input none.
    self.assertEqual(
        stats.read_input_stats(str(self.job)), {'train': 1, 'eval': 0}
    )
    self.assertEqual(summary['bad_records'], 1)

  def test_checkpoints_and_summaries_are_written(self):
    self._assert_ok(self.train)
    checkpoints = self.job / 'checkpoints'
    self.assertEqual(
        sorted(p.name for p in checkpoints.glob('checkpoint_*')),
        ['checkpoint_00000000', f'checkpoint_{_STEPS:08d}'],
    )
    # An orbax checkpoint: a state/ dir with one entry per variable.
    state = checkpoints / f'checkpoint_{_STEPS:08d}' / 'state'
    self.assertTrue((state / 'mdl_vars.params.head.w').is_dir())
    for name in ('train', 'eval_test_eval', 'eval_test_fewshot'):
      events = list(
          (self.job / 'summaries' / name).glob('events.out.tfevents.*')
      )
      self.assertNotEmpty(events, name)

  def test_fewshot_runs_every_fewshot_interval(self):
    self._assert_ok(self.train)
    _, evals = train_summary.read_run(self.job)
    self.assertEqual([s for s, _, _ in evals['loss']], [2, 4, 6, 8])
    fewshot = train_summary.read_fewshot(self.job)
    self.assertLen(fewshot, 2 * len(_FEWSHOT_SHOTS) + 1)  # Mean, std, chance.
    for tag, series in fewshot.items():
      self.assertEqual([s for s, _, _ in series], [4, 8], tag)
    self.assertIn('Few-shot probes at step 8 on shapes_fewshot', self.log)

  def test_fewshot_equals_the_evaluation_of_the_last_checkpoint(self):
    summary = self._summary()
    job = str(self.job)
    exp = job_checkpoint.job_experiment(job)  # The run's knobs.
    self.assertEqual(exp.FEWSHOT_DATASETS, (str(self.fewshot_data),))
    mdl_vars, step = job_checkpoint.restore_mdl_vars(exp, job, _STEPS)
    report = fewshot_features.evaluate_data_dir(
        fewshot_features.FeatureExtractor.from_experiment(
            exp, exp.EVAL_BATCH_SIZE),
        mdl_vars, str(self.fewshot_data), shots=_FEWSHOT_SHOTS, num_seeds=2)
    fewshot = train_summary.read_fewshot(self.job)
    for tag, value in report.scalars().items():
      self.assertEqual(fewshot[tag][-1][0], step)
      self.assertAlmostEqual(fewshot[tag][-1][2], value, 6, tag)
    self.assertEqual(summary['fewshot_step'], _STEPS)
    self.assertEqual(list(summary['fewshot_10shot']), ['shapes_fewshot'])
    self.assertAlmostEqual(summary['fewshot_10shot']['shapes_fewshot'],
                           report.results[10].mean, 6)
    self.assertAlmostEqual(summary['fewshot_chance']['shapes_fewshot'],
                           1 / _FEWSHOT_CLASSES, 6)
    for k in _FEWSHOT_SHOTS:
      got = summary['fewshot']['shapes_fewshot'][f'{k}shot']
      self.assertAlmostEqual(got['mean'], report.results[k].mean, 6)
      self.assertAlmostEqual(got['std'], report.results[k].std, 6)
    # The printed summary: the 10-shot accuracy with its chance level.
    self.assertRegex(
        self.summary_proc.stdout,
        r'few-shot 10-shot +' + re.escape(f'{report.results[10].mean:.4f}')
        + r'  \(chance 0\.0333\) +shapes_fewshot @8: linear probe')


if __name__ == '__main__':
  absltest.main()
