"""End-to-end runs of paxml's real trainer as subprocesses (few, tiny, CPU).

1. `python -m paxml.main --fdl_config=...ViTSmoke --fdl.NUM_TRAIN_STEPS=10`
   trains, writes orbax checkpoints and summaries in the job directory, and
   stops at the overridden step count (the default is 20).
2. `python -m vit22b_pax.main --exp=...ViTSmoke --fdl.NUM_TRAIN_STEPS=15`
   resumes from run 1's step-10 checkpoint and stops at 15.
3. ViTSmokeFinetune warm-starts from run 1 at a new resolution (16 -> 24 px)
   and label count (8 -> 5): its step-0 position embedding equals the
   resampled table and its head is fresh with 5 outputs.
4. Overrides that would be dropped, misspelled knobs and invalid
   combinations fail before anything compiles.
Plus, in-process: vit22b_pax.main's argv rewriting, and every
experiments/*.sh recipe run with a stand-in Python that records the command
lines, whose overrides must be valid knobs passing the experiment's checks.
"""

import math
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

from absl.testing import absltest
import jax
from jax.experimental.array_serialization import serialization
import numpy as np

import subprocess_runner
from vit22b_pax import experiments
from vit22b_pax import main as vit_main
from vit22b_pax.layers import patch_embedding
from vit22b_pax.tools import train_summary

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_SMOKE = 'vit22b_pax.experiments.ViTSmoke'
_FINETUNE = 'vit22b_pax.experiments.ViTSmokeFinetune'


def _steps(job: pathlib.Path) -> list[int]:
  return sorted(
      int(p.name.split('_')[-1])
      for p in (job / 'checkpoints').glob('checkpoint_*')
      if p.name.split('_')[-1].isdigit()
  )


def _read_var(job: pathlib.Path, step: int, name: str) -> np.ndarray:
  """A model variable of an orbax (tensorstore/zarr) paxml checkpoint."""
  path = job / 'checkpoints' / f'checkpoint_{step:08d}' / 'state' / (
      f'mdl_vars.params.{name}'
  )
  spec = serialization.get_tensorstore_spec(str(path))
  (array,) = serialization.run_deserialization(
      [jax.sharding.SingleDeviceSharding(jax.devices()[0])], [spec]
  )
  return np.asarray(array)


class LauncherTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix='vit22b_launcher_'))
    cls.job = cls.tmp / 'smoke'
    common = ['--fdl.SAVE_INTERVAL_STEPS=5', '--fdl.SUMMARY_INTERVAL_STEPS=5',
              '--fdl.EVAL_INTERVAL_STEPS=5']
    cls.first = subprocess_runner.run_module(
        'paxml.main', f'--fdl_config={_SMOKE}', f'--job_log_dir={cls.job}',
        '--fdl.NUM_TRAIN_STEPS=10', '--fdl.PEAK_FLOPS_PER_DEVICE=125e9',
        *common,
    )
    cls.first_steps = _steps(cls.job)
    cls.second = None
    if cls.first.returncode == 0:
      cls.second = subprocess_runner.run_module(
          'vit22b_pax.main', f'--exp={_SMOKE}', f'--job_log_dir={cls.job}',
          '--fdl.NUM_TRAIN_STEPS=15', '--eval_on_test', *common,
      )

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def _assert_ok(self, proc):
    self.assertEqual(proc.returncode, 0, proc.stderr[-4000:])

  def _assert_logged(self, pattern, proc):
    """Regex search in a run's log; on failure shows only the log's tail."""
    if not re.search(pattern, proc.stderr):
      self.fail(f'{pattern!r} not in the log; tail:\n{proc.stderr[-3000:]}')

  def test_fdl_config_override_sets_the_step_count(self):
    self._assert_ok(self.first)
    # Default NUM_TRAIN_STEPS is 20: the override stopped it at 10.
    self.assertEqual(self.first_steps, [0, 5, 10])
    self._assert_logged(r"knobs overridden: \{.*'NUM_TRAIN_STEPS': 10[,}]",
                        self.first)
    # Throughput and MFU (the knob gave this CPU a peak) while training.
    self._assert_logged(
        r'step 10: [\d.]+ examples/sec, MFU [\d.]+%', self.first
    )

  def test_main_exp_override_resumes_from_checkpoint(self):
    self._assert_ok(self.second)
    self.assertEqual(_steps(self.job), [0, 5, 10, 15])
    # Restored run 1's last checkpoint instead of starting over.
    self._assert_logged(
        r'Restoring item from \S+/checkpoints/checkpoint_00000010[.\s]',
        self.second,
    )
    self.assertNotIn('checkpoint_00000005.orbax-checkpoint-tmp',
                     self.second.stderr)
    summary = train_summary.summarize_run(self.job)
    self.assertEqual(summary['steps'], 15)
    train = train_summary.read_scalars(self.job / 'summaries' / 'train')
    self.assertEqual([s for s, _, _ in train['loss']], [5, 10, 15])
    # Eval (--eval_on_test) ran at step 15 over 2 batches of 16.
    evals = train_summary.read_scalars(
        self.job / 'summaries' / 'eval_test_eval'
    )
    self.assertEqual(evals['Metrics/map_dataset'][-1][0], 15)
    self.assertEqual(evals['Metrics/map_dataset-weight'][-1][2], 32.0)

  def test_finetune_resamples_pos_emb_and_replaces_head(self):
    self._assert_ok(self.first)
    job = self.tmp / 'finetune'
    proc = subprocess_runner.run_module(
        'paxml.main', f'--fdl_config={_FINETUNE}', f'--job_log_dir={job}',
        f"--fdl.INIT_CHECKPOINT_DIR='{self.job / 'checkpoints'}'",
        '--fdl.INIT_CHECKPOINT_STEP=10', '--fdl.NUM_TRAIN_STEPS=2',
        '--fdl.WARMUP_STEPS=1', '--fdl.COOLDOWN_STEPS=1',
        '--fdl.SAVE_INTERVAL_STEPS=2', '--fdl.EVAL_INTERVAL_STEPS=2',
    )
    self._assert_ok(proc)
    self._assert_logged(
        'resampled params/patch_embed/pos_emb from 16 to 36 tokens', proc
    )
    pretrained = _read_var(self.job, 10, 'patch_embed.pos_emb')
    self.assertEqual(pretrained.shape, (16, 32))  # 4 x 4 grid, D = 32.
    start = _read_var(job, 0, 'patch_embed.pos_emb')
    self.assertEqual(start.shape, (36, 32))  # 24 px / patch 4 = 6 x 6.
    expected = np.asarray(patch_embedding.resample_pos_emb(pretrained, 6))
    np.testing.assert_allclose(start, expected, rtol=1e-6, atol=1e-6)
    # Everything else restored as is; the head is fresh for 5 classes.
    np.testing.assert_array_equal(
        _read_var(job, 0, 'patch_embed.w'),
        _read_var(self.job, 10, 'patch_embed.w'),
    )
    head_w = _read_var(job, 0, 'head.w')
    self.assertEqual(head_w.shape, (32, 5))
    np.testing.assert_array_equal(head_w, np.zeros((32, 5)))  # Zero init.
    self.assertEqual(_read_var(job, 2, 'head.b').shape, (5,))

  def test_exp_with_dropped_override_fails_loudly(self):
    proc = subprocess_runner.run_module(
        'paxml.main', f'--exp={_SMOKE}',
        f'--job_log_dir={self.tmp / "dropped"}', '--fdl.NUM_TRAIN_STEPS=7',
    )
    self.assertNotEqual(proc.returncode, 0)
    self._assert_logged(
        '--fdl.NUM_TRAIN_STEPS=7 did not reach the experiment', proc
    )
    self.assertFalse((self.tmp / 'dropped' / 'checkpoints').exists())

  def test_misspelled_knob_fails_naming_the_closest(self):
    proc = subprocess_runner.run_module(
        'vit22b_pax.main', f'--exp={_SMOKE}',
        f'--job_log_dir={self.tmp / "typo"}', '--fdl.NUM_TRAIN_STEP=7',
    )
    self.assertNotEqual(proc.returncode, 0)
    self._assert_logged(
        "no knob 'NUM_TRAIN_STEP'; did you mean 'NUM_TRAIN_STEPS'\\?", proc
    )

  def test_invalid_combination_fails_before_compiling(self):
    proc = subprocess_runner.run_module(
        'paxml.main', f'--fdl_config={_SMOKE}',
        f'--job_log_dir={self.tmp / "invalid"}', '--fdl.WARMUP_STEPS=30',
    )
    self.assertNotEqual(proc.returncode, 0)
    self._assert_logged(
        r'ValidationError: ViTSmoke: WARMUP_STEPS=30 \+ COOLDOWN_STEPS=5 is '
        r'longer than NUM_TRAIN_STEPS=20',
        proc,
    )
    self.assertNotIn('train_step()', proc.stderr)
    self.assertFalse((self.tmp / 'invalid' / 'checkpoints').exists())


class MainArgvTest(absltest.TestCase):
  """vit22b_pax.main turns paxml.main's --exp into the --fdl_config path."""

  def test_exp_becomes_fdl_config_and_the_rest_is_kept(self):
    for exp_args in (['--exp=a.b.C'], ['--exp', 'a.b.C']):
      self.assertEqual(
          vit_main.rewrite_argv(
              ['main', *exp_args, '--job_log_dir=/j', '--fdl.K=1', '--mode',
               'train']
          ),
          ['main', '--fdl_config=a.b.C', '--job_log_dir=/j', '--fdl.K=1',
           '--mode', 'train'],
      )

  def test_without_exp_nothing_changes(self):
    argv = ['main', '--fdl_config=a.b.C', '--fdl.K=1']
    self.assertEqual(vit_main.rewrite_argv(argv), argv)

  def test_exp_with_a_base_config_is_refused(self):
    with self.assertRaisesRegex(SystemExit, 'either --exp or --fdl_config'):
      vit_main.rewrite_argv(['main', '--exp=a.b.C', '--fdl_config=a.b.D'])
    with self.assertRaisesRegex(SystemExit, 'more than once'):
      vit_main.rewrite_argv(['main', '--exp=a.b.C', '--exp=a.b.D'])


class LaunchRecipeTest(absltest.TestCase):
  """experiments/*.sh as written, with a stand-in for the Python binary.

  Each script runs under bash with PY pointing at a stub that records the
  arguments and environment it gets; the recorded paxml.main command lines
  must name a registered experiment whose knobs accept every --fdl.KNOB
  override and pass the experiment's checks (on the mesh the overrides
  ask for).
  """

  _ENV = {
      'DATA_DIR': 'gs://bucket/data', 'JOB_DIR': 'gs://bucket/job',
      'INIT_DIR': 'gs://bucket/pretrain/checkpoints', 'NUM_HOSTS': '128',
      'HOST_IDX': '0', 'SERVER_ADDR': 'host0:12345',
  }

  def _record(self, script, **env):
    tmp = pathlib.Path(tempfile.mkdtemp())
    self.addCleanup(shutil.rmtree, tmp)
    stub = tmp / 'python'
    stub.write_text(
        '#!/usr/bin/env bash\n'
        'printf "%s\\n" "LIBTPU_INIT_ARGS=$LIBTPU_INIT_ARGS" '
        '"XLA_FLAGS=$XLA_FLAGS" "$@" > "$CALLS/call.$(date +%s%N)"\n'
    )
    stub.chmod(0o755)
    calls = tmp / 'calls'
    calls.mkdir()
    proc = subprocess.run(
        ['bash', str(_ROOT / 'experiments' / script)],
        env=dict(os.environ, PY=str(stub), CALLS=str(calls), **env),
        capture_output=True, text=True, timeout=60, check=False,
    )
    self.assertEqual(proc.returncode, 0, proc.stderr)
    # File names are nanosecond times: sorted = in the order of the calls.
    return [p.read_text().splitlines() for p in sorted(calls.iterdir())]

  def _check_paxml_call(self, argv):
    self.assertEqual(argv[2:4], ['-m', 'paxml.main'])
    (config,) = [a for a in argv if a.startswith('--fdl_config=')]
    cls = getattr(experiments, config.split('.')[-1])
    exp = cls()
    overrides = [a[len('--fdl.'):] for a in argv if a.startswith('--fdl.')]
    self.assertNotEmpty(overrides)
    experiments.apply_overrides(exp, overrides)
    ici, dcn = exp.mesh_shapes()
    exp.check(num_devices=math.prod(ici) * (math.prod(dcn) if dcn else 1))
    self.assertIn('--eval_on_test', argv)
    return exp

  def test_cpu_smoke(self):
    calls = self._record('cpu_smoke.sh', JOB_DIR='/tmp/x')
    self.assertLen(calls, 2)  # paxml.main, then the run summary.
    exp = self._check_paxml_call(calls[0])
    self.assertEqual(type(exp).__name__, 'ViTSmoke')
    self.assertEqual(exp.NUM_TRAIN_STEPS, 40)
    self.assertEqual(calls[1][2:4], ['-m', 'vit22b_pax.tools.train_summary'])

  def test_tpu_pod(self):
    (call,) = self._record('tpu_pod.sh', **self._ENV)
    exp = self._check_paxml_call(call)
    self.assertEqual(exp.DATA_DIR, 'gs://bucket/data')
    self.assertEqual(tuple(exp.ICI_MESH_SHAPE), (64, 16))
    libtpu = call[0]
    for flag in ('--xla_jf_spmd_threshold_for_windowed_einsum_mib=0',
                 '--xla_tpu_enable_latency_hiding_scheduler=true'):
      self.assertIn(flag, libtpu)

  def test_gpu_cluster(self):
    (call,) = self._record('gpu_cluster.sh', **self._ENV)
    exp = self._check_paxml_call(call)
    self.assertEqual(exp.mesh_shapes(), ((1, 8), (128, 1)))
    self.assertIn('--multiprocess_gpu', call)
    for flag in ('--xla_gpu_enable_latency_hiding_scheduler=true',
                 '--xla_gpu_enable_async_collectives=true'):
      self.assertIn(flag, call[1])

  def test_finetune(self):
    (call,) = self._record('finetune.sh', **self._ENV)
    exp = self._check_paxml_call(call)
    self.assertEqual(type(exp).__name__, 'ViT22BFinetune')
    self.assertEqual(exp.INIT_CHECKPOINT_DIR, self._ENV['INIT_DIR'])
    self.assertEqual(exp.tokens_per_image(), 1024)
    (cpu_call,) = self._record('finetune.sh', CPU='1')
    cpu_exp = self._check_paxml_call(cpu_call)
    self.assertEqual(type(cpu_exp).__name__, 'ViTSmokeFinetune')


if __name__ == '__main__':
  absltest.main()
