r"""Drop-in `python -m paxml.main` that honours `--fdl.KNOB=value` overrides.

paxml 1.4.0's launcher parses `--fdl.KNOB=value` next to `--exp=NAME` and then
ignores it: the experiment is instantiated from the registry and the override
never reaches it. This wrapper takes exactly paxml.main's flags, rewrites
`--exp=NAME` into `--fdl_config=NAME` (the path on which paxml instantiates
the class and sets each override as an attribute) and runs paxml.main
unchanged. The overrides therefore go through the same code as

  python -m paxml.main --fdl_config=NAME --fdl.KNOB=value ...

including the experiment's own checks (misspelled knobs, invalid
combinations), which run in `validate()` before anything is compiled.

Example:
  python -m vit22b_pax.main --exp=vit22b_pax.experiments.ViTSmoke \
      --job_log_dir=/tmp/smoke --fdl.NUM_TRAIN_STEPS=20

Values go through `ast.literal_eval`, so strings need quotes:
  --fdl.DATA_DIR="'data/shapes'"
"""

import runpy
import sys
from typing import Sequence

_FDL_CONFIG_FLAGS = ('--fdl_config', '--fdl_config_file', '--fdl')


def _flag_value(args: Sequence[str], i: int, name: str) -> tuple[str, int]:
  """Returns (value, number of argv entries used) of flag `name` at args[i]."""
  arg = args[i]
  if arg.startswith(name + '='):
    return arg[len(name) + 1:], 1
  if i + 1 >= len(args):
    raise SystemExit(f'vit22b_pax.main: {name} needs a value.')
  return args[i + 1], 2


def rewrite_argv(argv: Sequence[str]) -> list[str]:
  """Turns paxml.main's `--exp=NAME` into `--fdl_config=NAME`.

  Args:
    argv: Command line including the program name in argv[0].

  Returns:
    The rewritten command line; arguments other than --exp are unchanged.

  Raises:
    SystemExit: if --exp is combined with a fiddle base config flag, or
      given more than once.
  """
  out = [argv[0]]
  exp = None
  has_base_config = False
  i = 1
  while i < len(argv):
    arg = argv[i]
    name = arg.split('=', 1)[0]
    if name in ('--exp', '-exp'):
      if exp is not None:
        raise SystemExit('vit22b_pax.main: --exp given more than once.')
      exp, used = _flag_value(argv, i, name)
      i += used
      continue
    if name in _FDL_CONFIG_FLAGS:
      has_base_config = True
    out.append(arg)
    i += 1
  if exp is not None:
    if has_base_config:
      raise SystemExit(
          'vit22b_pax.main: give either --exp or --fdl_config/--fdl_config_file'
          ', not both.'
      )
    out.insert(1, f'--fdl_config={exp}')
  return out


def main(argv: Sequence[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  sys.argv = rewrite_argv(argv)
  # Runs paxml.main exactly as `python -m paxml.main` would (its flags, its
  # __main__ block), so this launcher cannot drift from paxml's behaviour.
  runpy.run_module('paxml.main', run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
