"""Few-shot linear probes on frozen features, by closed-form ridge regression.

ViT-22B (Dehghani et al. 2023) is judged by how well its frozen image
embeddings (the MAP head's output, `pre_logits`) transfer: a linear
classifier fit on k examples per class of a new dataset (k = 1, 5, 10, 25,
3 random draws), scored on that dataset's test split. The classifier is
big_vision's `fewshot_lsr` evaluator, regularized least squares solved in
closed form:

  1. features are whitened per dimension with the mean and standard
     deviation of the training shots (plus STD_EPSILON), the same statistics
     applied to the test features;
  2. a constant feature BIAS_FEATURE is appended: its weight is the bias,
     and its large value leaves the bias almost unregularized;
  3. targets are one-hot in {-1, +1}, Y [N, C];
  4. W = (X^T X + l2 I)^-1 X^T Y, through ONE eigendecomposition of the
     smaller of X^T X [D+1, D+1] and X X^T [N, N]: with X^T X = Q E Q^T,
     W = Q (E + l2)^-1 Q^T X^T Y; with X X^T = Q E Q^T,
     W = X^T Q (E + l2)^-1 Q^T Y. Another l2 costs one rescale of E;
  5. the prediction is the argmax over classes of X_test W; the metric is
     accuracy on the test split, mean and spread over seeds.

L2 is DEFAULT_L2 = 2^10 (big_vision's). Optionally (`l2_sweep`) the L2 is
picked per shot count and seed from a small grid, on the shots only, by
closed-form leave-one-out (LOO): with the hat matrix H(l2) = X (X^T X +
l2 I)^-1 X^T, the prediction for shot i by the model fit without it is
(H Y - h_i Y_i) / (1 - h_i), h_i = H_ii (exact for ridge regression with a
fixed design matrix; the whitening statistics are those of all shots, not
recomputed per left-out shot). The grid value with the highest LOO
accuracy wins; ties go to the lower LOO squared error, then to the earlier
value. H comes from the same eigendecomposition: H = B diag(s) B^T with
B = XQ, s = 1 / (E + l2) (X^T X case) or B = Q, s = E / (E + l2) (X X^T
case). With one shot per class, leaving a shot out removes its class, so
LOO says nothing: 1-shot probes use `l2`. The test split is never used to
choose anything.

Shots: for each seed (0, 1, ...), each class's training indices are put in
a random order (numpy Generator seeded with the seed) and a k-shot probe
takes the first k of every class, so the 5 shots of a seed include its 1
shot (as big_vision draws them). A class with fewer than k training
examples is an error naming the dataset, the class and the counts.

Pure numpy in float64, on the host: independent of the training mesh.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_NUM_SEEDS = 3
DEFAULT_L2 = 2.0**10  # big_vision's fewshot_lsr default.
# A grid around the default, 2^0 .. 2^16 in steps of 4x.
DEFAULT_L2_SWEEP = tuple(2.0**k for k in range(0, 17, 2))
# Large, so the bias (its weight times this) is almost unregularized.
BIAS_FEATURE = 100.0
STD_EPSILON = 1e-5  # Keeps a dimension constant over the shots finite.


class FewShotError(ValueError):
  """Bad input to the few-shot evaluator (the message names the dataset)."""


def _named(dataset: str) -> str:
  return f'dataset {dataset!r}' if dataset else 'the dataset'


def design_matrix(
    features: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> np.ndarray:
  """Whitened features plus the bias column, float64 [N, D + 1]."""
  x = (np.asarray(features, np.float64) - mean) / std
  return np.concatenate([x, np.full((x.shape[0], 1), BIAS_FEATURE)], axis=1)


def signed_one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Targets in {-1, +1}, float64 [N, C]."""
  return 2.0 * np.eye(num_classes)[np.asarray(labels)] - 1.0


class RidgeProbe:
  """Ridge regression of {-1, +1} one-hot targets on whitened features.

  Fit once (one eigendecomposition); `weights`, `predict` and `loo_scores`
  then take any l2 > 0 for the cost of a rescale.
  """

  def __init__(self, features: np.ndarray, labels: np.ndarray,
               num_classes: int):
    """Fits the probe.

    Args:
      features: Training shots' features [N, D].
      labels: Their class ids [N], in [0, num_classes).
      num_classes: C.
    """
    features = np.asarray(features, np.float64)
    self.mean = features.mean(axis=0)
    self.std = features.std(axis=0) + STD_EPSILON
    x = design_matrix(features, self.mean, self.std)
    y = signed_one_hot(labels, num_classes)
    self.targets = y
    n, d = x.shape
    self.primal = n >= d
    if self.primal:
      eigs, q = np.linalg.eigh(x.T @ x)  # [D+1], [D+1, D+1]
      self._lhs = q
      self._rhs = q.T @ (x.T @ y)
      self._basis = x @ q  # B of the hat matrix, [N, D+1].
    else:
      eigs, q = np.linalg.eigh(x @ x.T)  # [N], [N, N]
      self._lhs = x.T @ q
      self._rhs = q.T @ y
      self._basis = q
    # X^T X and X X^T are positive semi-definite: clip rounding below 0.
    self.eigs = np.maximum(eigs, 0.0)

  def _check_l2(self, l2: float) -> None:
    if not l2 > 0:
      raise FewShotError(f'l2 must be positive, got {l2}.')

  def weights(self, l2: float) -> np.ndarray:
    """W [D + 1, C] (the last row multiplies the bias feature)."""
    self._check_l2(l2)
    return (self._lhs / (self.eigs + l2)) @ self._rhs

  def predict(self, features: np.ndarray, l2: float) -> np.ndarray:
    """Scores [M, C] of features [M, D], whitened with the shots' stats."""
    return design_matrix(features, self.mean, self.std) @ self.weights(l2)

  def loo_scores(self, l2: float) -> np.ndarray:
    """[N, C]: each shot's scores from the probe fit without it."""
    self._check_l2(l2)
    if self.primal:
      s = 1.0 / (self.eigs + l2)
    else:
      s = self.eigs / (self.eigs + l2)
    fits = (self._basis * s) @ self._rhs
    leverage = np.sum(self._basis**2 * s, axis=1)
    return (fits - leverage[:, None] * self.targets) / (
        1.0 - leverage[:, None])


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(scores, axis=1) == np.asarray(labels)))


def select_l2(
    probe: RidgeProbe, labels: np.ndarray, l2_grid: Sequence[float]
) -> tuple[float, list[float]]:
  """The grid value with the best leave-one-out accuracy on the shots.

  Args:
    probe: The probe fit on the shots.
    labels: The shots' class ids [N].
    l2_grid: Candidate l2 values.

  Returns:
    (chosen l2, LOO accuracy of every grid value). Ties in accuracy go to
    the lower LOO squared error, then to the earlier grid value.
  """
  if not l2_grid:
    raise FewShotError('The l2 sweep is empty.')
  keys, accs = [], []
  for i, l2 in enumerate(l2_grid):
    loo = probe.loo_scores(l2)
    acc = accuracy(loo, labels)
    accs.append(acc)
    keys.append((-acc, float(np.sum((loo - probe.targets)**2)), i))
  return float(l2_grid[min(keys)[2]]), accs


def class_indices(
    labels: np.ndarray, num_classes: int, min_count: int, dataset: str = '',
    class_names: Sequence[str] | None = None,
) -> list[np.ndarray]:
  """Indices of each class's examples; raises if one has < min_count."""
  labels = np.asarray(labels)
  out = [np.flatnonzero(labels == c) for c in range(num_classes)]
  short = [(c, len(idx)) for c, idx in enumerate(out) if len(idx) < min_count]
  if short:
    c, n = short[0]
    name = f' ({class_names[c]!r})' if class_names else ''
    raise FewShotError(
        f'{_named(dataset)}: class {c}{name} has {n} training examples, fewer'
        f' than the {min_count} shots requested'
        + (f' ({len(short) - 1} more classes are short too)'
           if len(short) > 1 else '') + '.'
    )
  return out


def sample_shots(
    per_class: Sequence[np.ndarray], shots: int, seed: int
) -> np.ndarray:
  """Indices of `shots` examples of every class, drawn with `seed`.

  Every class's indices are permuted by one Generator(seed) and the first
  `shots` taken, so for a given seed more shots extend fewer shots.

  Args:
    per_class: Training indices of each class (class_indices).
    shots: Examples per class.
    seed: The draw's seed.

  Returns:
    int [C * shots] indices into the training split, grouped by class.
  """
  rng = np.random.default_rng(seed)
  orders = [rng.permutation(idx) for idx in per_class]
  return np.concatenate([order[:shots] for order in orders])


@dataclasses.dataclass(frozen=True)
class ShotResult:
  """Test accuracy of the k-shot probes over seeds.

  Attributes:
    shots: k, training examples per class.
    accuracies: Test accuracy of each seed's probe.
    l2: The l2 each seed's probe used.
  """

  shots: int
  accuracies: tuple[float, ...]
  l2: tuple[float, ...]

  @property
  def mean(self) -> float:
    return float(np.mean(self.accuracies))

  @property
  def std(self) -> float:
    """Sample standard deviation over seeds (0 for a single seed)."""
    if len(self.accuracies) < 2:
      return 0.0
    return float(np.std(self.accuracies, ddof=1))


def _check_inputs(features, labels, num_classes, split, dataset):
  features = np.asarray(features)
  labels = np.asarray(labels)
  where = f'{_named(dataset)}, {split} split'
  if features.ndim != 2 or labels.shape != (features.shape[0],):
    raise FewShotError(
        f'{where}: expected features [N, D] and labels [N], got shapes'
        f' {features.shape} and {labels.shape}.'
    )
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise FewShotError(
        f'{where}: label ids must be in [0, {num_classes}), got'
        f' {labels.min()}..{labels.max()}.'
    )
  bad = ~np.all(np.isfinite(features), axis=1)
  if bad.any():
    raise FewShotError(
        f'{where}: {int(bad.sum())} of {len(bad)} feature vectors are not'
        f' finite (first: example {int(np.argmax(bad))}).'
    )
  return features.astype(np.float64), labels.astype(np.int64)


def evaluate(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    shots: Sequence[int] = DEFAULT_SHOTS,
    num_seeds: int = DEFAULT_NUM_SEEDS,
    l2: float = DEFAULT_L2,
    l2_sweep: Sequence[float] | None = None,
    dataset: str = '',
    class_names: Sequence[str] | None = None,
) -> dict[int, ShotResult]:
  """Few-shot accuracy on the test split for every shot count.

  Args:
    train_features: Features [N, D] of the training split (shot source).
    train_labels: Its class ids [N].
    test_features: Features [M, D] of the test split.
    test_labels: Its class ids [M].
    num_classes: C; every class needs max(shots) training examples.
    shots: Examples per class of each probe.
    num_seeds: Draws per shot count (seeds 0 .. num_seeds - 1).
    l2: The ridge strength (and the 1-shot one when sweeping).
    l2_sweep: If given, the l2 of each probe with >= 2 shots is picked from
      these values by leave-one-out on its shots (see module docstring).
    dataset: Name used in error messages.
    class_names: Optional class names for error messages.

  Returns:
    {shots: ShotResult} in the order of `shots`.
  """
  if not shots or min(shots) < 1:
    raise FewShotError(f'shots must be positive integers, got {shots}.')
  if num_seeds < 1:
    raise FewShotError(f'num_seeds must be >= 1, got {num_seeds}.')
  if not l2 > 0 or (l2_sweep is not None and
                    (not l2_sweep or min(l2_sweep) <= 0)):
    raise FewShotError(
        f'l2 values must be positive, got l2={l2}, l2_sweep={l2_sweep}.')
  train_x, train_y = _check_inputs(train_features, train_labels, num_classes,
                                   'train', dataset)
  test_x, test_y = _check_inputs(test_features, test_labels, num_classes,
                                 'test', dataset)
  if train_x.shape[1] != test_x.shape[1]:
    raise FewShotError(
        f'{_named(dataset)}: train features have {train_x.shape[1]}'
        f' dimensions, test features {test_x.shape[1]}.'
    )
  if not len(test_y):
    raise FewShotError(f'{_named(dataset)}: the test split is empty.')
  per_class = class_indices(train_y, num_classes, max(shots), dataset,
                            class_names)
  results = {}
  for k in shots:
    accs, l2s = [], []
    for seed in range(num_seeds):
      idx = sample_shots(per_class, k, seed)
      probe = RidgeProbe(train_x[idx], train_y[idx], num_classes)
      chosen = l2
      if l2_sweep is not None and k >= 2:
        chosen, _ = select_l2(probe, train_y[idx], l2_sweep)
      accs.append(accuracy(probe.predict(test_x, chosen), test_y))
      l2s.append(chosen)
    results[k] = ShotResult(k, tuple(accs), tuple(l2s))
  return results


def scalars(results: dict[int, ShotResult], dataset: str) -> dict[str, float]:
  """{'fewshot/<dataset>/<k>shot': mean accuracy} for summaries."""
  return {f'fewshot/{dataset}/{k}shot': r.mean for k, r in results.items()}


def to_json(results: dict[int, ShotResult]) -> dict[str, Any]:
  """{'<k>': {'mean', 'std', 'accuracies', 'l2'}} (JSON-serializable)."""
  return {
      str(k): {
          'mean': r.mean,
          'std': r.std,
          'accuracies': list(r.accuracies),
          'l2': list(r.l2),
      }
      for k, r in results.items()
  }


def format_table(results: dict[int, ShotResult], title: str = '') -> str:
  """A table: shots, mean +- std accuracy (%), per-seed values, l2."""
  lines = [title] if title else []
  lines.append(f'{"shots":>5}  {"accuracy (%)":>14}  {"per seed":<24}  l2')
  for k, r in results.items():
    per_seed = ' '.join(f'{100 * a:.1f}' for a in r.accuracies)
    l2s = sorted(set(r.l2))
    l2_text = ' '.join(_format_l2(v) for v in l2s)
    lines.append(f'{k:>5}  {100 * r.mean:>6.2f} ± {100 * r.std:<5.2f}'
                 f'  {per_seed:<24}  {l2_text}')
  return '\n'.join(lines)


def _format_l2(value: float) -> str:
  exponent = math.log2(value)
  if exponent == int(exponent):
    return f'2^{int(exponent)}'
  return f'{value:g}'
