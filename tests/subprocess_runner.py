"""Runs `python -m MODULE ...` the way the launcher tests need it."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_module(
    *args: str, timeout: int = 240, tf_log_level: str | None = '2'
) -> subprocess.CompletedProcess:
  """Runs `python -m *args` from the repository root on one CPU device.

  Args:
    *args: the module and its arguments.
    timeout: seconds before the run is killed (and the test fails).
    tf_log_level: TF_CPP_MIN_LOG_LEVEL; '1' keeps TensorFlow's warnings,
      None unsets it (TensorFlow's default, as a user's shell has it).

  Returns:
    The finished process, output captured as text; not checked.
  """
  env = dict(os.environ)
  # One CPU device (conftest simulates 8 for in-process tests).
  env['XLA_FLAGS'] = ''
  env['JAX_PLATFORMS'] = 'cpu'
  env['CUDA_VISIBLE_DEVICES'] = ''
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)
  if tf_log_level is not None:
    env['TF_CPP_MIN_LOG_LEVEL'] = tf_log_level
  return subprocess.run(
      [sys.executable, '-m', *args],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
  )
