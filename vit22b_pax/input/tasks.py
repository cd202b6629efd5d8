"""The seqio Task of a dataset directory.

`register_task` registers (idempotently) a Task reading
`<data_dir>/<split>-?????-of-?????.tfrecord` and returns its name. The name
is derived from every argument, so two experiments with different image
sizes or label expansion get different tasks. The Task's preprocessors:
decode, with the labels as a multi-hot over NUM_CLASSES (optionally
expanded to all ancestors; bad records skipped and counted), then the
training view
(inception crop + flip) or the evaluation view (resize + central crop),
values in [-1, 1]. Output features: image float32 [S, S, 3], labels
float32 [C]; every example also carries num_bad_records (int64) and id.
"""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np
import seqio
import tensorflow as tf

from vit22b_pax.input import data_format
from vit22b_pax.input import hierarchy
from vit22b_pax.input import preprocessing

TASK_PREFIX = 'vit22b_images'


class ShardedTFRecordSource(seqio.FileDataSource):
  """Raw records {'serialized': string} of the shards of a data directory.

  Splits are whatever `<split>-?????-of-?????.tfrecord` files exist when
  asked, so shards written after registration are found.
  """

  def __init__(self, data_dir: str):
    self._data_dir = data_dir
    super().__init__(
        read_file_fn=self._read_file,
        split_to_filepattern={},
    )

  @staticmethod
  def _read_file(path: tf.Tensor) -> tf.data.Dataset:
    return tf.data.TFRecordDataset(path).map(lambda r: {'serialized': r})

  @property
  def splits(self):
    return data_format.list_splits(self._data_dir)

  def list_shards(self, split: str) -> list[str]:
    return data_format.list_shards(self._data_dir, split)

  def get_dataset(
      self,
      split: str = 'train',
      shuffle: bool = True,
      seed: int | None = None,
      shard_info: seqio.ShardInfo | None = None,
      **unused_kwargs,  # sequence_length etc. of the seqio interface.
  ) -> tf.data.Dataset:
    if not self.list_shards(split):
      raise ValueError(
          f'No shards for split {split!r}: nothing matches'
          f' {data_format.shard_pattern(self._data_dir, split)!r}.'
      )
    return super().get_dataset(
        split=split, shuffle=shuffle, seed=seed, shard_info=shard_info
    )

  def __str__(self):
    return f'{type(self).__name__}({self._data_dir})'


def _canonical_dir(data_dir: str) -> str:
  if re.match(r'^[a-z0-9]+://', data_dir):
    return data_dir.rstrip('/')
  return os.path.abspath(data_dir)


def task_name(
    data_dir: str,
    image_size: int,
    num_classes: int,
    expand_hierarchy: bool = True,
    augment: bool = False,
    crop_min_area: float = 0.05,
    eval_crop_fraction: float = 0.875,
) -> str:
  """Registry name of the task with these arguments."""
  data_dir = _canonical_dir(data_dir)
  key = repr((data_dir, int(image_size), int(num_classes),
              bool(expand_hierarchy), bool(augment), float(crop_min_area),
              float(eval_crop_fraction)))
  digest = hashlib.sha1(key.encode()).hexdigest()[:10]
  base = re.sub(r'[^A-Za-z0-9]+', '_', os.path.basename(data_dir)) or 'data'
  mode = 'train' if augment else 'eval'
  return f'{TASK_PREFIX}_{base}_{image_size}px_{mode}_{digest}'


def class_table(
    data_dir: str, num_classes: int, expand_hierarchy: bool = True
) -> np.ndarray | None:
  """The ancestor table of the class file (None: labels not expanded).

  Raises:
    ValueError: the class file is missing/malformed or its size is not
      num_classes.
  """
  class_path = data_format.class_file_path(_canonical_dir(data_dir))
  classes = hierarchy.read_class_file(class_path)
  if classes.num_classes != num_classes:
    raise ValueError(
        f'Class file {class_path} lists {classes.num_classes} classes but'
        f' NUM_CLASSES is {num_classes}.'
    )
  return classes.ancestor_table() if expand_hierarchy else None


def set_train_view(
    ex: dict[str, tf.Tensor],
    image_size: int,
    seeds: list[tf.Tensor],
    crop_min_area: float,
) -> dict[str, tf.Tensor]:
  """The training view of 'image' (inception crop + flip) from two seeds."""
  ex['image'] = preprocessing.train_image(
      ex['image'], image_size, seeds, min_area=crop_min_area
  )
  return ex


def set_eval_view(
    ex: dict[str, tf.Tensor], image_size: int, eval_crop_fraction: float
) -> dict[str, tf.Tensor]:
  """The evaluation view of 'image' (resize + central crop)."""
  ex['image'] = preprocessing.eval_image(
      ex['image'], image_size, eval_crop_fraction
  )
  return ex


def register_task(
    data_dir: str,
    image_size: int,
    num_classes: int,
    expand_hierarchy: bool = True,
    augment: bool = False,
    crop_min_area: float = 0.05,
    eval_crop_fraction: float = 0.875,
) -> str:
  """Registers the seqio Task of a dataset directory; returns its name.

  Calling it again with the same arguments returns the same name without
  registering anything.

  Args:
    data_dir: The dataset directory (see data/README.md).
    image_size: Side length S of the output images.
    num_classes: C; must equal the number of classes in the class file.
    expand_hierarchy: Add every label's ancestors before the multi-hot.
    augment: Training view (inception crop + flip) if True, else the
      evaluation view (resize + central crop).
    crop_min_area: Smallest inception-crop area fraction (recipe: 0.05).
    eval_crop_fraction: Central-crop fraction of the evaluation view.

  Returns:
    The task name.

  Raises:
    ValueError: the class file is missing/malformed or its size is not
      num_classes.
  """
  name = task_name(data_dir, image_size, num_classes, expand_hierarchy,
                   augment, crop_min_area, eval_crop_fraction)
  if name in seqio.TaskRegistry.names():
    return name
  data_dir = _canonical_dir(data_dir)
  table = class_table(data_dir, num_classes, expand_hierarchy)

  def decode(ds):
    return preprocessing.decode_records(ds, num_classes, table)

  if augment:
    @seqio.map_over_dataset(num_seeds=2)
    def view(ex, seeds):
      return set_train_view(ex, image_size, seeds, crop_min_area)
  else:
    @seqio.map_over_dataset
    def view(ex):
      return set_eval_view(ex, image_size, eval_crop_fraction)

  seqio.TaskRegistry.add(
      name,
      source=ShardedTFRecordSource(data_dir),
      output_features={
          'image': seqio.ContinuousFeature(dtype=tf.float32, rank=3),
          'labels': seqio.ContinuousFeature(dtype=tf.float32, rank=1),
      },
      preprocessors=[decode, view],
  )
  return name
