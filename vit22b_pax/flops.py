"""FLOP, MFU and parameter accounting in the ViT-22B paper's convention.

docs/recipe.md "Infrastructure and efficiency" (Dehghani et al. 2023, with
PaLM's MFU definition): the paper's 54.9% MFU follows from counting, per
token, 6 FLOPs per encoder-block weight-matrix parameter
(forward 2 + backward 4) plus the attention score and context matmuls,
12 * L * T * D for non-causal attention (not halved: a ViT attends to all T
tokens). Patch embedding, MAP head and classifier are left out, as the
paper's 21,743M parameter count leaves them out:

  N_blocks = L * (4 D^2 + 2 D F)          (q, k, v, out; MLP in, out)
  train FLOPs / token = 6 N_blocks + 12 L T D
  train FLOPs / image = (train FLOPs / token) * T
  MFU = tokens/s/chip * FLOPs/token / peak FLOP/s/chip

ViT-22B (D 6144, L 48, F 24576, T 256): 131.37 GFLOP/token; at 1150 tokens/s
per TPUv4 chip (275 TFLOP/s bf16 peak) that is 54.9% MFU.

The parameter counters read abstract variable trees: jax.eval_shape(model.init
...) results (leaves with .shape) or WeightHParams trees (full_shape).
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
from praxis import base_layer
from praxis import py_utils

from vit22b_pax import recipe

# TPUv4 chip bf16 peak; the source is in recipe.py.
TPU_V4_PEAK_FLOPS = recipe.TPU_V4_PEAK_FLOPS
# Model components of vit22b_pax.models.ViTClassifier, in forward order.
COMPONENTS = ('patch_embed', 'encoder', 'final_ln', 'map_head', 'head')
# Leaves that are not weight matrices even at rank >= 2: biases ('b', 'b_*',
# '*_bias', e.g. the parallel block's [N, F/N] MLP-in bias) and norm scales.
NOT_A_MATRIX_REGEX = r'(^|/)(b|b_\w+|bias|\w+_bias|scale|\w+_scale)$'
# Name of praxis' Repeat child (StackedTransformerRepeated): variables below
# it carry one leading stacked dim.
REPEAT_SCOPE = 'repeat'


def block_matrix_params(
    model_dims: int, hidden_dims: int, num_layers: int
) -> int:
  """L * (4 D^2 + 2 D F): the paper's encoder parameter count."""
  return num_layers * (4 * model_dims**2 + 2 * model_dims * hidden_dims)


def train_flops_per_token(
    num_block_matrix_params: int,
    num_layers: int,
    num_tokens: int,
    model_dims: int,
) -> int:
  """6 N_blocks + 12 L T D: training FLOPs per token (forward + backward)."""
  return 6 * num_block_matrix_params + 12 * num_layers * num_tokens * model_dims


def train_flops_per_image(
    num_block_matrix_params: int,
    num_layers: int,
    num_tokens: int,
    model_dims: int,
) -> int:
  """Training FLOPs per image: per-token FLOPs times T tokens."""
  return num_tokens * train_flops_per_token(
      num_block_matrix_params, num_layers, num_tokens, model_dims
  )


def num_tokens(image_size: int, patch_size: int) -> int:
  """T = (image_size / patch_size)^2 (no class token)."""
  if image_size % patch_size:
    raise ValueError(
        f'image_size ({image_size}) must be divisible by patch_size '
        f'({patch_size}).'
    )
  return (image_size // patch_size) ** 2


def size_train_flops_per_token(size: Any) -> int:
  """Per-token training FLOPs of a size preset (e.g. models.PRESETS[...]).

  Args:
    size: any object with model_dims, num_layers, hidden_dims, patch_size and
      image_size attributes (models.ModelSize).

  Returns:
    6 N_blocks + 12 L T D for that size.
  """
  n = block_matrix_params(size.model_dims, size.hidden_dims, size.num_layers)
  return train_flops_per_token(
      n,
      size.num_layers,
      num_tokens(size.image_size, size.patch_size),
      size.model_dims,
  )


def mfu(
    tokens_per_sec_per_chip: float,
    flops_per_token: float,
    peak_flops: float = TPU_V4_PEAK_FLOPS,
) -> float:
  """Model FLOPs utilization: achieved model FLOP/s over the chip's peak."""
  if peak_flops <= 0:
    raise ValueError(f'peak_flops must be > 0, got {peak_flops}.')
  return tokens_per_sec_per_chip * flops_per_token / peak_flops


def _leaves_with_names(tree: Any) -> list[tuple[str, Any]]:
  """(path, leaf) pairs; WeightHParams are leaves, 'params' is stripped."""
  if isinstance(tree, dict) and 'params' in tree:
    tree = tree['params']  # The trainable collection of a praxis init.
  names = py_utils.extract_prefixed_keys_from_nested_map(tree)
  return list(zip(jax.tree_util.tree_leaves(names),
                  jax.tree_util.tree_leaves(tree)))


def _shape_and_stacked_dims(name: str, leaf: Any) -> tuple[tuple[int, ...],
                                                           int]:
  """Full shape and the number of leading stacked (repeat) dims."""
  if isinstance(leaf, base_layer.WeightHParams):
    return tuple(leaf.full_shape), len(leaf.repeat_prefix or ())
  stacked = name.split('/').count(REPEAT_SCOPE)
  return tuple(leaf.shape), stacked


def count_params(tree: Any) -> dict[str, int]:
  """Parameter counts by top-level component, plus 'total'.

  Args:
    tree: an abstract variable tree, e.g. jax.eval_shape(model.init, ...) or
      a WeightHParams tree; a top 'params' collection is used if present.

  Returns:
    {'patch_embed': ..., 'encoder': ..., 'final_ln': ..., 'map_head': ...,
     'head': ..., 'total': ...}; other top-level names get their own key.
  """
  counts = {c: 0 for c in COMPONENTS}
  total = 0
  for name, leaf in _leaves_with_names(tree):
    shape, _ = _shape_and_stacked_dims(name, leaf)
    size = math.prod(shape)
    component = name.split('/', 1)[0]
    counts[component] = counts.get(component, 0) + size
    total += size
  counts['total'] = total
  return counts


def paper_param_count(
    tree: Any,
    component: str = 'encoder',
    not_a_matrix_regex: str = NOT_A_MATRIX_REGEX,
) -> int:
  """The paper-comparable count: the encoder blocks' weight matrices.

  A weight matrix is a variable under `component` of per-layer rank >= 2
  (stacked repeat dims of StackedTransformerRepeated excluded, so a stacked
  [L, F] bias stays a vector) whose name is not a bias or norm scale. For
  ViT-22B this is L * (4 D^2 + 2 D F) = 21,743,271,936.

  Args:
    tree: as in count_params().
    component: top-level scope of the blocks.
    not_a_matrix_regex: names excluded even at rank >= 2.

  Returns:
    The number of weight-matrix parameters.
  """
  exclude = re.compile(not_a_matrix_regex)
  n = 0
  for name, leaf in _leaves_with_names(tree):
    if name.split('/', 1)[0] != component or exclude.search(name):
      continue
    shape, stacked = _shape_and_stacked_dims(name, leaf)
    if len(shape) - stacked >= 2:
      n += math.prod(shape)
  return n
