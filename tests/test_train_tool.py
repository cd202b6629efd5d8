"""Tests of vit22b_pax.tools.train (`make train`'s progress line).

The log lines fed to Progress are written in the formats paxml 1.4.0 and
vit22b_pax's train program log (absl prefix: level, date, time, thread id,
file:line). The end-to-end success path (a real paxml run through the tool)
is in test_train_e2e.py; here a failing run and a stopped run go through
the real launcher too.
"""

import io
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest

import subprocess_runner
from vit22b_pax.tools import train

_MAIN, _WORKER = '140000000000001', '140000000000002'


def _log(thread, message, level='I'):
  return f'{level}1128 00:05:23.037988 {thread} file.py:45] {message}'


def _status(step, loss, extra='', thread=_WORKER):
  return _log(thread, f'Setting task status: step = {step}, loss= {loss}'
              f'{extra}')


class ProgressTest(absltest.TestCase):

  def test_reads_total_loss_throughput_and_eval(self):
    p = train.Progress()
    self.assertIsNone(p.feed('2026-11-28 00:05:09: W tensorflow/...', 0.0))
    p.feed(_log(_MAIN, '  train.num_train_steps : 1500'), 0.0)
    self.assertEqual(p.total_steps, 1500)
    self.assertIn('starting', p.line(0.0))
    # The first examples/s includes compilation: not shown.
    p.feed(_log(_MAIN, 'step 50: 3.2 examples/sec'), 30.0)
    self.assertEqual(
        p.feed(_status(50, 20.5, ', steps/sec 0.05'), 30.0), 'loss')
    self.assertIsNone(p.examples_per_sec)
    p.feed(_log(_MAIN, 'step 100: 263.4 examples/sec, MFU 1.0%'), 40.0)
    self.assertEqual(p.examples_per_sec, 263.4)
    self.assertEqual(p.feed(_status(100, 9.5), 40.0), 'loss')
    # An eval at step 100: its status line (main thread) comes after a
    # train status line of another thread for the same step.
    p.feed(_log(_MAIN, 'step: 100, eval test eval loss: 9.7'), 41.0)
    self.assertEqual(p.feed(_status(100, 9.25), 41.5), 'loss')
    self.assertEqual(
        p.feed(_status(100, 9.7, ', map=0.5, map_dataset=0.4125, '
                       'map_leaf_dataset=0.2, precision_at_1_dataset=1.0',
                       thread=_MAIN), 42.0),
        'eval')
    self.assertEqual(p.losses, [(50, 20.5), (100, 9.5), (100, 9.25)])
    self.assertEqual((p.step, p.loss), (100, 9.25))
    self.assertEqual((p.eval_step, p.eval_map, p.eval_map_leaf),
                     (100, 0.4125, 0.2))
    # 50 steps in 11.5 s since the first loss; 1,400 steps to go, 0.5 s
    # after the last loss.
    self.assertAlmostEqual(p.seconds_left(42.0), 1400 / (50 / 11.5) - 0.5)
    self.assertEqual(
        p.line(42.0),
        'step 100/1500 (7%) | loss 9.2500 | 263 examples/s | ETA 5m22s'
        ' | eval mAP 0.412, leaves 0.200 @100',
    )

  def test_no_eta_before_two_losses(self):
    p = train.Progress()
    p.feed(_log(_MAIN, '  train.num_train_steps : 10'), 0.0)
    p.feed(_status(5, 1.0), 1.0)
    self.assertIsNone(p.seconds_left(2.0))
    self.assertIn('ETA --', p.line(2.0))

  def test_format_seconds(self):
    self.assertEqual(
        [train.format_seconds(s) for s in (7, 65, 3720)],
        ['7s', '1m05s', '1h02m'],
    )


class DisplayTest(absltest.TestCase):

  def test_terminal_redraws_one_line(self):
    out = io.StringIO()
    display = train._Display(out, interactive=True)
    display.show('step 1/2', None)
    display.show('step 2/2', 'loss')
    display.end()
    self.assertEqual(out.getvalue(),
                     '\rstep 1/2\x1b[K\rstep 2/2\x1b[K\n')

  def test_pipe_gets_a_line_per_event(self):
    out = io.StringIO()
    display = train._Display(out, interactive=False)
    display.show('step 1/2', None)  # A redraw tick: nothing.
    display.show('step 2/2', 'loss')
    display.end()
    self.assertEqual(out.getvalue(), 'step 2/2\n')


class LauncherTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.job = pathlib.Path(tempfile.mkdtemp(prefix='vit22b_train_tool_'))
    self.addCleanup(shutil.rmtree, self.job, ignore_errors=True)

  def test_failure_forwards_the_status_and_shows_the_log_tail(self):
    proc = subprocess_runner.run_module(
        'vit22b_pax.tools.train', f'--job_log_dir={self.job}',
        '--exp=vit22b_pax.experiments.ViTSmoke',
        '--fdl.NUM_TRAIN_STEP=3',  # Misspelled: paxml.main exits 1.
    )
    self.assertEqual(proc.returncode, 1, proc.stderr[-3000:])
    log = (self.job / train.LOG_FILE).read_text()
    self.assertIn('NUM_TRAIN_STEP', log)
    self.assertIn('Traceback', log)
    # The tail of the log names the bad flag; the last line the log file.
    self.assertIn("'NUM_TRAIN_STEP'", proc.stderr)
    self.assertRegex(
        proc.stderr.splitlines()[-1],
        r'^paxml\.main failed \(exit status 1\) after \w+\. Full log: '
        + re.escape(str(self.job / train.LOG_FILE)) + '$',
    )
    # The terminal saw the progress line, not paxml's log.
    self.assertNotIn('Traceback', proc.stdout)
    self.assertEqual(
        proc.stdout,
        'paxml.main: starting (building and compiling the model)\n',
    )

  def test_sigterm_stops_paxml(self):
    log = self.job / train.LOG_FILE
    env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
    tool = subprocess.Popen(
        [sys.executable, '-m', 'vit22b_pax.tools.train',
         f'--job_log_dir={self.job}',
         '--exp=vit22b_pax.experiments.ViTSmoke',
         '--fdl.NUM_TRAIN_STEPS=100000'],
        cwd=subprocess_runner.ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    child_pid = None
    try:
      deadline = time.monotonic() + 60
      while child_pid is None and time.monotonic() < deadline:
        if log.exists():
          m = re.search(r'vit22b_pax\.tools\.train: pid (\d+):',
                        log.read_text())
          child_pid = int(m.group(1)) if m else None
        time.sleep(0.2)
      self.assertIsNotNone(child_pid, 'paxml.main did not start in 60 s')
      tool.send_signal(signal.SIGTERM)
      _, err = tool.communicate(timeout=60)
      self.assertEqual(tool.returncode, 128 + signal.SIGTERM, err)
      self.assertIn('stopped by signal 15; paxml.main ended', err)
      with self.assertRaises(ProcessLookupError):
        os.kill(child_pid, 0)  # Gone (and reaped by the tool).
    finally:
      for pid in (tool.pid, child_pid):
        if pid is not None:
          try:
            os.kill(pid, signal.SIGKILL)
          except ProcessLookupError:
            pass
      if tool.poll() is None:
        tool.wait(timeout=30)


if __name__ == '__main__':
  absltest.main()
