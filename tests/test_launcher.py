"""End-to-end runs of paxml's real launcher as subprocesses (few, tiny, CPU).

1. `python -m paxml.main --exp=...ViTSmoke --fdl.NUM_TRAIN_STEPS=3` (the
   users' command line) applies the override: it trains exactly 3 steps
   (default 20), logs the override once and records the effective knobs in
   the job directory.
2. `python -m paxml.main --fdl_config=...ViTSmoke --fdl.NUM_TRAIN_STEPS=6`
   resumes from run 1's step-3 checkpoint, evaluates (--eval_on_test) and
   stops at 6; fiddle applied the override, validate() neither applies nor
   logs it again.
3. ViTSmokeFinetune (--exp) warm-starts from run 1 at a new resolution
   (16 -> 24 px) and label count (8 -> 5): its step-0 position embedding
   equals the resampled table and its head is fresh with 5 outputs.
4. A misspelled knob and a nested path on --exp, and an invalid combination
   on --fdl_config, fail in validate(): before paxml writes anything into
   the job directory or compiles.
Plus, in-process: every experiments/*.sh recipe run with a stand-in Python
that records the command lines, whose overrides must be valid knobs passing
the experiment's checks.
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
from vit22b_pax import knobs
from vit22b_pax.layers import patch_embedding
from vit22b_pax.tools import train_summary

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_SMOKE = 'vit22b_pax.experiments.ViTSmoke'
_FINETUNE = 'vit22b_pax.experiments.ViTSmokeFinetune'
# What paxml logs when it starts building the model (after validate()).
_BUILD_STARTED = ('experiment_cls_vars', 'train_step', 'Compil')


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


def _knobs_file(job: pathlib.Path) -> dict[str, str]:
  """{knob: 'value  # class default: ...'} of validate()'s record."""
  lines = (job / knobs.KNOBS_FILE).read_text().splitlines()
  return dict(l.split(' = ', 1) for l in lines if not l.startswith('#'))


class LauncherTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix='vit22b_launcher_'))
    cls.job = cls.tmp / 'smoke'
    cls.first = subprocess_runner.run_module(
        'paxml.main', f'--exp={_SMOKE}', f'--job_log_dir={cls.job}',
        '--fdl.NUM_TRAIN_STEPS=3', '--fdl.SUMMARY_INTERVAL_STEPS=1',
        '--fdl.STEPS_PER_SEC_INTERVAL_STEPS=1',
        '--fdl.PEAK_FLOPS_PER_DEVICE=125e9',
    )
    cls.first_steps = _steps(cls.job)
    cls.first_knobs, cls.first_loss_steps = {}, []
    if cls.first.returncode == 0:
      cls.first_knobs = _knobs_file(cls.job)
      train = train_summary.read_scalars(cls.job / 'summaries' / 'train')
      cls.first_loss_steps = [s for s, _, _ in train['loss']]
    cls.second = None
    if cls.first.returncode == 0:
      cls.second = subprocess_runner.run_module(
          'paxml.main', f'--fdl_config={_SMOKE}', f'--job_log_dir={cls.job}',
          '--fdl.NUM_TRAIN_STEPS=6', '--fdl.SAVE_INTERVAL_STEPS=3',
          '--fdl.SUMMARY_INTERVAL_STEPS=3', '--fdl.EVAL_INTERVAL_STEPS=3',
          '--eval_on_test',
      )

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def _assert_ok(self, proc):
    self.assertEqual(proc.returncode, 0, proc.stderr[-4000:])

  def _assert_logged(self, pattern, proc, count=None):
    """Regex search in a run's log; on failure shows only the log's tail."""
    found = re.findall(pattern, proc.stderr)
    if not found or (count is not None and len(found) != count):
      self.fail(f'{pattern!r} logged {len(found)} times, expected '
                f'{count or "some"}; tail:\n{proc.stderr[-3000:]}')

  def _assert_failed_before_building(self, proc, job):
    self.assertNotEqual(proc.returncode, 0)
    for marker in _BUILD_STARTED:
      self.assertNotIn(marker, proc.stderr)
    # paxml writes experiment_cls_vars.txt first thing after validate().
    self.assertFalse(job.exists() and any(job.iterdir()))

  def test_exp_override_trains_exactly_that_many_steps(self):
    self._assert_ok(self.first)
    # Default NUM_TRAIN_STEPS is 20: the override stopped it at 3.
    self.assertEqual(self.first_steps, [0, 3])
    self.assertEqual(self.first_loss_steps, [1, 2, 3])
    self._assert_logged(
        r'ViTSmoke: knob NUM_TRAIN_STEPS = 3 \(class default 20\)',
        self.first, count=1,
    )
    self.assertEqual(
        self.first_knobs['NUM_TRAIN_STEPS'], '3  # class default: 20'
    )
    self.assertEqual(
        self.first_knobs['PEAK_FLOPS_PER_DEVICE'],
        '125000000000.0  # class default: None',
    )
    self.assertEqual(self.first_knobs['GLOBAL_BATCH_SIZE'], '16')
    # paxml's own record still shows the class defaults.
    self.assertIn(
        '    NUM_TRAIN_STEPS: 20\n',
        (self.job / 'experiment_cls_vars.txt').read_text(),
    )
    # Throughput and MFU (the knob gave this CPU a peak) while training.
    self._assert_logged(
        r'step 3: [\d.]+ examples/sec, MFU [\d.]+%', self.first
    )

  def test_fdl_config_override_resumes_from_checkpoint(self):
    self._assert_ok(self.second)
    self.assertEqual(_steps(self.job), [0, 3, 6])
    # Restored run 1's last checkpoint instead of starting over.
    self._assert_logged(
        r'Restoring item from \S+/checkpoints/checkpoint_00000003[.\s]',
        self.second,
    )
    # Fiddle applied the override; validate() logged it once.
    self._assert_logged(
        r'ViTSmoke: knob NUM_TRAIN_STEPS = 6 ', self.second, count=1
    )
    self.assertEqual(
        _knobs_file(self.job)['NUM_TRAIN_STEPS'], '6  # class default: 20'
    )
    summary = train_summary.summarize_run(self.job)
    self.assertEqual(summary['steps'], 6)
    # Eval (--eval_on_test) ran at step 6 over 2 batches of 16.
    evals = train_summary.read_scalars(
        self.job / 'summaries' / 'eval_test_eval'
    )
    self.assertEqual(evals['Metrics/map_dataset'][-1][0], 6)
    self.assertEqual(evals['Metrics/map_dataset-weight'][-1][2], 32.0)

  def test_finetune_resamples_pos_emb_and_replaces_head(self):
    self._assert_ok(self.first)
    job = self.tmp / 'finetune'
    proc = subprocess_runner.run_module(
        'paxml.main', f'--exp={_FINETUNE}', f'--job_log_dir={job}',
        f"--fdl.INIT_CHECKPOINT_DIR='{self.job / 'checkpoints'}'",
        '--fdl.INIT_CHECKPOINT_STEP=3', '--fdl.NUM_TRAIN_STEPS=2',
        '--fdl.SAVE_INTERVAL_STEPS=2', '--fdl.EVAL_INTERVAL_STEPS=2',
    )
    self._assert_ok(proc)
    self._assert_logged(
        'resampled params/patch_embed/pos_emb from 16 to 36 tokens', proc
    )
    pretrained = _read_var(self.job, 3, 'patch_embed.pos_emb')
    self.assertEqual(pretrained.shape, (16, 32))  # 4 x 4 grid, D = 32.
    start = _read_var(job, 0, 'patch_embed.pos_emb')
    self.assertEqual(start.shape, (36, 32))  # 24 px / patch 4 = 6 x 6.
    expected = np.asarray(patch_embedding.resample_pos_emb(pretrained, 6))
    np.testing.assert_allclose(start, expected, rtol=1e-6, atol=1e-6)
    # Everything else restored as is; the head is fresh for 5 classes.
    np.testing.assert_array_equal(
        _read_var(job, 0, 'patch_embed.w'),
        _read_var(self.job, 3, 'patch_embed.w'),
    )
    head_w = _read_var(job, 0, 'head.w')
    self.assertEqual(head_w.shape, (32, 5))
    np.testing.assert_array_equal(head_w, np.zeros((32, 5)))  # Zero init.
    self.assertEqual(_read_var(job, 2, 'head.b').shape, (5,))

  def test_misspelled_knob_and_nested_path_fail_before_building(self):
    job = self.tmp / 'typo'
    proc = subprocess_runner.run_module(
        'paxml.main', f'--exp={_SMOKE}', f'--job_log_dir={job}',
        '--fdl.NUM_TRAIN_STEP=7', '--fdl.task.model.num_classes=3',
    )
    self._assert_failed_before_building(proc, job)
    self._assert_logged('ValidationError: 2 bad overrides:\n', proc)
    self._assert_logged(
        "\n  ViTSmoke has no knob 'NUM_TRAIN_STEP'; did you mean "
        "'NUM_TRAIN_STEPS'\\?", proc,
    )
    self._assert_logged(
        r'\n  --fdl.task.model.num_classes=3: a nested path.*neither '
        f'paxml.main --exp nor --fdl_config={_SMOKE}', proc,
    )

  def test_invalid_combination_fails_before_building(self):
    job = self.tmp / 'invalid'
    proc = subprocess_runner.run_module(
        'paxml.main', f'--fdl_config={_SMOKE}', f'--job_log_dir={job}',
        '--fdl.WARMUP_STEPS=30',
    )
    self._assert_failed_before_building(proc, job)
    self._assert_logged(
        r'ValidationError: ViTSmoke: WARMUP_STEPS=30 \+ COOLDOWN_STEPS=1 is '
        r'longer than NUM_TRAIN_STEPS=20',
        proc,
    )


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
    # The scripts' own variables come only from the test.
    base_env = {k: v for k, v in os.environ.items()
                if k not in self._ENV and k != 'CPU'}
    proc = subprocess.run(
        ['bash', str(_ROOT / 'experiments' / script)],
        env=dict(base_env, PY=str(stub), CALLS=str(calls), **env),
        capture_output=True, text=True, timeout=60, check=False,
    )
    self.assertEqual(proc.returncode, 0, proc.stderr)
    # File names are nanosecond times: sorted = in the order of the calls.
    return [p.read_text().splitlines() for p in sorted(calls.iterdir())]

  def _check_paxml_call(self, argv):
    self.assertEqual(argv[2:4], ['-m', 'paxml.main'])
    (exp_flag,) = [a for a in argv if a.startswith('--exp=')]
    self.assertEqual([a for a in argv if a.startswith('--fdl_config')], [])
    exp = getattr(experiments, exp_flag.split('.')[-1])()
    overrides = [a[len('--fdl.'):] for a in argv if a.startswith('--fdl.')]
    self.assertNotEmpty(overrides)
    knobs.apply_overrides(exp, overrides)  # What validate() does with them.
    ici, dcn = exp.mesh_shapes()
    exp.check(num_devices=math.prod(ici) * (math.prod(dcn) if dcn else 1))
    self.assertIn('--eval_on_test', argv)
    return exp

  def _job_dir(self, argv):
    (job,) = [a for a in argv if a.startswith('--job_log_dir=')]
    return job.split('=', 1)[1]

  def test_cpu_smoke(self):
    calls = self._record('cpu_smoke.sh')
    self.assertLen(calls, 2)  # paxml.main, then the run summary.
    exp = self._check_paxml_call(calls[0])
    self.assertEqual(type(exp).__name__, 'ViTSmoke')
    self.assertEqual(exp.NUM_TRAIN_STEPS, 40)
    # The default job directory is relative, under the repository's runs/.
    self.assertEqual(self._job_dir(calls[0]), 'runs/cpu_smoke')
    self.assertEqual(calls[1][2:4], ['-m', 'vit22b_pax.tools.train_summary'])

  def test_tpu_pod(self):
    user = '--xla_tpu_enable_latency_hiding_scheduler=false'
    (call,) = self._record('tpu_pod.sh', LIBTPU_INIT_ARGS=user, **self._ENV)
    exp = self._check_paxml_call(call)
    self.assertEqual(type(exp).__name__, 'ViT22BJFT')
    self.assertEqual(exp.DATA_DIR, 'gs://bucket/data')
    self.assertEqual(tuple(exp.ICI_MESH_SHAPE), (64, 16))
    self.assertEqual(exp.COLLECTIVE_MATMUL, 'bidirectional')
    libtpu = call[0]
    for flag in ('--xla_jf_spmd_threshold_for_windowed_einsum_mib=0',
                 '--xla_tpu_enable_latency_hiding_scheduler=true'):
      self.assertIn(flag, libtpu)
    # The user's value is kept, last (a repeated flag: the last wins).
    self.assertTrue(libtpu.endswith(' ' + user), libtpu)

  def test_gpu_cluster(self):
    user = '--xla_gpu_threshold_for_windowed_einsum_mib=64'
    (call,) = self._record('gpu_cluster.sh', XLA_FLAGS=user, **self._ENV)
    exp = self._check_paxml_call(call)
    self.assertEqual(exp.mesh_shapes(), ((1, 8), (128, 1)))
    self.assertIn('--multiprocess_gpu', call)
    for flag in ('--xla_gpu_enable_latency_hiding_scheduler=true',
                 '--xla_gpu_enable_async_collectives=true',
                 '--xla_gpu_threshold_for_windowed_einsum_mib=0',
                 '--xla_gpu_multi_streamed_windowed_einsum=true'):
      self.assertIn(flag, call[1])
    self.assertTrue(call[1].endswith(' ' + user), call[1])

  def test_finetune(self):
    (call,) = self._record('finetune.sh', **self._ENV)
    exp = self._check_paxml_call(call)
    self.assertEqual(type(exp).__name__, 'ViT22BFinetune')
    self.assertEqual(exp.INIT_CHECKPOINT_DIR, self._ENV['INIT_DIR'])
    self.assertEqual(exp.tokens_per_image(), 1024)
    (cpu_call,) = self._record('finetune.sh', CPU='1')
    cpu_exp = self._check_paxml_call(cpu_call)
    self.assertEqual(type(cpu_exp).__name__, 'ViTSmokeFinetune')
    # By default it starts from what cpu_smoke.sh writes, in runs/.
    self.assertEqual(cpu_exp.INIT_CHECKPOINT_DIR, 'runs/cpu_smoke/checkpoints')
    self.assertEqual(self._job_dir(cpu_call), 'runs/cpu_finetune')


if __name__ == '__main__':
  absltest.main()
