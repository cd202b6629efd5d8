"""Local `paxml.main` processes for end-to-end tests: start, watch, kill.

Every child runs in its own session (so killing its process group ends
everything it started), writes stdout and stderr to its own log file, and
is waited for with a deadline. `Cluster` starts N processes as one
simulated N-host job (jax.distributed over 127.0.0.1, Gloo collectives on
CPU, one CPU device per process), the way experiments/multihost_local.sh
does, and kills all of them on exit from its `with` block, whatever
happened inside.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Sequence

import subprocess_runner

ROOT = subprocess_runner.ROOT


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
    with open(self.log_path, 'wb') as log:
      self.popen = subprocess.Popen(
          self.argv, cwd=ROOT, env=subprocess_runner.child_env(),
          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
          start_new_session=True,
      )

  @property
  def pid(self) -> int:
    return self.popen.pid

  def log(self) -> str:
    return self.log_path.read_text(errors='replace')

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
