"""Tests of the leaf-class metrics and chance levels (vit22b_pax.input.stats).

The hand-made hierarchy (parents in brackets):

  0 animal   1 vehicle   2 dog [0]   3 cat [0]   4 car [1]
  5 puppy [2]   6 robot dog [2, 1]

has the leaves 3 cat, 4 car, 5 puppy and 6 robot dog: dog, animal and
vehicle are parents.
"""

import json
import tempfile

from absl.testing import absltest
import numpy as np

from vit22b_pax import metrics
from vit22b_pax.input import data_format
from vit22b_pax.input import hierarchy
from vit22b_pax.input import stats

_PARENTS = {0: (), 1: (), 2: (0,), 3: (0,), 4: (1,), 5: (2,), 6: (2, 1)}
_NAMES = ('animal', 'vehicle', 'dog', 'cat', 'car', 'puppy', 'robot dog')
_LEAVES = [3, 4, 5, 6]


def _hierarchy():
  return hierarchy.ClassHierarchy(
      [hierarchy.ClassInfo(i, _NAMES[i], _PARENTS[i]) for i in range(7)]
  )


def _reference_ap(scores, positive):
  """AP by its definition, one positive at a time (no ties in scores)."""
  order = sorted(range(len(scores)), key=lambda i: -scores[i])
  hits, precisions = 0, []
  for rank, i in enumerate(order, start=1):
    if positive[i]:
      hits += 1
      precisions.append(hits / rank)
  return sum(precisions) / len(precisions)


def _reference_subset_metrics(scores, labels, weight, classes):
  keep = weight > 0
  scores, labels = scores[keep], labels[keep]
  aps = [_reference_ap(list(scores[:, c]), list(labels[:, c] > 0))
         for c in classes if labels[:, c].any()]
  hits = []
  for s, l in zip(scores, labels):
    best = max(classes, key=lambda c: s[c])
    hits.append(float(l[best] > 0))
  return float(np.mean(aps)), float(np.mean(hits))


class LeafClassesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.data_dir = tmp.name
    hierarchy.write_class_file(
        _hierarchy(), data_format.class_file_path(self.data_dir)
    )

  def test_leaf_ids_are_the_classes_without_children(self):
    self.assertEqual(stats.leaf_class_ids(_hierarchy()), _LEAVES)
    self.assertEqual(stats.leaf_classes(self.data_dir), tuple(_LEAVES))

  def test_leaf_metrics_match_an_independent_computation(self):
    rng = np.random.default_rng(0)
    n = 24
    leaf_labels = rng.integers(0, 4, size=n)  # One leaf per image ...
    labels = np.zeros((n, 7), np.float32)
    for i, leaf in enumerate(leaf_labels):
      # ... expanded to its ancestors, as the input pipeline does.
      for c in _hierarchy().ancestors(_LEAVES[leaf]):
        labels[i, c] = 1.0
    labels[0] = 0.0
    labels[0, 0] = 1.0  # A root-only image: a leaf precision@1 miss.
    logits = rng.normal(size=(n, 7)).astype(np.float32)
    weight = np.ones((n,), np.float32)
    weight[-3:] = 0.0  # Padding: excluded from both metrics.
    got = stats.leaf_metrics(self.data_dir, logits, labels, weight)
    want_map, want_p1 = _reference_subset_metrics(
        logits, labels, weight, _LEAVES
    )
    self.assertAlmostEqual(got['map_leaf_dataset'], want_map, places=6)
    self.assertAlmostEqual(
        got['precision_at_1_leaf_dataset'], want_p1, places=6
    )
    # Not the all-class figures: the roots are in every image here.
    all_map, all_p1 = _reference_subset_metrics(
        logits, labels, weight, range(7)
    )
    self.assertNotAlmostEqual(got['map_leaf_dataset'], all_map, places=3)
    self.assertNotAlmostEqual(
        got['precision_at_1_leaf_dataset'], all_p1, places=3
    )

  def test_subset_of_all_classes_is_the_plain_metrics(self):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(10, 5))
    labels = (rng.random((10, 5)) < 0.4).astype(np.float32)
    got = metrics.np_class_subset_metrics(logits, labels, None, range(5))
    self.assertAlmostEqual(
        got['map'], metrics.np_mean_average_precision(logits, labels)
    )
    self.assertAlmostEqual(
        got['precision_at_1'], metrics.np_precision_at_1(logits, labels)
    )

  def test_no_data_dir_no_leaf_metrics(self):
    self.assertEqual(
        stats.leaf_metrics('', np.zeros((2, 3)), np.ones((2, 3)), None), {}
    )


class ChanceOverClassesTest(absltest.TestCase):

  _INFO = {'splits': {'eval': {
      'num_examples': 10,
      'label_counts': [0, 0, 0, 0, 5, 1, 2],
      'expanded_label_counts': [10, 5, 3, 0, 5, 1, 2],
  }}}

  def test_chance_map_over_a_subset(self):
    h10 = sum(1 / k for k in range(1, 11))
    # Closed forms of E[AP](n, 10): n = 5: 4/9 + H_10 * 5/90; n = 1:
    # H_10 / 10; n = 2: 1/9 + H_10 * 8/90. Class 3 has no positive: skipped.
    want = (4 / 9 + h10 * 5 / 90 + h10 / 10 + 1 / 9 + h10 * 8 / 90) / 3
    self.assertAlmostEqual(
        stats.chance_map_from_info(self._INFO, 'eval', classes=_LEAVES), want
    )

  def test_chance_precision_at_1_over_a_subset(self):
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    with open(data_format.info_file_path(tmp.name), 'w') as f:
      json.dump(self._INFO, f)
    # All classes: the root in every image; leaves: car, in 5 of 10.
    self.assertAlmostEqual(stats.chance_precision_at_1(tmp.name), 1.0)
    self.assertAlmostEqual(
        stats.chance_precision_at_1(tmp.name, classes=_LEAVES), 0.5
    )

  def test_out_of_range_class_is_named(self):
    with self.assertRaisesRegex(ValueError, r'class ids \[7\] out of range'):
      stats.chance_map_from_info(self._INFO, 'eval', classes=[3, 7])


if __name__ == '__main__':
  absltest.main()
