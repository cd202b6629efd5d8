"""Multi-label classification metrics: sigmoid loss, precision@1 and mAP.

Conventions (big_vision's, used for JFT pre-training):

* Labels are multi-hot float arrays [N, C]; scores/logits are [N, C].
* Every example carries a weight [N]; weight 0 marks eval padding and such an
  example contributes nothing to any metric. Weights are treated as 0/1 masks
  for the ranking metric (mAP), and as real-valued weights elsewhere.
* Sigmoid cross-entropy is summed over the C classes of an example and then
  averaged over examples with their weights (big_vision's
  `sigmoid_xent(..., reduction=True)`), so its scale grows with C: a model
  that predicts every sigmoid at 0.5 scores C * log(2).
* Softmax cross-entropy (for single-label fine-tuning) uses the labels
  divided by their row sum as the target distribution, same averaging.
* precision@1: the fraction of (weighted) examples whose top-scored class is
  one of their labels.
* Average precision of one class: rank the real examples by score (highest
  first) and average, over that class's positives, the precision of the
  prefix that ends at the positive. mAP is the mean over the classes that have
  at least one positive among the real examples; classes without positives
  are excluded (their AP is undefined). Tied scores are ranked in input order,
  which makes ties order-dependent, as in most sort-based implementations.

np_class_subset_metrics restricts mAP and precision@1 to a subset of the
classes (e.g. the leaves of a class hierarchy, see vit22b_pax.input.stats).

Every metric has a jnp version that runs inside a jitted model step and a
numpy twin (prefixed `np_`) for host-side evaluation over a whole eval set,
e.g. on the logits/labels/weight the model returns per example.
"""

import jax
from jax import numpy as jnp
import numpy as np


def _ones_if_none(weights, n, xp):
  if weights is None:
    return xp.ones((n,), dtype=xp.float32)
  return weights


def _safe_divide(num, den, xp):
  """num / den, and 0 where den == 0 (e.g. a batch of padding only)."""
  return xp.where(den > 0, num / xp.where(den > 0, den, 1.0), 0.0)


# ------------------------------------------------------------------ jnp ----


def sigmoid_xent_per_example(logits, labels):
  """Sigmoid cross-entropy of each example, summed over classes.

  Uses log_sigmoid, which is stable for logits of any magnitude (the head
  starts at bias -10, where a naive log(1 - sigmoid) loses precision).

  Args:
    logits: [N, C] float array.
    labels: [N, C] multi-hot (or soft) targets in [0, 1].

  Returns:
    [N] float32 losses.
  """
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  per_class = -(
      labels * jax.nn.log_sigmoid(logits)
      + (1.0 - labels) * jax.nn.log_sigmoid(-logits)
  )
  return jnp.sum(per_class, axis=-1)


def sigmoid_xent(logits, labels, weights=None):
  """Weighted mean over examples of the per-example summed sigmoid xent.

  Args:
    logits: [N, C].
    labels: [N, C] multi-hot.
    weights: [N] example weights, or None for all ones.

  Returns:
    A float32 scalar; 0 if all weights are 0.
  """
  weights = _ones_if_none(weights, logits.shape[0], jnp).astype(jnp.float32)
  per_example = sigmoid_xent_per_example(logits, labels)
  return _safe_divide(
      jnp.sum(per_example * weights), jnp.sum(weights), jnp
  )


def softmax_xent(logits, labels, weights=None):
  """Weighted mean softmax cross-entropy against normalized labels.

  Each row of labels is divided by its sum (one-hot rows are unchanged), so a
  multi-hot row becomes a uniform target over its labels; a row without
  labels costs 0.

  Args:
    logits: [N, C].
    labels: [N, C] one-hot, multi-hot or soft targets.
    weights: [N] example weights, or None for all ones.

  Returns:
    A float32 scalar; 0 if all weights are 0.
  """
  weights = _ones_if_none(weights, logits.shape[0], jnp).astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  targets = labels / jnp.maximum(jnp.sum(labels, axis=-1, keepdims=True),
                                 1e-12)
  per_example = -jnp.sum(
      targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1
  )
  return _safe_divide(
      jnp.sum(per_example * weights), jnp.sum(weights), jnp
  )


def precision_at_1(scores, labels, weights=None):
  """Weighted fraction of examples whose top-scored class is a label.

  Args:
    scores: [N, C] logits or probabilities (only the argmax matters).
    labels: [N, C] multi-hot.
    weights: [N] example weights, or None for all ones.

  Returns:
    A float32 scalar in [0, 1]; 0 if all weights are 0.
  """
  weights = _ones_if_none(weights, scores.shape[0], jnp).astype(jnp.float32)
  top1 = jnp.argmax(scores, axis=-1)
  hit = jnp.take_along_axis(labels, top1[:, None], axis=-1)[:, 0] > 0
  return _safe_divide(
      jnp.sum(hit.astype(jnp.float32) * weights), jnp.sum(weights), jnp
  )


def average_precision_per_class(scores, labels, weights=None):
  """AP of every class over the examples with a non-zero weight.

  Args:
    scores: [N, C].
    labels: [N, C] multi-hot (> 0 means positive).
    weights: [N]; examples with weight 0 are dropped. None keeps all.

  Returns:
    (ap [C] float32, has_positive [C] bool). ap is 0 where has_positive is
    False.
  """
  n = scores.shape[0]
  valid = _ones_if_none(weights, n, jnp) > 0
  positive = (labels > 0) & valid[:, None]
  # Sort each column by descending score with dropped examples last: lexsort
  # uses the last key as primary, so `invalid` decides first, then -score.
  # Sorting on a key rather than writing -inf keeps a real -inf score ahead
  # of padding.
  invalid = jnp.broadcast_to(~valid[:, None], scores.shape)
  order = jnp.lexsort((-scores.astype(jnp.float32), invalid), axis=0)
  sorted_pos = jnp.take_along_axis(positive, order, axis=0).astype(jnp.float32)
  # Precision of the prefix ending at rank k (1-based): tp(k) / k. Dropped
  # examples sit after every real one, so they never enter a counted prefix.
  true_pos = jnp.cumsum(sorted_pos, axis=0)
  ranks = jnp.arange(1, n + 1, dtype=jnp.float32)[:, None]
  num_pos = jnp.sum(sorted_pos, axis=0)
  ap = _safe_divide(
      jnp.sum(sorted_pos * true_pos / ranks, axis=0), num_pos, jnp
  )
  return ap, num_pos > 0


def mean_average_precision(scores, labels, weights=None):
  """Mean AP over the classes with at least one positive real example.

  Args:
    scores: [N, C].
    labels: [N, C] multi-hot.
    weights: [N]; weight-0 examples are dropped. None keeps all.

  Returns:
    A float32 scalar; 0 if no class has a positive.
  """
  ap, has_pos = average_precision_per_class(scores, labels, weights)
  has_pos = has_pos.astype(jnp.float32)
  return _safe_divide(jnp.sum(ap * has_pos), jnp.sum(has_pos), jnp)


# ---------------------------------------------------------------- numpy ----


def np_sigmoid_xent(logits, labels, weights=None):
  """numpy twin of `sigmoid_xent` (same convention), in float64."""
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels, np.float64)
  weights = np.asarray(_ones_if_none(weights, logits.shape[0], np),
                       np.float64)
  # -log(sigmoid(z)) = logaddexp(0, -z), stable for any z.
  per_class = (labels * np.logaddexp(0.0, -logits)
               + (1.0 - labels) * np.logaddexp(0.0, logits))
  per_example = per_class.sum(axis=-1)
  return float(_safe_divide(np.sum(per_example * weights), np.sum(weights),
                            np))


def np_precision_at_1(scores, labels, weights=None):
  """numpy twin of `precision_at_1`."""
  scores = np.asarray(scores)
  labels = np.asarray(labels)
  weights = np.asarray(_ones_if_none(weights, scores.shape[0], np),
                       np.float64)
  top1 = np.argmax(scores, axis=-1)
  hit = labels[np.arange(scores.shape[0]), top1] > 0
  return float(_safe_divide(np.sum(hit * weights), np.sum(weights), np))


def np_mean_average_precision(scores, labels, weights=None):
  """numpy twin of `mean_average_precision`, for a whole eval set."""
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels)
  valid = np.asarray(_ones_if_none(weights, scores.shape[0], np)) > 0
  scores, positive = scores[valid], labels[valid] > 0
  num_pos = positive.sum(axis=0)
  keep = num_pos > 0
  if not keep.any():
    return 0.0
  scores, positive, num_pos = scores[:, keep], positive[:, keep], num_pos[keep]
  order = np.argsort(-scores, axis=0, kind='stable')
  sorted_pos = np.take_along_axis(positive, order, axis=0).astype(np.float64)
  ranks = np.arange(1, scores.shape[0] + 1, dtype=np.float64)[:, None]
  precision = np.cumsum(sorted_pos, axis=0) / ranks
  ap = (sorted_pos * precision).sum(axis=0) / num_pos
  return float(ap.mean())


def np_class_subset_metrics(scores, labels, weights, classes):
  """mAP and precision@1 over a subset of the classes (e.g. the leaves).

  Both metrics see only the subset's columns: a class's AP depends on its
  own column alone, so mAP is the mean AP over the subset's classes that
  have a positive; precision@1 takes the top-scored class of the subset and
  counts a hit when it is one of the example's labels (an example with no
  label in the subset is a miss).

  Args:
    scores: [N, C].
    labels: [N, C] multi-hot.
    weights: [N] example weights (0 drops an example), or None.
    classes: [K] class ids of the subset.

  Returns:
    {'map': float, 'precision_at_1': float}.
  """
  classes = np.asarray(classes, dtype=np.int64)
  scores = np.asarray(scores)[:, classes]
  labels = np.asarray(labels)[:, classes]
  return {
      'map': np_mean_average_precision(scores, labels, weights),
      'precision_at_1': np_precision_at_1(scores, labels, weights),
  }
