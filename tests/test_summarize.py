"""Tests for vit22b_pax.tools.summarize and vit22b_pax.tools.train_summary."""

import contextlib
import io
import json
import os
import pathlib
import shutil
import tempfile

from absl import app
from absl import flags
from absl.testing import absltest
from fiddle._src.absl_flags import legacy_flags as fdl_legacy_flags
import numpy as np
import tensorflow as tf

from vit22b_pax import health
from vit22b_pax.input import data_format
from vit22b_pax.input import hierarchy
from vit22b_pax.tools import summarize
from vit22b_pax.tools import train_summary

# ViT-22B (docs/recipe.md): D 6144, L 48, F 24576, 48 heads x 128, patch 14,
# 224 px (T = 256), 29,593 classes.
D, L, F, H, P, T, C = 6144, 48, 24576, 128, 14, 256, 29_593


def _run_cli(*args: str) -> str:
  """Runs summarize's main as `python -m` would, returning its stdout."""
  flags.FLAGS.unparse_flags()
  argv = fdl_legacy_flags.rewrite_fdl_args(['summarize', *args])
  rest = flags.FLAGS(argv, known_only=False)
  out = io.StringIO()
  try:
    with contextlib.redirect_stdout(out):
      summarize.main(rest)
  finally:
    flags.FLAGS.unparse_flags()
  return out.getvalue()


class SummarizeTest(absltest.TestCase):

  def test_vit22b_json(self):
    out = json.loads(_run_cli(
        '--exp=vit22b_pax.experiments.ViT22BJFT', '--json',
        '--tokens_per_sec_per_chip=1150', '--peak_tflops=275',
    ))
    blocks = L * (4 * D * D + 2 * D * F)
    self.assertEqual(out['paper_block_matrix_params'], 21_743_271_936)
    self.assertEqual(out['paper_block_matrix_params'], blocks)
    # Closed forms per component: patch kernel + bias + position table;
    # each block adds its LN scale, MLP-in bias, fused out bias, 2 QK-norm
    # scales; the MAP head is a block's matrices plus probe, LN scale, MLP
    # biases and QK-norm scales; the head is [D, C] + [C].
    by_component = {
        'patch_embed': P * P * 3 * D + D + T * D,
        'encoder': blocks + L * (D + F + D + 2 * H),
        'final_ln': D,
        'map_head': 4 * D * D + 2 * D * F + D + D + F + D + 2 * H,
        'head': D * C + C,
    }
    self.assertEqual(out['params_by_component'], by_component)
    self.assertEqual(out['total_params'], sum(by_component.values()))
    per_token = 6 * blocks + 12 * L * T * D
    self.assertEqual(out['train_flops_per_token'], per_token)
    self.assertEqual(out['train_flops_per_image'], per_token * T)
    self.assertAlmostEqual(out['mfu'], 1150 * per_token / 275e12, places=12)
    self.assertAlmostEqual(out['mfu'], 0.549, places=3)

  def test_override_changes_the_answer(self):
    out = json.loads(_run_cli(
        '--exp=ViT22BJFT', '--json', '--fdl.NUM_LAYERS=24',
        '--fdl.IMAGE_SIZE=448',
    ))
    blocks = 24 * (4 * D * D + 2 * D * F)
    self.assertEqual(out['paper_block_matrix_params'], blocks)
    self.assertEqual(out['model']['tokens_per_image'], 1024)
    self.assertEqual(
        out['train_flops_per_token'], 6 * blocks + 12 * 24 * 1024 * D
    )
    self.assertNotIn('mfu', out)

  def test_misspelled_knob_fails_naming_the_closest(self):
    with self.assertRaises(ValueError) as ctx:
      _run_cli('--exp=ViT22BJFT', '--fdl.NUM_LAYER=24')
    self.assertIn("did you mean 'NUM_LAYERS'", str(ctx.exception.__cause__))

  def test_invalid_combination_fails(self):
    with self.assertRaisesRegex(ValueError, 'NUM_HEADS=5 does not divide'):
      _run_cli('--exp=ViT22BJFT', '--fdl.NUM_HEADS=5')

  def test_unknown_experiment_names_the_closest(self):
    with self.assertRaisesRegex(app.UsageError, "did you mean 'ViTSmoke'"):
      _run_cli('--exp=ViTSmok')

  def test_list_knobs(self):
    out = _run_cli('--exp=ViTSmoke', '--list_knobs', '--fdl.PEAK_LR=0.5')
    self.assertIn('NUM_TRAIN_STEPS = 20\n', out)
    self.assertIn('PEAK_LR = 0.5\n', out)


class TrainSummaryTest(absltest.TestCase):

  def _write(self, directory, scalars):
    writer = tf.summary.create_file_writer(directory)
    with writer.as_default():
      for tag, step, value in scalars:
        tf.summary.scalar(tag, value, step=step)
    writer.close()

  def test_reads_paxml_summaries(self):
    job = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, job)
    self._write(os.path.join(job, 'summaries', 'train'), [
        ('loss', 5, 3.0), ('loss', 10, 2.0), ('loss', 15, 1.5),
        ('Examples/sec', 5, 1.0),  # Includes compilation: left out.
        ('Examples/sec', 10, 100.0), ('Examples/sec', 15, 300.0),
    ])
    self._write(os.path.join(job, 'summaries', 'eval_test_eval'), [
        ('loss', 15, 1.7),
        ('Metrics/map', 15, 0.4),  # Batch mean; the dataset one wins.
        ('Metrics/map_dataset', 15, 0.5),
        ('Metrics/precision_at_1_dataset', 15, 0.75),
    ])
    # The input's per-host bad-record counts (vit22b_pax.input.stats).
    os.makedirs(os.path.join(job, 'input_stats'))
    for host, bad in ((0, 2), (1, 3)):
      with open(os.path.join(job, 'input_stats', f'train.host{host}.json'),
                'w') as f:
        json.dump(dict(input='train', data_dir='d', split='train', host=host,
                       num_bad_records=bad), f)
    summary = train_summary.summarize_run(job)
    self.assertEqual(summary['steps'], 15)
    self.assertEqual(summary['train_loss_first'], 3.0)
    self.assertEqual(summary['train_loss_last'], 1.5)
    self.assertAlmostEqual(summary['eval_map'], 0.5)
    self.assertAlmostEqual(summary['eval_precision_at_1'], 0.75)
    self.assertEqual(summary['eval_step'], 15)
    self.assertEqual(summary['examples_per_sec'], 200.0)
    self.assertIsNone(summary['chance_map'])
    self.assertIsNone(summary['eval_map_leaf'])  # Not in the summaries.
    self.assertEqual(summary['bad_records'], 5)
    self.assertIsNone(summary['skipped_steps'])  # No skipped_steps.json.
    text = train_summary.format_summary(summary).splitlines()
    self.assertRegex(text[2], r'^eval mAP +0\.5000 +mean AP over all classes')
    self.assertRegex(text[3], r'^eval mAP, leaves +n/a ')

  def test_reports_the_steps_the_guard_skipped(self):
    job = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, job)
    self._write(os.path.join(job, 'summaries', 'train'), [('loss', 9, 1.0)])
    guard = health.StepGuard(5, job, 0)
    for step in range(9):
      bad = step in (3, 6)
      guard.add(step, np.float32(np.nan if bad else 1.0), {
          health.VALID_STEP_SUMMARY: np.float32(not bad),
          health.GRAD_NORM_SUMMARY: np.float32(np.nan if bad else 1.0),
      })
    guard.flush()
    summary = train_summary.summarize_run(job)
    self.assertEqual(summary['skipped_steps'], 2)
    self.assertEqual(summary['skipped_step_numbers'], [3, 6])
    self.assertRegex(
        train_summary.format_summary(summary).splitlines()[-1],
        r'^skipped steps +2 +updates not applied: non-finite loss or '
        r'gradient; steps 3, 6$',
    )

  def _leaf_run(self):
    """A job with leaf metrics and a 4-class dataset: root 0 over 1, 2, 3."""
    job = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, job)
    self._write(os.path.join(job, 'summaries', 'train'), [
        ('loss', 10, 2.0), ('loss', 20, 1.0),
        ('Metrics/map', 10, 0.3), ('Metrics/map', 20, 0.6),
    ])
    self._write(os.path.join(job, 'summaries', 'eval_test_eval'), [
        ('loss', 10, 1.5), ('loss', 20, 1.2),
        ('Metrics/map_dataset', 10, 0.55), ('Metrics/map_dataset', 20, 0.7),
        ('Metrics/map_leaf_dataset', 10, 0.25),
        ('Metrics/map_leaf_dataset', 20, 0.4),
        ('Metrics/precision_at_1_dataset', 20, 1.0),
        ('Metrics/precision_at_1_leaf_dataset', 20, 0.35),
    ])
    data = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, data)
    hierarchy.write_class_file(
        hierarchy.ClassHierarchy([
            hierarchy.ClassInfo(0, 'root'),
            hierarchy.ClassInfo(1, 'a', (0,)),
            hierarchy.ClassInfo(2, 'b', (0,)),
            hierarchy.ClassInfo(3, 'c', (0,)),
        ]),
        data_format.class_file_path(data),
    )
    data_format.write_info(data, {'num_classes': 4, 'splits': {'eval': {
        'num_examples': 4,
        'label_counts': [0, 2, 1, 1],
        'expanded_label_counts': [4, 2, 1, 1],
    }}})
    return job, data

  def test_leaf_metrics_and_chance_levels(self):
    job, data = self._leaf_run()
    summary = train_summary.summarize_run(job, data)
    self.assertAlmostEqual(summary['eval_map_leaf'], 0.4)
    self.assertAlmostEqual(summary['eval_precision_at_1_leaf'], 0.35)
    self.assertEqual(summary['num_classes'], 4)
    self.assertEqual(summary['num_leaf_classes'], 3)
    # The root is in all 4 images, leaf 'a' (the commonest) in 2.
    self.assertAlmostEqual(summary['chance_precision_at_1'], 1.0)
    self.assertAlmostEqual(summary['chance_precision_at_1_leaf'], 0.5)
    # E[AP](n, 4) = (n-1)/3 + H_4 (4-n)/12: n = 2 and twice n = 1.
    h4 = 1 + 1 / 2 + 1 / 3 + 1 / 4
    ap2, ap1 = 1 / 3 + h4 * 2 / 12, h4 * 3 / 12
    self.assertAlmostEqual(summary['chance_map_leaf'], (ap2 + 2 * ap1) / 3)
    self.assertAlmostEqual(summary['chance_map'], (1 + ap2 + 2 * ap1) / 4)
    text = train_summary.format_summary(summary)
    self.assertRegex(
        text, r'eval mAP, leaves +0\.4000 +\(chance 0\.\d{4}\) +mean AP over'
        r' 3 leaf classes'
    )

  def test_plot_shows_the_run(self):
    job, data = self._leaf_run()
    scalars = train_summary.read_run(job)
    summary = train_summary.summarize_run(job, data, scalars=scalars)
    fig = train_summary.plot_training(*scalars, summary)
    ax_loss, ax_map = fig.axes
    lines = {l.get_label(): l for l in ax_loss.lines + ax_map.lines}
    for label, steps, values in (
        ('train loss', [10, 20], [2.0, 1.0]),
        ('eval loss', [10, 20], [1.5, 1.2]),
        ('train batch mAP, all classes', [10, 20], [0.3, 0.6]),
        ('eval mAP, all classes', [10, 20], [0.55, 0.7]),
        ('eval mAP, leaf classes', [10, 20], [0.25, 0.4]),
    ):
      np.testing.assert_allclose(lines[label].get_xdata(), steps)
      np.testing.assert_allclose(lines[label].get_ydata(), values, rtol=1e-6)
    np.testing.assert_allclose(
        lines['chance, leaf classes'].get_ydata(),
        [summary['chance_map_leaf']] * 2,
    )

  def test_main_writes_summary_and_plot(self):
    job, data = self._leaf_run()
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['train_summary', f'--job_log_dir={job}', f'--data_dir={data}'])
    self.addCleanup(flags.FLAGS.unparse_flags)
    with contextlib.redirect_stdout(io.StringIO()) as out, \
        contextlib.redirect_stderr(io.StringIO()):
      train_summary.main(['train_summary'])
    written = json.loads(
        pathlib.Path(job, train_summary.SUMMARY_FILE).read_text()
    )
    self.assertEqual(
        written, train_summary.summarize_run(job, data)
    )
    self.assertIn('eval mAP, leaves', out.getvalue())
    png = pathlib.Path(job, train_summary.PLOT_FILE).read_bytes()
    self.assertEqual(png[:8], b'\x89PNG\r\n\x1a\n')


if __name__ == '__main__':
  absltest.main()
