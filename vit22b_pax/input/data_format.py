"""The on-disk format of a dataset directory (see data/README.md).

  <data_dir>/<split>-00000-of-00008.tfrecord   TFRecord shards of tf.Example
  <data_dir>/classes.tsv                       the class hierarchy
  <data_dir>/dataset_info.json                 counts and label frequencies

Every tf.Example has `image/encoded` (JPEG or PNG bytes), `image/class/label`
(int64 list, one or more class ids) and optionally `image/id` (bytes).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Sequence

import tensorflow as tf

from vit22b_pax.input import hierarchy

IMAGE_KEY = 'image/encoded'
LABEL_KEY = 'image/class/label'
ID_KEY = 'image/id'
CLASS_FILE = 'classes.tsv'
INFO_FILE = 'dataset_info.json'
SHARD_SUFFIX = '.tfrecord'
FORMAT_VERSION = 1

_SHARD_RE = re.compile(r'^(?P<split>.+)-(?P<index>\d{5})-of-(?P<num>\d{5})'
                       + re.escape(SHARD_SUFFIX) + '$')


def shard_name(split: str, index: int, num_shards: int) -> str:
  """File name of shard `index` of `num_shards` of `split`."""
  return f'{split}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}'


def shard_pattern(data_dir: str, split: str) -> str:
  """Glob pattern of the shards of `split` in `data_dir`."""
  return os.path.join(data_dir, f'{split}-?????-of-?????{SHARD_SUFFIX}')


def class_file_path(data_dir: str) -> str:
  return os.path.join(data_dir, CLASS_FILE)


def info_file_path(data_dir: str) -> str:
  return os.path.join(data_dir, INFO_FILE)


def list_shards(data_dir: str, split: str) -> list[str]:
  """Sorted shard paths of `split` (all hosts see the same order)."""
  return sorted(set(tf.io.gfile.glob(shard_pattern(data_dir, split))))


def list_splits(data_dir: str) -> list[str]:
  """Names of the splits that have shards in `data_dir`."""
  pattern = os.path.join(data_dir, f'*-?????-of-?????{SHARD_SUFFIX}')
  splits = set()
  for path in tf.io.gfile.glob(pattern):
    m = _SHARD_RE.match(os.path.basename(path))
    if m:
      splits.add(m.group('split'))
  return sorted(splits)


def make_example(
    image_bytes: bytes, label_ids: Sequence[int], image_id: str | None = None
) -> bytes:
  """Serialized tf.Example of one image."""
  feature = {
      IMAGE_KEY: tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[image_bytes])
      ),
      LABEL_KEY: tf.train.Feature(
          int64_list=tf.train.Int64List(value=[int(i) for i in label_ids])
      ),
  }
  if image_id is not None:
    feature[ID_KEY] = tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[image_id.encode('utf-8')])
    )
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  # Deterministic: the feature map is otherwise serialized in any order.
  return example.SerializeToString(deterministic=True)


def parse_example(serialized: bytes) -> dict[str, Any]:
  """Python-side parse of one record: {'image', 'labels', 'id'}."""
  ex = tf.train.Example.FromString(serialized)
  f = ex.features.feature
  image_id = f[ID_KEY].bytes_list.value[0].decode() if ID_KEY in f else None
  return {
      'image': f[IMAGE_KEY].bytes_list.value[0],
      'labels': list(f[LABEL_KEY].int64_list.value),
      'id': image_id,
  }


def read_info(data_dir: str) -> dict[str, Any] | None:
  """The parsed dataset_info.json, or None if there is none."""
  path = info_file_path(data_dir)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path, 'r') as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e}).') from None


def write_info(data_dir: str, info: dict[str, Any]) -> None:
  with tf.io.gfile.GFile(info_file_path(data_dir), 'w') as f:
    json.dump(info, f, indent=1, sort_keys=True)
    f.write('\n')


def count_records(path: str) -> int:
  """Number of records in one TFRecord file (reads it; no parsing)."""
  ds = tf.data.TFRecordDataset(path)
  try:
    return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
  except tf.errors.DataLossError as e:
    raise ValueError(
        f'Shard {path} is corrupt (truncated or bad checksum): {e.message}'
    ) from None


def shard_record_counts(data_dir: str, split: str) -> list[int]:
  """Records per shard of `split`, in list_shards order.

  Taken from dataset_info.json when it describes exactly these files, else
  counted by reading the shards.
  """
  files = list_shards(data_dir, split)
  info = read_info(data_dir) or {}
  shards = info.get('splits', {}).get(split, {}).get('shards')
  if shards and sorted(s['file'] for s in shards) == [
      os.path.basename(f) for f in files
  ]:
    by_name = {s['file']: int(s['num_examples']) for s in shards}
    return [by_name[os.path.basename(f)] for f in files]
  return [count_records(f) for f in files]


def validate_data_dir(
    data_dir: str, num_classes: int, splits: Sequence[str] = ('train',)
) -> hierarchy.ClassHierarchy:
  """Checks a DATA_DIR before anything compiles.

  Args:
    data_dir: The dataset directory.
    num_classes: The experiment's NUM_CLASSES.
    splits: Splits that must have shards.

  Returns:
    The class hierarchy read from the class file.

  Raises:
    ValueError: naming the path and the numbers, if the directory has no
      shards for a split, a split misses shards, the class file is missing or
      malformed, or its size disagrees with num_classes.
  """
  if not data_dir:
    raise ValueError('DATA_DIR is empty; set it to a dataset directory.')
  for split in splits:
    files = list_shards(data_dir, split)
    if not files:
      found = list_splits(data_dir) if tf.io.gfile.isdir(data_dir) else []
      raise ValueError(
          f'DATA_DIR {data_dir!r} has no shards for split {split!r}: nothing'
          f' matches {shard_pattern(data_dir, split)!r} (splits found:'
          f' {found or "none"}). Make one with `python -m'
          ' vit22b_pax.tools.make_dataset ...` (see data/README.md).'
      )
    nums = set()
    indices = set()
    for f in files:
      m = _SHARD_RE.match(os.path.basename(f))
      nums.add(int(m.group('num')))
      indices.add(int(m.group('index')))
    if len(nums) != 1:
      raise ValueError(
          f'DATA_DIR {data_dir!r}: split {split!r} mixes shard counts'
          f' {sorted(nums)} (-of-NNNNN); remove the stale shards.'
      )
    (num,) = nums
    missing = sorted(set(range(num)) - indices)
    if missing:
      raise ValueError(
          f'DATA_DIR {data_dir!r}: split {split!r} has {len(indices)} of'
          f' {num} shards; missing {shard_name(split, missing[0], num)!r}'
          f' and {len(missing) - 1} more.'
      )
  path = class_file_path(data_dir)
  classes = hierarchy.read_class_file(path)
  if classes.num_classes != num_classes:
    raise ValueError(
        f'Class file {path} lists {classes.num_classes} classes but'
        f' NUM_CLASSES is {num_classes}; set NUM_CLASSES ='
        f' {classes.num_classes} or point DATA_DIR at the right dataset.'
    )
  return classes
