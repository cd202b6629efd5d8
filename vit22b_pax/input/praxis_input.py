"""The praxis input of a multi-label image dataset directory.

`MultiLabelImageInput` feeds the model batches (a NestedMap):

  image:  float32 [B, S, S, 3], values in [-1, 1]
  labels: float32 [B, C] multi-hot (ancestors included if expand_hierarchy)
  weight: float32 [B], 1.0 for real examples, 0.0 for eval padding

B is the per-host batch_size. Data comes from the registered seqio Task of
the directory (vit22b_pax.input.tasks).

Multi-host: each host reads its own part of the split, via seqio's
ShardInfo(infeed_host_index, num_infeed_hosts): whole shard files when there
are at least as many files as hosts, else every num_infeed_hosts-th record
(then all hosts share one seed, so they order the records alike; give a
split at least as many shards as hosts). Training repeats and shuffles
forever, seeded per host. Evaluation reads each record exactly once across
hosts; every host yields the same number of batches (from the shards'
record counts, no communication), filled with its records and then with
weight-0 padding; then get_next() raises StopIteration and reset() starts
the next pass. If a split holds more records than dataset_info.json says,
the pass fails instead of dropping any.

Records that fail to decode are skipped and counted (see
preprocessing.decode_records). The per-host count is `num_bad_records`; it
is logged and written to <stats_dir>/input_stats/<name>.host<k>.json
(stats_dir defaults to paxml's --job_log_dir) when it reaches 1, 2, 4, 8,
..., at the end of each eval pass and at exit, for the run summary.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import math
import os
from typing import Any
import weakref

from absl import flags
from absl import logging
import numpy as np
from praxis import base_input
from praxis import py_utils
import seqio
import tensorflow as tf

from vit22b_pax.input import data_format
from vit22b_pax.input import stats
from vit22b_pax.input import tasks

NestedMap = py_utils.NestedMap
_BATCH_KEYS = ('image', 'labels', 'weight')


def records_per_host(shard_counts: list[int], num_hosts: int) -> list[int]:
  """Records each host reads, mirroring seqio's sharding rule.

  Args:
    shard_counts: Records in each shard file, in sorted file order.
    num_hosts: Number of infeed hosts.

  Returns:
    Per-host record counts (they sum to sum(shard_counts)).
  """
  if len(shard_counts) >= num_hosts:
    # Whole files: host h reads files h, h + N, ...
    return [sum(shard_counts[h::num_hosts]) for h in range(num_hosts)]
  # Record level: host h reads records h, h + N, ... of the merged stream.
  total = sum(shard_counts)
  return [max(0, -(-(total - h) // num_hosts)) for h in range(num_hosts)]


def _write_stats_at_exit(ref: weakref.ref) -> None:
  inp = ref()
  if inp is not None:
    inp.write_stats()


def _host_seed(seed: int, host: int) -> int:
  """A well-mixed per-host seed (hosts must not share augmentation seeds)."""
  return int(np.random.SeedSequence([seed, host]).generate_state(1)[0] >> 1)


class MultiLabelImageInput(base_input.BaseInput):
  """Batches of a multi-label image dataset directory (see module docstring).

  The seed of shuffling and augmentation is BaseInput.input_random_seed
  (None means 0), so a run is reproducible for a given seed.

  Attributes:
    data_dir: Dataset directory (shards, classes.tsv, dataset_info.json).
    split: Split name, e.g. 'train' or 'eval'.
    image_size: Side length S of the output images.
    num_classes: C; must match the class file.
    expand_hierarchy: Expand every label to all its ancestors.
    crop_min_area: Smallest inception-crop area fraction (training).
    eval_crop_fraction: Central-crop fraction of the evaluation view.
    shuffle_buffer_size: Examples in the training shuffle buffer (decoded
      float32 images: 1000 at 224 px is ~600 MB).
    stats_dir: Where to write input_stats/<name>.host<k>.json; None uses
      paxml's --job_log_dir when it is set, '' disables.
    reset_for_eval: (BaseInput) eval runs one pass per eval; default True.
    eval_loop_num_batches: (BaseInput) -1: all batches of the pass.
  """

  data_dir: str = ''
  split: str = 'train'
  image_size: int = 224
  num_classes: int = 0
  expand_hierarchy: bool = True
  crop_min_area: float = 0.05
  eval_crop_fraction: float = 0.875
  shuffle_buffer_size: int = 1000
  stats_dir: str | None = None
  reset_for_eval: bool = True
  eval_loop_num_batches: int = -1
  _task_name: Any = dataclasses.field(init=False, repr=False)
  _ds: Any = dataclasses.field(init=False, repr=False)
  _iter: Any = dataclasses.field(init=False, repr=False)
  _num_bad: Any = dataclasses.field(init=False, repr=False)
  _next_report: Any = dataclasses.field(init=False, repr=False)
  _local_records: Any = dataclasses.field(init=False, repr=False)
  _num_batches: Any = dataclasses.field(init=False, repr=False)
  _real_emitted: Any = dataclasses.field(init=False, repr=False)
  _stats_path: Any = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    if not self.name:
      self.name = f'{self.split}' if self.split else 'input'
    super().__post_init__()
    self._check_fields()
    data_format.validate_data_dir(
        self.data_dir, self.num_classes, splits=(self.split,)
    )
    self._task_name = tasks.register_task(
        self.data_dir,
        self.image_size,
        self.num_classes,
        expand_hierarchy=self.expand_hierarchy,
        augment=self.is_training,
        crop_min_area=self.crop_min_area,
        eval_crop_fraction=self.eval_crop_fraction,
    )
    self._num_bad = 0
    self._next_report = 1
    self._real_emitted = 0
    self._local_records = None
    self._num_batches = None
    self._stats_path = self._resolve_stats_path()
    if self.is_training:
      self._ds = self._train_dataset()
    else:
      self._ds = self._eval_dataset()
    self.dataset = self._ds.map(
        lambda b: NestedMap({k: b[k] for k in _BATCH_KEYS})
    )
    self._iter = self._ds.as_numpy_iterator()
    self.write_stats()
    if self._stats_path:
      # The last count of a run that ends between two reports.
      atexit.register(_write_stats_at_exit, weakref.ref(self))

  def _check_fields(self) -> None:
    if self.image_size <= 0:
      raise ValueError(f'image_size must be positive, got {self.image_size}.')
    if self.num_classes <= 0:
      raise ValueError(
          f'num_classes must be positive, got {self.num_classes}.'
      )
    if not 0.0 < self.crop_min_area <= 1.0:
      raise ValueError(
          f'crop_min_area must be in (0, 1], got {self.crop_min_area}.'
      )
    if not 0.0 < self.eval_crop_fraction <= 1.0:
      raise ValueError(
          'eval_crop_fraction must be in (0, 1], got'
          f' {self.eval_crop_fraction}.'
      )
    if not 0 <= self.infeed_host_index < self.num_infeed_hosts:
      raise ValueError(
          f'infeed_host_index {self.infeed_host_index} is not in [0,'
          f' num_infeed_hosts={self.num_infeed_hosts}).'
      )

  @property
  def task_name(self) -> str:
    """Name of the seqio Task this input reads."""
    return self._task_name

  @property
  def seed(self) -> int:
    return 0 if self.input_random_seed is None else int(self.input_random_seed)

  @property
  def num_bad_records(self) -> int:
    """Records this host skipped so far because they failed to decode."""
    return self._num_bad

  @property
  def num_batches(self) -> int | None:
    """Batches per eval pass (the same on every host); None for training."""
    return self._num_batches

  @property
  def local_num_records(self) -> int | None:
    """Eval records this host reads per pass (before dropping bad ones)."""
    return self._local_records

  def _shard_info(self) -> seqio.ShardInfo | None:
    if self.num_infeed_hosts == 1:
      return None
    return seqio.ShardInfo(
        index=self.infeed_host_index, num_shards=self.num_infeed_hosts
    )

  def _dataset_seed(self) -> int:
    """Seed of file order, shuffling and augmentation on this host."""
    num_files = len(data_format.list_shards(self.data_dir, self.split))
    if num_files < self.num_infeed_hosts:
      # Record-level sharding: every host must read the files in the same
      # (seeded) order, or the hosts' every-N-th records would overlap.
      return self.seed
    return _host_seed(self.seed, self.infeed_host_index)

  def _get_task_dataset(self, training: bool) -> tf.data.Dataset:
    task = seqio.get_mixture_or_task(self._task_name)
    return task.get_dataset(
        sequence_length=None,
        split=self.split,
        shuffle=training,
        shuffle_buffer_size=self.shuffle_buffer_size if training else None,
        seed=self._dataset_seed(),
        shard_info=self._shard_info(),
        num_epochs=None if training else 1,
        trim_output_features=False,
        try_in_mem_cache=False,
    )

  @staticmethod
  def _select(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {
        'image': ex['image'],
        'labels': ex['labels'],
        'weight': tf.constant(1.0, tf.float32),
        'num_bad_records': ex['num_bad_records'],
    }

  def _train_dataset(self) -> tf.data.Dataset:
    ds = self._get_task_dataset(training=True).map(self._select)
    ds = ds.batch(self.batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)

  def _eval_dataset(self) -> tf.data.Dataset:
    counts = data_format.shard_record_counts(self.data_dir, self.split)
    per_host = records_per_host(counts, self.num_infeed_hosts)
    self._local_records = per_host[self.infeed_host_index]
    self._num_batches = max(1, math.ceil(max(per_host) / self.batch_size))
    logging.info(
        'Input %s: %d %s records in %d shards; host %d of %d reads %d, in %d'
        ' batches of %d (the rest padding with weight 0).',
        self.name, sum(counts), self.split, len(counts),
        self.infeed_host_index, self.num_infeed_hosts, self._local_records,
        self._num_batches, self.batch_size,
    )
    ds = self._get_task_dataset(training=False).map(self._select)
    s, c = self.image_size, self.num_classes
    pad = tf.data.Dataset.from_tensors({
        'image': tf.zeros([s, s, 3], tf.float32),
        'labels': tf.zeros([c], tf.float32),
        'weight': tf.constant(0.0, tf.float32),
        'num_bad_records': tf.constant(0, tf.int64),
    }).repeat()
    slots = self._num_batches * self.batch_size
    ds = ds.concatenate(pad).take(slots + 1).enumerate()

    def _check_fits(index, ex):
      # A real record in slot `slots` means the shard counts were too low
      # (a stale dataset_info.json): fail rather than drop eval data.
      fits = (index < slots) | (ex['weight'] == 0.0)
      check = tf.debugging.Assert(fits, [
          f'{self.split} of {self.data_dir} holds more records than the'
          f' shard counts ({data_format.INFO_FILE}) say; rewrite or delete'
          ' that file.'])
      with tf.control_dependencies([check]):
        return index < slots

    ds = ds.filter(_check_fits).map(lambda index, ex: ex)
    ds = ds.batch(self.batch_size, drop_remainder=True)
    if not self.reset_for_eval:
      # get_next() must then never raise: loop over the padded pass.
      ds = ds.repeat()
    return ds.prefetch(tf.data.AUTOTUNE)

  def _resolve_stats_path(self) -> str | None:
    stats_dir = self.stats_dir
    if stats_dir is None:
      try:
        stats_dir = flags.FLAGS['job_log_dir'].value
      except (KeyError, flags.UnparsedFlagAccessError):
        stats_dir = None
    if not stats_dir:
      return None
    return os.path.join(
        stats_dir,
        stats.INPUT_STATS_DIR,
        f'{self.name}.host{self.infeed_host_index}.json',
    )

  def write_stats(self) -> None:
    """Writes num_bad_records to the stats file (if there is one)."""
    if not self._stats_path:
      return
    record = {
        'input': self.name,
        'data_dir': self.data_dir,
        'split': self.split,
        'host': self.infeed_host_index,
        'num_bad_records': self._num_bad,
    }
    try:
      tf.io.gfile.makedirs(os.path.dirname(self._stats_path))
      with tf.io.gfile.GFile(self._stats_path, 'w') as f:
        json.dump(record, f)
    except (tf.errors.OpError, OSError) as e:
      logging.warning('Could not write %s: %s', self._stats_path, e)

  def _update_bad_count(self, count: int, final: bool = False) -> None:
    """Records the running count; reports at 1, 2, 4, 8, ... and at the end
    of an eval pass, so many bad records do not flood the log."""
    if count > self._num_bad:
      self._num_bad = count
      if count >= self._next_report or final:
        self._next_report = 2 * count
        logging.warning(
            'Input %s (split %r of %s): skipped %d record(s) so far that'
            ' failed to decode (malformed tf.Example, undecodable image or'
            ' label id outside [0, %d)).',
            self.name, self.split, self.data_dir, count, self.num_classes,
        )
        self.write_stats()

  def get_next(self) -> NestedMap:
    try:
      batch = next(self._iter)
    except StopIteration:
      if not self.is_training and self._local_records is not None:
        # Exact at the end of a pass: whatever was not emitted was bad.
        self._update_bad_count(
            self._local_records - self._real_emitted, final=True
        )
      raise
    self._update_bad_count(int(batch['num_bad_records'].max()))
    if not self.is_training:
      self._real_emitted += int(np.sum(batch['weight'] > 0))
    return NestedMap({k: batch[k] for k in _BATCH_KEYS})

  def reset(self) -> None:
    super().reset()
    self._iter = self._ds.as_numpy_iterator()
    self._real_emitted = 0
