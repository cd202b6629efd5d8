"""Tests for vit22b_pax.health: the non-finite guard.

In-process: the loss guard's gradients, the batch poisoning, StepGuard's
counting / logging / file / limit / resume, and the experiment's wiring.

Through the real launcher (setUpClass, two ViTSmoke runs as concurrent
subprocesses on one CPU device each, checkpoints every step):

  one_bad:  step 4 gets NaN images; the run finishes. Its checkpoints 4
            and 5 (before and after step 4) are equal, 5 and 6 are not.
  too_many: MAX_CONSECUTIVE_BAD_STEPS=2, NaN at steps 1, 2 (two in a row:
            tolerated) and 4, 5, 6 (three: the run stops at step 6), with
            an unrolled encoder (one_bad is scanned) for the per-layer
            attention summaries of both encoders.
"""

import concurrent.futures
import json
import math
import pathlib
import re
import shutil
import tempfile

from absl.testing import absltest
import jax
from jax.experimental.array_serialization import serialization
import jax.numpy as jnp
import numpy as np
from paxml import learners
from praxis import py_utils

import subprocess_runner
from vit22b_pax import experiments
from vit22b_pax import health
from vit22b_pax import knobs
from vit22b_pax.tools import train_summary

_SMOKE = 'vit22b_pax.experiments.ViTSmoke'
_NAN = float('nan')


def _checkpoint(job: pathlib.Path, step: int) -> dict[str, np.ndarray]:
  """Every array (variables, optimizer state, step) of a paxml checkpoint."""
  state = job / 'checkpoints' / f'checkpoint_{step:08d}' / 'state'
  names = sorted(p.name for p in state.iterdir() if not p.name.startswith('_'))
  specs = [serialization.get_tensorstore_spec(str(state / n)) for n in names]
  arrays = serialization.run_deserialization(
      [jax.sharding.SingleDeviceSharding(jax.devices()[0])] * len(specs), specs
  )
  return {n: np.asarray(a) for n, a in zip(names, arrays)}


def _checkpoint_steps(job: pathlib.Path) -> list[int]:
  return sorted(
      int(p.name.split('_')[-1]) for p in (job / 'checkpoints').glob(
          'checkpoint_*') if p.name.split('_')[-1].isdigit()
  )


def _differing(a: dict[str, np.ndarray], b: dict[str, np.ndarray]):
  assert a.keys() == b.keys()
  return sorted(n for n in a if not np.array_equal(a[n], b[n]))


def _summaries(outputs, valid, grad_norm):
  return {health.VALID_STEP_SUMMARY: np.float32(valid),
          health.GRAD_NORM_SUMMARY: np.float32(grad_norm), **outputs}


class LossGuardTest(absltest.TestCase):

  def test_finite_loss_keeps_value_and_gradients(self):
    x = jnp.array([1.0, -2.0, 3.0])
    loss = lambda x: jnp.sum(x**2)
    guarded = lambda x: health.nan_gradients_if_nonfinite(loss(x))
    self.assertEqual(float(guarded(x)), 14.0)
    np.testing.assert_array_equal(jax.grad(guarded)(x), [2.0, -4.0, 6.0])

  def test_infinite_loss_with_finite_gradients_gets_nan_gradients(self):
    # d/dx (sum(x) + inf) is finite: without the guard the learner's
    # gradient-norm check would let this step update the weights.
    x = jnp.array([1.0, 2.0])
    loss = lambda x: jnp.sum(x) + jnp.inf
    np.testing.assert_array_equal(jax.grad(loss)(x), [1.0, 1.0])
    grads = jax.grad(lambda x: health.nan_gradients_if_nonfinite(loss(x)))(x)
    self.assertTrue(np.isnan(grads).all())

  def test_aggregator_routes_the_trained_loss_through_the_guard(self):
    agg = health.NonFiniteLossAggregator(loss_key='loss')

    def weighted(x):
      metrics = py_utils.NestedMap(loss=(jnp.sum(x) / 0.0, jnp.float32(2.0)))
      weighted_loss, mean_loss, weight = agg.aggregate(metrics)
      return weighted_loss, (mean_loss, weight)

    x = jnp.array([1.0, 2.0])
    (loss, (mean, weight)), grads = jax.value_and_grad(
        weighted, has_aux=True)(x)
    self.assertEqual(float(loss), np.inf)
    self.assertEqual(float(mean), np.inf)
    self.assertEqual(float(weight), 2.0)
    # Without the guard these would be inf (d/dx sum(x) / 0).
    self.assertTrue(np.isnan(grads).all())


class PoisonBatchTest(absltest.TestCase):

  def test_only_the_field_is_nan(self):
    batch = py_utils.NestedMap(
        image=jnp.ones((2, 4, 4, 3)), labels=jnp.ones((2, 5)),
        weight=jnp.ones((2,)),
    )
    poisoned = health.poison_batch(batch, 'image')
    self.assertTrue(np.isnan(poisoned.image).all())
    np.testing.assert_array_equal(poisoned.labels, batch.labels)
    np.testing.assert_array_equal(poisoned.weight, batch.weight)
    self.assertFalse(np.isnan(batch.image).any())  # The input is unchanged.

  def test_missing_field_is_named(self):
    with self.assertRaisesRegex(KeyError, "no 'pixels'"):
      health.poison_batch(py_utils.NestedMap(image=jnp.ones(2)), 'pixels')


class StepGuardTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.job = tmp.name

  def _feed(self, guard, steps, bad):
    """Adds steps; bad: {step: (loss, grad_norm)} of the invalid ones."""
    for step in steps:
      loss, grad_norm = bad.get(step, (1.0, 1.0))
      guard.add(step, np.float32(loss),
                _summaries({}, step not in bad, grad_norm))

  def test_counts_logs_and_records_skipped_steps(self):
    written = []
    guard = health.StepGuard(
        2, self.job, 0, write_scalar=lambda s, c: written.append((s, c))
    )
    with self.assertLogs(level='WARNING') as logs:
      self._feed(guard, range(8), {2: (_NAN, _NAN), 5: (3.0, np.inf),
                                   6: (np.inf, _NAN)})
      guard.flush()
    self.assertEqual([s.step for s in guard.skipped], [2, 5, 6])
    self.assertEqual(guard.consecutive, 0)  # Step 7 was good.
    self.assertEqual(written, [(2, 1), (5, 2), (6, 3)])
    self.assertEqual(
        [s.nonfinite for s in guard.skipped],
        [('loss', 'grad_norm'), ('grad_norm',), ('loss', 'grad_norm')],
    )
    text = '\n'.join(logs.output)
    self.assertIn('Skipped training step 2: non-finite loss (nan) and '
                  'gradient norm (nan)', text)
    self.assertIn('Skipped training step 5: non-finite gradient norm (inf)',
                  text)
    self.assertIn('3 step(s) skipped so far, 2 in a row', text)
    self.assertEqual(
        health.read_skipped_steps(self.job), guard.skipped
    )

  def test_a_step_is_examined_once_the_next_is_added(self):
    guard = health.StepGuard(1, self.job, 0)
    self._feed(guard, [0], {0: (_NAN, _NAN)})
    self.assertEqual(guard.skipped, [])  # Still in flight.
    self._feed(guard, [1], {})
    self.assertEqual([s.step for s in guard.skipped], [0])

  def test_stops_after_more_than_the_limit_in_a_row(self):
    guard = health.StepGuard(2, self.job, 0)
    bad = {s: (_NAN, _NAN) for s in (1, 2, 4, 5, 6)}
    self._feed(guard, range(6), bad)  # 1, 2 in a row: tolerated.
    with self.assertRaisesRegex(
        health.NonFiniteStepsError,
        r'Stopping at step 6: 3 consecutive training steps \(4\.\.6\) had a '
        r'non-finite loss or gradient, more than '
        r'MAX_CONSECUTIVE_BAD_STEPS=2\. Step 6: non-finite loss \(nan\)',
    ):
      self._feed(guard, [6, 7], bad)
    # The stopping step is recorded too.
    self.assertEqual([s.step for s in health.read_skipped_steps(self.job)],
                     [1, 2, 4, 5, 6])

  def test_resume_keeps_earlier_steps_and_the_streak(self):
    first = health.StepGuard(3, self.job, 0)
    self._feed(first, range(10), {s: (_NAN, _NAN) for s in (2, 7, 8, 9)})
    first.flush()
    # Resumed from checkpoint 9: step 9 runs again, 7 and 8 stay counted.
    resumed = health.StepGuard(3, self.job, 9)
    self.assertEqual([s.step for s in resumed.skipped], [2, 7, 8])
    self.assertEqual(resumed.consecutive, 2)
    self.assertEqual(
        [s.step for s in health.read_skipped_steps(self.job)], [2, 7, 8]
    )
    # 7, 8 (restored), 9 and 10: four in a row, one more than tolerated.
    with self.assertRaisesRegex(
        health.NonFiniteStepsError,
        r'step 10: 4 consecutive training steps \(7\.\.10\)',
    ):
      self._feed(resumed, [9, 10, 11], {9: (_NAN, _NAN), 10: (_NAN, _NAN)})

  def test_no_file_means_no_record_and_bad_file_is_named(self):
    self.assertIsNone(health.read_skipped_steps(self.job))
    path = pathlib.Path(self.job) / health.SKIPPED_STEPS_FILE
    path.write_text('{"steps": []}')
    with self.assertRaisesRegex(ValueError, 'skipped_steps.json: not a'):
      health.read_skipped_steps(self.job)

  def test_missing_validity_summary_is_explained(self):
    guard = health.StepGuard(1, None, 0)
    with self.assertRaisesRegex(KeyError, 'check_valid_step=True'):
      guard.add(0, np.float32(1.0), {})

  def test_limit_must_be_positive(self):
    with self.assertRaisesRegex(ValueError, 'MAX_CONSECUTIVE_BAD_STEPS'):
      health.StepGuard(0, None, 0)


class ExperimentWiringTest(absltest.TestCase):

  def test_task_skips_non_finite_steps(self):
    task = experiments.ViTSmoke().task()
    self.assertIs(task.loss_aggregator.cls, health.NonFiniteLossAggregator)
    learner = task.train.learner
    # paxml's skip logic, through vit22b_pax.learner's subclass.
    self.assertTrue(issubclass(learner.cls, learners.Learner))
    self.assertTrue(learner.check_valid_step)
    self.assertTrue(learner.enable_skip_step_on_gradient_anomalies)
    self.assertIsNone(learner.loss_name)  # Required with an aggregator.

  def test_program_gets_the_knobs(self):
    exp = experiments.ViTSmoke()
    exp.MAX_CONSECUTIVE_BAD_STEPS = 3
    exp.INJECT_NAN_AT_STEPS = (1, 4)
    (program,) = exp.train_programs()
    self.assertEqual(program._max_consecutive_bad_steps, 3)
    self.assertEqual(program._inject_nan_at_steps, {1, 4})
    self.assertEqual(program._inject_nan_field, 'image')

  def test_bad_knobs_are_named(self):
    exp = experiments.ViTSmoke()
    exp.MAX_CONSECUTIVE_BAD_STEPS = 0
    with self.assertRaisesRegex(knobs.ValidationError,
                                'MAX_CONSECUTIVE_BAD_STEPS=0 must be >= 1'):
      exp.check(num_devices=1)
    exp = experiments.ViTSmoke()
    exp.INJECT_NAN_AT_STEPS = (3, 20)
    with self.assertRaisesRegex(
        knobs.ValidationError,
        re.escape('INJECT_NAN_AT_STEPS=(3, 20): steps [20] are outside '
                  '[0, NUM_TRAIN_STEPS=20)'),
    ):
      exp.check(num_devices=1)


def _launch(job: pathlib.Path, *overrides: str):
  return subprocess_runner.run_module(
      'paxml.main', f'--exp={_SMOKE}', f'--job_log_dir={job}',
      '--fdl.SAVE_INTERVAL_STEPS=1', '--fdl.SAVE_MAX_TO_KEEP=50',
      '--fdl.SUMMARY_INTERVAL_STEPS=1', '--fdl.EVAL_INTERVAL_STEPS=0',
      *overrides, timeout=300,
  )


class LauncherGuardTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix='vit22b_health_'))
    cls.one_bad_job = cls.tmp / 'one_bad'
    cls.too_many_job = cls.tmp / 'too_many'
    # Concurrent: most of each run is import and compilation.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      one_bad = pool.submit(
          _launch, cls.one_bad_job, '--fdl.NUM_TRAIN_STEPS=7',
          '--fdl.INJECT_NAN_AT_STEPS=(4,)',
      )
      too_many = pool.submit(
          _launch, cls.too_many_job, '--fdl.NUM_TRAIN_STEPS=9',
          '--fdl.INJECT_NAN_AT_STEPS=(1, 2, 4, 5, 6)',
          '--fdl.MAX_CONSECUTIVE_BAD_STEPS=2', '--fdl.SCAN_LAYERS=False',
      )
      cls.one_bad, cls.too_many = one_bad.result(), too_many.result()
    cls.summaries = {}
    for name, job in (('one_bad', cls.one_bad_job),
                      ('too_many', cls.too_many_job)):
      if (job / 'summaries').exists():
        summary = train_summary.summarize_run(job)
        cls.summaries[name] = summary

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_one_bad_step_is_skipped_and_training_continues(self):
    self.assertEqual(self.one_bad.returncode, 0, self.one_bad.stderr[-3000:])
    self.assertIn(
        'Skipped training step 4: non-finite loss (nan) and gradient norm '
        '(nan); the weights and optimizer state were not updated. 1 step(s) '
        'skipped so far, 1 in a row', self.one_bad.stderr,
    )
    summary = self.summaries['one_bad']
    self.assertEqual(summary['steps'], 7)
    self.assertEqual(summary['skipped_steps'], 1)
    self.assertEqual(summary['skipped_step_numbers'], [4])
    self.assertTrue(math.isfinite(summary['train_loss_last']))
    job = self.one_bad_job
    self.assertEqual(_checkpoint_steps(job), list(range(8)))
    before, after, next_ = (_checkpoint(job, s) for s in (4, 5, 6))
    # Step 4 changed nothing but the step counter: weights, Adafactor
    # moments and update counts are those of checkpoint 4.
    self.assertEqual(_differing(before, after), ['step'])
    self.assertEqual(int(after['step']), 5)
    # Step 5 trained: weights and optimizer state moved again.
    changed = _differing(after, next_)
    self.assertIn('mdl_vars.params.head.w', changed)
    self.assertIn('opt_states_0.no_prefix_0.count', changed)
    for step in range(8):
      for name, array in _checkpoint(job, step).items():
        self.assertTrue(np.isfinite(array).all(), f'{step} {name}')

  def test_per_step_summaries_show_the_skipped_step(self):
    scalars = train_summary.read_scalars(
        self.one_bad_job / 'summaries' / 'train'
    )
    valid = {s: v for s, _, v in scalars['learning/is_valid_step_scalar']}
    # paxml writes step S's summaries at S + 1.
    self.assertEqual(valid, {s: float(s != 5) for s in range(1, 8)})
    loss = {s: v for s, _, v in scalars['loss']}
    self.assertEqual([s for s in loss if not math.isfinite(loss[s])], [5])
    self.assertEqual(
        [(s, v) for s, _, v in scalars[health.SKIPPED_STEPS_TAG]], [(5, 1.0)]
    )

  def test_too_many_bad_steps_stop_the_run_naming_the_step(self):
    proc = self.too_many
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn(
        'NonFiniteStepsError: Stopping at step 6: 3 consecutive training '
        'steps (4..6) had a non-finite loss or gradient, more than '
        'MAX_CONSECUTIVE_BAD_STEPS=2. Step 6: non-finite loss (nan) and '
        'gradient norm (nan).', proc.stderr,
    )
    # Steps 1 and 2 (as many in a row as tolerated) did not stop it.
    self.assertIn('Skipped training step 2: non-finite loss (nan) and '
                  'gradient norm (nan); the weights and optimizer state were '
                  'not updated. 2 step(s) skipped so far, 2 in a row',
                  proc.stderr)
    self.assertEqual(self.summaries['too_many']['skipped_step_numbers'],
                     [1, 2, 4, 5, 6])
    self.assertNotIn('Training loop completed', proc.stderr)

  def test_last_checkpoint_holds_the_last_good_state(self):
    job = self.too_many_job
    steps = _checkpoint_steps(job)
    # The stop comes while step 7 runs (the guard reads a step one step
    # late); nothing after checkpoint 7 was written.
    self.assertEqual(steps, list(range(8)))
    last_good = _checkpoint(job, 4)  # After step 3, the last good one.
    last = _checkpoint(job, steps[-1])
    self.assertEqual(_differing(last_good, last), ['step'])
    for name, array in last.items():
      self.assertTrue(np.isfinite(array).all(), name)
    # Step 3 itself trained.
    self.assertNotEqual(_differing(_checkpoint(job, 3), last_good), ['step'])

  def test_attention_summaries_per_layer_for_both_encoders(self):
    expected = {
        f'attention/{layer}/{name}_scalar'
        for layer in ('layer_00', 'layer_01', 'map_head')
        for name in ('max_logit', 'entropy')
    }
    for job in (self.one_bad_job, self.too_many_job):  # scanned, unrolled
      scalars = train_summary.read_scalars(job / 'summaries' / 'train')
      tags = {t for t in scalars if 'max_logit' in t or 'entropy' in t}
      self.assertEqual(tags, expected, job)
      # Step 1's summaries: finite, entropy within [0, log(16 keys)].
      first = {t: scalars[t][0] for t in tags}
      for tag, (step, _, value) in first.items():
        self.assertEqual(step, 1)
        if tag.endswith('entropy_scalar'):
          self.assertBetween(value, 0.0, math.log(16) + 1e-6)


if __name__ == '__main__':
  absltest.main()
