"""The praxis input of a multi-label image dataset directory.

`MultiLabelImageInput` feeds the model batches (a NestedMap):

  image:  float32 [B, S, S, 3], values in [-1, 1]
  labels: float32 [B, C] multi-hot (ancestors included if expand_hierarchy)
  weight: float32 [B], 1.0 for real examples, 0.0 for eval padding and for
          training records that failed to decode

B is the per-host batch_size. Examples are decoded and preprocessed by the
functions of the directory's seqio Task (vit22b_pax.input.tasks).

Training is deterministic, resumable and host-sliced (resumable.py): the
global batches depend only on the seed and the number of input slices K
(`num_input_slices`, default one per host), not on the number of hosts
or on restarts.

  * Slices. Slice k of K reads shard files k, k + K, ... when there are at
    least K files, else every K-th record (k, k + K, ...) of all files:
    the slices partition the split. Slice k feeds rows [k * B / K,
    (k + 1) * B / K) of every global batch, so host h of H reads slices
    [h * K / H, (h + 1) * K / H), a disjoint and complete part of the shards.
  * Order. Each slice repeats its records epoch after epoch; epoch e reads
    the slice's files in a seeded order (shared by the slices when they
    split records) and shuffles the raw, undecoded records in blocks of
    `shuffle_buffer_size`, each block by a permutation seeded with (slice,
    epoch, block). Augmentation (inception crop, flip) is seeded with
    (slice, position in the slice), not with a running random stream.
  * Resume. The slice position at step s is s * B / K, so a run restored
    at step s opens each slice there: whole files are skipped by their
    record counts (dataset_info.json), then at most one file's and one
    block's raw records are read and dropped; nothing is decoded twice.
  * Bad records. A record that fails to decode (see
    preprocessing.parse_and_decode) keeps its slot as a weight-0 example
    (zero image, no labels), which the loss and metrics ignore; so the
    position of every later example does not depend on which records are
    bad. This was a skip before: a skip shifts every later example by one,
    and the shift cannot be recomputed on restart without decoding
    everything before the restored position. The dataset drops bad records
    (tf.data's ignore_errors) and get_next() puts weight-0 rows in their
    slots, so no per-example stage sits between the decode-and-augment map
    and the batch.

The shuffle is a block shuffle of raw records after a per-epoch file
shuffle (the price of exact positioning without reading the past): write
shards with examples in random order (the converters and the shapes
generator do), or the examples of a block come from one or two files.

Evaluation reads each record exactly once across hosts (seqio's
ShardInfo(infeed_host_index, num_infeed_hosts): whole files when there are
at least as many as hosts, else every num_infeed_hosts-th record); every
host yields the same number of batches (from the shards' record counts, no
communication), filled with its records and then with weight-0 padding;
then get_next() raises StopIteration and reset() starts the next pass. If
a split holds more records than dataset_info.json says, the pass fails
instead of dropping any.

The per-host count of records that failed to decode is `num_bad_records`
(in training, the weight-0 rows emitted since the start or reset()); it
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
from typing import Any, Callable
import weakref

from absl import logging
import numpy as np
from praxis import py_utils
import seqio
import tensorflow as tf
# For _map_single_threaded: see there.
from tensorflow.python.data.ops import dataset_ops  # pylint: disable=g-direct-tensorflow-import

from vit22b_pax.input import data_format
from vit22b_pax.input import preprocessing
from vit22b_pax.input import resumable
from vit22b_pax.input import stats
from vit22b_pax.input import tasks

NestedMap = py_utils.NestedMap
_BATCH_KEYS = ('image', 'labels', 'weight')
# The training map returns its examples in order (they are positioned by
# index), so a call that finishes early waits for the ones before it.
# tf.data.AUTOTUNE runs at most one call per core, and then cores sit idle
# in those waits; 4 calls in flight per core decoded 24% more images/s on
# 2 cores, with 16% less CPU per image (BENCHMARKS.md, "The input").
PARALLEL_CALLS_PER_CORE = 4


def _model_batch(batch: dict[str, tf.Tensor]) -> NestedMap:
  """The model's keys of a dataset batch.

  Training batches carry no weight (get_next sets it); the spec is 1.0.
  """
  batch = dict(batch)
  if 'weight' not in batch:
    batch['weight'] = tf.ones_like(batch['index'], tf.float32)
  return NestedMap({k: batch[k] for k in _BATCH_KEYS})


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


def _mix(*entropy: int | str) -> int:
  """A well-mixed non-negative int63 seed from ints and strings."""
  words = [
      int.from_bytes(e.encode(), 'little') if isinstance(e, str) else int(e)
      for e in entropy
  ]
  return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0]
             >> np.uint64(1))


@dataclasses.dataclass(frozen=True)
class InputSlice:
  """The records of one training input slice (see the module docstring).

  Attributes:
    index: k, in [0, K).
    files: The slice's shard paths (all of them when slices split records).
    counts: Records in each of `files`.
    stride: K when slices split records, else 1: the slice reads every
      stride-th record of its files' concatenation, from the `phase`-th.
    phase: k when slices split records, else 0.
    num_records: Records per epoch of this slice.
    file_seed: Seed of the per-epoch file order.
  """

  index: int
  files: tuple[str, ...]
  counts: tuple[int, ...]
  stride: int
  phase: int
  num_records: int
  file_seed: int


def input_slices(
    files: list[str], counts: list[int], num_slices: int, seed: int
) -> list[InputSlice]:
  """The K slices of a split's shards (files sorted, counts per file)."""
  per_slice = records_per_host(counts, num_slices)
  if len(files) >= num_slices:
    return [
        InputSlice(k, tuple(files[k::num_slices]),
                   tuple(counts[k::num_slices]), 1, 0, per_slice[k],
                   _mix(seed, 'files', k))
        for k in range(num_slices)
    ]
  # Record level: every slice must read the files in the same order.
  return [
      InputSlice(k, tuple(files), tuple(counts), num_slices, k, per_slice[k],
                 _mix(seed, 'files'))
      for k in range(num_slices)
  ]


def _full_range_int64(shape, seed) -> tf.Tensor:
  return tf.random.stateless_uniform(
      shape, seed=seed, minval=None, maxval=None, dtype=tf.int64
  )


def _map_single_threaded(
    ds: tf.data.Dataset, fn: Callable[..., Any], num_parallel_calls: int
) -> tf.data.Dataset:
  """ds.map(fn, num_parallel_calls), each call on one thread.

  Dataset.map schedules every op of fn on the inter-op thread pool; for the
  ~60 small ops per example of the training map that scheduling cost ~15%
  of the input's throughput. tf.data's own option for this
  (use_inter_op_parallelism=False, the single-threaded executor) is not
  exposed by Dataset.map in TF 2.9; fn must then not use v1 control flow
  (tf.cond / Assert lower to Switch/Merge, which that executor rejects).
  """
  return dataset_ops.ParallelMapDataset(
      ds, fn, num_parallel_calls=num_parallel_calls, deterministic=True,
      use_inter_op_parallelism=False, preserve_cardinality=True,
  )


class MultiLabelImageInput(resumable.ResumableInput):
  """Batches of a multi-label image dataset directory (see module docstring).

  The seed of shuffling and augmentation is BaseInput.input_random_seed
  (None means 0): the training batches are a function of the seed, the
  global batch size and num_input_slices.

  Attributes:
    data_dir: Dataset directory (shards, classes.tsv, dataset_info.json).
    split: Split name, e.g. 'train' or 'eval'.
    image_size: Side length S of the output images.
    num_classes: C; must match the class file.
    expand_hierarchy: Expand every label to all its ancestors.
    crop_min_area: Smallest inception-crop area fraction (training).
    eval_crop_fraction: Central-crop fraction of the evaluation view.
    shuffle_buffer_size: Raw (undecoded) records per training shuffle block
      (each slice holds one block: ~100 MB at 1000 ~100 KB JPEGs).
    num_input_slices: K, the number of training input slices; None: one
      per host. A multiple of the number of hosts dividing the global batch;
      the same K gives the same batches on any host count dividing it.
    num_parallel_calls: Training examples decoded and augmented at once;
      None: PARALLEL_CALLS_PER_CORE per schedulable CPU core;
      tf.data.AUTOTUNE (-1) lets tf.data choose (at most one per core).
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
  num_input_slices: int | None = None
  num_parallel_calls: int | None = None
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
  _next_batch: Any = dataclasses.field(init=False, repr=False)
  _carry: Any = dataclasses.field(init=False, repr=False)
  _train_bad: Any = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    if not self.name:
      self.name = f'{self.split}' if self.split else 'input'
    super().__post_init__()
    self._check_fields()
    data_format.validate_data_dir(
        self.data_dir, self.num_classes, splits=(self.split,)
    )
    self._task_name = None
    self._num_bad = 0
    self._next_report = 1
    self._real_emitted = 0
    self._local_records = None
    self._num_batches = None
    self._next_batch = self.start_batch
    self._carry = None  # Survivor rows of later batches (training).
    self._train_bad = 0  # Weight-0 rows emitted since the last reset.
    self._stats_path = self._resolve_stats_path()
    if self.is_training:
      self._ds = self._train_dataset()
    else:
      self._task_name = tasks.register_task(
          self.data_dir,
          self.image_size,
          self.num_classes,
          expand_hierarchy=self.expand_hierarchy,
          augment=False,
          eval_crop_fraction=self.eval_crop_fraction,
      )
      self._ds = self._eval_dataset()
    # For its element_spec (the input specs). In training it yields the
    # batches before get_next() refills the slots of bad records.
    self.dataset = self._ds.map(_model_batch)
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
    k, hosts = self.num_slices, self.num_infeed_hosts
    if k <= 0 or k % hosts:
      raise ValueError(
          f'num_input_slices={k} must be a positive multiple of the'
          f' {hosts} hosts.'
      )
    if self.batch_size % (k // hosts):
      raise ValueError(
          f'num_input_slices={k} does not divide the global batch'
          f' {self.global_batch_size} into equal parts per slice'
          f' ({k // hosts} slices per host, per-host batch'
          f' {self.batch_size}).'
      )
    if self.shuffle_buffer_size <= 0:
      raise ValueError(
          f'shuffle_buffer_size must be positive, got'
          f' {self.shuffle_buffer_size}.'
      )
    calls = self.num_parallel_calls
    if calls is not None and calls != tf.data.AUTOTUNE and calls <= 0:
      raise ValueError(
          f'num_parallel_calls must be positive, None or tf.data.AUTOTUNE'
          f' ({tf.data.AUTOTUNE}), got {calls}.'
      )

  @property
  def task_name(self) -> str | None:
    """Name of the seqio Task eval reads (None in training: see above)."""
    return self._task_name

  @property
  def seed(self) -> int:
    return 0 if self.input_random_seed is None else int(self.input_random_seed)

  @property
  def map_parallel_calls(self) -> int:
    """The training map's num_parallel_calls (see num_parallel_calls)."""
    if self.num_parallel_calls is not None:
      return self.num_parallel_calls
    return PARALLEL_CALLS_PER_CORE * len(os.sched_getaffinity(0))

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

  @property
  def num_slices(self) -> int:
    """K: training input slices (num_input_slices, default one per host)."""
    return self.num_input_slices or self.num_infeed_hosts

  def _shard_info(self) -> seqio.ShardInfo | None:
    if self.num_infeed_hosts == 1:
      return None
    return seqio.ShardInfo(
        index=self.infeed_host_index, num_shards=self.num_infeed_hosts
    )

  @staticmethod
  def _select(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {
        'image': ex['image'],
        'labels': ex['labels'],
        'weight': tf.constant(1.0, tf.float32),
        'num_bad_records': ex['num_bad_records'],
    }

  # ---- Training: K slices of raw records, positioned at the start step.

  def train_slices(self) -> list[InputSlice]:
    """The K training input slices of the split (all hosts')."""
    files = data_format.list_shards(self.data_dir, self.split)
    counts = data_format.shard_record_counts(self.data_dir, self.split)
    slices = input_slices(files, counts, self.num_slices, self.seed)
    for sl in slices:
      if not sl.num_records:
        raise ValueError(
            f'Split {self.split!r} of {self.data_dir} has {sum(counts)}'
            f' records in {len(files)} shards: too few for'
            f' num_input_slices={self.num_slices} (slice {sl.index} gets'
            ' none).'
        )
    return slices

  def _slice_records(self, sl: InputSlice, start: int) -> tf.data.Dataset:
    """Raw records of slice `sl` in its order, from slice position `start`."""
    n, w = sl.num_records, self.shuffle_buffer_size
    first_epoch, offset = divmod(start, n)
    first_block, first_skip = divmod(offset, w)
    paths = tf.constant(sl.files)
    counts = tf.constant(sl.counts, tf.int64)
    block_seed = _mix(self.seed, 'blocks', sl.index)

    def epoch(e):
      first = tf.equal(e, first_epoch)
      start_block = tf.where(first, tf.constant(first_block, tf.int64), 0)
      skip = tf.where(first, tf.constant(first_skip, tf.int64), 0)
      order = tf.argsort(
          _full_range_int64([len(sl.files)], [sl.file_seed, e]), stable=True
      )
      ordered_counts = tf.gather(counts, order)
      # The first record to read: slice record start_block * w, at this
      # index of the concatenation of the ordered files.
      begin = start_block * w * sl.stride + sl.phase
      ends = tf.cumsum(ordered_counts)
      file0 = tf.reduce_sum(tf.cast(ends <= begin, tf.int64))
      in_file = begin - (ends[file0] - ordered_counts[file0])
      records = tf.data.Dataset.from_tensor_slices(
          tf.gather(paths, order[file0:])
      ).flat_map(tf.data.TFRecordDataset).skip(in_file)
      if sl.stride > 1:
        records = records.shard(sl.stride, 0)

      def shuffle_block(j, block):
        keys = _full_range_int64(tf.shape(block), [block_seed, e * 2**32 + j])
        return tf.gather(block, tf.argsort(keys, stable=True))

      blocks = tf.data.Dataset.zip(
          (tf.data.Dataset.range(start_block, 2**62), records.batch(w))
      )
      return blocks.map(shuffle_block).unbatch().skip(skip)

    return tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch)

  def _train_dataset(self) -> tf.data.Dataset:
    slices = self.train_slices()
    per_host = self.num_slices // self.num_infeed_hosts
    rows = self.batch_size // per_host  # Rows of a global batch per slice.
    local = slices[self.infeed_host_index * per_host:][:per_host]
    streams = [
        self._slice_records(sl, self.start_batch * rows) for sl in local
    ]
    if per_host == 1:
      (raw,) = streams
    else:
      # `rows` records of each local slice in turn: the host's batch rows.
      choice = tf.data.Dataset.range(per_host * rows).map(
          lambda i: i // rows
      ).repeat()
      raw = tf.data.Dataset.choose_from_datasets(streams, choice)
    table = tasks.class_table(
        self.data_dir, self.num_classes, self.expand_hierarchy
    )
    first_slot = self.start_batch * self.batch_size
    first_slice = self.infeed_host_index * per_host
    crop_seed = _mix(self.seed, 'crop')
    flip_seed = _mix(self.seed, 'flip')
    s, c = self.image_size, self.num_classes
    # The ids are parsed and batched only for the id log.
    with_id = self._id_log_path is not None

    def example(index, record):
      # Augmentation seeded by (slice k, position in slice k) of host-stream
      # slot first_slot + index: row `row` of global batch `step`.
      if per_host == 1:
        # The slice's position is the slot. One op instead of ten: per
        # example, scalar ops cost about as much as the image's (~8%).
        where = first_slice * 2**40 + first_slot + index
      else:
        slot = first_slot + index
        step, row = slot // self.batch_size, slot % self.batch_size
        k = first_slice + row // rows
        where = k * 2**40 + step * rows + row % rows
      ex = preprocessing.parse_and_decode(record, c, table, with_id=with_id)
      ex = tasks.set_train_view(
          ex, s, [tf.stack([crop_seed, where]), tf.stack([flip_seed, where])],
          self.crop_min_area,
      )
      # No per-example 'weight': _next_train_batch sets it from the index.
      ex['index'] = index
      return ex

    # All per-example work in one parallel map, then straight into batches:
    # a scan or unbatch between them serializes every example and cost
    # ~45% of the throughput. Bad records are
    # dropped here and their slots refilled by get_next (_next_train_batch).
    ds = _map_single_threaded(
        raw.enumerate(), example, self.map_parallel_calls
    )
    # log_warning: each bad record's TF error is logged once, e.g.
    # "Invalid PNG data" or the label assertion.
    ds = ds.apply(tf.data.experimental.ignore_errors(log_warning=True))
    ds = ds.batch(self.batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)

  # ---- Evaluation: each record once per pass, through the seqio Task.

  def _get_task_dataset(self) -> tf.data.Dataset:
    task = seqio.get_mixture_or_task(self._task_name)
    return task.get_dataset(
        sequence_length=None,
        split=self.split,
        shuffle=False,
        seed=self.seed,
        shard_info=self._shard_info(),
        num_epochs=1,
        trim_output_features=False,
        try_in_mem_cache=False,
    )

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
    ds = self._get_task_dataset().map(self._select)
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
      stats_dir = resumable.job_log_dir()
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
            'Input %s (split %r of %s): %d record(s) so far failed to'
            ' decode (malformed tf.Example, undecodable image or label id'
            ' outside [0, %d)); %s.',
            self.name, self.split, self.data_dir, count, self.num_classes,
            'each kept its slot as a weight-0 example' if self.is_training
            else 'skipped',
        )
        self.write_stats()

  def _next_train_batch(self) -> dict[str, np.ndarray]:
    """The rows of host-stream indices [i * B, (i + 1) * B) (batch i).

    The dataset yields batches of the surviving examples with their index
    in the host stream (ascending); the index of a bad record is missing
    and its row becomes a weight-0 row (zero image and labels, id '').
    """
    b = self.batch_size
    begin = (self._next_batch - self.start_batch) * b
    end = begin + b
    pool = self._carry
    # All survivors below `end` are in the pool once it holds index end - 1
    # or a later one; its B-th row is at index >= begin + B - 1.
    while pool is None or pool['index'][-1] < end - 1:
      more = next(self._iter)
      pool = more if pool is None else {
          k: np.concatenate([pool[k], more[k]]) for k in pool
      }
    n = int(np.searchsorted(pool['index'], end))
    self._carry = {k: v[n:] for k, v in pool.items()} if n < len(
        pool['index']) else None
    if n == b:  # No bad record in the batch: the rows as they are.
      batch = {k: v[:b] for k, v in pool.items()}
      batch['weight'] = np.ones([b], np.float32)
      return batch
    self._train_bad += b - n
    rows = pool['index'][:n] - begin
    batch = {}
    for k, v in pool.items():
      batch[k] = np.zeros((b,) + v.shape[1:], v.dtype)
      if k == 'id':
        batch[k][:] = b''
      batch[k][rows] = v[:n]
    batch['weight'] = np.zeros([b], np.float32)
    batch['weight'][rows] = 1.0
    return batch

  def get_next(self) -> NestedMap:
    if self.is_training:
      batch = self._next_train_batch()
      self._update_bad_count(self._train_bad)
      if 'id' in batch:  # Parsed only when the id log is on.
        self.log_ids(self._next_batch, batch['id'])
      self._next_batch += 1
      return NestedMap({k: batch[k] for k in _BATCH_KEYS})
    try:
      batch = next(self._iter)
    except StopIteration:
      if self._local_records is not None:
        # Exact at the end of a pass: whatever was not emitted was bad.
        self._update_bad_count(
            self._local_records - self._real_emitted, final=True
        )
      raise
    self._update_bad_count(int(batch['num_bad_records'].max()))
    self._real_emitted += int(np.sum(batch['weight'] > 0))
    return NestedMap({k: batch[k] for k in _BATCH_KEYS})

  def reset(self) -> None:
    super().reset()
    self._iter = self._ds.as_numpy_iterator()
    self._real_emitted = 0
    self._next_batch = self.start_batch
    self._carry = None
    self._train_bad = 0
