"""Checks that BUILD is in step with the source tree.

BUILD is Starlark, which parses as Python: every module and test file must
have exactly one target, and each target's in-project deps must equal what
its sources import.
"""

import ast
import pathlib
import sys

from absl.testing import absltest

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_PACKAGE = 'vit22b_pax'
_RULES = ('py_library', 'py_test', 'py_binary')
# Import name -> PyPI distribution named by requirement("...") in BUILD.
_DISTRIBUTIONS = {
    'absl': 'absl-py',
    'fiddle': 'fiddle',
    'flax': 'flax',
    'jax': 'jax',
    'matplotlib': 'matplotlib',
    'numpy': 'numpy',
    'optax': 'optax',
    'orbax': 'orbax-checkpoint',
    'paxml': 'paxml',
    'PIL': 'Pillow',
    'praxis': 'praxis',
    'scipy': 'scipy',
    'seqio': 'seqio-nightly',
    'tensorflow': 'tensorflow',
    'tqdm': 'tqdm',
}


def _build_targets():
  """Returns {name: (rule, srcs, deps)} from the root BUILD file."""
  tree = ast.parse((_ROOT / 'BUILD').read_text(), filename='BUILD')
  targets = {}
  for node in ast.walk(tree):
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
      continue
    if node.func.id not in _RULES:
      continue
    kwargs = {kw.arg: kw.value for kw in node.keywords}
    name = ast.literal_eval(kwargs['name'])
    srcs = ast.literal_eval(kwargs.get('srcs', ast.List(elts=[])))
    deps = []
    for dep in getattr(kwargs.get('deps'), 'elts', []):
      if isinstance(dep, ast.Constant):
        deps.append(dep.value)
      elif (
          isinstance(dep, ast.Call)
          and getattr(dep.func, 'id', None) == 'requirement'
      ):
        deps.append('requirement:' + ast.literal_eval(dep.args[0]))
      else:
        raise AssertionError(f'BUILD line {dep.lineno}: unknown dep form')
    if name in targets:
      raise AssertionError(f'BUILD: target {name!r} defined twice')
    targets[name] = (node.func.id, srcs, deps)
  return targets


def _source_files():
  files = sorted(_ROOT.glob(f'{_PACKAGE}/**/*.py'))
  # Test helpers are imported by bare name (tests/ is not a package);
  # conftest.py is pytest's, not a module any target imports.
  files += sorted(
      f for f in _ROOT.glob('tests/*.py') if f.name != 'conftest.py'
  )
  return [f.relative_to(_ROOT).as_posix() for f in files]


def _module_of(path):
  if path.startswith('tests/'):
    return path[len('tests/') : -len('.py')]
  return path[: -len('.py')].replace('/', '.').removesuffix('.__init__')


def _is_test(path):
  return path.startswith('tests/test_')


def _third_party_imports(path):
  """Returns the top-level non-stdlib, non-project names `path` imports."""
  tree = ast.parse((_ROOT / path).read_text(), filename=path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {alias.name.split('.')[0] for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.add(node.module.split('.')[0])
  local = {_module_of(f) for f in _source_files() if f.startswith('tests/')}
  local |= {_PACKAGE, '__future__'}
  return {n for n in found if n not in sys.stdlib_module_names | local}


def _project_imports(path):
  """Returns the in-project modules `path` imports (dotted names)."""
  tree = ast.parse((_ROOT / path).read_text(), filename=path)
  modules = {_module_of(f) for f in _source_files()}
  found = set()
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from pkg import mod` depends on mod; `from mod import sym` on mod.
      names = [f'{node.module}.{alias.name}' for alias in node.names]
    for name in names:
      if name.split('.')[0] != _PACKAGE and name not in modules:
        continue
      while name not in modules and '.' in name:
        name = name.rsplit('.', 1)[0]
      if name in modules:
        found.add(name)
  found.discard(_module_of(path))
  return found


class BuildFileTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.targets = _build_targets()
    self.target_of_src = {}
    for name, (_, srcs, _) in self.targets.items():
      for src in srcs:
        self.assertNotIn(src, self.target_of_src, f'{src} in two targets')
        self.target_of_src[src] = name

  def test_every_source_file_has_a_target(self):
    missing = [f for f in _source_files() if f not in self.target_of_src]
    self.assertEqual(missing, [], 'files with no BUILD target')

  def test_tests_are_py_tests_and_modules_are_libraries(self):
    for path in _source_files():
      rule = self.targets[self.target_of_src[path]][0]
      want = 'py_test' if _is_test(path) else 'py_library'
      entry_point = path.startswith(f'{_PACKAGE}/tools/') or path == (
          f'{_PACKAGE}/main.py'
      )
      if entry_point and not path.endswith('__init__.py'):
        want = 'py_binary'
      self.assertEqual(rule, want, path)

  def test_no_target_names_a_missing_file(self):
    for src in self.target_of_src:
      self.assertTrue((_ROOT / src).exists(), f'BUILD names missing {src}')

  def test_in_project_deps_match_imports(self):
    module_target = {
        _module_of(src): name for src, name in self.target_of_src.items()
    }
    for name, (_, srcs, deps) in self.targets.items():
      want = set()
      for src in srcs:
        want |= {module_target[m] for m in _project_imports(src)}
      want.discard(name)
      have = {d.lstrip(':') for d in deps if d.startswith(':')}
      self.assertEqual(
          have, want, f'BUILD target {name!r}: in-project deps vs imports'
      )

  def test_third_party_deps_match_imports(self):
    for name, (_, srcs, deps) in self.targets.items():
      want = set()
      for src in srcs:
        for module in _third_party_imports(src):
          self.assertIn(
              module,
              _DISTRIBUTIONS,
              f'{src} imports {module!r}: add it to _DISTRIBUTIONS here',
          )
          want.add(_DISTRIBUTIONS[module])
      have = {
          d.removeprefix('requirement:')
          for d in deps
          if d.startswith('requirement:')
      }
      self.assertEqual(
          have, want, f'BUILD target {name!r}: requirement() deps vs imports'
      )


if __name__ == '__main__':
  absltest.main()
