"""Tests of the few-shot eval program and the experiments' few-shot knobs.

FewShotEvalProgramTest drives the program in process as paxml's training
loop does (setup(), then eval_lib.run_eval_programs at each eval step) on a
train state partitioned over a (4, 2) (data, model) mesh of the 8
simulated CPU devices, with two different sets of variables, and compares
what it wrote with fewshot_features.evaluate_data_dir on unsharded copies
of the same variables. tests/test_train_e2e.py runs it through paxml.main.
"""

import pathlib
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
from paxml import eval_lib
from paxml import train_states
from paxml import trainer_lib
from praxis import base_hyperparams
from praxis import base_layer

from vit22b_pax import experiments
from vit22b_pax import fewshot_features
from vit22b_pax import fewshot_program
from vit22b_pax import knobs
from vit22b_pax.input import shapes
from vit22b_pax.tools import train_summary

_NUM_CLASSES = 30
_PER_CLASS = 10  # Train images per class: enough for 10 shots.
_SHOTS = (1, 10)
_SEEDS = 2
_INTERVAL = 10  # = ViTSmoke's EVAL_INTERVAL_STEPS.
_LAST = 25  # NUM_TRAIN_STEPS, not a multiple of the interval.
# (step, variables) of each call, in order: 'a' and 'b' are two inits.
_CALLS = ((5, 'a'), (10, 'a'), (20, 'b'), (_LAST, 'b'))
_EVALUATED = (10, 20, _LAST)


def _make_fewshot_data(out_dir, per_class=_PER_CLASS):
  shapes.generate(out_dir, num_train=per_class * _NUM_CLASSES,
                  num_eval=_NUM_CLASSES, image_size=16, train_shards=1,
                  eval_shards=1, progress=False, variant=shapes.FEWSHOT)


def _experiment(*overrides):
  """ViTSmoke (16 px, D 32, synthetic pre-training data) with overrides."""
  exp = experiments.ViTSmoke()
  knobs.apply_overrides(exp, list(overrides))
  return exp


def _init(exp, seed):
  """(variables of a random init, their WeightHParams) of exp's model."""
  model = base_hyperparams.instantiate(exp.model())
  specs = base_hyperparams.instantiate(
      exp.get_input_specs_provider_params()).get_input_specs()
  batch = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), specs)
  with base_layer.JaxContext.new_context():
    variables = model.init(jax.random.PRNGKey(seed), batch)
    hparams = model.abstract_init_with_metadata(batch)
  return variables, hparams


def _partitioned(model_p, variables, hparams):
  """The variables laid out over the model's mesh as paxml lays them out."""
  mesh = fewshot_features.device_mesh(model_p)
  specs = base_layer.var_partition_specs(
      hparams, mesh_shape=model_p.ici_mesh_shape,
      device_axis_names=model_p.mesh_axis_names)
  return jax.tree_util.tree_map(
      lambda v, s: jax.device_put(v, jax.sharding.NamedSharding(mesh, s)),
      variables, specs)


class FewShotEvalProgramTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix='vit22b_fewshot_prog_'))
    cls.data = str(cls.tmp / 'shapes_fewshot')
    cls.job = cls.tmp / 'job'
    _make_fewshot_data(cls.data)
    cls.exp = _experiment(
        'ICI_MESH_SHAPE=(4, 2)', f'FEWSHOT_DATASETS=({cls.data!r},)',
        f'FEWSHOT_SHOTS={_SHOTS}', f'FEWSHOT_NUM_SEEDS={_SEEDS}',
        f'FEWSHOT_INTERVAL_STEPS={_INTERVAL}', f'NUM_TRAIN_STEPS={_LAST}')
    cls.exp.validate()
    cls.program = cls.exp.eval_programs()[-1]
    cls.program.setup(None, None, cls.job, None, True)
    model_p = cls.exp.model()
    cls.variables, cls.states = {}, {}
    for name, seed in (('a', 3), ('b', 4)):
      variables, hparams = _init(cls.exp, seed)
      cls.variables[name] = variables
      cls.states[name] = train_states.TrainState(
          step=np.int32(0), opt_states={},
          mdl_vars=_partitioned(model_p, variables, hparams))
    cls.metrics, cls.extractors = {}, {}
    for step, name in _CALLS:
      out, _ = eval_lib.run_eval_programs(
          eval_programs=[cls.program], train_state=cls.states[name],
          step=step)
      cls.metrics[step] = out.metrics_list[0]
      cls.extractors[step] = cls.program.extractor
    cls.program.shutdown()
    cls.scalars = train_summary.read_fewshot(cls.job)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def _reference(self, name):
    """evaluate_data_dir on unsharded copies of the variables, no mesh."""
    if not hasattr(self, '_refs'):
      type(self)._refs = {}
      extractor = fewshot_features.FeatureExtractor(
          self.exp.model(sharded=False), batch_size=16)
      for key, variables in self.variables.items():
        host = jax.tree_util.tree_map(np.asarray, variables)
        self._refs[key] = fewshot_features.evaluate_data_dir(
            extractor, host, self.data, shots=_SHOTS, num_seeds=_SEEDS)
    return self._refs[name]

  def test_the_state_is_partitioned_over_data_and_model(self):
    w = self.states['a'].mdl_vars['params']['head']['w']
    self.assertEqual(w.sharding.spec, jax.sharding.PartitionSpec(
        'data', 'model'))
    self.assertFalse(w.sharding.is_fully_replicated)

  def test_runs_at_interval_multiples_and_the_last_step(self):
    self.assertIsNone(self.metrics[5])  # Not an interval multiple.
    for step in _EVALUATED:
      self.assertEqual(
          sorted(self.metrics[step]),
          sorted(f'fewshot/shapes_fewshot/{k}shot' for k in _SHOTS))
    tags = [f'fewshot/shapes_fewshot/{k}shot' for k in _SHOTS] + [
        f'fewshot_std/shapes_fewshot/{k}shot' for k in _SHOTS] + [
            'fewshot_chance/shapes_fewshot']
    self.assertCountEqual(self.scalars, tags)
    for tag in tags:
      self.assertEqual([s for s, _, _ in self.scalars[tag]],
                       list(_EVALUATED), tag)

  def test_scalars_equal_evaluate_data_dir_of_the_states_variables(self):
    by_step = {s: n for s, n in _CALLS}
    for step in _EVALUATED:
      want = self._reference(by_step[step])
      self.assertEqual(self.metrics[step], want.scalars())
      written = {tag: dict((s, v) for s, _, v in series)[step]
                 for tag, series in self.scalars.items()}
      for k, result in want.results.items():
        self.assertAlmostEqual(
            written[f'fewshot/shapes_fewshot/{k}shot'], result.mean, 6)
        self.assertAlmostEqual(
            written[f'fewshot_std/shapes_fewshot/{k}shot'], result.std, 6)
      self.assertAlmostEqual(
          written['fewshot_chance/shapes_fewshot'], 1 / _NUM_CLASSES, 6)
    # The two inits give different probes: the program used each call's
    # state, not the first one's.
    self.assertNotEqual(self._reference('a').scalars(),
                        self._reference('b').scalars())

  def test_compiles_once(self):
    extractors = set(map(id, self.extractors.values()))
    self.assertLen(extractors, 1)  # Built once, in setup().
    # One jitted forward: both splits, three evaluations, two states.
    self.assertEqual(self.program.extractor._forward._cache_size(), 1)

  def test_paxml_reads_its_name(self):
    inp = self.program.eval_input
    self.assertEqual((inp.name, inp.hparams.name), ('fewshot', 'fewshot'))
    trainer_lib.check_unique_names([inp])
    with self.assertRaisesRegex(ValueError, 'Duplicate param name'):
      trainer_lib.check_unique_names([inp, inp])

  def test_train_summary_reads_the_latest_values(self):
    self.assertEqual(train_summary.FEWSHOT_SUMMARY_DIR,
                     fewshot_program.SUMMARY_DIR)
    got = train_summary.fewshot_summary(self.scalars)
    want = self._reference('b')  # The state of the last step.
    self.assertEqual(got['fewshot_step'], _LAST)
    self.assertEqual(list(got['fewshot_10shot']), ['shapes_fewshot'])
    self.assertAlmostEqual(got['fewshot_10shot']['shapes_fewshot'],
                           want.results[10].mean, 6)
    self.assertAlmostEqual(got['fewshot_chance']['shapes_fewshot'],
                           1 / _NUM_CLASSES, 6)
    table = got['fewshot']['shapes_fewshot']
    self.assertEqual(list(table), ['1shot', '10shot'])
    for k in _SHOTS:
      self.assertAlmostEqual(table[f'{k}shot']['mean'], want.results[k].mean,
                             6)
      self.assertAlmostEqual(table[f'{k}shot']['std'], want.results[k].std, 6)
    self.assertEqual(
        train_summary.fewshot_summary({}),
        {'fewshot_step': None, 'fewshot_10shot': None,
         'fewshot_chance': None, 'fewshot': None})


class ShouldRunTest(parameterized.TestCase):

  @parameterized.parameters(
      (4, 10, [0, 4, 8, 10]),
      (0, 10, [10]),  # 0: the last step only.
      (20, 10, [0, 10]),
  )
  def test_steps(self, interval, last, want):
    program = fewshot_program.FewShotEvalProgram(
        None, ('d',), interval_steps=interval, num_train_steps=last)
    self.assertEqual(
        [s for s in range(last + 1) if program.should_run(None, s)], want)


class FewShotKnobsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix='vit22b_fewshot_knobs_'))
    cls.data = str(cls.tmp / 'shapes_fewshot')
    _make_fewshot_data(cls.data, per_class=2)
    cls.multilabel = str(cls.tmp / 'shapes')
    shapes.generate(cls.multilabel, num_train=40, num_eval=10, image_size=16,
                    train_shards=1, eval_shards=1, progress=False)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def _assert_invalid(self, message, *overrides):
    with self.assertRaisesRegex(knobs.ValidationError, message):
      _experiment(*overrides).validate()

  def test_valid_datasets_add_the_program(self):
    self.assertLen(_experiment().eval_programs(), 1)
    exp = _experiment(f'FEWSHOT_DATASETS=({self.data!r},)',
                      'FEWSHOT_SHOTS=(1, 2)')
    exp.validate()
    programs = exp.eval_programs()
    self.assertLen(programs, 2)
    self.assertIsInstance(programs[-1], fewshot_program.FewShotEvalProgram)

  def test_too_few_examples_for_the_largest_shot_count(self):
    self._assert_invalid(
        rf"FEWSHOT_DATASETS entry '{self.data}': dataset 'shapes_fewshot':"
        r" class 0 \('.*'\) has 2 training examples, fewer than the 3 shots"
        r' requested \(29 more classes are short too\)',
        f'FEWSHOT_DATASETS=({self.data!r},)', 'FEWSHOT_SHOTS=(1, 3)')

  def test_multilabel_records_are_refused(self):
    self._assert_invalid(
        rf"FEWSHOT_DATASETS entry '{self.multilabel}':"
        r' .*train-00000-of-00001\.tfrecord record \d+ .*: \d labels .*; a'
        r' few-shot dataset needs exactly one label per image',
        f'FEWSHOT_DATASETS=({self.multilabel!r},)', 'FEWSHOT_SHOTS=(1,)')

  def test_missing_directory(self):
    missing = str(self.tmp / 'nope')
    self._assert_invalid(
        rf"FEWSHOT_DATASETS entry '{missing}': .*{missing}/classes\.tsv",
        f'FEWSHOT_DATASETS=({missing!r},)')

  def test_schedule_and_values(self):
    data = f'FEWSHOT_DATASETS=({self.data!r},)'
    self._assert_invalid(
        r'FEWSHOT_DATASETS is set but EVAL_INTERVAL_STEPS=0: paxml runs eval'
        r' programs \(the few-shot one too\) only when EVAL_INTERVAL_STEPS >'
        ' 0', data, 'EVAL_INTERVAL_STEPS=0')
    self._assert_invalid(
        r'FEWSHOT_INTERVAL_STEPS=15 is not a multiple of'
        r' EVAL_INTERVAL_STEPS=10', data, 'FEWSHOT_INTERVAL_STEPS=15')
    self._assert_invalid(
        r"FEWSHOT_DATASETS=\('a/x', 'b/x'\) has two directories with the"
        ' same base name', "FEWSHOT_DATASETS=('a/x', 'b/x')")
    self._assert_invalid(r'FEWSHOT_SHOTS=\(\) must be positive',
                         'FEWSHOT_SHOTS=()')
    self._assert_invalid(r'FEWSHOT_SHOTS=\(0, 5\) must be positive',
                         'FEWSHOT_SHOTS=(0, 5)')
    self._assert_invalid('FEWSHOT_NUM_SEEDS=0 must be >= 1',
                         'FEWSHOT_NUM_SEEDS=0')
    self._assert_invalid(r'FEWSHOT_L2=1024.0 and FEWSHOT_L2_SWEEP=\(1.0,'
                         r' -2.0\) must be positive',
                         'FEWSHOT_L2_SWEEP=(1.0, -2.0)')
    self._assert_invalid('FEWSHOT_INTERVAL_STEPS=-10 must be >= 0',
                         'FEWSHOT_INTERVAL_STEPS=-10')
    # Without datasets the schedule is not checked (nothing would run).
    _experiment('EVAL_INTERVAL_STEPS=0', 'FEWSHOT_INTERVAL_STEPS=15').validate()

  def test_multi_process_jobs_are_refused(self):
    with mock.patch.object(jax, 'process_count', return_value=2):
      self._assert_invalid(
          r'FEWSHOT_DATASETS is set but the few-shot eval program runs in'
          r' single-process jobs only \(this one has 2 processes\).*'
          r'python -m vit22b_pax\.tools\.fewshot',
          f'FEWSHOT_DATASETS=({self.data!r},)', 'FEWSHOT_SHOTS=(1, 2)')
      _experiment().validate()  # Without datasets: fine.


if __name__ == '__main__':
  absltest.main()
