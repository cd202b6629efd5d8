"""Patch embedding with a learned 1-D position embedding (no class token).

Images [B, H, W, C] are cut into non-overlapping P x P patches (14 x 14 at
224 px gives a 16 x 16 grid = 256 tokens), each linearly projected to D
(a stride-P convolution, weight [P, P, C, D] as in big_vision/Flax), and a
learned position embedding 'pos_emb' [T, D] is added; T = (image_size / P)^2,
tokens in row-major grid order.

Resolution changes. The table is the row-major flattening of a
sqrt(T) x sqrt(T) grid. `resample_pos_emb` interpolates that grid bilinearly
with align_corners=True semantics: the corner tokens of the old and new grid
coincide and new token (i, j) of an m x m grid reads the old grid at
(i * (n - 1) / (m - 1), j * (n - 1) / (m - 1)). This is what big_vision's
`resample_posemb` (scipy.ndimage.zoom, order=1) does, it is the identity on
the same grid, and it reproduces any table that is a linear (even bilinear)
function of the normalized grid coordinates exactly. Fine-tuning uses it to
convert a restored table once. The layer itself, given images whose grid
differs from image_size / P, resamples the table on the fly the same way
(documented behaviour, not an error); images whose sides are not multiples
of P raise.
"""

from __future__ import annotations

import math

import jax
from jax import numpy as jnp
import numpy as np
from praxis import base_layer
from praxis import pytypes

from vit22b_pax.layers import weights

JTensor = pytypes.JTensor
SplitDimsMapping = pytypes.SplitDimsMapping
WeightInit = base_layer.WeightInit


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] linear-interpolation weights, align_corners=True."""
  m = np.zeros((n_out, n_in), np.float64)
  if n_in == 1:
    m[:, 0] = 1.0
    return m
  if n_out == 1:
    # A single output token sits at the centre of the old grid.
    pos = np.array([(n_in - 1) / 2.0])
  else:
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
  lo = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
  frac = pos - lo
  rows = np.arange(n_out)
  m[rows, lo] += 1.0 - frac
  m[rows, lo + 1] += frac
  return m


def resample_pos_emb_grid(
    table: JTensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
) -> JTensor:
  """Bilinearly resamples a row-major [rows*cols, D] table to a new grid.

  Args:
    table: [old_rows * old_cols, D].
    old_grid: (old_rows, old_cols).
    new_grid: (new_rows, new_cols).

  Returns:
    [new_rows * new_cols, D] with align_corners=True semantics (see module
    docstring), same dtype as table.
  """
  (r0, c0), (r1, c1) = old_grid, new_grid
  if table.ndim != 2 or table.shape[0] != r0 * c0:
    raise ValueError(
        f'pos_emb table {table.shape} does not match the {r0}x{c0} grid.'
    )
  if min(r1, c1) < 1:
    raise ValueError(f'new grid must be at least 1x1, got {new_grid}.')
  grid = table.reshape(r0, c0, table.shape[1])
  rows = jnp.asarray(_interp_matrix(r0, r1), table.dtype)
  cols = jnp.asarray(_interp_matrix(c0, c1), table.dtype)
  # HIGHEST: TPUs would otherwise round the f32 table to bf16 passes.
  out = jnp.einsum(
      'ir,jc,rcD->ijD', rows, cols, grid,
      precision=jax.lax.Precision.HIGHEST,
  )
  return out.reshape(r1 * c1, table.shape[1])


def resample_pos_emb(table: JTensor, new_grid_size: int) -> JTensor:
  """Resamples a square-grid position table [T, D] to [new_grid^2, D].

  Args:
    table: [T, D], the row-major flattening of a sqrt(T) x sqrt(T) grid.
    new_grid_size: Side of the new grid (e.g. 32 for 448 px at patch 14).

  Returns:
    [new_grid_size ** 2, D], bilinear with align_corners=True (corner tokens
    coincide; exact on linear ramps; identity on the same grid).
  """
  if table.ndim != 2:
    raise ValueError(f'pos_emb table must be [T, D], got {table.shape}.')
  t = table.shape[0]
  side = math.isqrt(t)
  if side * side != t:
    raise ValueError(
        f'pos_emb table has T={t} tokens, which is not a square grid.'
    )
  if new_grid_size < 1:
    raise ValueError(f'new_grid_size must be >= 1, got {new_grid_size}.')
  return resample_pos_emb_grid(
      table, (side, side), (new_grid_size, new_grid_size)
  )


class PatchEmbedding(base_layer.BaseLayer):
  """Images [B, H, W, C] -> tokens [B, T, D] (patchify, project, add pos).

  Variables: 'w' [P, P, C, D], 'b' [D], 'pos_emb' [T, D].

  Attributes:
    image_size: Side of the (square) training images, in pixels.
    patch_size: P, side of the square patches.
    input_channels: C.
    model_dims: D.
    pos_emb_init: Init of 'pos_emb'; None uses a Gaussian with stddev
      1/sqrt(D), big_vision's learned posemb init.
  """

  image_size: int = 224
  patch_size: int = 14
  input_channels: int = 3
  model_dims: int = 0
  pos_emb_init: WeightInit | None = None

  class WeightSharding(base_layer.BaseLayer.WeightSharding):
    """Weight split-dims mappings.

    Attributes:
      wt: Mapping of the projection 'w' [P, P, C, D]; 'b' uses its D entry.
        E.g. (None, None, None, 'model').
      pos_emb: Mapping of 'pos_emb' [T, D]. E.g. (None, 'model').
    """

    pos_emb: SplitDimsMapping = None

  @property
  def grid_size(self) -> int:
    """Tokens per side at image_size."""
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    """T at image_size."""
    return self.grid_size**2

  def setup(self) -> None:
    for field in ('image_size', 'patch_size', 'input_channels', 'model_dims'):
      if getattr(self, field) <= 0:
        raise ValueError(
            f'PatchEmbedding.{field} must be positive, got '
            f'{getattr(self, field)}.'
        )
    if self.image_size % self.patch_size:
      raise ValueError(
          f'PatchEmbedding.image_size ({self.image_size}) must be a multiple '
          f'of patch_size ({self.patch_size}).'
      )
    p, c, d = self.patch_size, self.input_channels, self.model_dims
    wp = self.weight_split_dims_mapping
    self.create_variable(
        'w',
        weights.weight_hparams(
            self, [p, p, c, d], wp.wt, fan_in_axes=[0, 1, 2], fan_out_axes=[3]
        ),
    )
    self.create_variable(
        'b',
        weights.bias_hparams(
            self, [d], weights.select_dims(wp.wt, (3,))
        ),
    )
    init = self.pos_emb_init or WeightInit.Gaussian(d**-0.5)
    self.create_variable(
        'pos_emb',
        weights.weight_hparams(
            self, [self.num_tokens, d], wp.pos_emb, init=init
        ),
    )

  def __call__(self, images: JTensor) -> JTensor:
    """Embeds images.

    Args:
      images: [B, H, W, C]; H and W multiples of patch_size. Other grids than
        image_size / patch_size get a resampled position table.

    Returns:
      [B, (H/P) * (W/P), D] tokens, row-major over the patch grid.
    """
    p = self.patch_size
    if images.ndim != 4 or images.shape[-1] != self.input_channels:
      raise ValueError(
          f'PatchEmbedding expects images [B, H, W, {self.input_channels}] '
          f'(input_channels), got {images.shape}.'
      )
    b, height, width, c = images.shape
    if height % p or width % p:
      raise ValueError(
          f'Image size {height}x{width} is not a multiple of patch_size ({p}).'
      )
    rows, cols = height // p, width // p
    images = self._cast_to_fprop_dtype(images)
    # Y, X: patch-grid rows and columns; P, Q: pixel row and column within a
    # patch. A stride-P convolution as a token matmul over the Y*X patches
    # (weights.token_matmul: a [B, Y, X] einsum had XLA:CPU copy the output
    # gradient transposed for the weight gradient).
    patches = images.reshape(b, rows, p, cols, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = weights.token_matmul(
        patches.reshape(b, rows * cols, p * p * c),
        self.theta.w.reshape(p * p * c, self.model_dims),
    )
    x = x + self.theta.b
    pos = self.theta.pos_emb
    if (rows, cols) != (self.grid_size, self.grid_size):
      pos = resample_pos_emb_grid(
          pos, (self.grid_size, self.grid_size), (rows, cols)
      )
    x = x + pos[jnp.newaxis].astype(x.dtype)
    return base_layer.maybe_shard(
        x, self.activation_split_dims_mapping.out, self.mesh_axis_names
    )
