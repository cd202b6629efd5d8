"""Tests of the closed-form few-shot evaluator (vit22b_pax.fewshot)."""

import math

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from vit22b_pax import fewshot

_L2S = (1e-2, 1.0, 1024.0, 1e6)


def _reference_design(train, other):
  """Independent whitening + bias column: the spec, written out."""
  mean = train.mean(axis=0)
  std = np.sqrt(((train - mean)**2).mean(axis=0)) + fewshot.STD_EPSILON
  def design(x):
    z = (x - mean) / std
    return np.hstack([z, fewshot.BIAS_FEATURE * np.ones((len(x), 1))])
  return design(train), design(other)


def _reference_weights(x, labels, num_classes, l2):
  """Ridge normal equations (X^T X + l2 I) W = X^T Y, solved directly."""
  y = -np.ones((len(labels), num_classes))
  y[np.arange(len(labels)), labels] = 1.0
  return np.linalg.solve(x.T @ x + l2 * np.eye(x.shape[1]), x.T @ y), y


def _brute_force_loo(x, labels, num_classes, l2):
  """Scores of every row from a ridge fit on all other rows (same X)."""
  out = []
  for i in range(len(x)):
    keep = np.arange(len(x)) != i
    w, _ = _reference_weights(x[keep], labels[keep], num_classes, l2)
    out.append(x[i] @ w)
  return np.array(out)


def _toy(rng, num_classes, per_class, dim, spread=0.0, noise=1.0):
  """Features: class centres (spread apart) plus Gaussian noise."""
  centres = spread * rng.normal(size=(num_classes, dim))
  labels = np.repeat(np.arange(num_classes), per_class)
  rng.shuffle(labels)
  features = centres[labels] + noise * rng.normal(size=(len(labels), dim))
  return features, labels


class RidgeProbeTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('xtx_more_examples_than_dims', 60, 8, True),
      ('xxt_more_dims_than_examples', 12, 40, False),
  )
  def test_equals_direct_solve_of_the_normal_equations(self, n, d, primal):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, d)) * rng.uniform(0.1, 5, d) + 3.0
    labels = rng.integers(0, 4, n)
    test = rng.normal(size=(7, d)) * 2.0
    probe = fewshot.RidgeProbe(features, labels, 4)
    self.assertEqual(probe.primal, primal)  # Both eigh branches run.
    x, x_test = _reference_design(features, test)
    for l2 in _L2S:
      w, _ = _reference_weights(x, labels, 4, l2)
      np.testing.assert_allclose(probe.weights(l2), w, rtol=1e-7,
                                 atol=1e-10, err_msg=f'l2={l2}')
      np.testing.assert_allclose(probe.predict(test, l2), x_test @ w,
                                 rtol=1e-7, atol=1e-9, err_msg=f'l2={l2}')

  @parameterized.named_parameters(('xtx', 30, 5), ('xxt', 9, 20))
  def test_leave_one_out_equals_refitting_without_each_shot(self, n, d):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(n, d))
    labels = rng.integers(0, 3, n)
    probe = fewshot.RidgeProbe(features, labels, 3)
    x, _ = _reference_design(features, features[:1])
    for l2 in (0.1, 16.0, 1024.0):
      np.testing.assert_allclose(
          probe.loo_scores(l2), _brute_force_loo(x, labels, 3, l2),
          rtol=1e-6, atol=1e-9, err_msg=f'l2={l2}')

  def test_rejects_non_positive_l2(self):
    probe = fewshot.RidgeProbe(np.eye(3), np.arange(3), 3)
    with self.assertRaisesRegex(fewshot.FewShotError, 'l2 must be positive'):
      probe.weights(0.0)


class EvaluateTest(parameterized.TestCase):

  def test_separable_features_reach_100_percent(self):
    rng = np.random.default_rng(2)
    centres = 10.0 * rng.normal(size=(6, 16))
    train_y = np.repeat(np.arange(6), 30)
    test_y = np.repeat(np.arange(6), 20)
    train_x = centres[train_y] + 0.1 * rng.normal(size=(len(train_y), 16))
    test_x = centres[test_y] + 0.1 * rng.normal(size=(len(test_y), 16))
    results = fewshot.evaluate(train_x, train_y, test_x, test_y, 6,
                               shots=(1, 5, 25), num_seeds=3)
    self.assertEqual(list(results), [1, 5, 25])
    for k, r in results.items():
      self.assertEqual(r.accuracies, (1.0, 1.0, 1.0), k)
      self.assertEqual(r.l2, (fewshot.DEFAULT_L2,) * 3)

  def test_random_features_score_chance(self):
    rng = np.random.default_rng(3)
    num_classes, num_test = 10, 3000
    train_x, train_y = _toy(rng, num_classes, 30, 32)
    test_x, test_y = _toy(rng, num_classes, num_test // num_classes, 32)
    results = fewshot.evaluate(train_x, train_y, test_x, test_y, num_classes,
                               shots=(1, 5, 25), num_seeds=3)
    p = 1.0 / num_classes
    sd = math.sqrt(p * (1 - p) / num_test)  # Binomial sd of one accuracy.
    for k, r in results.items():
      for acc in r.accuracies:
        self.assertLess(abs(acc - p), 4 * sd, (k, r.accuracies))
      # Three seeds' mean: sd / sqrt(3) at most (draws overlap in train).
      self.assertLess(abs(r.mean - p), 4 * sd, k)

  def test_shots_are_per_class_seeded_nested_and_distinct_across_seeds(self):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 5, 200)
    per_class = fewshot.class_indices(labels, 5, 10)
    for c, idx in enumerate(per_class):
      np.testing.assert_array_equal(idx, np.flatnonzero(labels == c))
    draws = {}
    for seed in range(3):
      for k in (1, 5, 10):
        idx = fewshot.sample_shots(per_class, k, seed)
        self.assertLen(idx, 5 * k)
        self.assertLen(set(idx.tolist()), 5 * k)
        np.testing.assert_array_equal(np.bincount(labels[idx]), [k] * 5)
        np.testing.assert_array_equal(
            idx, fewshot.sample_shots(per_class, k, seed))  # Deterministic.
        draws[seed, k] = set(idx.tolist())
      self.assertLessEqual(draws[seed, 1], draws[seed, 5])
      self.assertLessEqual(draws[seed, 5], draws[seed, 10])
    for k in (1, 5, 10):
      self.assertNotEqual(draws[0, k], draws[1, k])
      self.assertNotEqual(draws[1, k], draws[2, k])

  def test_probes_are_fit_on_train_shots_only(self):
    rng = np.random.default_rng(5)
    # Train features are positive and test features negative, so every
    # row a probe is fit on says which split and which example it came from.
    train_x = rng.uniform(1, 2, (60, 4))
    train_y = np.repeat(np.arange(3), 20)
    test_x = -rng.uniform(1, 2, (30, 4))
    test_y = np.repeat(np.arange(3), 10)
    fitted = []
    original = fewshot.RidgeProbe.__init__

    def spy(probe, features, labels, num_classes):
      fitted.append((np.array(features), np.array(labels)))
      original(probe, features, labels, num_classes)

    with absltest.mock.patch.object(fewshot.RidgeProbe, '__init__', spy):
      fewshot.evaluate(train_x, train_y, test_x, test_y, 3, shots=(2, 7),
                       num_seeds=2, l2_sweep=(1.0, 100.0))
    self.assertLen(fitted, 4)  # (2 shot counts) x (2 seeds), one fit each.
    rows = {tuple(r): i for i, r in enumerate(train_x)}
    for features, labels in fitted:
      self.assertTrue(np.all(features > 0))  # No test row.
      index = [rows[tuple(r)] for r in features]
      np.testing.assert_array_equal(labels, train_y[index])

  def test_l2_sweep_picks_by_leave_one_out_on_the_shots(self):
    rng = np.random.default_rng(6)
    # Weak signal in many dimensions: the draws disagree on the best l2.
    train_x, train_y = _toy(rng, 4, 25, 40, spread=0.5)
    test_x, test_y = _toy(rng, 4, 50, 40, spread=0.5)
    grid = (0.5, 8.0, 128.0, 2048.0, 32768.0)
    results = fewshot.evaluate(train_x, train_y, test_x, test_y, 4,
                               shots=(1, 3, 10), num_seeds=3, l2=1024.0,
                               l2_sweep=grid)
    per_class = fewshot.class_indices(train_y, 4, 10)
    self.assertEqual(results[1].l2, (1024.0,) * 3)  # LOO is blind at 1 shot.
    chosen = set()
    for k in (3, 10):
      for seed in range(3):
        idx = fewshot.sample_shots(per_class, k, seed)
        x, _ = _reference_design(train_x[idx], train_x[:1])
        keys = []
        for i, l2 in enumerate(grid):
          loo = _brute_force_loo(x, train_y[idx], 4, l2)
          _, y = _reference_weights(x, train_y[idx], 4, l2)
          acc = np.mean(np.argmax(loo, 1) == train_y[idx])
          keys.append((-acc, np.sum((loo - y)**2), i))
        want = grid[min(keys)[2]]
        self.assertEqual(results[k].l2[seed], want, (k, seed))
        chosen.add(want)
    self.assertGreater(len(chosen), 1)  # The sweep is not a constant.

  def test_the_sweep_never_reads_the_test_split(self):
    rng = np.random.default_rng(7)
    train_x, train_y = _toy(rng, 5, 20, 10, spread=1.0)
    test_x, test_y = _toy(rng, 5, 40, 10, spread=1.0)
    grid = (1.0, 32.0, 1024.0, 32768.0)
    args = dict(num_classes=5, shots=(2, 8), num_seeds=3, l2_sweep=grid)
    clean = fewshot.evaluate(train_x, train_y, test_x, test_y, **args)
    # Poisoned test data: labels that punish the chosen l2s, features
    # replaced: a selection that looked at the test split would change.
    poisoned = fewshot.evaluate(train_x, train_y, 1e3 * test_x[::-1],
                                (test_y + 1) % 5, **args)
    for k in clean:
      self.assertEqual(clean[k].l2, poisoned[k].l2)
    # Each probe scores the test split exactly once, with its chosen l2.
    calls = []
    original = fewshot.RidgeProbe.predict

    def spy(probe, features, l2):
      calls.append(l2)
      return original(probe, features, l2)

    with absltest.mock.patch.object(fewshot.RidgeProbe, 'predict', spy):
      fewshot.evaluate(train_x, train_y, test_x, test_y, **args)
    self.assertEqual(calls, list(clean[2].l2) + list(clean[8].l2))

  def test_short_class_names_dataset_class_and_counts(self):
    labels = np.array([0] * 6 + [1] * 6 + [2] * 3)
    features = np.random.default_rng(8).normal(size=(15, 4))
    with self.assertRaisesRegex(
        fewshot.FewShotError,
        r"dataset 'toy': class 2 \('triangle'\) has 3 training examples,"
        r' fewer than the 5 shots requested\.'):
      fewshot.evaluate(features, labels, features, labels, 3, shots=(1, 5),
                       dataset='toy', class_names=['a', 'b', 'triangle'])
    # A class absent from the train split entirely.
    with self.assertRaisesRegex(fewshot.FewShotError,
                                r'class 3 has 0 training examples'):
      fewshot.evaluate(features, labels, features, labels, 4, shots=(1,))

  @parameterized.named_parameters(
      ('nan_train', 'train', r"dataset 'toy', train split: 1 of 12 feature"
       r' vectors are not finite \(first: example 4\)'),
      ('inf_test', 'test', r"dataset 'toy', test split: 1 of 12 feature"),
  )
  def test_non_finite_features_are_an_error(self, split, message):
    features = np.random.default_rng(9).normal(size=(12, 3))
    labels = np.repeat(np.arange(3), 4)
    bad = features.copy()
    bad[4, 1] = np.nan if split == 'train' else np.inf
    train, test = (bad, features) if split == 'train' else (features, bad)
    with self.assertRaisesRegex(fewshot.FewShotError, message):
      fewshot.evaluate(train, labels, test, labels, 3, shots=(1,),
                       dataset='toy')

  def test_bad_labels_and_arguments(self):
    x = np.zeros((4, 2))
    y = np.array([0, 1, 2, 3])
    with self.assertRaisesRegex(fewshot.FewShotError,
                                r'label ids must be in \[0, 3\), got 0\.\.3'):
      fewshot.evaluate(x, y, x, y, 3, shots=(1,))
    with self.assertRaisesRegex(fewshot.FewShotError, 'shots must be'):
      fewshot.evaluate(x, y, x, y, 4, shots=(0,))
    with self.assertRaisesRegex(fewshot.FewShotError, 'l2 values must be'):
      fewshot.evaluate(x, y, x, y, 4, shots=(1,), l2_sweep=(1.0, -1.0))

  def test_result_summary_json_and_table(self):
    r = fewshot.ShotResult(5, (0.5, 0.7, 0.6), (16.0, 1024.0, 1024.0))
    self.assertAlmostEqual(r.mean, 0.6)
    self.assertAlmostEqual(r.std, 0.1)  # Sample sd of 0.5, 0.6, 0.7.
    self.assertEqual(fewshot.ShotResult(1, (0.3,), (1.0,)).std, 0.0)
    results = {5: r}
    self.assertEqual(fewshot.scalars(results, 'shapes_fewshot'),
                     {'fewshot/shapes_fewshot/5shot': r.mean})
    self.assertEqual(fewshot.to_json(results)['5']['accuracies'],
                     [0.5, 0.7, 0.6])
    table = fewshot.format_table(results, 'title')
    self.assertEqual(table.splitlines()[0], 'title')
    self.assertIn('60.00 ± 10.00', table)
    self.assertIn('2^4 2^10', table)


if __name__ == '__main__':
  absltest.main()
