"""Collective matmuls: the block's projections with overlapped transfers.

Why. ViT-22B (Dehghani et al. 2023, Sec. 3, "asynchronous parallel linear
operations") splits every dense layer's operands over the 'model' mesh axis
and overlaps moving a chunk of an activation between devices with the matmul
of the chunk already on the device (Wang et al., ASPLOS 2023, "Overlap
communication with dependent computation via decomposition in large deep
learning models"). Done the plain way, the parallel block first all-gathers
its residual-stream input over 'model' and only then multiplies, and its
output projection multiplies and only then reduce-scatters (XLA:CPU
all-reduces): the devices compute nothing while the collective runs.

What. Two functions, each a `shard_map` over the (data, model) mesh whose
body is an unrolled loop of `lax.ppermute` steps around the model axis ring
(m devices, device i holding chunk i):

  all_gather_matmul    x [B, T, D] (D over model) . w [D, N, K] (N over
                       model) -> [B, T, N, K] (N over model). Step s
                       multiplies the D-chunk in hand by the matching D rows
                       of the local weight and accumulates, while the
                       ppermute passes that chunk to the left neighbour: at
                       step s device i holds chunk (i + s) mod m. m
                       multiplies, m - 1 sends; the whole x is never
                       gathered.
  matmul_reduce_scatter  y [B, T, N, J] (N over model) . w [N, J, D] (N
                       over model) -> [B, T, D] (D over model). Step s
                       computes this device's partial product for D-chunk
                       (i - 1 - s) mod m, adds the accumulator received from
                       the left neighbour and passes the sum to the right;
                       after m - 1 sends device i holds the full sum of its
                       chunk i. No all-reduce or reduce-scatter of the whole
                       output.

In each step the send and the multiply are independent, so a scheduler that
runs collectives asynchronously (TPU/GPU latency-hiding scheduler) overlaps
them. The loop is unrolled (m is static) so each send and its multiply sit
side by side in one HLO computation.

Bidirectional (bidirectional=True). Half of the chunks travel each way round
the ring, so the number of sequential send steps drops from m - 1 to
floor(m / 2). all_gather_matmul: at round r the device receives chunk i - r
from the left and chunk i + r from the right; for even m the opposite chunk
(distance m / 2) arrives in two halves of its D columns, one from each side.
matmul_reduce_scatter is its mirror: two accumulators travel right and left
and meet at the owner; for even m the farthest device's partial is computed
as two halves, one sent each way. It uses both directions of each ring link,
which helps where links are bidirectional (TPU ICI, NVLink); multiplies are
split into m + 1 pieces (m even) instead of m.

Gradients. Both are differentiable (jax.grad through shard_map and
ppermute): the transpose of an all-gather-matmul is a matmul-reduce-scatter
(for dx; dw stays local) and vice versa, so the backward pass is a ppermute
loop too, with no whole-operand gather or reduce over the model axis.

Mesh. The functions run inside a praxis layer traced under paxml's pjit:
with mesh=None they use the mesh of the enclosing `with mesh:` (paxml sets
it around its pjit calls; read from `pxla.thread_resources`, as praxis
does). Where no mesh is active (e.g. praxis' abstract init outside pjit) or
the model axis has one device, they are the plain einsum, which computes the
same thing. The batch dim B is split over data_axis and passed through. A
weight whose D dim is stored split over 'data' (sharding.py's parameter
split) is declared with weight_data_axis: it is all-gathered over that axis
inside, before the loop, and its gradient reduce-scattered back, as XLA does
for the plain einsum. (Left None for such a weight, XLA gathers it before
the shard_map and the gradient is all-reduced over 'data' piece by piece:
correct, but more traffic.)

The operands should arrive split as documented. An x that is whole on D
(sharding.py with training_optimized=False) is sliced locally and still
sent round the ring, where the plain einsum would need no communication;
matmul_reduce_scatter's output is split on D, and replicating it costs an
all-gather. Before the input projection the block's LayerNorm must keep x
split on D (its statistics need only a [B, T] reduction over 'model'), or
XLA gathers x for it and nothing is saved.

Numerics. Partial sums accumulate in the einsum's result dtype, in another
order than one dot: results equal the plain einsum up to rounding. With
bfloat16 operands each step's running sum is rounded to bfloat16.

Preconditions (ValueError naming the dim otherwise): B divisible by the
data_axis size; N and D divisible by the model axis size m; D divisible by
the weight_data_axis size; with bidirectional=True and even m, D / m even.

XLA alternatives (the compiler decomposes the plain einsum itself; windowed
einsum):
  TPU: `--xla_jf_spmd_threshold_for_windowed_einsum_mib=0` with
    `--xla_tpu_enable_latency_hiding_scheduler=true`, passed in
    LIBTPU_INIT_ARGS, as paxml's README does for its multislice runs. These
    are libtpu flags; they could not be checked against this CPU install.
  GPU: `--xla_gpu_threshold_for_windowed_einsum_mib=0` (einsums with a
    partitioned operand larger than this many MiB become windowed einsums;
    default 100000) and `--xla_gpu_multi_streamed_windowed_einsum=true` (run
    the windowed einsum on several compute streams), with
    `--xla_gpu_enable_latency_hiding_scheduler=true`, in XLA_FLAGS. All three
    names and the help text are in jaxlib 0.4.26's XLA; their effect on a
    GPU was not checked here.

On XLA:CPU (the simulated devices of the tests) collectives are synchronous
copies, so no overlap and no speed-up can show there: the tests check the
structure (sends interleaved with multiplies, no whole-operand collective)
and the numbers, not the speed.

Shape letters: B batch, T tokens, D model dims, N heads, K per-head fused
input width (3H + F/N), J per-head fused output width (H + F/N), C one
model-axis chunk of D (D / m).
"""

from __future__ import annotations

import jax
from jax import lax
from jax import numpy as jnp
from jax.experimental import shard_map
from jax.interpreters import pxla

P = jax.sharding.PartitionSpec
Mesh = jax.sharding.Mesh
# A PartitionSpec entry: a mesh axis name, a tuple of them, or None.
AxisSpec = str | tuple[str, ...] | None


def current_mesh() -> Mesh | None:
  """The mesh of the enclosing `with mesh:` context, or None outside one."""
  mesh = pxla.thread_resources.env.physical_mesh
  return None if mesh.empty else mesh


def _axis_size(mesh: Mesh, axes: AxisSpec, what: str, fn: str) -> int:
  """Number of devices along `axes`, checking they are mesh axes."""
  names = () if axes is None else (axes if isinstance(axes, tuple) else
                                   (axes,))
  size = 1
  for name in names:
    if name not in mesh.shape:
      raise ValueError(
          f'{fn}: {what} {name!r} is not an axis of the mesh '
          f'{tuple(mesh.axis_names)}.'
      )
    size *= mesh.shape[name]
  return size


def _check_divisible(fn: str, checks: list[tuple[str, int, int]]) -> None:
  for what, dim, by in checks:
    if dim % by:
      raise ValueError(f'{fn}: {what} ({dim}) must be divisible by {by}.')


def _ring(m: int, step: int) -> list[tuple[int, int]]:
  """ppermute pairs sending device j's value to device j + step (mod m)."""
  return [(j, (j + step) % m) for j in range(m)]


def _prepare(
    fn: str,
    mesh: Mesh | None,
    data_axis: AxisSpec,
    model_axis: str,
    weight_data_axis: AxisSpec,
    bidirectional: bool,
    batch: int,
    heads: int,
    d: int,
) -> tuple[Mesh | None, int, bool]:
  """Resolves the mesh and checks the preconditions.

  Returns:
    (mesh, m, gather_weight): m the model axis size; mesh None where the
    plain einsum applies (no mesh, or m == 1); gather_weight whether
    weight_data_axis has more than one device.
  """
  if not isinstance(model_axis, str):
    raise ValueError(f'{fn}: model_axis must be one mesh axis name, got '
                     f'{model_axis!r}.')
  mesh = current_mesh() if mesh is None else mesh
  if mesh is None:
    return None, 1, False
  m = _axis_size(mesh, model_axis, 'model_axis', fn)
  n_data = _axis_size(mesh, data_axis, 'data_axis', fn)
  n_wdata = _axis_size(mesh, weight_data_axis, 'weight_data_axis', fn)
  if m == 1:
    return None, 1, False
  checks = [
      (f'batch B over data_axis {data_axis!r}', batch, n_data),
      (f'heads N over model_axis {model_axis!r}', heads, m),
      (f'model dims D over model_axis {model_axis!r}', d, m),
      (f'weight dim D over weight_data_axis {weight_data_axis!r}', d,
       n_wdata),
  ]
  if bidirectional and m % 2 == 0:
    checks.append((
        f'bidirectional over an even model axis ({m}): the chunk D / m', d // m,
        2,
    ))
  _check_divisible(fn, checks)
  return mesh, m, n_wdata > 1


def _gather_weight(
    w: jax.Array, axis: AxisSpec, dim: int, gather: bool
) -> jax.Array:
  """All-gathers the weight's D dim over `axis` (FSDP) if `gather`.

  Its transpose is the reduce-scatter of the weight gradient over `axis`.
  Without `gather` (no axis, or one device) the weight is whole already;
  `axis` then stays in the shard_map spec, which keeps shard_map from
  summing the gradient over a one-device axis.
  """
  return lax.all_gather(w, axis, axis=dim, tiled=True) if gather else w


def all_gather_matmul(
    x: jax.Array,
    w: jax.Array,
    *,
    data_axis: AxisSpec,
    model_axis: str,
    weight_data_axis: AxisSpec = None,
    bidirectional: bool = False,
    mesh: Mesh | None = None,
) -> jax.Array:
  """einsum('BTD,DNK->BTNK') with x's D gathered chunk by chunk.

  Args:
    x: [B, T, D], B split over data_axis, D over model_axis.
    w: [D, N, K], N split over model_axis, D over weight_data_axis.
    data_axis: Mesh axis (or tuple of axes) of the batch dim B, or None.
    model_axis: Mesh axis of the ring.
    weight_data_axis: Mesh axis (or axes) w's D dim is split over (FSDP,
      e.g. sharding.py's 'data'), or None when w is whole on D. Gathered
      before the loop; the gradient is reduce-scattered back.
    bidirectional: Send half the chunks each way (module docstring).
    mesh: The device mesh; None takes the enclosing `with mesh:` one.

  Returns:
    [B, T, N, K], B split over data_axis, N over model_axis.
  """
  fn = 'all_gather_matmul'
  if x.ndim != 3 or w.ndim != 3 or x.shape[2] != w.shape[0]:
    raise ValueError(
        f'{fn}: expects x [B, T, D] and w [D, N, K], got {x.shape} and '
        f'{w.shape}.'
    )
  mesh, m, gather = _prepare(
      fn, mesh, data_axis, model_axis, weight_data_axis, bidirectional,
      x.shape[0], w.shape[1], x.shape[2],
  )
  if mesh is None:
    return jnp.einsum('BTD,DNK->BTNK', x, w)
  ring = _bidi_all_gather_matmul if bidirectional else _all_gather_matmul

  def local(x, w):
    w = _gather_weight(w, weight_data_axis, 0, gather)
    return ring(x, w, model_axis, m)

  return shard_map.shard_map(
      local,
      mesh=mesh,
      in_specs=(
          P(data_axis, None, model_axis),
          P(weight_data_axis, model_axis, None),
      ),
      out_specs=P(data_axis, None, model_axis, None),
  )(x, w)


def matmul_reduce_scatter(
    y: jax.Array,
    w: jax.Array,
    *,
    data_axis: AxisSpec,
    model_axis: str,
    weight_data_axis: AxisSpec = None,
    bidirectional: bool = False,
    mesh: Mesh | None = None,
) -> jax.Array:
  """einsum('BTNJ,NJD->BTD') reduce-scattered over D chunk by chunk.

  Args:
    y: [B, T, N, J], B split over data_axis, N over model_axis.
    w: [N, J, D], N split over model_axis, D over weight_data_axis.
    data_axis: Mesh axis (or tuple of axes) of the batch dim B, or None.
    model_axis: Mesh axis of the ring (the contraction's N split).
    weight_data_axis: Mesh axis (or axes) w's D dim is split over (FSDP,
      e.g. sharding.py's 'data'), or None when w is whole on D. Gathered
      before the loop; the gradient is reduce-scattered back.
    bidirectional: Send half the partial sums each way (module docstring).
    mesh: The device mesh; None takes the enclosing `with mesh:` one.

  Returns:
    [B, T, D], B split over data_axis, D over model_axis.
  """
  fn = 'matmul_reduce_scatter'
  if y.ndim != 4 or w.ndim != 3 or y.shape[2:] != w.shape[:2]:
    raise ValueError(
        f'{fn}: expects y [B, T, N, J] and w [N, J, D], got {y.shape} and '
        f'{w.shape}.'
    )
  mesh, m, gather = _prepare(
      fn, mesh, data_axis, model_axis, weight_data_axis, bidirectional,
      y.shape[0], w.shape[0], w.shape[2],
  )
  if mesh is None:
    return jnp.einsum('BTNJ,NJD->BTD', y, w)
  ring = (
      _bidi_matmul_reduce_scatter if bidirectional else _matmul_reduce_scatter
  )

  def local(y, w):
    w = _gather_weight(w, weight_data_axis, 2, gather)
    return ring(y, w, model_axis, m)

  return shard_map.shard_map(
      local,
      mesh=mesh,
      in_specs=(
          P(data_axis, None, model_axis, None),
          P(model_axis, None, weight_data_axis),
      ),
      out_specs=P(data_axis, None, model_axis),
  )(y, w)


# Per-device bodies. Local shapes: x [B', T, C] holds D-chunk i (i the
# device's index on the ring, C = D / m), w_in [D, N', K], y [B', T, N', J],
# w_out [N', J, D], with B' = B / data and N' = N / m.


def _chunk(a: jax.Array, dim: int, index: jax.Array, c: int, lo: int = 0,
           width: int | None = None) -> jax.Array:
  """a[..., index * C + lo : + width, ...] along `dim` (index taken mod m)."""
  m = a.shape[dim] // c
  return lax.dynamic_slice_in_dim(
      a, (index % m) * c + lo, c if width is None else width, axis=dim
  )


def _in_mm(x: jax.Array, w: jax.Array) -> jax.Array:
  return jnp.einsum('BTC,CNK->BTNK', x, w)


def _out_mm(y: jax.Array, w: jax.Array) -> jax.Array:
  return jnp.einsum('BTNJ,NJC->BTC', y, w)


def _all_gather_matmul(x, w, axis: str, m: int):
  """Step s: send the chunk in hand left, multiply it (chunk i + s)."""
  i = lax.axis_index(axis)
  c = x.shape[-1]
  acc = None
  for s in range(m):
    # Issue the next send before this step's multiply: they are independent.
    nxt = lax.ppermute(x, axis, _ring(m, -1)) if s + 1 < m else None
    part = _in_mm(x, _chunk(w, 0, i + s, c))
    acc = part if acc is None else acc + part
    x = nxt
  return acc


def _bidi_all_gather_matmul(x, w, axis: str, m: int):
  """Round r receives chunk i - r from the left and i + r from the right."""
  i = lax.axis_index(axis)
  c = x.shape[-1]
  rounds = m // 2  # floor(m / 2) sequential send rounds
  acc = _in_mm(x, _chunk(w, 0, i, c))
  fwd = bwd = x  # fwd travels right (j -> j + 1), bwd travels left
  for r in range(1, rounds + 1):
    if r < rounds or m % 2:
      fwd = lax.ppermute(fwd, axis, _ring(m, 1))
      bwd = lax.ppermute(bwd, axis, _ring(m, -1))
      acc = acc + _in_mm(fwd, _chunk(w, 0, i - r, c))
      acc = acc + _in_mm(bwd, _chunk(w, 0, i + r, c))
    else:
      # Even m: chunk i + m/2 is the same from both sides; half each way.
      h = c // 2
      lo = lax.ppermute(fwd[..., :h], axis, _ring(m, 1))
      hi = lax.ppermute(bwd[..., h:], axis, _ring(m, -1))
      acc = acc + _in_mm(lo, _chunk(w, 0, i - r, c, 0, h))
      acc = acc + _in_mm(hi, _chunk(w, 0, i + r, c, h, h))
  return acc


def _matmul_reduce_scatter(y, w, axis: str, m: int):
  """Step s: partial for chunk i - 1 - s plus the sum received from the left."""
  i = lax.axis_index(axis)
  c = w.shape[-1] // m
  acc = _out_mm(y, _chunk(w, 2, i - 1, c))
  for s in range(1, m):
    # The send of the running sum and this step's multiply are independent.
    acc = lax.ppermute(acc, axis, _ring(m, 1)) + _out_mm(
        y, _chunk(w, 2, i - 1 - s, c)
    )
  return acc


def _widen(part: jax.Array, c: int, at: int) -> jax.Array:
  """Zero-pads a half chunk [..., C/2] to [..., C], placed at column `at`."""
  if part.shape[-1] == c:
    return part
  pad = [(0, 0)] * (part.ndim - 1) + [(at, c - at - part.shape[-1])]
  return jnp.pad(part, pad)


def _bidi_matmul_reduce_scatter(y, w, axis: str, m: int):
  """Two sums travel right and left and meet at their chunk's owner.

  The sum travelling right for chunk q starts at device q - m//2, the one
  travelling left at q + m//2; at step s device i adds its partial for chunk
  i + m//2 - s to the first and i - m//2 + s to the second. For even m the
  start device is the same for both: it splits its partial into halves.
  """
  i = lax.axis_index(axis)
  c = w.shape[-1] // m
  rounds = m // 2
  h = c // 2

  def mm(chunk, lo=0, width=None):
    return _out_mm(y, _chunk(w, 2, chunk, c, lo, width))

  if m % 2:
    fwd, bwd = mm(i + rounds), mm(i - rounds)
  else:
    fwd, bwd = mm(i + rounds, 0, h), mm(i + rounds, h, h)
  for s in range(1, rounds + 1):
    fwd = _widen(lax.ppermute(fwd, axis, _ring(m, 1)), c, 0)
    bwd = _widen(lax.ppermute(bwd, axis, _ring(m, -1)), c, c - h)
    if s < rounds:
      fwd = fwd + mm(i + rounds - s)
      bwd = bwd + mm(i - rounds + s)
  return fwd + bwd + mm(i)
