"""Compiled HLO text of an SPMD program, parsed for the tests that read it.

`Hlo(compiled.as_text(), mesh)` parses the entry computation into named
instructions. Partition p of the SPMD program runs on mesh.devices.flat[p],
so the device groups of a collective map to mesh coordinates by
np.unravel_index, and `axes_of` names the mesh axes a collective spans.
"""

import collections
import re
from typing import NamedTuple

import jax
import numpy as np

COLLECTIVES = ('all-gather', 'all-reduce', 'reduce-scatter', 'all-to-all',
               'collective-broadcast', 'collective-permute')


class Op(NamedTuple):
  """One HLO instruction.

  Attributes:
    name: The instruction's name, without '%'.
    opcode: e.g. 'all-gather', 'dot', 'collective-permute-start'.
    dims: Result dims, None for a tuple-typed result.
    shapes: Every array shape in the result type (one per tuple element).
    operands: Names of the operand instructions.
    line: The instruction's text.
  """

  name: str
  opcode: str
  dims: tuple[int, ...] | None
  shapes: tuple[tuple[int, ...], ...]
  operands: list[str]
  line: str

  @property
  def kind(self) -> str:
    """The opcode without the async '-start' suffix."""
    return self.opcode.removesuffix('-start')

  @property
  def op_name(self) -> str:
    """The jax op_name metadata ('' when the compiler left none)."""
    found = re.search(r'op_name="([^"]*)"', self.line)
    return found.group(1) if found else ''


def is_dot(op: Op) -> bool:
  return op.opcode == 'dot'


def is_permute(op: Op) -> bool:
  return op.kind == 'collective-permute'


def _closing(text, start):
  """Index of the parenthesis closing the one at text[start]."""
  depth = 0
  for k in range(start, len(text)):
    depth += {'(': 1, ')': -1}.get(text[k], 0)
    if depth == 0:
      return k
  raise AssertionError(f'unbalanced: {text}')


def pairs(attr, line):
  """The {a,b,...} groups of an HLO attribute like replica_groups={{0,1}}."""
  found = re.search(attr + r'=\{((?:\{[\d,]*\},?)*)\}', line)
  if found is None:
    raise AssertionError(f'no parsable {attr} in: {line}')
  return [[int(p) for p in g.split(',') if p]
          for g in re.findall(r'\{([\d,]*)\}', found.group(1))]


def _dims(text):
  return tuple(int(x) for x in text.split(',') if x)


class Hlo:
  """The entry computation of compiled HLO text.

  Attributes:
    mesh: The mesh the program was partitioned for.
    ops: The entry computation's instructions (Op), in order.
    num_dots: dot instructions in all computations (fused ones included).
  """

  def __init__(self, text: str, mesh: jax.sharding.Mesh):
    self.mesh = mesh
    self.num_dots = len(re.findall(r' dot\(', text))
    entry = text[text.index('\nENTRY ') + 1:]
    entry = entry[: entry.index('\n}')]
    self.ops = []
    for line in entry.splitlines()[1:]:
      name, rest = line.strip().removeprefix('ROOT ').split(' = ', 1)
      dims = re.match(r'\w+\[([\d,]*)\]', rest)
      # Skip the result type (a tuple type has spaces) to the opcode.
      if rest.startswith('('):
        result_type = rest[: _closing(rest, 0) + 1]
        rest = rest[len(result_type):].lstrip()
      else:
        result_type, rest = rest.split(' ', 1)
      start = rest.index('(')
      self.ops.append(Op(
          name=name.lstrip('%'),
          opcode=rest[:start],
          dims=_dims(dims.group(1)) if dims else None,
          shapes=tuple(
              _dims(s) for s in re.findall(r'\w+\[([\d,]*)\]', result_type)
          ),
          operands=re.findall(r'%([\w.\-]+)',
                              rest[start: _closing(rest, start) + 1]),
          line=line,
      ))
    self._by_name = {op.name: op for op in self.ops}

  def _coords(self, partition):
    return np.unravel_index(partition, self.mesh.devices.shape)

  def axes_of(self, op: Op) -> tuple[str, ...]:
    """The mesh axes along which op's device groups (or pairs) differ."""
    attr = 'source_target_pairs' if is_permute(op) else 'replica_groups'
    names = self.mesh.axis_names
    axes = set()
    for group in pairs(attr, op.line):
      coords = np.array([self._coords(p) for p in group])
      axes |= {names[k] for k in range(len(names))
               if len(set(coords[:, k])) > 1}
    return tuple(a for a in names if a in axes)

  def collective_ops(self) -> list[Op]:
    """Every collective of the entry computation, permutes included."""
    return [op for op in self.ops if op.kind in COLLECTIVES]

  def collectives(self):
    """{(kind, mesh axes its groups span, result dims): count}, no permutes."""
    found = collections.Counter()
    for op in self.collective_ops():
      if not is_permute(op):
        found[(op.kind, self.axes_of(op), op.dims)] += 1
    return dict(found)

  def permutes(self):
    """[(name, dims, steps)] of the collective-permutes.

    steps: the set of model-axis offsets of its source -> target pairs, +1
    (to the right neighbour) or -1 (left); other offsets, or pairs across
    the data axis, appear as such.
    """
    m = self.mesh.shape['model']
    out = []
    for op in filter(is_permute, self.ops):
      steps = set()
      for s, t in pairs('source_target_pairs', op.line):
        cs, ct = self._coords(s), self._coords(t)
        if cs[0] != ct[0]:
          steps.add('across data')
        else:
          diff = (ct[1] - cs[1]) % m
          steps.add(+1 if diff == 1 else -1 if diff == m - 1 else diff)
      out.append((op.name, op.dims, steps))
    return out

  def upstream(self, name, pred):
    """Number of ops satisfying `pred` that op `name` depends on."""
    seen, stack = set(), list(self._by_name[name].operands)
    while stack:
      n = stack.pop()
      if n in seen or n not in self._by_name:
        continue
      seen.add(n)
      stack.extend(self._by_name[n].operands)
    return sum(1 for n in seen if pred(self._by_name[n]))

  def dots(self):
    return [op.name for op in self.ops if is_dot(op)]
