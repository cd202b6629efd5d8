"""Label statistics and the chance level of the metrics.

The chance-level mAP is the mAP of a scorer that ignores the image, e.g. one
that outputs the label prior for every image. Its scores are tied within
each class, so the ranking of one class is arbitrary: with n positives among
N images and the ties in random order, the expected average precision is

  E[AP](n, N) = (n - 1) / (N - 1) + H_N * (N - n) / (N * (N - 1)),

where H_N = 1 + 1/2 + ... + 1/N. (Derivation: AP = (1/n) sum_k pos_k *
TP(k) / k; P(pos_k) = n / N and E[TP(k) | pos_k] = 1 + (k - 1)(n - 1)/(N - 1).)
It is close to the class prevalence n / N but above it for rare classes.
mAP is the mean over the classes with at least one positive (the convention
of vit22b_pax.metrics), so

  chance_map = mean over {c : n_c > 0} of E[AP](n_c, N).

The counts come from dataset_info.json (`expanded_label_counts` when labels
are expanded to their ancestors, else `label_counts`).

Leaf classes. With the hierarchy expanded, the roots are in most images
(the shapes dataset's most frequent root is in 76% of them), so
precision@1 over all classes is ~1 for any model that learns the prior,
and the roots' APs lift mAP. The leaf classes (those that are no class's
parent, e.g. "red circle") carry the fine-grained task: leaf_metrics()
computes mAP and precision@1 over them, and the chance functions take
`classes=leaf_classes(data_dir)` for their image-blind levels.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from vit22b_pax import metrics
from vit22b_pax.input import data_format
from vit22b_pax.input import hierarchy


def expected_random_ap(num_positives: int, num_examples: int) -> float:
  """Expected AP of a uniformly random ranking (closed form above)."""
  n, big_n = int(num_positives), int(num_examples)
  if not 0 < n <= big_n:
    raise ValueError(
        f'Need 0 < num_positives <= num_examples, got {n}, {big_n}.'
    )
  if big_n == 1:
    return 1.0
  harmonic = sum(1.0 / k for k in range(1, big_n + 1))
  return (n - 1) / (big_n - 1) + harmonic * (big_n - n) / (big_n * (big_n - 1))


def _log_comb(n: int, k: int) -> float:
  return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _chance_map_pooled(
    counts: Sequence[int], num_examples: int, pool_size: int
) -> float:
  """Chance mAP when AP is computed within random pools (e.g. eval batches).

  A class is only counted in a pool where it has a positive, so this is the
  ratio of expectations sum_c E[AP_c 1{k_c > 0}] / sum_c P(k_c > 0), with k_c
  hypergeometric; an approximation of the expected per-pool mAP.
  """
  big_n, m = num_examples, min(pool_size, num_examples)
  num, den = 0.0, 0.0
  for n in counts:
    if n <= 0:
      continue
    log_total = _log_comb(big_n, m)
    for k in range(max(1, m - (big_n - n)), min(n, m) + 1):
      p = math.exp(_log_comb(n, k) + _log_comb(big_n - n, m - k) - log_total)
      num += p * expected_random_ap(k, m)
      den += p
  return num / den if den else 0.0


def label_counts_for(
    info: dict[str, Any],
    split: str,
    expand_hierarchy: bool = True,
    classes: Sequence[int] | None = None,
) -> tuple[list[int], int]:
  """(per-class positive counts, number of examples) of a split's info.

  Args:
    info: Parsed dataset_info.json.
    split: The split.
    expand_hierarchy: Count labels expanded to their ancestors.
    classes: If set, the counts of these class ids only, in this order.
  """
  splits = info.get('splits', {})
  if split not in splits:
    raise ValueError(
        f'dataset info has no split {split!r} (splits: {sorted(splits)}).'
    )
  s = splits[split]
  key = 'expanded_label_counts' if expand_hierarchy else 'label_counts'
  counts = [int(c) for c in s[key]]
  if classes is not None:
    bad = [c for c in classes if not 0 <= c < len(counts)]
    if bad:
      raise ValueError(
          f'class ids {bad[:5]} out of range: dataset info {key!r} of split'
          f' {split!r} has {len(counts)} classes.'
      )
    counts = [counts[c] for c in classes]
  return counts, int(s['num_examples'])


def chance_map_from_info(
    info: dict[str, Any],
    split: str = 'eval',
    expand_hierarchy: bool = True,
    pool_size: int | None = None,
    classes: Sequence[int] | None = None,
) -> float:
  """Chance-level mAP of a split (see the module docstring).

  Args:
    info: Parsed dataset_info.json.
    split: The evaluated split.
    expand_hierarchy: Whether the evaluated labels include ancestors.
    pool_size: If set, AP is computed per pool of this many examples (e.g. a
      per-batch mAP averaged over batches) rather than over the whole split.
    classes: If set, the mAP over these class ids only (e.g. the leaves).

  Returns:
    The expected mAP of an image-blind scorer.
  """
  counts, num_examples = label_counts_for(
      info, split, expand_hierarchy, classes
  )
  if pool_size is not None and pool_size < num_examples:
    return _chance_map_pooled(counts, num_examples, pool_size)
  aps = [expected_random_ap(n, num_examples) for n in counts if n > 0]
  return sum(aps) / len(aps) if aps else 0.0


def chance_map(
    data_dir: str,
    split: str = 'eval',
    expand_hierarchy: bool = True,
    pool_size: int | None = None,
    classes: Sequence[int] | None = None,
) -> float:
  """Chance-level mAP of `split` of the dataset in `data_dir`."""
  info = data_format.read_info(data_dir)
  if info is None:
    raise ValueError(
        f'{data_format.info_file_path(data_dir)} does not exist; the chance'
        ' level needs the label counts it holds.'
    )
  return chance_map_from_info(
      info, split, expand_hierarchy, pool_size, classes
  )


def chance_precision_at_1(
    data_dir: str,
    split: str = 'eval',
    expand_hierarchy: bool = True,
    classes: Sequence[int] | None = None,
) -> float:
  """precision@1 of an image-blind scorer: the most frequent class's share.

  With `classes`, the scorer ranks only those classes (as leaf_metrics'
  precision@1 does): the share of the most frequent of them.
  """
  info = data_format.read_info(data_dir)
  if info is None:
    raise ValueError(f'{data_format.info_file_path(data_dir)} does not exist.')
  counts, num_examples = label_counts_for(
      info, split, expand_hierarchy, classes
  )
  return max(counts) / num_examples if num_examples else 0.0


def leaf_class_ids(classes: hierarchy.ClassHierarchy) -> list[int]:
  """Sorted ids of the classes that are no class's parent."""
  parents = {p for c in classes.classes for p in c.parents}
  return [c.id for c in classes.classes if c.id not in parents]


@functools.lru_cache(maxsize=8)
def leaf_classes(data_dir: str) -> tuple[int, ...]:
  """Leaf class ids of the dataset in `data_dir` (from its class file)."""
  classes = hierarchy.read_class_file(data_format.class_file_path(data_dir))
  return tuple(leaf_class_ids(classes))


def leaf_metrics(data_dir: str, logits, labels, weight) -> dict[str, float]:
  """mAP and precision@1 over the leaf classes of a whole eval set.

  Args:
    data_dir: The evaluated dataset (its class file names the leaves); ''
      (e.g. synthetic data, no hierarchy) returns {}.
    logits: [N, C] scores of every eval example.
    labels: [N, C] multi-hot labels.
    weight: [N] example weights (0 marks padding).

  Returns:
    {'map_leaf_dataset', 'precision_at_1_leaf_dataset'}, as
    metrics.np_class_subset_metrics computes them over the leaf columns.
  """
  if not data_dir:
    return {}
  leaves = np.asarray(leaf_classes(data_dir))
  subset = metrics.np_class_subset_metrics(logits, labels, weight, leaves)
  return {
      'map_leaf_dataset': subset['map'],
      'precision_at_1_leaf_dataset': subset['precision_at_1'],
  }


# Subdirectory of the job directory where MultiLabelImageInput writes one
# JSON file per input and host: {"input", "data_dir", "split", "host",
# "num_bad_records"}.
INPUT_STATS_DIR = 'input_stats'


def read_input_stats(job_log_dir: str) -> dict[str, int]:
  """Bad-record counts of a run: input name -> sum over hosts.

  Args:
    job_log_dir: The paxml job directory.

  Returns:
    {input name: records skipped because they failed to decode}; empty if
    the run wrote no input stats.
  """
  pattern = os.path.join(job_log_dir, INPUT_STATS_DIR, '*.json')
  totals: dict[str, int] = {}
  for path in sorted(tf.io.gfile.glob(pattern)):
    with tf.io.gfile.GFile(path, 'r') as f:
      record = json.load(f)
    name = record['input']
    totals[name] = totals.get(name, 0) + int(record['num_bad_records'])
  return totals
