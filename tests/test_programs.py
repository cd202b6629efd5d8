"""Tests for vit22b_pax.programs: dataset-level eval metrics, throughput/MFU.

The eval program reads paxml's eval-loop results by name
(programs.EvalLoopOutput); EvalLoopOutputTest checks those names against
paxml's own source, so a paxml upgrade that changes the tuple fails here.
"""

import ast
import collections
import inspect
import textwrap

from absl.testing import absltest
import numpy as np
from paxml import programs as pax_programs

from vit22b_pax import experiments
from vit22b_pax import programs


class EvalLoopOutputTest(absltest.TestCase):

  def _function(self, cls, name):
    source = textwrap.dedent(inspect.getsource(getattr(cls, name)))
    return ast.parse(source).body[0]

  def test_fields_are_the_names_paxml_unpacks(self):
    # SingleTaskEvalProgram.run: `(num_steps, loss, ...) = self._run_eval_loop`.
    run = self._function(pax_programs.SingleTaskEvalProgram, 'run')
    unpacked = [
        [t.id for t in node.targets[0].elts]
        for node in ast.walk(run)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call)
        and getattr(node.value.func, 'attr', None) == '_run_eval_loop'
    ]
    self.assertEqual(unpacked, [list(programs.EvalLoopOutput._fields)])

  def test_paxml_returns_that_many_values_in_that_order(self):
    loop = self._function(pax_programs.SingleTaskEvalProgram, '_run_eval_loop')
    (ret,) = [n for n in ast.walk(loop) if isinstance(n, ast.Return)]
    returned = [e.id for e in ret.value.elts]
    self.assertLen(returned, len(programs.EvalLoopOutput._fields))
    # The fields this project reads are returned under the same names.
    self.assertEqual(returned[3:5], ['metrics', 'per_example_scores'])


class DatasetMetricsEvalProgramTest(absltest.TestCase):

  def test_adds_dataset_level_metrics(self):
    # Two batches; class 0's AP needs examples from both (per-batch mAPs
    # would differ), class 1 has no positive and is excluded.
    logits = [np.array([[3.0, 0.0], [1.0, 2.0]]),
              np.array([[2.0, 5.0], [0.0, 1.0], [9.0, 9.0]])]
    labels = [np.array([[1.0, 0.0], [0.0, 0.0]]),
              np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])]
    weight = [np.ones(2), np.array([1.0, 1.0, 0.0])]  # Last one padding.
    batches = [dict(logits=l, labels=y, weight=w)
               for l, y, w in zip(logits, labels, weight)]
    metrics = collections.defaultdict(list)
    fake = (2, [0.0], {}, metrics, batches, {})
    program = object.__new__(programs.DatasetMetricsEvalProgram)
    program._name = 'eval'
    program._input_p = None  # No data_dir: no leaf-class metrics.
    base = pax_programs.SingleTaskEvalProgram
    original = base._run_eval_loop
    base._run_eval_loop = lambda self, state: fake
    try:
      out = program._run_eval_loop(None)
    finally:
      base._run_eval_loop = original
    # paxml's caller still gets its 6-tuple, with the metrics added.
    self.assertEqual(tuple(out), fake)
    self.assertIs(out.metrics, metrics)
    # Class 0 scores of the 4 real examples: 3 (+), 1, 2 (+), 0 (+).
    # Ranked: 3+, 2+, 1-, 0+ -> AP = (1/1 + 2/2 + 3/4) / 3.
    (value, count), = metrics['map_dataset']
    self.assertAlmostEqual(float(value), (1 + 1 + 0.75) / 3, places=6)
    self.assertEqual(float(count), 4.0)
    # Top-1: ex0 class 0 (+), ex1 class 1 (-), ex2 class 1 (-), ex3 1 (-).
    (p1, _), = metrics['precision_at_1_dataset']
    self.assertAlmostEqual(float(p1), 0.25, places=6)


  def test_refuses_outputs_that_are_not_the_global_batch(self):
    program = object.__new__(programs.DatasetMetricsEvalProgram)
    program._name = 'eval'
    program._eval_unpadded_global_batch_size = 16
    program.global_rows({'weight': np.ones(16)})  # Replicated: fine.
    # Host-local rows (8 of 16 on 2 hosts) would score half the split.
    with self.assertRaisesRegex(
        ValueError, 'hold 8 rows, not the global eval batch of 16'):
      program.global_rows({'weight': np.ones(8)})


class ThroughputTrainProgramTest(absltest.TestCase):

  def test_gets_the_paper_flops(self):
    exp = experiments.ViT22BJFT()
    (program,) = exp.train_programs()
    self.assertIsInstance(program, programs.ThroughputTrainProgram)
    d, l, f, t = 6144, 48, 24576, 256
    self.assertEqual(
        program._flops_per_token,
        6 * l * (4 * d * d + 2 * d * f) + 12 * l * t * d,
    )
    self.assertEqual(program._tokens_per_image, 256)
    self.assertEqual(program._peak_flops_per_device, 275e12)


if __name__ == '__main__':
  absltest.main()
