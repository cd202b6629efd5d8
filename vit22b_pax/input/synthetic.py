"""Inputs that need no files: synthetic images and the input specs.

Both follow the batch contract of praxis_input.MultiLabelImageInput: image
[B, H, W, 3] float32 in [-1, 1], labels [B, C] multi-hot float32, weight
[B] float32.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from praxis import base_input
from praxis import py_utils
from praxis import pytypes
import tensorflow as tf

from vit22b_pax.input import resumable

NestedMap = py_utils.NestedMap


def batch_specs(
    batch_size: int, image_size: int, num_classes: int
) -> pytypes.NestedShapeDtypeStruct:
  """ShapeDtypeStructs of one batch of the contract."""
  return NestedMap(
      image=jax.ShapeDtypeStruct(
          (batch_size, image_size, image_size, 3), jnp.float32
      ),
      labels=jax.ShapeDtypeStruct((batch_size, num_classes), jnp.float32),
      weight=jax.ShapeDtypeStruct((batch_size,), jnp.float32),
  )


class ViTInputSpecsProvider(base_input.BaseInputSpecsProvider):
  """Input specs of the batch contract, without reading any data.

  Attributes:
    batch_size: Per-process batch size B.
    image_size: Image height = width.
    num_classes: Number of classes C.
  """

  batch_size: int = 1
  image_size: int = 224
  num_classes: int = 1

  def get_input_specs(self) -> pytypes.NestedShapeDtypeStruct:
    return batch_specs(self.batch_size, self.image_size, self.num_classes)


class SyntheticInput(resumable.ResumableInput):
  """Learnable random multi-label images, made in memory (no files).

  Each class c owns a fixed random image pattern P_c; an example's image is
  the mean of the patterns of its labels plus noise, so the labels can be
  read off the image.

  Example g of a split (its global index: batch i holds g in [i * B,
  (i + 1) * B)) is drawn from its own generator seeded with (seed, split,
  g), so any host makes any example alone: host h of H makes rows
  [h * B / H, (h + 1) * B / H) of every global batch, a restarted run
  continues at the restored step's batch (resumable.py), and the global
  batches do not depend on the number of hosts. Its id is '<split>/<g>'.
  Training batches are endless; eval yields `num_eval_batches` batches per
  pass (reset() restarts the pass).

  Attributes:
    image_size: Image height = width.
    num_classes: Number of classes C.
    label_prob: Probability that each class is present (at least one is).
    noise: Standard deviation of the additive pixel noise.
    num_eval_batches: Batches per eval pass (is_training=False only).
    seed: Seed of the patterns (shared by train and eval) and the examples.
  """

  image_size: int = 16
  num_classes: int = 8
  label_prob: float = 0.25
  noise: float = 0.1
  num_eval_batches: int = 2
  seed: int = 1234
  _patterns: Any = None
  _next_batch: int = 0

  def __post_init__(self):
    super().__post_init__()
    pattern_rng = np.random.default_rng(self.seed)
    self._patterns = pattern_rng.uniform(
        -1.0, 1.0, (self.num_classes, self.image_size, self.image_size, 3)
    ).astype(np.float32)
    self.reset()

  @property
  def split(self) -> str:
    return 'train' if self.is_training else 'eval'

  def reset(self) -> None:
    super().reset()
    self._next_batch = self.start_batch

  def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(image [S, S, 3], labels [C]) of global example `index`."""
    rng = np.random.default_rng([self.seed, int(self.is_training), index])
    c, s = self.num_classes, self.image_size
    labels = rng.random(c) < self.label_prob
    labels[rng.integers(0, c)] = True
    labels = labels.astype(np.float32)
    image = np.einsum('C,CHWK->HWK', labels / labels.sum(), self._patterns)
    image += self.noise * rng.standard_normal((s, s, 3))
    return np.clip(image, -1.0, 1.0).astype(np.float32), labels

  def get_next(self) -> NestedMap:
    batch = self._next_batch
    if not self.is_training and batch >= self.num_eval_batches:
      raise tf.errors.OutOfRangeError(None, None, 'end of synthetic eval')
    self._next_batch += 1
    indices = batch * self.global_batch_size + self.host_rows()
    images, labels = zip(*(self.example(int(g)) for g in indices))
    self.log_ids(batch, [f'{self.split}/{g}' for g in indices])
    return NestedMap(
        image=np.stack(images),
        labels=np.stack(labels),
        weight=np.ones((self.batch_size,), np.float32),
    )
