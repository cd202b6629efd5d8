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


class SyntheticInput(base_input.BaseInput):
  """Learnable random multi-label images, made in memory (no files).

  Each class c owns a fixed random image pattern P_c; an example's image is
  the mean of the patterns of its labels plus noise, so the labels can be
  read off the image. Training batches are endless; eval yields
  `num_eval_batches` batches per pass (reset() restarts the pass).

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
  _rng: Any = None
  _num_emitted: int = 0

  def __post_init__(self):
    super().__post_init__()
    pattern_rng = np.random.default_rng(self.seed)
    self._patterns = pattern_rng.uniform(
        -1.0, 1.0, (self.num_classes, self.image_size, self.image_size, 3)
    ).astype(np.float32)
    self.reset()

  def reset(self) -> None:
    super().reset()
    # Train and eval (and every host) draw disjoint example streams.
    self._rng = np.random.default_rng(
        [self.seed, int(self.is_training), self.infeed_host_index]
    )
    self._num_emitted = 0

  def get_next(self) -> NestedMap:
    if not self.is_training and self._num_emitted >= self.num_eval_batches:
      raise tf.errors.OutOfRangeError(None, None, 'end of synthetic eval')
    self._num_emitted += 1
    b, c = self.batch_size, self.num_classes
    labels = self._rng.random((b, c)) < self.label_prob
    labels[np.arange(b), self._rng.integers(0, c, b)] = True
    labels = labels.astype(np.float32)
    mix = labels / labels.sum(axis=1, keepdims=True)
    image = np.einsum('BC,CHWK->BHWK', mix, self._patterns)
    image += self.noise * self._rng.standard_normal(image.shape)
    return NestedMap(
        image=np.clip(image, -1.0, 1.0).astype(np.float32),
        labels=labels,
        weight=np.ones((b,), np.float32),
    )
