"""Tests for vit22b_pax.tools.benchmark (and vit22b_pax.benchmark_lib).

The tool runs with --quick at a tiny size; the test checks the report's
keys and structure, not the speeds (speed targets live in BENCHMARKS.md).
"""

import json
import math
import os
import re
import statistics
import tempfile

from absl.testing import absltest

import subprocess_runner
from vit22b_pax import benchmark_lib
from vit22b_pax.input import praxis_input

# Tiny models, one CPU device.
_ARGS = (
    '--quick',
    '--exp=vit22b_pax.experiments.ViTSmoke',
    '--fdl.NUM_LAYERS=1',
    '--make_train_overrides='
    "MODEL_SIZE='tiny',GLOBAL_BATCH_SIZE=16",
)
_MACHINE_KEYS = ('cores', 'cpu_model', 'jax_version', 'jaxlib_version')
_VARIANTS = ('parallel', 'sequential', 'praxis')


def _run_tool(*args: str) -> tuple[str, str]:
  """Runs `python -m vit22b_pax.tools.benchmark *args`; (stdout, stderr).

  A child process: the tool's flags (--exp, --json, --data_dir) would clash
  with other tools' flags imported into this one.
  """
  proc = subprocess_runner.run_module(
      'vit22b_pax.tools.benchmark', *args, timeout=600
  )
  if proc.returncode:
    raise AssertionError(f'benchmark failed:\n{proc.stderr[-3000:]}')
  return proc.stdout, proc.stderr


class BenchmarkToolTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    json_path = os.path.join(cls.tmp, 'report.json')
    cls.data_dir = os.path.join(cls.tmp, 'shapes')  # Missing: generated.
    cls.stdout, cls.stderr = _run_tool(
        *_ARGS, f'--json={json_path}', f'--data_dir={cls.data_dir}'
    )
    with open(json_path) as f:
      cls.report = json.load(f)

  def _assert_positive_number(self, value, key):
    self.assertIsInstance(value, float, key)
    self.assertTrue(math.isfinite(value) and value > 0, f'{key}={value}')

  def test_headline_keys(self):
    for key in benchmark_lib.HEADLINE_KEYS:
      self._assert_positive_number(self.report[key], key)
      # Also in the text summary.
      self.assertIn(key, self.stdout)

  def test_machine(self):
    for key in _MACHINE_KEYS:
      self.assertIn(key, self.report['machine'])
    self.assertGreaterEqual(self.report['machine']['cores'], 1)

  def test_raw_timings_hold_every_timed_repetition(self):
    settings = benchmark_lib.QUICK
    timings = self.report['timings_seconds']
    self.assertCountEqual(timings['train_step'], _VARIANTS)
    expected = [(timings['train_step'][v], settings.step_reps)
                for v in _VARIANTS]
    expected.append((
        timings[f'matmul_{benchmark_lib.PEAK_MATMUL_SIZE}'],
        settings.step_reps * settings.peak_per_round,
    ))
    for name in ('pipeline', 'baseline', 'baseline_same_calls'):
      expected.append((
          timings[f'input_{name}_{settings.input_batches}_batches'],
          settings.input_reps,
      ))
    for name in ('with_input', 'step_only'):
      expected.append((
          timings[f'make_train_{name}_{settings.train_steps}_steps'],
          settings.train_reps,
      ))
    for t, reps in expected:
      # Warm-up repetitions are not in the figures.
      self.assertLen(t['all'], reps)
      self.assertAlmostEqual(t['median'], statistics.median(t['all']))
      self.assertEqual((t['min'], t['max']), (min(t['all']), max(t['all'])))

  def test_ratios_follow_from_the_timings(self):
    steps = self.report['timings_seconds']['train_step']
    self.assertAlmostEqual(
        self.report['parallel_vs_sequential'],
        steps['sequential']['median'] / steps['parallel']['median'],
    )
    self.assertAlmostEqual(
        self.report['parallel_vs_praxis'],
        steps['praxis']['median'] / steps['parallel']['median'],
    )
    windows = self.report['timings_seconds']
    batches = benchmark_lib.QUICK.input_batches
    for key, baseline in (('input_vs_baseline', 'baseline'),
                          ('input_vs_baseline_same_calls',
                           'baseline_same_calls')):
      self.assertAlmostEqual(
          self.report[key],
          windows[f'input_{baseline}_{batches}_batches']['median']
          / windows[f'input_pipeline_{batches}_batches']['median'],
      )
    self.assertEqual(
        self.report['input_config']['map_parallel_calls'],
        praxis_input.PARALLEL_CALLS_PER_CORE * len(os.sched_getaffinity(0)),
    )
    self.assertAlmostEqual(
        self.report['mfu_cpu'],
        self.report['model_flops_per_step']
        / steps['parallel']['median']
        / self.report['matmul_peak_flops_per_sec'],
    )

  def test_model_steps_are_timed_interleaved(self):
    rounds = re.findall(r'train steps \d+/\d+: (.*)', self.stderr)
    self.assertLen(rounds, benchmark_lib.QUICK.step_reps)
    for line in rounds:
      names = re.findall(r'(\w+) [\d.]+ s', line)
      self.assertEqual(names, [*_VARIANTS, 'peak'])

  def test_overrides_reach_the_experiments(self):
    self.assertEqual(self.report['model_shape']['experiment'], 'ViTSmoke')
    self.assertEqual(self.report['model_shape']['num_layers'], 1)
    self.assertEqual(self.report['make_train_shape']['model_dims'], 32)
    self.assertEqual(
        self.report['input_config']['data_dir'], self.data_dir
    )
    self.assertIn('generating the shapes dataset', self.stderr)


if __name__ == '__main__':
  absltest.main()
