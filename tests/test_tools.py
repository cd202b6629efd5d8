"""Every command-line tool starts quietly and `--help` prints help alone.

Each tool runs as a user runs it, `python -m vit22b_pax.tools.NAME`, in a
subprocess whose environment does not set TF_CPP_MIN_LOG_LEVEL (so
TensorFlow would log its CUDA-library warnings on this CPU machine unless
the tools package silences them). The tools are found by listing
vit22b_pax/tools, so a new tool is checked without editing this file.
"""

import json
import pathlib
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import tensorflow as tf

import subprocess_runner

_TOOLS = sorted(
    p.stem
    for p in (subprocess_runner.ROOT / 'vit22b_pax' / 'tools').glob('*.py')
    if p.stem != '__init__'
)


def _run_quiet(*args, timeout=240):
  return subprocess_runner.run_module(
      *args, timeout=timeout, tf_log_level=None
  )


class ToolsTest(parameterized.TestCase):

  def test_every_tool_is_checked(self):
    # The listing found the tools (a wrong directory would test nothing).
    self.assertContainsSubset(
        {'make_dataset', 'summarize', 'train', 'train_summary'}, _TOOLS
    )

  @parameterized.named_parameters((t, t) for t in _TOOLS)
  def test_help_prints_help_alone(self, tool):
    proc = _run_quiet(f'vit22b_pax.tools.{tool}', '--help')
    # argparse exits 0 after --help, absl.app 1: either, but no crash.
    self.assertIn(proc.returncode, (0, 1), proc.stderr)
    self.assertEqual(proc.stderr, '')
    # Usage text: argparse's prog and absl's module docstring both name the
    # command; paxml/TensorFlow log lines would start with a level letter
    # and a date.
    self.assertIn(f'python -m vit22b_pax.tools.{tool}', proc.stdout)
    self.assertNotRegex(proc.stdout, r'(?m)^[IWEF]\d{4} |^\d{4}-\d\d-\d\d ')

  def test_summarize_runs_quietly(self):
    # Imports paxml, praxis, lingvo, TensorFlow and jax; registers the
    # experiments (paxml prints each registration to stderr).
    proc = _run_quiet('vit22b_pax.tools.summarize', '--exp=ViTSmoke')
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertEqual(proc.stderr, '')
    self.assertStartsWith(proc.stdout, 'ViTSmoke: tiny (D 32')

  def test_train_summary_runs_quietly(self):
    job = pathlib.Path(tempfile.mkdtemp())
    self.addCleanup(shutil.rmtree, job)
    writer = tf.summary.create_file_writer(str(job / 'summaries' / 'train'))
    with writer.as_default():
      tf.summary.scalar('loss', 2.0, step=10)
    writer.close()
    proc = _run_quiet(
        'vit22b_pax.tools.train_summary', f'--job_log_dir={job}'
    )
    self.assertEqual(proc.returncode, 0, proc.stderr)
    # Only what the tool itself reports; no TensorFlow start-up lines.
    self.assertEqual(
        proc.stderr.splitlines(),
        [f'wrote {job / "summary.json"}', f'wrote {job / "training.png"}'],
    )
    self.assertEqual(json.loads((job / 'summary.json').read_text())['steps'],
                     10)


if __name__ == '__main__':
  absltest.main()
