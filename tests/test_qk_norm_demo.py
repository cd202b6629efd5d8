"""Tests for vit22b_pax.tools.qk_norm_demo, run tiny.

setUpClass makes a small shapes dataset (128 train images) and runs the
demo in-process for 4 steps with the tiny transformer: its two trainings
are real launcher subprocesses (paxml.main, one CPU device each, at the
same time), stopped by the demo's own finally in every outcome and bounded
by --timeout_minutes.
"""

import io
import json
import math
import pathlib
import shutil
import tempfile

from absl.testing import absltest

from vit22b_pax import knobs
from vit22b_pax.input import shapes
from vit22b_pax.tools import qk_norm_demo

_STEPS = 4
_TINY = (
    "--fdl.MODEL_SIZE='tiny'", '--fdl.PATCH_SIZE=4',
    '--fdl.GLOBAL_BATCH_SIZE=8',
)
_CURVE_KEYS = {'steps', 'loss', 'max_logit', 'entropy', 'max_logit_max',
               'entropy_min', 'entropy_mean'}
_HEADLINE_KEYS = {'last_step', 'max_logit_last', 'max_logit_peak',
                  'entropy_min_last', 'entropy_mean_last', 'loss_last'}
_ATTENTIONS = {'layer_00', 'layer_01', 'map_head'}  # The tiny preset.


def _knobs(job: pathlib.Path) -> dict[str, str]:
  lines = (job / knobs.KNOBS_FILE).read_text().splitlines()
  return {l.split(' = ')[0]: l.split(' = ')[1].split('  #')[0]
          for l in lines if ' = ' in l and not l.startswith('#')}


class QkNormDemoTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix='vit22b_qk_demo_'))
    cls.data = cls.tmp / 'shapes'
    shapes.generate(str(cls.data), num_train=128, num_eval=16,
                    train_shards=1, eval_shards=1, progress=False)
    cls.out = cls.tmp / 'demo'
    cls.printed = io.StringIO()
    cls.status = qk_norm_demo.main(
        ['--steps', str(_STEPS), '--summary_interval', '1',
         '--out', str(cls.out), '--data_dir', str(cls.data),
         '--timeout_minutes', '10', *_TINY],
        out=cls.printed,
    )
    json_path = cls.out / qk_norm_demo.JSON_FILE
    cls.results = (
        json.loads(json_path.read_text()) if json_path.exists() else None
    )

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_runs_and_writes_json_and_png(self):
    self.assertEqual(self.status, 0, self.printed.getvalue()[-3000:])
    png = (self.out / qk_norm_demo.PLOT_FILE).read_bytes()
    self.assertTrue(png.startswith(b'\x89PNG\r\n\x1a\n'))
    self.assertGreater(len(png), 10_000)
    self.assertEqual(set(self.results), {'settings', 'num_tokens', 'runs'})
    self.assertEqual(self.results['num_tokens'], 16)  # (16 px / 4) ** 2
    self.assertEqual(set(self.results['runs']), {'qk_norm', 'no_qk_norm'})
    for key, run in self.results['runs'].items():
      self.assertEqual(run['exit_status'], 0, key)
      self.assertFalse(run['stopped_by_guard'])
      self.assertEqual(set(run['curves']), _CURVE_KEYS)
      self.assertEqual(set(run['headline']), _HEADLINE_KEYS)

  def test_curves_hold_every_step_and_layer(self):
    for key, run in self.results['runs'].items():
      curves = run['curves']
      self.assertEqual(curves['steps'], list(range(1, _STEPS + 1)), key)
      for name in ('max_logit', 'entropy'):
        self.assertEqual(set(curves[name]), _ATTENTIONS, key)
        for values in curves[name].values():
          self.assertLen(values, _STEPS)
          self.assertTrue(all(math.isfinite(v) for v in values))
      for values in curves['entropy'].values():
        for v in values:
          self.assertBetween(v, 0.0, math.log(16) + 1e-5)
      # Reductions over the encoder layers only (not the MAP head).
      layers = [v for k, v in curves['max_logit'].items() if k != 'map_head']
      self.assertEqual(curves['max_logit_max'],
                       [max(v) for v in zip(*layers)])
      entropies = [v for k, v in curves['entropy'].items() if k != 'map_head']
      self.assertEqual(curves['entropy_min'],
                       [min(v) for v in zip(*entropies)])
      headline = run['headline']
      self.assertEqual(headline['last_step'], _STEPS)
      self.assertEqual(headline['max_logit_last'], curves['max_logit_max'][-1])
      self.assertEqual(headline['max_logit_peak'], max(curves['max_logit_max']))
      self.assertEqual(headline['loss_last'], curves['loss'][-1])

  def test_runs_differ_only_in_qk_norm(self):
    runs = self.out / 'runs'
    with_norm, without = _knobs(runs / 'qk_norm'), _knobs(runs / 'no_qk_norm')
    self.assertEqual(with_norm.pop('USE_QK_NORM'), 'True')
    self.assertEqual(without.pop('USE_QK_NORM'), 'False')
    self.assertEqual(with_norm, without)
    self.assertEqual(with_norm['PEAK_LR'], repr(qk_norm_demo.DEFAULT_PEAK_LR))
    self.assertEqual(with_norm['NUM_TRAIN_STEPS'], str(_STEPS))
    self.assertEqual(with_norm['MODEL_SIZE'], "'tiny'")
    # Different models: different attention logits from the first step.
    first = {k: r['curves']['max_logit_max'][0]
             for k, r in self.results['runs'].items()}
    self.assertNotAlmostEqual(first['qk_norm'], first['no_qk_norm'])

  def test_progress_and_headline_are_printed(self):
    text = self.printed.getvalue()
    lr = format(qk_norm_demo.DEFAULT_PEAK_LR, 'g')
    self.assertIn(f'training both for {_STEPS} steps at PEAK_LR {lr}', text)
    self.assertRegex(text, r'with QK-norm: step \d+/4')
    self.assertRegex(
        text, r'without QK-norm +step 4: max logit \S+ \(peak \S+\), '
        r'entropy lowest layer \S+ / mean \S+ nats, loss \S+'
    )

  def test_bad_knob_fails_before_training(self):
    out = self.tmp / 'bad'
    with self.assertRaisesRegex(knobs.ValidationError, 'NUM_LAYERS'):
      qk_norm_demo.main(
          ['--out', str(out), '--data_dir', str(self.data),
           '--fdl.NUM_LAYER=2'], out=io.StringIO(),
      )
    self.assertFalse(out.exists())


if __name__ == '__main__':
  absltest.main()
