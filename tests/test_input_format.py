"""Tests of the data format: class file, hierarchy, DATA_DIR checks, chance."""

import io
import itertools
import json
import os
import random
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image

from vit22b_pax.input import data_format
from vit22b_pax.input import hierarchy
from vit22b_pax.input import shapes
from vit22b_pax.input import stats
from vit22b_pax.input import writer


def _reference_ancestors(parents, node):
  """Independent BFS over parent links (the class itself included)."""
  seen, frontier = {node}, [node]
  while frontier:
    nxt = []
    for n in frontier:
      for p in parents[n]:
        if p not in seen:
          seen.add(p)
          nxt.append(p)
    frontier = nxt
  return seen


def _tmpdir(test):
  """A temporary directory removed after the test (pytest-safe)."""
  tmp = tempfile.TemporaryDirectory()
  test.addCleanup(tmp.cleanup)
  return tmp.name


def _write_text(path, text):
  with open(path, 'w') as f:
    f.write(text)


def _png_bytes(value):
  buf = io.BytesIO()
  Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buf, 'PNG')
  return buf.getvalue()


class HierarchyTest(parameterized.TestCase):

  def test_shapes_multi_parent_expansion(self):
    classes = shapes.shape_classes()
    self.assertEqual(classes.num_classes, 5 + 7 + 6 + 42)
    got = {classes.names[i]
           for i in classes.ancestors(classes.id_of('red triangle'))}
    # triangle is both a polygon and a pointy shape; red is a warm colour.
    self.assertEqual(got, {'red triangle', 'triangle', 'red', 'polygon',
                           'pointy shape', 'warm colour'})
    got = classes.expand([classes.id_of('blue ring'),
                          classes.id_of('blue star')])
    self.assertEqual({classes.names[i] for i in got},
                     {'blue ring', 'ring', 'round shape', 'blue',
                      'cool colour', 'blue star', 'star', 'pointy shape'})

  @parameterized.parameters(0, 1, 2)
  def test_random_dag_matches_reference(self, seed):
    rng = random.Random(seed)
    n = 40
    # Parents always have smaller ids, so the graph is acyclic.
    parents = [tuple(sorted(rng.sample(range(i), min(i, rng.randint(0, 3)))))
               for i in range(n)]
    classes = hierarchy.ClassHierarchy(
        [hierarchy.ClassInfo(i, f'c{i}', p) for i, p in enumerate(parents)])
    for i in range(n):
      self.assertEqual(set(classes.ancestors(i)),
                       _reference_ancestors(parents, i))
    labels = [3, 17, 39]
    want = set().union(*(_reference_ancestors(parents, i) for i in labels))
    self.assertEqual(classes.expand(labels), sorted(want))

  def test_class_file_round_trip(self):
    classes = shapes.shape_classes()
    path = os.path.join(_tmpdir(self), 'classes.tsv')
    hierarchy.write_class_file(classes, path)
    back = hierarchy.read_class_file(path)
    self.assertEqual(back, classes)
    self.assertEqual(back.classes[classes.id_of('red circle')].parents,
                     (classes.id_of('circle'), classes.id_of('red')))

  def test_cycle_names_file_and_rows(self):
    path = os.path.join(_tmpdir(self), 'classes.tsv')
    _write_text(path, 'id\tname\tparent_ids\n0\troot\t\n1\ta\t0,3\n'
                '2\tb\t1\n3\tc\t2\n')
    with self.assertRaisesRegex(
        hierarchy.HierarchyError,
        r"classes\.tsv: cycle in the class hierarchy: 'a' -> 'c' -> 'b' ->"
        r" 'a' \(rows 3, 5, 4\)"):
      hierarchy.read_class_file(path)

  def test_unknown_parent_names_file_and_row(self):
    path = os.path.join(_tmpdir(self), 'classes.tsv')
    _write_text(path, 'id\tname\tparent_ids\n0\troot\t\n1\ta\t7\n')
    with self.assertRaisesRegex(hierarchy.HierarchyError,
                                r'classes\.tsv row 3: .*unknown parent id 7'):
      hierarchy.read_class_file(path)

  def test_bad_ids_and_names(self):
    tmp = _tmpdir(self)
    path = os.path.join(tmp, 'a.tsv')
    _write_text(path, '0\troot\t\n2\ta\t0\n')
    with self.assertRaisesRegex(hierarchy.HierarchyError,
                                r'a\.tsv row 2: .*expected id 1, found 2'):
      hierarchy.read_class_file(path)
    _write_text(path, '0\troot\t\n1\troot\t0\n')
    with self.assertRaisesRegex(hierarchy.HierarchyError,
                                r'a\.tsv row 2: duplicate class name'):
      hierarchy.read_class_file(path)


class DataDirTest(absltest.TestCase):

  def _dataset(self, num_classes=3, splits=(('train', 2, 5),)):
    tmp = _tmpdir(self)
    classes = hierarchy.ClassHierarchy(
        [hierarchy.ClassInfo(i, f'c{i}', (0,) if i else ())
         for i in range(num_classes)])
    for split, shards, num in splits:
      with writer.SplitWriter(tmp, split, shards, classes) as w:
        for i in range(num):
          w.write(_png_bytes(i), [1 + i % (num_classes - 1)], f'id{i}')
        w.finish()
    return tmp, classes

  def test_example_round_trip(self):
    data = _png_bytes(7)
    ex = data_format.parse_example(data_format.make_example(data, [4, 1], 'x'))
    self.assertEqual(ex, {'image': data, 'labels': [4, 1], 'id': 'x'})
    ex = data_format.parse_example(data_format.make_example(data, [2]))
    self.assertIsNone(ex['id'])

  def test_writer_shards_and_counts(self):
    tmp, _ = self._dataset(num_classes=4, splits=(('train', 3, 8),))
    files = data_format.list_shards(tmp, 'train')
    self.assertEqual([os.path.basename(f) for f in files],
                     [f'train-0000{i}-of-00003.tfrecord' for i in range(3)])
    # Round robin: 8 records over 3 shards.
    self.assertEqual([data_format.count_records(f) for f in files], [3, 3, 2])
    info = data_format.read_info(tmp)
    split = info['splits']['train']
    self.assertEqual(split['num_examples'], 8)
    self.assertEqual([s['num_examples'] for s in split['shards']], [3, 3, 2])
    labels = [1 + i % 3 for i in range(8)]
    self.assertEqual(split['label_counts'],
                     [0] + [labels.count(c) for c in (1, 2, 3)])
    # Every label expands to itself and the root 0.
    self.assertEqual(split['expanded_label_counts'],
                     [8] + [labels.count(c) for c in (1, 2, 3)])
    self.assertEqual(data_format.shard_record_counts(tmp, 'train'), [3, 3, 2])
    self.assertEqual(info['num_classes'], 4)

  def test_validate_ok(self):
    tmp, classes = self._dataset()
    self.assertEqual(data_format.validate_data_dir(tmp, 3), classes)

  def test_no_shards_names_path_and_pattern(self):
    tmp, _ = self._dataset()
    with self.assertRaisesRegex(
        ValueError, rf"DATA_DIR '{tmp}' has no shards for split 'eval'.*"
        rf"{tmp}/eval-\?\?\?\?\?-of-\?\?\?\?\?\.tfrecord.*found: \['train'\]"):
      data_format.validate_data_dir(tmp, 3, splits=('train', 'eval'))
    empty = _tmpdir(self)
    with self.assertRaisesRegex(ValueError, f'DATA_DIR {empty!r} has no'):
      data_format.validate_data_dir(empty, 3)

  def test_num_classes_mismatch_names_path_and_numbers(self):
    tmp, _ = self._dataset()
    with self.assertRaisesRegex(
        ValueError, rf'Class file {tmp}/classes.tsv lists 3 classes but'
        r' NUM_CLASSES is 29593'):
      data_format.validate_data_dir(tmp, 29593)

  def test_missing_shard(self):
    tmp, _ = self._dataset(splits=(('train', 3, 6),))
    os.remove(os.path.join(tmp, 'train-00001-of-00003.tfrecord'))
    with self.assertRaisesRegex(
        ValueError, r"has 2 of 3 shards; missing 'train-00001-of-00003"):
      data_format.validate_data_dir(tmp, 3)

  def test_writer_refuses_other_class_file(self):
    tmp, _ = self._dataset()
    other = hierarchy.ClassHierarchy(
        [hierarchy.ClassInfo(i, f'x{i}') for i in range(5)])
    with self.assertRaisesRegex(ValueError, 'already exists with 3 classes'):
      writer.SplitWriter(tmp, 'eval', 1, other)

  def test_aborted_split_leaves_no_shards(self):
    tmp, classes = self._dataset()
    with self.assertRaises(RuntimeError):
      with writer.SplitWriter(tmp, 'eval', 2, classes) as w:
        w.write(_png_bytes(1), [1])
        raise RuntimeError('interrupted')
    self.assertEqual(data_format.list_shards(tmp, 'eval'), [])
    self.assertEqual(
        [f for f in os.listdir(tmp) if 'eval' in f], [])


def _average_precision(ranked_positive):
  """AP of one ranking (list of 0/1, best first)."""
  hits, total = 0, 0.0
  for k, pos in enumerate(ranked_positive, start=1):
    if pos:
      hits += 1
      total += hits / k
  return total / hits


class ChanceTest(parameterized.TestCase):

  @parameterized.parameters((1, 1), (1, 6), (2, 6), (3, 7), (6, 7), (7, 7))
  def test_expected_random_ap_exhaustive(self, n, big_n):
    # Every placement of the n positives among N ranks is equally likely.
    aps = []
    for pos in itertools.combinations(range(big_n), n):
      ranking = [1 if k in pos else 0 for k in range(big_n)]
      aps.append(_average_precision(ranking))
    self.assertAlmostEqual(stats.expected_random_ap(n, big_n), np.mean(aps),
                           places=12)

  def test_chance_map_skips_classes_without_positives(self):
    info = {'splits': {'eval': {
        'num_examples': 10,
        'label_counts': [10, 0, 1],
        'expanded_label_counts': [10, 5, 1],
    }}}
    h10 = sum(1 / k for k in range(1, 11))
    # n = N gives AP 1; n = 1 gives E[1 / rank] = H_N / N.
    self.assertAlmostEqual(
        stats.chance_map_from_info(info, 'eval', expand_hierarchy=False),
        (1.0 + h10 / 10) / 2)
    want5 = 4 / 9 + h10 * 5 / 90
    self.assertAlmostEqual(stats.chance_map_from_info(info, 'eval'),
                           (1.0 + want5 + h10 / 10) / 3)

  def test_pooled_chance_single_class_closed_form(self):
    info = {'splits': {'eval': {'num_examples': 20, 'label_counts': [1],
                                'expanded_label_counts': [1]}}}
    # One positive among 20, pools of 5: when present, AP = E[1/rank] =
    # H_5 / 5.
    h5 = sum(1 / k for k in range(1, 6))
    self.assertAlmostEqual(
        stats.chance_map_from_info(info, 'eval', pool_size=5), h5 / 5)

  def test_chance_map_reads_data_dir(self):
    tmp = _tmpdir(self)
    info = {'splits': {'eval': {'num_examples': 4, 'label_counts': [4, 2],
                                'expanded_label_counts': [4, 2]}}}
    with open(os.path.join(tmp, 'dataset_info.json'), 'w') as f:
      json.dump(info, f)
    self.assertAlmostEqual(stats.chance_map(tmp),
                           (1 + stats.expected_random_ap(2, 4)) / 2)
    self.assertAlmostEqual(stats.chance_precision_at_1(tmp), 1.0)
    with self.assertRaisesRegex(ValueError, "no split 'test'"):
      stats.chance_map(tmp, split='test')


if __name__ == '__main__':
  absltest.main()
