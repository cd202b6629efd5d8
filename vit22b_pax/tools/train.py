r"""Runs paxml.main with one live progress line; its full log goes to a file.

  python -m vit22b_pax.tools.train --job_log_dir=runs/train_cpu \
      [--verbose] [--log_file=PATH] PAXML_FLAGS...

e.g. PAXML_FLAGS = --exp=vit22b_pax.experiments.ViTShapesCPU
--fdl.DATA_DIR="'data/shapes'" --eval_on_test. Every flag but --verbose and
--log_file goes to `python -m paxml.main` unchanged (--job_log_dir too;
`python -m paxml.main --helpfull` lists them).

The terminal shows one progress line: step / total, the last train loss,
examples/s, the time left and the last eval mAP (all classes and leaf
classes). On a terminal the line is redrawn in place every second; when
stdout is not a terminal (CI, a pipe) one line is printed each time paxml
logs a train loss or an eval result, i.e. every SUMMARY_INTERVAL_STEPS of
the experiment. paxml's log (stdout and stderr) is appended to --log_file,
default <job_log_dir>/train.log; --verbose also shows it on the terminal
instead of the progress line.

The exit status is paxml.main's; on a failure the last lines of the log
and its path are printed. Ctrl-C or SIGTERM stops paxml.main (SIGTERM,
then SIGKILL after a grace period) and exits with 128 + the signal number.

The progress comes from lines paxml 1.4.0 logs (absl format):
  train.num_train_steps : N                  the task config dump (total)
  Setting task status: step = S, loss= L...  every summary write; eval's
                                              comes from the thread that
                                              logged 'eval test'
  step S: X examples/sec                     vit22b_pax's train program
  step: S, eval test NAME loss: L            each eval
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from typing import Sequence, TextIO

from vit22b_pax import tools

# Lines of the log printed when paxml.main fails.
TAIL_LINES = 40
# Seconds paxml.main gets to exit after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 10.0
# How often the terminal line is redrawn while paxml is quiet (seconds).
REDRAW_SECONDS = 1.0
LOG_FILE = 'train.log'

# absl's prefix: level, date, time, thread id, file:line.
_ABSL = re.compile(r'^[IWEF]\d{4} [\d:.]+ +(\d+) [^\]]*\] (.*)$')
_NUMBER = r'([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))'
_TOTAL = re.compile(r'^\s*train\.num_train_steps : (\d+)\s*$')
_STATUS = re.compile(r'^Setting task status: step = (\d+), loss= ' + _NUMBER)
_EXAMPLES = re.compile(r'^step (\d+): ' + _NUMBER + ' examples/sec')
_EVAL = re.compile(r'^step: (\d+), eval test \S+ loss: ')
_MAP = re.compile(r'\bmap_dataset=' + _NUMBER)
_MAP_LEAF = re.compile(r'\bmap_leaf_dataset=' + _NUMBER)


@dataclasses.dataclass
class Progress:
  """What the log said so far.

  Attributes:
    total_steps: NUM_TRAIN_STEPS from the task config dump.
    step: Step of the last train loss (or examples/s) line.
    loss: The last train loss.
    examples_per_sec: The last examples/s measurement (the first, which
      includes compilation, is skipped).
    eval_step: Step of the last eval.
    eval_map: Its mAP over all classes ('map_dataset').
    eval_map_leaf: Its mAP over the leaf classes ('map_leaf_dataset').
    first: (step, time) of the first train loss, for the rate.
    last: (step, time) of the latest train loss.
    losses: Every train loss seen: [(step, loss)].
  """

  total_steps: int | None = None
  step: int | None = None
  loss: float | None = None
  examples_per_sec: float | None = None
  eval_step: int | None = None
  eval_map: float | None = None
  eval_map_leaf: float | None = None
  first: tuple[int, float] | None = None
  last: tuple[int, float] | None = None
  losses: list[tuple[int, float]] = dataclasses.field(default_factory=list)
  # Thread and step of an eval whose status line is still to come.
  _eval_thread: tuple[str, int] | None = dataclasses.field(
      default=None, repr=False
  )
  _examples_seen: bool = dataclasses.field(default=False, repr=False)

  def feed(self, line: str, now: float) -> str | None:
    """Reads one log line; returns 'loss' or 'eval' when one was logged."""
    match = _ABSL.match(line)
    if not match:
      return None
    thread, message = match.groups()
    if m := _TOTAL.match(message):
      self.total_steps = int(m.group(1))
    elif m := _EVAL.match(message):
      self._eval_thread = (thread, int(m.group(1)))
    elif m := _STATUS.match(message):
      step = int(m.group(1))
      if self._eval_thread == (thread, step):
        self._eval_thread = None
        self.eval_step = step
        self.eval_map = _search_float(_MAP, message)
        self.eval_map_leaf = _search_float(_MAP_LEAF, message)
        return 'eval'
      self.step, self.loss = step, float(m.group(2))
      self.losses.append((step, self.loss))
      if self.first is None:
        self.first = (step, now)
      self.last = (step, now)
      return 'loss'
    elif m := _EXAMPLES.match(message):
      self.step = max(self.step or 0, int(m.group(1)))
      # The first measurement includes compilation: shown from the second.
      if self._examples_seen:
        self.examples_per_sec = float(m.group(2))
      self._examples_seen = True
    return None

  def seconds_left(self, now: float) -> float | None:
    """Time to total_steps at the rate since the first train loss."""
    if not (self.total_steps and self.first and self.last):
      return None
    (s0, t0), (s1, t1) = self.first, self.last
    if s1 <= s0 or t1 <= t0:
      return None
    rate = (s1 - s0) / (t1 - t0)
    return max(0.0, (self.total_steps - s1) / rate - (now - t1))

  def line(self, now: float) -> str:
    """The one-line progress report."""
    if self.step is None:
      return 'paxml.main: starting (building and compiling the model)'
    total = self.total_steps or '?'
    parts = [f'step {self.step}/{total}']
    if self.total_steps:
      parts[0] += f' ({100 * self.step / self.total_steps:.0f}%)'
    if self.loss is not None:
      parts.append(f'loss {self.loss:.4f}')
    if self.examples_per_sec is not None:
      parts.append(f'{self.examples_per_sec:.0f} examples/s')
    left = self.seconds_left(now)
    parts.append('ETA ' + ('--' if left is None else format_seconds(left)))
    if self.eval_step is not None and self.eval_map is not None:
      text = f'eval mAP {self.eval_map:.3f}'
      if self.eval_map_leaf is not None:
        text += f', leaves {self.eval_map_leaf:.3f}'
      parts.append(f'{text} @{self.eval_step}')
    return ' | '.join(parts)


def _search_float(pattern: re.Pattern[str], text: str) -> float | None:
  m = pattern.search(text)
  return float(m.group(1)) if m else None


def format_seconds(seconds: float) -> str:
  """'1h02m', '4m05s' or '12s'."""
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{secs:02d}s'
  return f'{secs}s'


class _Stopped(Exception):
  """Raised by the signal handler: the user or the system stops the run."""

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m vit22b_pax.tools.train',
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      allow_abbrev=False,
  )
  parser.add_argument(
      '--job_log_dir', required=True,
      help='paxml job directory (passed to paxml.main)')
  parser.add_argument(
      '--log_file', default=None,
      help=f'where paxml\'s log goes; default <job_log_dir>/{LOG_FILE}')
  parser.add_argument(
      '--verbose', action='store_true',
      help='show paxml\'s full log on the terminal (still written to the'
      ' log file) instead of the progress line')
  return parser


class _Display:
  """The progress line: redrawn in place on a terminal, else one per event."""

  def __init__(self, out: TextIO, interactive: bool):
    self._out = out
    self._interactive = interactive
    self._drawn = False

  def show(self, text: str, event: str | None) -> None:
    if self._interactive:
      # A line longer than the terminal would wrap and break the redraw.
      width = max(shutil.get_terminal_size().columns - 1, 40)
      self._out.write('\r' + text[:width] + '\x1b[K')
      self._drawn = True
    elif event:
      self._out.write(text + '\n')
    self._out.flush()

  def end(self) -> None:
    if self._drawn:
      self._out.write('\n')
      self._out.flush()
      self._drawn = False


def run(
    paxml_args: Sequence[str],
    log_path: str,
    verbose: bool,
    out: TextIO,
    err: TextIO,
) -> int:
  """Runs paxml.main, reporting on out/err; returns the exit status."""
  command = [sys.executable, '-m', 'paxml.main', *paxml_args]
  env = dict(tools.ORIGINAL_ENVIRON, PYTHONUNBUFFERED='1')
  display = _Display(out, interactive=out.isatty() and not verbose)
  progress = Progress()
  tail = collections.deque(maxlen=TAIL_LINES)
  start = time.monotonic()
  os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
  previous = {
      s: signal.signal(s, _raise_stopped) for s in (signal.SIGINT,
                                                    signal.SIGTERM)
  }
  child = None
  try:
    with open(log_path, 'a', encoding='utf-8') as log:
      child = subprocess.Popen(
          command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT, env=env)
      log.write(f'# {datetime.datetime.now().isoformat(timespec="seconds")}'
                f' vit22b_pax.tools.train: pid {child.pid}:'
                f' {" ".join(command)}\n')
      log.flush()
      if not verbose:
        display.show(progress.line(time.monotonic()), 'start')
      for line in _lines(child.stdout.fileno()):
        now = time.monotonic()
        if line is None:  # Nothing new for REDRAW_SECONDS.
          if not verbose:
            display.show(progress.line(now), None)
          continue
        log.write(line + '\n')
        log.flush()
        tail.append(line)
        event = progress.feed(line, now)
        if verbose:
          err.write(line + '\n')
          err.flush()
        else:
          display.show(progress.line(now), event)
      status = child.wait()
  except _Stopped as stopped:
    display.end()
    if child is not None:
      _stop(child)
    err.write(f'stopped by signal {stopped.signum}; paxml.main ended.'
              f' Log: {log_path}\n')
    return 128 + stopped.signum
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  display.end()
  elapsed = format_seconds(time.monotonic() - start)
  if status == 0:
    out.write(f'paxml.main finished in {elapsed}. Log: {log_path}\n')
    return 0
  code = 128 - status if status < 0 else status  # -N: killed by signal N.
  if not verbose:
    err.write(f'The last {len(tail)} lines of paxml\'s log:\n')
    err.writelines(line + '\n' for line in tail)
  err.write(f'paxml.main failed (exit status {code}) after {elapsed}.'
            f' Full log: {log_path}\n')
  return code


def _raise_stopped(signum, frame):
  del frame
  raise _Stopped(signum)


def _lines(fd: int):
  """Yields the child's output lines; None after REDRAW_SECONDS of silence."""
  pending = b''
  while True:
    ready, _, _ = select.select([fd], [], [], REDRAW_SECONDS)
    if not ready:
      yield None
      continue
    chunk = os.read(fd, 1 << 16)
    if not chunk:
      if pending:
        yield pending.decode('utf-8', errors='replace')
      return
    pending += chunk
    *complete, pending = pending.split(b'\n')
    for raw in complete:
      yield raw.decode('utf-8', errors='replace').rstrip('\r')


def _stop(child: subprocess.Popen) -> None:
  """SIGTERM, then SIGKILL after STOP_GRACE_SECONDS; waits for the exit."""
  if child.poll() is None:
    child.terminate()
    try:
      child.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
      child.kill()
      child.wait()


def main(argv: Sequence[str] | None = None) -> int:
  args, paxml_args = _parser().parse_known_args(argv)
  if '://' in args.job_log_dir and not args.log_file:
    raise SystemExit(
        f'--job_log_dir={args.job_log_dir} is not a local directory: give'
        ' --log_file (a local path) for paxml\'s log.'
    )
  log_path = args.log_file or os.path.join(args.job_log_dir, LOG_FILE)
  return run(
      [f'--job_log_dir={args.job_log_dir}', *paxml_args],
      log_path, args.verbose, sys.stdout, sys.stderr,
  )


if __name__ == '__main__':
  sys.exit(main())
