"""Local `paxml.main` processes for end-to-end tests: start, watch, kill.

Every child runs in its own session (so killing its process group ends
everything it started), writes stdout and stderr to its own log file, and
is waited for with a deadline; on Linux it also gets SIGKILL when the test
process dies (PR_SET_PDEATHSIG), so even a killed test run leaves nothing
running. `Cluster` starts N processes as one
simulated N-host job (jax.distributed over 127.0.0.1, Gloo collectives on
CPU, one CPU device per process), the way experiments/multihost_local.sh
does, and kills all of them on exit from its `with` block, whatever
happened inside. `shared_run` runs a job once per test session for every
test module that compares against it.

No persistent XLA compilation cache: with jaxlib 0.4.26 on CPU, a run that
restored a checkpoint and loaded its train step from the cache segfaulted
at its second step (checked), so every launch compiles.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
from jax.experimental.array_serialization import serialization
import numpy as np

import subprocess_runner
from vit22b_pax.input import resumable
from vit22b_pax.tools import train_summary

ROOT = subprocess_runner.ROOT
SMOKE = 'vit22b_pax.experiments.ViTSmoke'
# ViTSmoke (20 steps, checkpoints and evals every 10), every step's loss
# in the summaries and every batch's example ids in input_ids/.
SMOKE_ARGS = (
    f'--exp={SMOKE}', '--eval_on_test', '--fdl.SUMMARY_INTERVAL_STEPS=1',
    '--fdl.LOG_EXAMPLE_IDS=True',
)


_SESSION_DIR = pathlib.Path(tempfile.mkdtemp(prefix='vit22b_local_cluster_'))
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)


_LIBC = ctypes.CDLL(None) if sys.platform.startswith('linux') else None
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
  """A Popen preexec_fn: the child gets `sig` when its parent dies."""
  if _LIBC is None:
    return None
  return lambda: _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig))


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on right now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def multihost_flags(num_hosts: int, host: int, port: int) -> list[str]:
  """paxml.main flags of host `host` of a local `num_hosts`-process job."""
  return [
      '--multiprocess_gpu',  # paxml: call jax.distributed.initialize.
      f'--server_addr=127.0.0.1:{port}',
      f'--num_hosts={num_hosts}',
      f'--host_idx={host}',
      '--jax_cpu_enable_gloo_collectives=true',
  ]


def wait_for(
    condition: Callable[[], bool], timeout: float, interval: float = 0.005
) -> bool:
  """Polls `condition` until it holds (True) or `timeout` seconds pass."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return True
    time.sleep(interval)
  return condition()


class Process:
  """One child process in its own session, its output in `log_path`."""

  def __init__(self, argv: Sequence[str], log_path: pathlib.Path):
    self.argv = list(argv)
    self.log_path = pathlib.Path(log_path)
    self.log_path.parent.mkdir(parents=True, exist_ok=True)
    self._log_bytes, self._log_text = 0, ''
    with open(self.log_path, 'wb') as log:
      self.popen = subprocess.Popen(
          self.argv, cwd=ROOT, env=subprocess_runner.child_env(),
          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
          start_new_session=True, preexec_fn=die_with_parent(),
      )

  @property
  def pid(self) -> int:
    return self.popen.pid

  def log(self) -> str:
    """The log so far (read incrementally: cheap to poll)."""
    with open(self.log_path, 'rb') as f:
      f.seek(self._log_bytes)
      new = f.read()
    self._log_bytes += len(new)
    self._log_text += new.decode(errors='replace')
    return self._log_text

  def running(self) -> bool:
    return self.popen.poll() is None

  def kill(self) -> None:
    """SIGKILLs the process group (idempotent) and reaps the process."""
    try:
      os.killpg(self.popen.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    try:
      self.popen.wait(timeout=30)
    except subprocess.TimeoutExpired:  # Unkillable: report, do not hang.
      pass

  def wait(self, timeout: float) -> int:
    """The exit code; kills the process and raises if it runs too long."""
    try:
      return self.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.kill()
      raise


def paxml_argv(*args: str) -> list[str]:
  return [sys.executable, '-m', 'paxml.main', *args]


class Cluster:
  """N local paxml.main processes forming one job; kills all on exit.

  Usage:
    with Cluster(2, args, log_dir) as job:
      codes = job.wait(timeout=300)
  """

  def __init__(
      self, num_hosts: int, args: Sequence[str], log_dir: pathlib.Path,
      port: int | None = None,
  ):
    self.num_hosts = num_hosts
    self.port = port or free_port()
    self.procs = []
    flags = (
        (lambda h: multihost_flags(num_hosts, h, self.port))
        if num_hosts > 1 else (lambda h: [])
    )
    try:
      for h in range(num_hosts):
        self.procs.append(Process(
            paxml_argv(*flags(h), *args),
            pathlib.Path(log_dir) / f'host{h}.log',
        ))
    except BaseException:
      self.kill()
      raise

  def __enter__(self) -> 'Cluster':
    return self

  def __exit__(self, *unused_exc) -> None:
    self.kill()

  def logs(self) -> list[str]:
    return [p.log() for p in self.procs]

  def running(self) -> bool:
    return any(p.running() for p in self.procs)

  def kill(self) -> None:
    for p in self.procs:
      p.kill()

  def wait(self, timeout: float) -> list[int]:
    """Exit codes of all; when one fails, the others are killed (they
    would wait for it in a collective); raises after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while any(p.popen.poll() is None for p in self.procs):
      if any(p.popen.poll() not in (None, 0) for p in self.procs):
        self.kill()
        break
      if time.monotonic() > deadline:
        self.kill()
        raise TimeoutError(
            f'{self.num_hosts}-process job still running after {timeout} s;'
            f' logs: {[str(p.log_path) for p in self.procs]}'
        )
      time.sleep(0.05)
    return [p.popen.wait(timeout=30) for p in self.procs]


_SHARED = {}


def shared_run(
    name: str, args: Sequence[str], num_hosts: int = 1
) -> pathlib.Path:
  """Starts job `name` (once per session, in the background); its job dir.

  `args` must not contain --job_log_dir; the job gets <session>/<name>.
  Call `wait_shared(name)` before reading its results.
  """
  if name not in _SHARED:
    job = _SESSION_DIR / name
    cluster = Cluster(num_hosts, [*args, f'--job_log_dir={job}'],
                      _SESSION_DIR / f'{name}_logs')
    atexit.register(cluster.kill)
    _SHARED[name] = (cluster, job, list(args))
  cluster, job, first_args = _SHARED[name]
  if list(args) != first_args:
    raise ValueError(f'shared run {name!r} was started with other args')
  return job


def wait_shared(name: str, timeout: float) -> pathlib.Path:
  """Waits for shared job `name`; raises unless every process exited 0."""
  cluster, job, _ = _SHARED[name]
  codes = cluster.wait(timeout)
  if any(codes):
    raise RuntimeError(
        f'shared run {name!r} failed with {codes}; log tail:\n'
        + cluster.procs[0].log()[-3000:]
    )
  return job


# ---- Reading a job directory.


def train_losses(job: pathlib.Path) -> list[tuple[int, float]]:
  """(step, loss) of every train summary written, in step order; a step
  run again after a restart appears once per run that wrote it."""
  series = train_summary.read_scalars(job / 'summaries' / 'train')['loss']
  return [(step, value) for step, _, value in series]


def eval_scalars(job: pathlib.Path, tag: str) -> list[tuple[int, float]]:
  series = train_summary.read_scalars(
      job / 'summaries' / 'eval_test_eval')[tag]
  return [(step, value) for step, _, value in series]


def example_ids(
    job: pathlib.Path, host: int = 0, name: str = 'train'
) -> dict[int, list[str]]:
  """{batch: ids} of the job's id log of `host` (LOG_EXAMPLE_IDS)."""
  return resumable.read_id_log(
      str(job / resumable.ID_LOG_DIR / f'{name}.host{host}.jsonl'))


def checkpoint_dirs(job: pathlib.Path) -> list[str]:
  return sorted(p.name for p in (job / 'checkpoints').iterdir())


def checkpoint_arrays(job: pathlib.Path, step: int) -> dict[str, Any]:
  """{name: np.ndarray} of every array in checkpoint `step` (params,
  optimizer state, step), read back with tensorstore."""
  state = job / 'checkpoints' / f'checkpoint_{step:08d}' / 'state'
  names = sorted(p.name for p in state.iterdir() if p.is_dir())
  arrays = serialization.run_deserialization(
      [jax.sharding.SingleDeviceSharding(jax.devices()[0])] * len(names),
      [serialization.get_tensorstore_spec(str(state / n)) for n in names],
  )
  return {n: np.asarray(a) for n, a in zip(names, arrays)}
