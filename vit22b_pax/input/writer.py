"""Writes one split of a dataset directory: shards, class file, info file.

Records go round-robin to `num_shards` files, so shards differ in size by at
most one record. Shards are written under temporary names and renamed when
the split is complete, so an interrupted conversion never leaves files that
match the shard pattern. dataset_info.json keeps the entries of other splits.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import tensorflow as tf

from vit22b_pax.input import data_format
from vit22b_pax.input import hierarchy as hierarchy_lib


class SplitWriter:
  """Writes the records of one split; use as a context manager.

  On an exception inside the `with` block the temporary shards are removed
  and nothing in the directory changes.
  """

  def __init__(
      self,
      data_dir: str,
      split: str,
      num_shards: int,
      classes: hierarchy_lib.ClassHierarchy,
      dataset_name: str = '',
  ):
    if num_shards < 1:
      raise ValueError(f'num_shards must be >= 1, got {num_shards}.')
    if not split or '/' in split or '-' in split:
      raise ValueError(f'Invalid split name {split!r} (no "-" or "/").')
    self._dir = data_dir
    self._split = split
    self._num_shards = num_shards
    self._classes = classes
    self._name = dataset_name
    tf.io.gfile.makedirs(data_dir)
    class_path = data_format.class_file_path(data_dir)
    if tf.io.gfile.exists(class_path):
      existing = hierarchy_lib.read_class_file(class_path)
      if existing != classes:
        raise ValueError(
            f'{class_path} already exists with {existing.num_classes} classes'
            f' and differs from the {classes.num_classes} classes of this'
            ' conversion; write to a new directory or remove it.'
        )
    self._final = [
        os.path.join(data_dir, data_format.shard_name(split, i, num_shards))
        for i in range(num_shards)
    ]
    self._tmp = [
        os.path.join(data_dir, '.' + os.path.basename(p) + '.incomplete')
        for p in self._final
    ]
    self._writers = [tf.io.TFRecordWriter(p) for p in self._tmp]
    self._shard_counts = [0] * num_shards
    self._label_counts = [0] * classes.num_classes
    self._expanded_counts = [0] * classes.num_classes
    self._num = 0

  @property
  def num_written(self) -> int:
    return self._num

  def write(
      self,
      image_bytes: bytes,
      label_ids: Sequence[int],
      image_id: str | None = None,
  ) -> None:
    """Adds one example; label ids must be valid class ids."""
    shard = self._num % self._num_shards
    self._writers[shard].write(
        data_format.make_example(image_bytes, label_ids, image_id)
    )
    self._shard_counts[shard] += 1
    for i in set(label_ids):
      self._label_counts[i] += 1
    for i in self._classes.expand(label_ids):
      self._expanded_counts[i] += 1
    self._num += 1

  def _close_writers(self) -> None:
    for w in self._writers:
      w.close()
    self._writers = []

  def abort(self) -> None:
    self._close_writers()
    for p in self._tmp:
      if tf.io.gfile.exists(p):
        tf.io.gfile.remove(p)

  def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Publishes the shards and updates the class and info files.

    Args:
      extra: More keys for this split's entry in dataset_info.json (e.g.
        skipped-record counts, the source).

    Returns:
      The split's entry in dataset_info.json.
    """
    self._close_writers()
    # Shards of an earlier conversion of this split (maybe another shard
    # count) would mix with the new ones.
    for old in data_format.list_shards(self._dir, self._split):
      tf.io.gfile.remove(old)
    for tmp, final in zip(self._tmp, self._final):
      tf.io.gfile.rename(tmp, final, overwrite=True)
    hierarchy_lib.write_class_file(
        self._classes, data_format.class_file_path(self._dir)
    )
    entry = {
        'num_examples': self._num,
        'shards': [
            {'file': os.path.basename(p), 'num_examples': n}
            for p, n in zip(self._final, self._shard_counts)
        ],
        'label_counts': self._label_counts,
        'expanded_label_counts': self._expanded_counts,
    }
    entry.update(extra or {})
    info = data_format.read_info(self._dir) or {}
    info.update({
        'format_version': data_format.FORMAT_VERSION,
        'num_classes': self._classes.num_classes,
        'class_file': data_format.CLASS_FILE,
    })
    if self._name:
      info['name'] = self._name
    info.setdefault('splits', {})[self._split] = entry
    data_format.write_info(self._dir, info)
    return entry

  def __enter__(self) -> SplitWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None:
      self.abort()
