"""TensorFlow ops of the input pipeline: decode, labels, crops, value range.

Bad records are skipped and counted without Python in the loop: each raw
record carries its index in the stream; parsing and decoding raise a TF
error for a malformed tf.Example, an undecodable image or a label id outside
[0, NUM_CLASSES); `ignore_errors` drops those elements, and a `scan` turns
the gaps in the surviving indices into a running count that every later
example carries as `num_bad_records`.

Augmentation follows the ViT-G / big_vision pre-training recipe: an
inception crop (random area and aspect ratio, resized to the experiment's
resolution), a random horizontal flip, values scaled to [-1, 1]. Evaluation
resizes the shorter side to size / crop_fraction and takes the central
size x size crop.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from vit22b_pax.input import data_format

# Inception crop aspect ratios (Szegedy et al. 2015; big_vision's default).
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)

_FEATURES = {
    data_format.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    data_format.LABEL_KEY: tf.io.VarLenFeature(tf.int64),
    data_format.ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=''),
}


def parse_and_decode(
    serialized: tf.Tensor,
    num_classes: int,
    ancestors: np.ndarray | None = None,
    with_id: bool = True,
) -> dict[str, tf.Tensor]:
  """Parses one record; raises a TF error if the record is bad.

  Args:
    serialized: A scalar string, one serialized tf.Example.
    num_classes: C; label ids must be in [0, C).
    ancestors: Optional ancestor table for multi_hot (labels expanded).
    with_id: Also parse the example id (the training input needs it only
      for its id log).

  Returns:
    {'image': uint8 [H, W, 3], 'labels': float32 [C] multi-hot, 'id':
    string}, 'id' only if with_id.
  """
  features = dict(_FEATURES)
  if not with_id:
    del features[data_format.ID_KEY]
  ex = tf.io.parse_single_example(serialized, features)
  image = tf.io.decode_image(
      ex[data_format.IMAGE_KEY], channels=3, expand_animations=False
  )
  image.set_shape([None, None, 3])
  # The values of a rank-1 VarLenFeature are its ids in order. multi_hot's
  # gather is the range check.
  out = {
      'image': image,
      'labels': multi_hot(
          ex[data_format.LABEL_KEY].values, num_classes, ancestors
      ),
  }
  if with_id:
    out['id'] = ex[data_format.ID_KEY]
  return out


def decode_records(
    ds: tf.data.Dataset, num_classes: int, ancestors: np.ndarray | None = None
) -> tf.data.Dataset:
  """Decodes {'serialized'} records, skipping and counting bad ones.

  Args:
    ds: Elements {'serialized': string scalar}.
    num_classes: Number of classes (valid label ids are below it).
    ancestors: Optional ancestor table (see parse_and_decode).

  Returns:
    Elements {'image', 'labels', 'id', 'num_bad_records'}, where
    num_bad_records (int64) counts the records dropped so far in this stream
    (bad records at the very end of a finite stream are not seen by it).
  """
  def _parse(index, ex):
    out = parse_and_decode(ex['serialized'], num_classes, ancestors)
    out['_index'] = index
    return out

  ds = ds.enumerate()
  ds = ds.map(_parse, num_parallel_calls=tf.data.AUTOTUNE)
  # log_warning: each skipped record's TF error is logged once, e.g.
  # "Invalid PNG data" or the label id out of range.
  ds = ds.apply(tf.data.experimental.ignore_errors(log_warning=True))

  def _count(state, ex):
    expected, bad = state
    index = ex.pop('_index')
    bad += index - expected
    ex['num_bad_records'] = bad
    return (index + 1, bad), ex

  zero = tf.constant(0, tf.int64)
  return ds.scan((zero, zero), _count)


def multi_hot(
    label_ids: tf.Tensor,
    num_classes: int,
    ancestors: np.ndarray | None = None,
) -> tf.Tensor:
  """float32 [C] multi-hot vector of the labels (and their ancestors).

  Args:
    label_ids: int [L] class ids in [0, C).
    num_classes: C.
    ancestors: Optional int [C, A] table from ClassHierarchy.ancestor_table():
      row c lists c and its ancestors, padded with C.

  Returns:
    float32 [C], 1.0 at every label (and ancestor), else 0.0.
  """
  if ancestors is None:
    ancestors = np.arange(num_classes, dtype=np.int32)[:, None]
  elif ancestors.shape[0] != num_classes or ancestors.ndim != 2:
    raise ValueError(
        f'Ancestor table of shape {ancestors.shape} for {num_classes} classes;'
        f' expected [{num_classes}, A].'
    )
  # One gather and one binary bincount, which drops the padding id C. The
  # gather is the range check: it fails with "indices[i] = id is not in
  # [0, C)". Unlike an Assert it needs no control flow, which the training
  # map's single-threaded executor cannot run (praxis_input). On one thread this took ~4 us
  # per example where a ragged gather, a scatter and a clamp took ~16 us
  # (of ~150 us in all).
  ids = tf.gather(tf.constant(ancestors), label_ids, name='label_ancestors')
  return tf.raw_ops.DenseBincount(
      input=tf.reshape(ids, [-1]),
      size=num_classes,
      weights=tf.zeros([0], tf.float32),
      binary_output=True,
  )


def to_unit_range(image: tf.Tensor) -> tf.Tensor:
  """Maps pixel values [0, 255] to float32 [-1, 1]."""
  image = tf.cast(image, tf.float32) / 127.5 - 1.0
  return tf.clip_by_value(image, -1.0, 1.0)


def inception_crop(
    image: tf.Tensor,
    size: int,
    seed: tf.Tensor,
    min_area: float = 0.05,
    max_area: float = 1.0,
) -> tf.Tensor:
  """Random-area, random-aspect crop resized to [size, size, 3] float32.

  Args:
    image: uint8 [H, W, 3].
    size: Output side length.
    seed: Stateless seed, int [2].
    min_area: Smallest crop area as a fraction of the image (recipe: 5%).
    max_area: Largest crop area fraction.

  Returns:
    float32 [size, size, 3] with values in [0, 255].
  """
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image),
      bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
      seed=seed,
      min_object_covered=0.0,
      aspect_ratio_range=ASPECT_RATIO_RANGE,
      area_range=(min_area, max_area),
      max_attempts=10,
      use_image_if_no_bounding_boxes=True,
  )
  crop = tf.slice(image, begin, crop_size)
  out = tf.image.resize(crop, [size, size], method='bilinear')
  out.set_shape([size, size, 3])
  return out


def resize_small_and_central_crop(
    image: tf.Tensor, size: int, crop_fraction: float = 0.875
) -> tf.Tensor:
  """Resizes the shorter side to size / crop_fraction, crops the center.

  Args:
    image: [H, W, 3] (any real dtype).
    size: Output side length.
    crop_fraction: Fraction of the resized shorter side that is kept.

  Returns:
    float32 [size, size, 3] in the input's value range.
  """
  small = max(size, int(round(size / crop_fraction)))
  shape = tf.shape(image)
  h = tf.cast(shape[0], tf.float32)
  w = tf.cast(shape[1], tf.float32)
  scale = small / tf.minimum(h, w)
  new_h = tf.maximum(size, tf.cast(tf.round(h * scale), tf.int32))
  new_w = tf.maximum(size, tf.cast(tf.round(w * scale), tf.int32))
  resized = tf.image.resize(image, [new_h, new_w], method='bilinear')
  top = (new_h - size) // 2
  left = (new_w - size) // 2
  out = tf.slice(resized, [top, left, 0], [size, size, 3])
  out.set_shape([size, size, 3])
  return out


def train_image(
    image: tf.Tensor,
    size: int,
    seeds: Sequence[tf.Tensor],
    min_area: float = 0.05,
) -> tf.Tensor:
  """Training view: inception crop, random flip, values in [-1, 1]."""
  out = inception_crop(image, size, seeds[0], min_area=min_area)
  return to_unit_range(random_flip_left_right(out, seeds[1]))


def random_flip_left_right(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """tf.image.stateless_random_flip_left_right of [H, W, C], without tf.cond.

  The same coin (a stateless uniform below 0.5) and the same output; the
  flip reverses the width axis or none, so the op runs without control
  flow (see parse_and_decode).
  """
  flip = tf.random.stateless_uniform([], seed=seed, minval=0, maxval=1.0) < 0.5
  return tf.reverse(image, tf.range(1, 1 + tf.cast(flip, tf.int32)))


def eval_image(
    image: tf.Tensor, size: int, crop_fraction: float = 0.875
) -> tf.Tensor:
  """Evaluation view: resize, central crop, values in [-1, 1]."""
  return to_unit_range(
      resize_small_and_central_crop(image, size, crop_fraction)
  )
