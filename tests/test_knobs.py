"""Tests for vit22b_pax.knobs: typed knobs, overrides, validate()'s record.

The experiments here are tiny KnobbedExperiment subclasses (no model). The
command-line tests parse flags named and typed as paxml.main's and fiddle's
(in a FlagValues of their own: the real ones would clash with the tools'
flags in this process) and call validate() as paxml.main does;
tests/test_launcher.py runs the real `python -m paxml.main`.
"""

import pathlib
import shutil
import tempfile
from typing import Literal

from absl import flags
from absl.testing import absltest
from absl.testing import parameterized
from fiddle import absl_flags as fdl_absl_flags
from fiddle._src.absl_flags import utils as fdl_flag_utils

from vit22b_pax import knobs


class Base(knobs.KnobbedExperiment):
  STEPS: int = 20
  LR: float = 1e-3
  USE_X: bool = True
  DIMS: int | None = None
  MESH: tuple[int, int] | None = None
  NAMES: tuple[str, ...] = ()
  LOSS: Literal['sigmoid', 'softmax'] = 'sigmoid'
  DATA_DIR: str = ''

  def check_knobs(self):
    if self.STEPS <= 0:
      raise knobs.ValidationError(f'STEPS={self.STEPS} must be positive.')

  def task(self):
    raise NotImplementedError('Knobs only.')

  def datasets(self):
    return []


class Child(Base):
  STEPS = 5  # An override needs no annotation.


_NAME = f'{__name__}.Child'


class TypeMatchesTest(parameterized.TestCase):

  @parameterized.parameters(
      (3, int, True), (True, int, False), (3.0, int, False),
      (3, float, True), (3.5, float, True), (False, float, False),
      (None, int | None, True), (4, int | None, True), ('4', int | None, False),
      ((4, 2), tuple[int, int], True), ([4, 2], tuple[int, int], True),
      ((4, 2, 1), tuple[int, int], False), ((4, 2.0), tuple[int, int], False),
      (('a', 'b'), tuple[str, ...], True), (('a', 1), tuple[str, ...], False),
      ((), tuple[str, ...], True),
      ('softmax', Literal['sigmoid', 'softmax'], True),
      ('relu', Literal['sigmoid', 'softmax'], False),
      ('x', str, True), (1, str, False),
  )
  def test_type_matches(self, value, tp, expected):
    self.assertEqual(knobs.type_matches(value, tp), expected)

  def test_type_names(self):
    self.assertEqual(knobs.type_name(int), 'int')
    self.assertEqual(knobs.type_name(int | None), 'int | None')
    self.assertEqual(knobs.type_name(tuple[int, int]), 'tuple[int, int]')


class KnobClassTest(absltest.TestCase):

  def test_knobs_and_types_come_from_annotations_across_the_mro(self):
    self.assertEqual(
        knobs.knob_names(Child),
        ['DATA_DIR', 'DIMS', 'LOSS', 'LR', 'MESH', 'NAMES', 'STEPS', 'USE_X'],
    )
    self.assertEqual(knobs.knob_types(Child)['DIMS'], int | None)
    self.assertEqual(knobs.knob_values(Child())['STEPS'], 5)

  def test_undeclared_knob_in_a_class_body_fails_at_definition(self):
    with self.assertRaisesRegex(TypeError, r'Bad\.STEP is not a knob'):
      type('Bad', (Base,), {'STEP': 3})

  def test_wrong_type_in_a_class_body_fails_at_definition(self):
    with self.assertRaisesRegex(
        TypeError, r'Knob STEPS of Bad expects int, got 2.5'
    ):
      type('Bad', (Base,), {'STEPS': 2.5})

  def test_annotation_without_default_fails_at_definition(self):
    with self.assertRaisesRegex(TypeError, 'Knob Bad.EXTRA has no default'):
      type('Bad', (Base,), {'__annotations__': {'EXTRA': int}})

  def test_misspelled_knob_names_the_closest(self):
    exp = Child()
    for name in ('STEP', 'steps', 'STEPSS'):
      with self.assertRaisesRegex(
          AttributeError, f"Child has no knob '{name}'; did you mean 'STEPS'"
      ):
        setattr(exp, name, 5)
    exp._private = 1  # Underscore attributes are not knobs.

  def test_wrong_type_names_the_knob_and_the_type(self):
    exp = Child()
    with self.assertRaisesRegex(
        TypeError, r"Knob DIMS of Child expects int \| None, got '2' \(str\)"
    ):
      exp.DIMS = '2'
    with self.assertRaisesRegex(TypeError, 'USE_X of Child expects bool'):
      exp.USE_X = 1
    with self.assertRaisesRegex(TypeError, r"LOSS .*Literal\['sigmoid'"):
      exp.LOSS = 'hinge'
    exp.LR = 1  # An int is a fine float.
    exp.MESH = [4, 2]
    exp.DIMS = None
    self.assertEqual((exp.LR, exp.MESH), (1, [4, 2]))
    self.assertEqual(Child.STEPS, 5)  # Instances never touch the class.


class ApplyOverridesTest(absltest.TestCase):

  def test_parse_value_follows_fiddle(self):
    for text in ('true', 'FALSE', '3', '1e-3', '(4, 2)', "'gs://b'", 'None',
                 "('A=1',)"):
      self.assertEqual(
          knobs.parse_value(text, 'K'),
          fdl_flag_utils.parse_value(value=text, path='K'),
          text,
      )
    with self.assertRaisesRegex(ValueError, 'knob DATA_DIR.*need quotes'):
      knobs.parse_value('gs://b', 'DATA_DIR')

  def test_applies_every_assignment(self):
    exp = Child()
    applied = knobs.apply_overrides(
        exp, ['STEPS=7', 'MESH=(2, 1)', "DATA_DIR='d'", 'USE_X=false']
    )
    self.assertEqual(
        applied, {'STEPS': 7, 'MESH': (2, 1), 'DATA_DIR': 'd', 'USE_X': False}
    )
    self.assertEqual((exp.STEPS, exp.MESH, exp.DATA_DIR), (7, (2, 1), 'd'))

  def test_reports_every_bad_assignment_and_applies_none(self):
    exp = Child()
    with self.assertRaises(knobs.ValidationError) as ctx:
      knobs.apply_overrides(
          exp, ['STEPS=7', 'STEP=3', "LR='x'", 'task.model.dims=3',
                'MESH[0]=4', 'DATA_DIR=gs://b']
      )
    message = str(ctx.exception)
    self.assertTrue(message.startswith('5 bad overrides:\n  '), message)
    self.assertIn("no knob 'STEP'; did you mean 'STEPS'?", message)
    self.assertIn('Knob LR of Child expects float', message)
    self.assertIn('--fdl.task.model.dims=3: a nested path', message)
    self.assertIn(f'--fdl_config={_NAME}', message)
    self.assertIn('--fdl.MESH[0]=4: set the whole knob', message)
    self.assertIn('DATA_DIR', message)
    self.assertEqual(exp.STEPS, 5)  # Nothing applied.


def _paxml_main_flags() -> flags.FlagValues:
  """The flags validate() reads, as paxml.main and fiddle define them."""
  fv = flags.FlagValues()
  for name in ('exp', 'job_log_dir', 'fdl_config', 'fdl_config_file'):
    flags.DEFINE_string(name, None, name, flag_values=fv)
  flags.DEFINE_string('mode', 'train', 'mode', flag_values=fv)
  for name in ('fdl_set', 'fiddler', 'fdl_tags_set'):
    flags.DEFINE_multi_string(name, [], name, flag_values=fv)
  fdl_absl_flags.DEFINE_fiddle_config('fdl', help_string='fdl', flag_values=fv)
  return fv


class ValidateTest(absltest.TestCase):
  """validate() as paxml.main calls it, after parsing paxml.main's flags."""

  def setUp(self):
    super().setUp()
    self.flag_values = _paxml_main_flags()
    self.enter_context(
        absltest.mock.patch.object(knobs, 'FLAG_VALUES', self.flag_values)
    )
    self.job = pathlib.Path(tempfile.mkdtemp())
    self.addCleanup(shutil.rmtree, self.job)

  def _parse(self, *args):
    # What fiddle's flags_parser makes of --fdl.KNOB=value: --fdl_set=...
    self.flag_values(['paxml.main', f'--job_log_dir={self.job}', *args])

  def _validate(self, exp):
    with self.assertLogs('absl', 'INFO') as logs:
      exp.validate()
    return [r.getMessage() for r in logs.records]

  def test_exp_path_applies_logs_and_records_the_overrides(self):
    self._parse(f'--exp={_NAME}', '--fdl_set=STEPS=3', "--fdl_set=LR=0.5")
    exp = Child()  # As paxml.main --exp builds it: from the registry.
    logs = self._validate(exp)
    self.assertEqual((exp.STEPS, exp.LR), (3, 0.5))
    overrides = [m for m in logs if ': knob ' in m]
    self.assertEqual(
        overrides,
        ['Child: knob LR = 0.5 (class default 0.001)',
         'Child: knob STEPS = 3 (class default 5)'],
    )
    lines = (self.job / knobs.KNOBS_FILE).read_text().splitlines()
    self.assertEqual(lines[0][:2], '# ')
    self.assertIn('STEPS = 3  # class default: 5', lines)
    self.assertIn('USE_X = True', lines)
    self.assertLen(lines, 1 + len(knobs.knob_names(Child)))
    # A second validate() neither applies nor logs again.
    exp.STEPS = 4
    with self.assertNoLogs('absl', 'INFO'):
      exp.validate()
    self.assertEqual(exp.STEPS, 4)

  def test_fdl_config_path_does_not_apply_again(self):
    self._parse(f'--fdl_config={_NAME}', '--fdl_set=STEPS=3')
    exp = Child()
    fdl_flag_utils.set_value(exp, 'STEPS=3')  # What fiddle did.
    exp.STEPS = 9  # Re-applying the flag would reset this to 3.
    logs = self._validate(exp)
    self.assertEqual(exp.STEPS, 9)
    self.assertEqual(
        [m for m in logs if ': knob ' in m],
        ['Child: knob STEPS = 9 (class default 5)'],
    )
    self.assertIn(
        'STEPS = 9  # class default: 5',
        (self.job / knobs.KNOBS_FILE).read_text().splitlines(),
    )

  def test_exp_path_rejects_bad_overrides_before_recording(self):
    self._parse(f'--exp={_NAME}', '--fdl_set=STEP=3',
                '--fdl_set=task.model.x=1')
    with self.assertRaisesRegex(
        knobs.ValidationError,
        r"(?s)2 bad overrides:.*did you mean 'STEPS'.*a nested path.*"
        '--fdl_config=',
    ):
      Child().validate()
    self.assertFalse((self.job / knobs.KNOBS_FILE).exists())

  def test_exp_path_refuses_flags_paxml_would_ignore(self):
    self._parse(f'--exp={_NAME}', f'--fdl_config={_NAME}',
                '--fdl=set:STEPS=3', '--fiddler=f')
    with self.assertRaisesRegex(
        knobs.ValidationError,
        r'paxml.main --exp ignores --fdl_config.*, --fiddler, --fdl=',
    ):
      Child().validate()

  def test_without_parsed_flags_nothing_is_applied_or_written(self):
    exp = Child()  # E.g. built by a tool or a test: no command line.
    exp.validate()
    self.assertEqual(exp.STEPS, 5)
    self.assertFalse((self.job / knobs.KNOBS_FILE).exists())

  def test_check_knobs_runs_after_the_overrides(self):
    self._parse(f'--exp={_NAME}', '--fdl_set=STEPS=0')
    with self.assertRaisesRegex(knobs.ValidationError, 'STEPS=0 must be'):
      Child().validate()

  def test_eval_mode_prefixes_the_file_like_paxml(self):
    self._parse(f'--exp={_NAME}', '--mode=eval')
    Child().validate()
    self.assertTrue((self.job / f'eval_{knobs.KNOBS_FILE}').exists())
    self.assertFalse((self.job / knobs.KNOBS_FILE).exists())


if __name__ == '__main__':
  absltest.main()
