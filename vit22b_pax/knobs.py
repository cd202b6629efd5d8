r"""Knobs: typo-proof, type-checked UPPER_CASE experiment attributes.

A knob is an UPPER_CASE class attribute of a KnobbedExperiment with a type
annotation somewhere in its class hierarchy (`MODEL_DIMS: int | None =
None`); subclasses override the value without repeating the annotation.
Overrides are never dropped silently:

  * setting an attribute that is not a knob (a typo) raises and names the
    closest knob;
  * a value that does not match the knob's annotation raises, naming the
    knob and the expected type; class defaults are checked the same way when
    a class is defined;
  * `validate()`, which paxml.main calls on every launch path before anything
    is built, applies the `--fdl.KNOB=value` flags itself when the experiment
    came from `--exp` (paxml 1.4.0 parses them there but never applies them;
    on the `--fdl_config` path fiddle already did), logs every knob that
    differs from its class default once, and writes the effective values to
    `<job_log_dir>/experiment_knobs.txt` (paxml's experiment_cls_vars.txt,
    written later from the class, shows class defaults only).

Values given as strings go through `parse_value`, the rules of fiddle's
`--fdl.X=value`: true/false, else `ast.literal_eval` (strings need quotes:
--fdl.DATA_DIR="'data/shapes'").
"""

import ast
import difflib
import functools
import re
import types
import typing
from typing import Any, Literal, Sequence

from absl import flags
from absl import logging
import jax
from paxml import base_experiment
import tensorflow as tf

KNOB_RE = re.compile(r'^[A-Z][A-Z0-9_]*$')
# What validate() writes into the job directory (mode-prefixed like paxml's
# experiment_cls_vars.txt: e.g. eval_experiment_knobs.txt for --mode=eval).
KNOBS_FILE = 'experiment_knobs.txt'


class ValidationError(ValueError):
  """An invalid knob value or combination; the message names the knob."""


# ---------------------------------------------------------------------------
# Knob names, types and values.
# ---------------------------------------------------------------------------


@functools.cache
def knob_types(cls: type[Any]) -> dict[str, Any]:
  """{knob: annotated type} over the class hierarchy of `cls` (read-only)."""
  hints = typing.get_type_hints(cls)
  return {n: t for n, t in hints.items() if KNOB_RE.match(n)}


def knob_names(cls: type[Any]) -> list[str]:
  """The sorted knob names of an experiment class."""
  return sorted(knob_types(cls))


def knob_values(exp: Any) -> dict[str, Any]:
  """{knob: value} of an experiment instance (overrides included)."""
  return {n: getattr(exp, n) for n in knob_names(type(exp))}


def type_name(tp: Any) -> str:
  """A readable name of an annotation: 'int | None', 'tuple[int, int]'."""
  if isinstance(tp, type) and not typing.get_args(tp):
    return tp.__name__
  return str(tp).replace('typing.', '')


def type_matches(value: Any, tp: Any) -> bool:
  """Whether `value` may be the value of a knob annotated `tp`.

  bool is not an int here and an int is a fine float; a list is accepted
  for a tuple (fiddle parses '[4, 2]' to a list).

  Args:
    value: The candidate value.
    tp: A type annotation: a class, `X | Y`, Literal[...], tuple[X, ...],
      tuple[X, Y], or Any.

  Returns:
    True if the value matches.
  """
  origin = typing.get_origin(tp)
  args = typing.get_args(tp)
  if tp is Any:
    return True
  if tp is None or tp is type(None):
    return value is None
  if origin in (typing.Union, types.UnionType):
    return any(type_matches(value, a) for a in args)
  if origin is Literal:
    return any(value == a and type(value) is type(a) for a in args)
  if origin is tuple:
    if not isinstance(value, (tuple, list)):
      return False
    if len(args) == 2 and args[1] is Ellipsis:
      return all(type_matches(v, args[0]) for v in value)
    return len(value) == len(args) and all(
        type_matches(v, a) for v, a in zip(value, args)
    )
  if tp is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if tp is int:
    return isinstance(value, int) and not isinstance(value, bool)
  return isinstance(value, tp)


def closest_name(name: str, candidates: Sequence[str]) -> str | None:
  """The candidate closest to `name` (case-insensitively), if any is close."""
  by_upper = {c.upper(): c for c in candidates}
  match = difflib.get_close_matches(
      name.upper(), list(by_upper), n=1, cutoff=0.5
  )
  return by_upper[match[0]] if match else None


def unknown_knob_message(cls: type[Any], name: str) -> str:
  msg = f'{cls.__name__} has no knob {name!r}'
  close = closest_name(name, knob_names(cls))
  if close:
    msg += f'; did you mean {close!r}?'
  return msg + ' (list them with `python -m vit22b_pax.tools.summarize --exp=' \
      f'{cls.__module__}.{cls.__name__} --list_knobs`).'


def check_knob(cls: type[Any], name: str, value: Any) -> None:
  """Raises unless `name` is a knob of `cls` and `value` has its type.

  Args:
    cls: The experiment class.
    name: The attribute name.
    value: The value to set.

  Raises:
    AttributeError: `name` is not a knob (names the closest).
    TypeError: the value does not match the knob's annotation.
  """
  types_ = knob_types(cls)
  if name not in types_:
    raise AttributeError(unknown_knob_message(cls, name))
  if not type_matches(value, types_[name]):
    raise TypeError(
        f'Knob {name} of {cls.__name__} expects {type_name(types_[name])}, '
        f'got {value!r} ({type(value).__name__}).'
    )


def parse_value(value: str, knob: str) -> Any:
  """Parses a command-line value the way fiddle's `--fdl.X=value` does."""
  if value.lower() == 'false':
    return False
  if value.lower() == 'true':
    return True
  try:
    return ast.literal_eval(value)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f'Could not parse the value {value!r} of knob {knob}. Values go '
        "through ast.literal_eval: strings need quotes, e.g. "
        f"--fdl.{knob}=\"'{value}'\"."
    ) from e


def _is_nested(path: str) -> bool:
  return bool(re.search(r'[.\[]', path))


def apply_overrides(exp: Any, assignments: Sequence[str]) -> dict[str, Any]:
  """Applies ['KNOB=value', ...] to an experiment instance (like --fdl.*).

  Every assignment is checked (form, top-level knob name, value syntax and
  type) before any is applied; all problems are reported at once.

  Args:
    exp: The experiment instance.
    assignments: 'KNOB=value' strings; later ones win.

  Returns:
    {knob: value} as applied.

  Raises:
    ValidationError: naming every bad assignment.
  """
  cls = type(exp)
  errors, parsed = [], {}
  for assignment in assignments:
    if '=' not in assignment:
      errors.append(f'{assignment!r} is not of the form KNOB=value.')
      continue
    path, text = (s.strip() for s in assignment.split('=', 1))
    if _is_nested(path):
      errors.append(_nested_path_message(cls, path, text))
      continue
    if path not in knob_types(cls):
      errors.append(unknown_knob_message(cls, path))
      continue
    try:
      value = parse_value(text, path)
      check_knob(cls, path, value)
    except (AttributeError, TypeError, ValueError) as e:
      errors.append(str(e))
      continue
    parsed[path] = value
  if len(errors) == 1:
    raise ValidationError(errors[0])
  if errors:
    raise ValidationError(
        f'{len(errors)} bad overrides:' + ''.join(f'\n  {e}' for e in errors)
    )
  for name, value in parsed.items():
    setattr(exp, name, value)
  return parsed


def _nested_path_message(cls: type[Any], path: str, value: str) -> str:
  name = re.split(r'[.\[]', path, maxsplit=1)[0]
  if name in knob_types(cls):
    return (
        f'--fdl.{path}={value}: set the whole knob instead, e.g. '
        f'--fdl.{name}=<new value> (knobs are replaced, not edited in place).'
    )
  exp_name = f'{cls.__module__}.{cls.__name__}'
  return (
      f'--fdl.{path}={value}: a nested path. An experiment takes top-level '
      '--fdl.KNOB=value overrides only: paxml builds the task and model '
      "configs inside the experiment's task(), so neither paxml.main --exp "
      f'nor --fdl_config={exp_name} (where fiddle sets attributes on the '
      'experiment) can reach into them. Set a knob (list them with `python '
      f'-m vit22b_pax.tools.summarize --exp={exp_name} --list_knobs`) or '
      'subclass the experiment and change its config in task().'
  )


# ---------------------------------------------------------------------------
# paxml.main's command line.
# ---------------------------------------------------------------------------


# The absl flags validate() reads: paxml.main's (--exp, --job_log_dir, --mode)
# and fiddle's (--fdl_set, ...), when they are defined and parsed. Tests
# substitute a FlagValues of their own.
FLAG_VALUES = flags.FLAGS


def _flag_value(name: str) -> Any:
  """The value of a parsed absl flag, or None if undefined or unparsed."""
  if not FLAG_VALUES.is_parsed() or name not in FLAG_VALUES:
    return None
  return FLAG_VALUES[name].value


def launched_with_exp() -> bool:
  """Whether paxml.main built the experiment from `--exp` (the registry)."""
  return bool(_flag_value('exp'))


def command_line_overrides() -> list[str]:
  """The `--fdl.KNOB=value` assignments on the command line (fiddle's)."""
  return list(_flag_value('fdl_set') or ())


def _ignored_with_exp() -> list[str]:
  """Fiddle flags paxml.main --exp would ignore, as they were given."""
  ignored = []
  if _flag_value('fdl_config') or _flag_value('fdl_config_file'):
    ignored.append('--fdl_config/--fdl_config_file (give one of them or --exp)')
  if _flag_value('fiddler'):
    ignored.append('--fiddler')
  if _flag_value('fdl_tags_set'):
    ignored.append('--fdl_tag.*')
  if 'fdl' in FLAG_VALUES and FLAG_VALUES['fdl'].present:
    ignored.append('--fdl=... (use --fdl.KNOB=value)')
  return ignored


def mode_prefix() -> str:
  """paxml's job-directory file prefix: '' in training, else '<mode>_'."""
  mode = _flag_value('mode')
  return '' if mode in (None, 'train') else f'{mode}_'


def format_knobs(exp: Any) -> str:
  """`KNOB = value` lines; overridden knobs name their class default."""
  cls = type(exp)
  lines = [
      f'# {cls.__module__}.{cls.__name__}: effective knob values (class '
      'defaults with the overrides applied).'
  ]
  for name, value in knob_values(exp).items():
    default = getattr(cls, name)
    line = f'{name} = {value!r}'
    if value != default:
      line += f'  # class default: {default!r}'
    lines.append(line)
  return '\n'.join(lines) + '\n'


class KnobbedExperiment(base_experiment.BaseExperiment):
  """An experiment whose public attributes are exactly its typed knobs.

  Subclasses implement `check_knobs()`; `validate()` (paxml.main calls it
  once, before anything is built) applies the `--exp` path's overrides, runs
  it, then logs and records the effective knobs.
  """

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    # Class defaults obey the annotations too: a wrong override in a class
    # body fails at import, naming the class and the knob.
    annotated = knob_types(cls)
    for name, value in vars(cls).items():
      if KNOB_RE.match(name):
        if name not in annotated:
          raise TypeError(
              f'{cls.__name__}.{name} is not a knob: knobs are declared with '
              'a type annotation in a base class (e.g. `NAME: int = 0`).'
          )
        check_knob(cls, name, value)
    for name in annotated:
      if not hasattr(cls, name):
        raise TypeError(f'Knob {cls.__name__}.{name} has no default value.')

  def __setattr__(self, name: str, value: Any) -> None:
    if not name.startswith('_'):
      check_knob(type(self), name, value)
    object.__setattr__(self, name, value)

  def check_knobs(self) -> None:
    """Raises ValidationError on an invalid knob value or combination."""

  def validate(self) -> None:
    """paxml.main calls this on every launch path before building anything.

    On the `--exp` path the top-level `--fdl.KNOB=value` flags are applied
    here (the `--fdl_config` path applied them when fiddle built the
    instance). Then check_knobs() runs; the first successful call also logs
    each knob that differs from its class default and writes every knob's
    effective value to `<job_log_dir>/experiment_knobs.txt`.

    Raises:
      ValidationError: naming the bad override, knob or combination.
    """
    if not getattr(self, '_overrides_applied', False) and launched_with_exp():
      ignored = _ignored_with_exp()
      if ignored:
        raise ValidationError(
            'paxml.main --exp ignores ' + ', '.join(ignored) + '.'
        )
      apply_overrides(self, command_line_overrides())
    self._overrides_applied = True
    self.check_knobs()
    if not getattr(self, '_recorded', False):
      self._record_knobs()
      self._recorded = True

  def _record_knobs(self) -> None:
    cls = type(self)
    for name, value in knob_values(self).items():
      if value != getattr(cls, name):
        logging.info(
            '%s: knob %s = %r (class default %r)',
            cls.__name__, name, value, getattr(cls, name),
        )
    job_log_dir = _flag_value('job_log_dir')
    if job_log_dir is None or jax.process_index() != 0:
      return
    job_log_dir = str(job_log_dir)
    path = f'{job_log_dir.rstrip("/")}/{mode_prefix()}{KNOBS_FILE}'
    tf.io.gfile.makedirs(job_log_dir)
    with tf.io.gfile.GFile(path, 'w') as f:
      f.write(format_knobs(self))
    logging.info('%s: effective knobs written to %s', cls.__name__, path)
