"""Runs `python -m MODULE ...` the way the launcher tests need it."""

import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Sequence

ROOT = pathlib.Path(__file__).resolve().parent.parent


def child_env(
    tf_log_level: str | None = '2', num_devices: int = 1
) -> dict[str, str]:
  """The environment of a launcher child: CPU devices only, quiet TF.

  Args:
    tf_log_level: TF_CPP_MIN_LOG_LEVEL; '1' keeps TensorFlow's warnings;
      None leaves it unset (the child's own default applies).
    num_devices: simulated CPU devices the child sees.
  """
  env = dict(os.environ)
  # conftest simulates 8 CPU devices for in-process tests; a child gets
  # exactly the devices it asks for.
  env['XLA_FLAGS'] = (
      f'--xla_force_host_platform_device_count={num_devices}'
      if num_devices > 1 else ''
  )
  env['JAX_PLATFORMS'] = 'cpu'
  env['CUDA_VISIBLE_DEVICES'] = ''
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)
  if tf_log_level is not None:
    env['TF_CPP_MIN_LOG_LEVEL'] = tf_log_level
  return env


def run_module(
    *args: str,
    timeout: int = 240,
    tf_log_level: str | None = '2',
    num_devices: int = 1,
) -> subprocess.CompletedProcess:
  """Runs `python -m *args` from the repository root on simulated CPUs.

  Args:
    *args: the module and its arguments.
    timeout: seconds before the run is killed (and the test fails).
    tf_log_level: TF_CPP_MIN_LOG_LEVEL; '1' keeps TensorFlow's warnings,
      None unsets it (TensorFlow's default, as a user's shell has it).
    num_devices: CPU devices the child process sees (default one).

  Returns:
    The finished process, output captured as text; not checked.
  """
  return subprocess.run(
      [sys.executable, '-m', *args],
      cwd=ROOT,
      env=child_env(tf_log_level, num_devices),
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
  )


def run_modules(
    commands: Sequence[tuple[int, Sequence[str]]],
    timeout: int = 600,
    max_parallel: int | None = None,
    tf_log_level: str | None = '2',
) -> list[subprocess.CompletedProcess]:
  """Runs several `python -m ...` commands, a few at a time.

  Each child writes its output to a temporary file (no pipe can fill up);
  every child still running when the shared deadline passes, or when
  anything goes wrong here, is killed before this returns or raises.

  Args:
    commands: (num_devices, [module, arg, ...]) per child.
    timeout: seconds for all of them together.
    max_parallel: children at once; default the machine's CPU count.
    tf_log_level: as in run_module.

  Returns:
    One finished process per command, in order, output as text; not
    checked.

  Raises:
    subprocess.TimeoutExpired: the deadline passed (all children killed).
  """
  max_parallel = max_parallel or os.cpu_count() or 1
  deadline = time.monotonic() + timeout
  pending = list(enumerate(commands))
  running: dict[int, tuple[subprocess.Popen, object, object]] = {}
  done: dict[int, subprocess.CompletedProcess] = {}
  try:
    while pending or running:
      while pending and len(running) < max_parallel:
        i, (num_devices, args) = pending.pop(0)
        out = tempfile.TemporaryFile('w+')
        err = tempfile.TemporaryFile('w+')
        proc = subprocess.Popen(
            [sys.executable, '-m', *args], cwd=ROOT,
            env=child_env(tf_log_level, num_devices), stdout=out, stderr=err,
            text=True,
        )
        running[i] = (proc, out, err)
      for i, (proc, out, err) in list(running.items()):
        if proc.poll() is None:
          continue
        out.seek(0)
        err.seek(0)
        done[i] = subprocess.CompletedProcess(
            proc.args, proc.returncode, out.read(), err.read()
        )
        out.close()
        err.close()
        del running[i]
      if time.monotonic() > deadline:
        raise subprocess.TimeoutExpired(
            [args for _, args in commands], timeout
        )
      time.sleep(0.2)
  finally:
    for proc, out, err in running.values():
      proc.kill()
      proc.wait()
      out.close()
      err.close()
  return [done[i] for i in range(len(commands))]
