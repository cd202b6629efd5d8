"""The class hierarchy: a DAG of classes, as in JFT's label space.

A class may have several parents ("red circle" -> "circle", "red"). At read
time a label can be expanded to itself plus all its ancestors, which is how
JFT's semi-automatic labels propagate up the hierarchy.

The class file (`classes.tsv`, see data/README.md) is UTF-8 text, one class
per line, tab separated:

  id<TAB>name<TAB>parent_ids

`id` runs 0..C-1 in file order, `parent_ids` is a comma-separated list of
ids (empty for a root). A header line starting with `id` and lines starting
with `#` are ignored. Errors name the file and the (1-based) line.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf

CLASS_FILE_HEADER = 'id\tname\tparent_ids'
# Ancestor table entries (int32) allowed: 256 MB. JFT's ~30k classes with
# tens of ancestors each take a few MB.
MAX_ANCESTOR_TABLE_ENTRIES = 2**26


class HierarchyError(ValueError):
  """A malformed class file or hierarchy (names the file and row)."""


@dataclasses.dataclass(frozen=True)
class ClassInfo:
  """One class of the label space.

  Attributes:
    id: Index of the class in the multi-hot label vector.
    name: Unique human-readable name.
    parents: Ids of the direct parents (empty for a root).
  """

  id: int
  name: str
  parents: tuple[int, ...] = ()


def _where(source: str, row: int | str | None) -> str:
  """'file row N' for a line number, 'file at PATH' for a JSON path."""
  if row is None:
    return source
  return f'{source} row {row}' if isinstance(row, int) else f'{source} at {row}'


class ClassHierarchy:
  """A validated class DAG with precomputed ancestor sets.

  Construction checks: ids are 0..C-1 in order, names are unique and
  non-empty, every parent id exists, and the parent relation has no cycle.
  """

  def __init__(
      self,
      classes: Sequence[ClassInfo],
      source: str = '<classes>',
      rows: Sequence[int | str | None] | None = None,
      edge_rows: dict[tuple[int, int], int | str] | None = None,
  ):
    """Builds the hierarchy.

    Args:
      classes: The classes in id order.
      source: File the classes came from, for error messages.
      rows: Optional location of each class in `source` (line number or
        JSON path), for error messages.
      edge_rows: Optional location of each (child id, parent id) link, so
        a cycle is reported with the rows that create it.
    """
    self._classes = tuple(classes)
    self._source = source
    self._rows = tuple(rows) if rows is not None else None
    self._edge_rows = dict(edge_rows or {})
    self._check()
    self._ancestors = self._compute_ancestors()

  def _row(self, class_id: int) -> int | str | None:
    return self._rows[class_id] if self._rows is not None else None

  def _check(self) -> None:
    names = {}
    n = len(self._classes)
    for i, c in enumerate(self._classes):
      where = _where(self._source, self._row(i))
      if c.id != i:
        raise HierarchyError(
            f'{where}: class ids must run 0..{n - 1} in order; expected id'
            f' {i}, found {c.id}.'
        )
      if not c.name:
        raise HierarchyError(f'{where}: class {i} has an empty name.')
      if c.name in names:
        raise HierarchyError(
            f'{where}: duplicate class name {c.name!r} (also id'
            f' {names[c.name]}).'
        )
      names[c.name] = i
      for p in c.parents:
        if not 0 <= p < n:
          raise HierarchyError(
              f'{where}: class {c.name!r} has unknown parent id {p} (the file'
              f' defines ids 0..{n - 1}).'
          )
    self._name_to_id = names
    cycle = self._find_cycle()
    if cycle:
      path = ' -> '.join(repr(self._classes[i].name) for i in cycle)
      links = list(zip(cycle[:-1], cycle[1:]))
      if all(l in self._edge_rows for l in links):
        where = [self._edge_rows[l] for l in links]
      elif self._rows is not None:
        where = [self._row(i) for i in cycle[:-1]]
      else:
        where = []
      if where and all(isinstance(w, int) for w in where):
        rows = ' (rows ' + ', '.join(str(w) for w in where) + ')'
      elif where:
        rows = ' (at ' + '; '.join(str(w) for w in where) + ')'
      else:
        rows = ''
      raise HierarchyError(
          f'{self._source}: cycle in the class hierarchy: {path}{rows}.'
      )

  def _find_cycle(self) -> list[int] | None:
    """Returns a cycle [a, b, ..., a] along parent links, or None."""
    white, grey, black = 0, 1, 2
    colour = [white] * len(self._classes)
    for start in range(len(self._classes)):
      if colour[start] != white:
        continue
      # Iterative DFS: deep hierarchies must not hit the recursion limit.
      stack = [(start, iter(self._classes[start].parents))]
      path = [start]
      colour[start] = grey
      while stack:
        node, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
          colour[node] = black
          stack.pop()
          path.pop()
        elif colour[nxt] == grey:
          return path[path.index(nxt):] + [nxt]
        elif colour[nxt] == white:
          colour[nxt] = grey
          stack.append((nxt, iter(self._classes[nxt].parents)))
          path.append(nxt)
    return None

  def _compute_ancestors(self) -> tuple[tuple[int, ...], ...]:
    """Ancestor sets (including the class itself), in topological order."""
    n = len(self._classes)
    children = collections.defaultdict(list)
    pending = [len(set(c.parents)) for c in self._classes]
    for c in self._classes:
      for p in set(c.parents):
        children[p].append(c.id)
    ready = collections.deque(i for i in range(n) if pending[i] == 0)
    ancestors: list[frozenset[int] | None] = [None] * n
    while ready:
      i = ready.popleft()
      acc = {i}
      for p in self._classes[i].parents:
        acc |= ancestors[p]
      ancestors[i] = frozenset(acc)
      for ch in children[i]:
        pending[ch] -= 1
        if pending[ch] == 0:
          ready.append(ch)
    return tuple(tuple(sorted(a)) for a in ancestors)

  @property
  def num_classes(self) -> int:
    return len(self._classes)

  @property
  def classes(self) -> tuple[ClassInfo, ...]:
    return self._classes

  @property
  def names(self) -> list[str]:
    return [c.name for c in self._classes]

  @property
  def source(self) -> str:
    return self._source

  def id_of(self, name: str) -> int:
    """Id of a class name; KeyError if unknown."""
    return self._name_to_id[name]

  def has_name(self, name: str) -> bool:
    return name in self._name_to_id

  def ancestors(self, class_id: int) -> tuple[int, ...]:
    """Sorted ids of the class and all its ancestors."""
    return self._ancestors[class_id]

  def expand(self, class_ids: Iterable[int]) -> list[int]:
    """Sorted union of the ancestor sets of `class_ids`."""
    out = set()
    for i in class_ids:
      out.update(self._ancestors[i])
    return sorted(out)

  def ancestor_table(self) -> np.ndarray:
    """int32 [C, A]: row c lists c and its ancestors, then C as padding.

    A is the largest ancestor set. The padding id C lies outside the label
    space, so a bincount of size C drops it (preprocessing.multi_hot).

    Raises:
      HierarchyError: the table would exceed MAX_ANCESTOR_TABLE_ENTRIES.
    """
    n = len(self._ancestors)
    width = max((len(a) for a in self._ancestors), default=1)
    if n * width > MAX_ANCESTOR_TABLE_ENTRIES:
      widest = max(range(n), key=lambda i: len(self._ancestors[i]))
      raise HierarchyError(
          f'{self._source}: the ancestor table would be {n} x {width} ids'
          f' (class {self._classes[widest].name!r} has {width} ancestors'
          ' including itself), over the limit of'
          f' {MAX_ANCESTOR_TABLE_ENTRIES}; read the labels unexpanded'
          ' (expand_hierarchy=False).'
      )
    table = np.full((n, width), n, np.int32)
    for i, a in enumerate(self._ancestors):
      table[i, :len(a)] = a
    return table

  def __eq__(self, other) -> bool:
    return (
        isinstance(other, ClassHierarchy) and self._classes == other._classes
    )

  def __hash__(self):
    return hash(self._classes)

  @classmethod
  def from_named_edges(
      cls,
      names: Sequence[str],
      edges: Sequence[tuple[str, str, int | str | None]],
      source: str,
      name_rows: Sequence[int | str | None] | None = None,
  ) -> ClassHierarchy:
    """Builds a hierarchy from class names and (child, parent, row) edges.

    Args:
      names: Class names; their order defines the ids.
      edges: (child name, parent name, row in `source`) triples.
      source: File the edges came from, for error messages.
      name_rows: Optional row in `source` where each class is defined.

    Returns:
      The validated hierarchy.

    Raises:
      HierarchyError: unknown child/parent names, or a cycle.
    """
    ids = {}
    for i, name in enumerate(names):
      ids.setdefault(name, i)
    parents = [[] for _ in names]
    edge_rows = {}
    for child, parent, row in edges:
      if child not in ids:
        raise HierarchyError(
            f'{_where(source, row)}: unknown class {child!r}.'
        )
      if parent not in ids:
        raise HierarchyError(
            f'{_where(source, row)}: class {child!r} has unknown parent'
            f' {parent!r} (it is never defined as a class).'
        )
      if ids[parent] not in parents[ids[child]]:
        parents[ids[child]].append(ids[parent])
        if row is not None:
          edge_rows[(ids[child], ids[parent])] = row
    classes = [
        ClassInfo(i, n, tuple(p))
        for i, (n, p) in enumerate(zip(names, parents))
    ]
    rows = list(name_rows) if name_rows is not None else None
    return cls(classes, source=source, rows=rows, edge_rows=edge_rows)


def read_class_file(path: str) -> ClassHierarchy:
  """Reads and validates a `classes.tsv` file (see the module docstring)."""
  if not tf.io.gfile.exists(path):
    raise HierarchyError(f'Class file {path} does not exist.')
  with tf.io.gfile.GFile(path, 'r') as f:
    text = f.read()
  classes, rows = [], []
  for lineno, line in enumerate(text.splitlines(), start=1):
    if not line.strip() or line.startswith('#'):
      continue
    if line.startswith('id\t') and not classes:
      continue  # The header.
    fields = line.split('\t')
    if len(fields) not in (2, 3):
      raise HierarchyError(
          f'{path} row {lineno}: expected 3 tab-separated fields'
          f' (id, name, parent_ids), found {len(fields)}.'
      )
    try:
      class_id = int(fields[0])
      parent_field = fields[2].strip() if len(fields) == 3 else ''
      parents = tuple(int(p) for p in parent_field.split(',') if p.strip())
    except ValueError as e:
      raise HierarchyError(
          f'{path} row {lineno}: ids must be integers ({e}).'
      ) from None
    classes.append(ClassInfo(class_id, fields[1], parents))
    rows.append(lineno)
  if not classes:
    raise HierarchyError(f'Class file {path} lists no classes.')
  return ClassHierarchy(classes, source=path, rows=rows)


def write_class_file(hierarchy: ClassHierarchy, path: str) -> None:
  """Writes `hierarchy` as a class file."""
  lines = [CLASS_FILE_HEADER]
  for c in hierarchy.classes:
    if '\t' in c.name or '\n' in c.name:
      raise HierarchyError(
          f'Class name {c.name!r} (id {c.id}) contains a tab or newline.'
      )
    lines.append(f'{c.id}\t{c.name}\t' + ','.join(str(p) for p in c.parents))
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
