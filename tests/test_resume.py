"""Kill-anywhere resume of ViTSmoke through the real launcher.

setUpClass runs `python -m paxml.main --exp=...ViTSmoke` (local_cluster.
SMOKE_ARGS: 20 steps, checkpoints and evals every 10, every step's loss
summarized, every batch's example ids logged) twice over:

  * once uninterrupted (the reference, shared with test_multihost), and
  * in one job directory, SIGKILLed at moments read off what the child is
    doing, each time relaunched with the same command:
      launch 0, mid-step: when its train input hands out batch 3 (the id
        log's line for batch 3): the step-3 train step is under way;
      launch 1, mid-checkpoint-write: when orbax's temporary directory of
        checkpoint 10 appears, before orbax renames it into place;
      launch 2, mid-eval: when the step-20 eval starts (checkpoint 10 is
        complete by then);
      launch 3: runs to the end.

Each kill is checked post mortem to have landed in its window (the log of
the killed process and the checkpoint directory at its death). The tests
then ask for exact equality with the reference: the final checkpoint's
every array, every loss any launch wrote (steps re-run after a restart
included) and every batch's example ids; each launch restored the last
complete checkpoint (never the half-written one) and started its input at
that step.

Why bit-identical is the right bar: on CPU, XLA runs the same executable
with the same thread partitioning in every launch, the restored state is
the saved float32/bfloat16 bits, the input batch of step s is a function
of s (input/resumable.py), and nothing in the step draws fresh randomness
that is not derived from the step. Any difference is a bug, not noise.
"""

import pathlib
import re
import shutil
import tempfile

from absl.testing import absltest
import numpy as np

import local_cluster

_REFERENCE = 'smoke_reference'
_TIMEOUT = 400  # Seconds for one launch, on a loaded 2-core machine.


def _tmp_dirs(job: pathlib.Path, step: int) -> list[pathlib.Path]:
  checkpoints = job / 'checkpoints'
  if not checkpoints.exists():
    return []
  return list(checkpoints.glob(f'checkpoint_{step:08d}.orbax-checkpoint-tmp-*'))


def _restored_step(log: str) -> int | None:
  """The step the launch restored ('Restoring item from .../checkpoint_N')."""
  steps = {int(s) for s in re.findall(
      r'Restoring item from \S+/checkpoint_(\d{8})[./\s]', log)}
  if len(steps) > 1:
    raise AssertionError(f'restored several checkpoints: {steps}')
  return steps.pop() if steps else None


class ResumeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix='vit22b_resume_'))
    cls.job = cls.tmp / 'job'
    # The reference runs beside launch 0.
    local_cluster.shared_run(_REFERENCE, local_cluster.SMOKE_ARGS)
    ids_file = cls.job / 'input_ids' / 'train.host0.jsonl'
    checkpoint_10 = cls.job / 'checkpoints' / 'checkpoint_00000010'
    triggers = (
        ('mid-step', lambda p: ids_file.exists()
         and '"batch": 3,' in ids_file.read_text()),
        ('mid-checkpoint-write', lambda p: bool(_tmp_dirs(cls.job, 10))),
        ('mid-eval', lambda p: checkpoint_10.exists()
         and p.log().count('Starting eval eval with') >= 2),
    )
    cls.launches = []  # (trigger, log, exit code, facts at death)
    args = [*local_cluster.SMOKE_ARGS, f'--job_log_dir={cls.job}']
    for i, (name, fired) in enumerate(triggers):
      proc = local_cluster.Process(
          local_cluster.paxml_argv(*args), cls.tmp / f'launch{i}.log')
      try:
        local_cluster.wait_for(
            lambda: fired(proc) or not proc.running(), _TIMEOUT,
            interval=0.002)
      finally:
        proc.kill()
      facts = dict(
          tmp_10=bool(_tmp_dirs(cls.job, 10)),
          checkpoints=local_cluster.checkpoint_dirs(cls.job)
          if (cls.job / 'checkpoints').exists() else [],
      )
      cls.launches.append((name, proc.log(), proc.popen.returncode, facts))
      if ids_file.exists():  # One id log per launch.
        ids_file.rename(ids_file.with_name(f'launch{i}.host0.jsonl'))
    last = local_cluster.Process(
        local_cluster.paxml_argv(*args), cls.tmp / 'launch3.log')
    try:
      code = last.wait(_TIMEOUT)
    finally:
      last.kill()
    cls.launches.append(('to the end', last.log(), code, {}))
    ids_file.rename(ids_file.with_name('launch3.host0.jsonl'))
    cls.reference = local_cluster.wait_shared(_REFERENCE, _TIMEOUT)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_each_kill_landed_in_its_window(self):
    (_, log0, code0, facts0), (_, log1, code1, facts1), (
        _, log2, code2, facts2), (_, log3, code3, _) = self.launches
    self.assertEqual([code0, code1, code2, code3], [-9, -9, -9, 0], log3[-3000:])
    # Mid-step: training, past batch 3, before checkpoint 10 and the first
    # eval.
    fetched = local_cluster.example_ids(self.job, 0, name='launch0')
    self.assertBetween(max(fetched), 3, 9)
    self.assertNotIn('checkpoint_00000010', log0)
    self.assertNotIn('Starting eval', log0)
    # Mid-checkpoint-write: checkpoint 10's temporary directory was never
    # renamed into place.
    self.assertTrue(facts1['tmp_10'])
    self.assertNotIn('checkpoint_00000010', facts1['checkpoints'])
    # Mid-eval: the step-20 eval started and did not finish; checkpoint 10
    # was complete, 20 never started.
    self.assertEqual(log2.count('Starting eval eval with'), 2)
    self.assertEqual(log2.count('Completed running eval programs'), 1)
    self.assertIn('checkpoint_00000010', facts2['checkpoints'])
    self.assertFalse(any('00000020' in c for c in facts2['checkpoints']))

  def test_each_launch_restored_the_last_complete_checkpoint(self):
    restored = [_restored_step(log) for _, log, _, _ in self.launches]
    # The half-written checkpoint 10 of launch 1 was not restored: launch
    # 2 started from checkpoint 0 again.
    self.assertEqual(restored, [None, 0, 0, 10])
    # ... and orbax removed the unfinished one: nothing else is left.
    self.assertEqual(
        local_cluster.checkpoint_dirs(self.job),
        ['checkpoint_00000000', 'checkpoint_00000010', 'checkpoint_00000020'],
    )

  def test_final_state_is_bit_identical(self):
    want = local_cluster.checkpoint_arrays(self.reference, 20)
    got = local_cluster.checkpoint_arrays(self.job, 20)
    self.assertEqual(sorted(got), sorted(want))
    self.assertGreater(len(want), 100)  # Params and optimizer state.
    for name in want:
      np.testing.assert_array_equal(got[name], want[name], err_msg=name)

  def test_every_loss_written_is_bit_identical(self):
    want = dict(local_cluster.train_losses(self.reference))
    self.assertEqual(sorted(want), list(range(1, 21)))
    got = local_cluster.train_losses(self.job)
    self.assertEqual({s for s, _ in got}, set(want))
    # Steps 1-3 ran in launches 0-2, 4-10 in launches 1-2, 11-20 in 2-3.
    self.assertGreater(len(got), 30)
    for step, loss in got:
      self.assertEqual(loss, want[step], f'step {step}')
    for tag in ('Metrics/map_dataset', 'Metrics/loss'):
      want_eval = dict(local_cluster.eval_scalars(self.reference, tag))
      for step, value in local_cluster.eval_scalars(self.job, tag):
        self.assertEqual(value, want_eval[step], f'{tag} at {step}')

  def test_the_input_resumed_where_it_was(self):
    want = local_cluster.example_ids(self.reference)
    self.assertEqual(sorted(want), list(range(20)))
    # 20 batches of 16 distinct synthetic examples, none repeated.
    self.assertLen({i for ids in want.values() for i in ids}, 320)
    restored = [_restored_step(log) or 0 for _, log, _, _ in self.launches]
    for i, start in enumerate(restored):
      got = local_cluster.example_ids(self.job, 0, name=f'launch{i}')
      # Each launch's input began at the step it restored and went on
      # batch after batch, each the batch the reference trained on.
      batches = sorted(got)
      self.assertEqual(batches[0], start, f'launch {i}')
      self.assertEqual(batches, list(range(start, batches[-1] + 1)))
      for b in batches:
        self.assertEqual(got[b], want[b], f'launch {i}, batch {b}')
    self.assertEqual(sorted(got)[-1], 19)


if __name__ == '__main__':
  absltest.main()
