"""Tests for vit22b_pax.metrics against references written out here."""

import math

from absl.testing import absltest
from absl.testing import parameterized
import jax.numpy as jnp
import numpy as np

from vit22b_pax import metrics

# Five examples, four classes. Example 4 is eval padding (weight 0) whose
# label and top score would change every metric if it were counted. Class 3
# has no positive among the real examples (only the padded one has it).
SCORES = np.array([
    [2.0, -1.0, 0.5, -3.0],
    [0.1, 1.5, -0.2, -2.5],
    [-0.4, 0.3, 1.2, -1.5],
    [0.9, -0.7, 0.2, -0.5],
    [5.0, 4.0, 3.0, 9.0],
], np.float32)
LABELS = np.array([
    [1, 0, 1, 0],
    [0, 0, 1, 0],
    [1, 1, 0, 0],
    [0, 1, 0, 0],
    [0, 1, 1, 1],
], np.float32)
WEIGHTS = np.array([1, 1, 1, 1, 0], np.float32)


def _ref_xent(logits, labels, weights):
  logits = np.asarray(logits, np.float64)
  total, norm = 0.0, 0.0
  for z, y, w in zip(logits, labels, weights):
    p = 1.0 / (1.0 + np.exp(-z))
    total += w * np.sum(-(y * np.log(p) + (1 - y) * np.log(1 - p)))
    norm += w
  return total / norm


def _ref_p1(scores, labels, weights):
  hits = [w * labels[i][int(np.argmax(scores[i]))]
          for i, w in enumerate(weights)]
  return sum(hits) / sum(weights)


def _ref_map(scores, labels, weights):
  """AP by definition: precision among items scored >= each positive."""
  keep = [i for i, w in enumerate(weights) if w > 0]
  aps = []
  for c in range(scores.shape[1]):
    pos = [i for i in keep if labels[i, c] > 0]
    if not pos:
      continue
    precisions = []
    for i in pos:
      above = [j for j in keep if scores[j, c] >= scores[i, c]]
      precisions.append(sum(labels[j, c] > 0 for j in above) / len(above))
    aps.append(np.mean(precisions))
  return float(np.mean(aps))


class MetricsTest(parameterized.TestCase):

  def test_hand_values(self):
    # Worked by hand. precision@1: row 0's top class 0 is a label, rows 1-3
    # miss (top classes 1, 2, 0) -> 1/4; counting the padded row would give
    # 2/5.
    self.assertAlmostEqual(metrics.np_precision_at_1(SCORES, LABELS, WEIGHTS),
                           0.25)
    # AP class 0: ranking 0(+),3,1,2(+) -> (1/1 + 2/4)/2 = 0.75.
    # AP class 1: scores 1.5, 0.3, -0.7, -1.0 rank rows 1(-), 2(+), 3(+),
    #   0(-) -> (1/2 + 2/3)/2 = 7/12.
    # AP class 2: scores 0.5,-0.2,1.2,0.2 -> 2(-),0(+),3(-),1(+)
    #   -> (1/2 + 2/4)/2 = 0.5. Class 3: no real positive, excluded.
    expected = (0.75 + 7 / 12 + 0.5) / 3
    self.assertAlmostEqual(
        metrics.np_mean_average_precision(SCORES, LABELS, WEIGHTS), expected)
    self.assertAlmostEqual(
        float(metrics.mean_average_precision(
            jnp.asarray(SCORES), jnp.asarray(LABELS), jnp.asarray(WEIGHTS))),
        expected, places=6)

  def test_jnp_matches_reference(self):
    s, y, w = jnp.asarray(SCORES), jnp.asarray(LABELS), jnp.asarray(WEIGHTS)
    self.assertAlmostEqual(float(metrics.sigmoid_xent(s, y, w)),
                           _ref_xent(SCORES, LABELS, WEIGHTS), places=5)
    self.assertAlmostEqual(float(metrics.precision_at_1(s, y, w)),
                           _ref_p1(SCORES, LABELS, WEIGHTS), places=6)
    self.assertAlmostEqual(float(metrics.mean_average_precision(s, y, w)),
                           _ref_map(SCORES, LABELS, WEIGHTS), places=6)

  def test_per_class_ap_flags_classes_without_positives(self):
    ap, has_pos = metrics.average_precision_per_class(
        jnp.asarray(SCORES), jnp.asarray(LABELS), jnp.asarray(WEIGHTS))
    np.testing.assert_array_equal(np.asarray(has_pos),
                                  [True, True, True, False])
    np.testing.assert_allclose(np.asarray(ap), [0.75, 7 / 12, 0.5, 0.0],
                               atol=1e-6)

  @parameterized.parameters(0, 1, 2)
  def test_random_batches_match_reference(self, seed):
    rng = np.random.default_rng(seed)
    n, c = 24, 7
    scores = rng.normal(size=(n, c)).astype(np.float32)  # no ties a.s.
    labels = (rng.random((n, c)) < 0.3).astype(np.float32)
    labels[:, 0] = 0  # a class with no positives at all
    weights = (rng.random(n) < 0.8).astype(np.float32)
    ref_map = _ref_map(scores, labels, weights)
    self.assertAlmostEqual(
        metrics.np_mean_average_precision(scores, labels, weights), ref_map)
    self.assertAlmostEqual(
        float(metrics.mean_average_precision(scores, labels, weights)),
        ref_map, places=5)
    ref_xent = _ref_xent(scores, labels, weights)
    self.assertAlmostEqual(metrics.np_sigmoid_xent(scores, labels, weights),
                           ref_xent, places=9)
    self.assertAlmostEqual(float(metrics.sigmoid_xent(scores, labels,
                                                      weights)),
                           ref_xent, places=4)
    ref_p1 = _ref_p1(scores, labels, weights)
    self.assertAlmostEqual(metrics.np_precision_at_1(scores, labels, weights),
                           ref_p1)
    self.assertAlmostEqual(float(metrics.precision_at_1(scores, labels,
                                                        weights)),
                           ref_p1, places=6)

  def test_xent_is_sum_over_classes_and_stable(self):
    n, c = 3, 5
    zeros = jnp.zeros((n, c))
    labels = jnp.zeros((n, c)).at[:, 0].set(1.0)
    # All-0.5 predictions cost log(2) per class, summed over C classes.
    self.assertAlmostEqual(float(metrics.sigmoid_xent(zeros, labels)),
                           c * math.log(2.0), places=5)
    # A confident correct logit of 1000 costs ~0, a wrong one costs ~1000;
    # a naive log(sigmoid) would give inf / nan here.
    logits = jnp.full((1, 2), -1000.0).at[0, 0].set(1000.0)
    wrong = jnp.array([[0.0, 1.0]])
    right = jnp.array([[1.0, 0.0]])
    self.assertAlmostEqual(float(metrics.sigmoid_xent(logits, right)), 0.0,
                           places=5)
    self.assertAlmostEqual(float(metrics.sigmoid_xent(logits, wrong)), 2000.0,
                           places=2)

  def test_softmax_xent_matches_reference(self):
    # Multi-hot rows become uniform targets over their labels.
    total = 0.0
    for z, y, w in zip(SCORES.astype(np.float64), LABELS, WEIGHTS):
      log_p = z - np.log(np.sum(np.exp(z)))
      total += w * -np.sum(y / y.sum() * log_p)
    expected = total / WEIGHTS.sum()
    self.assertAlmostEqual(
        float(metrics.softmax_xent(jnp.asarray(SCORES), jnp.asarray(LABELS),
                                   jnp.asarray(WEIGHTS))),
        expected, places=5)

  def test_all_padding_gives_zero_not_nan(self):
    w = jnp.zeros((SCORES.shape[0],))
    for fn in (metrics.sigmoid_xent, metrics.softmax_xent,
               metrics.precision_at_1, metrics.mean_average_precision):
      self.assertEqual(float(fn(jnp.asarray(SCORES), jnp.asarray(LABELS), w)),
                       0.0)

  def test_padded_minus_inf_sorts_after_real_scores(self):
    # A real example scored -inf must still rank ahead of padding.
    scores = jnp.array([[-jnp.inf], [0.0], [5.0]])
    labels = jnp.array([[1.0], [0.0], [1.0]])
    weights = jnp.array([1.0, 1.0, 0.0])
    # Ranking of real examples: 1(-), 0(+) -> AP = 1/2.
    self.assertAlmostEqual(
        float(metrics.mean_average_precision(scores, labels, weights)), 0.5)


if __name__ == '__main__':
  absltest.main()
