"""Tests for vit22b_pax.layers.collective_matmul on 8 simulated CPU devices.

Numbers: forward and gradients against the plain einsum on unsharded
arrays. Structure: the compiled HLO of the jitted, NamedSharding-fed
function, parsed by hlo_text: collectives classified by kind and by the
mesh axis their device groups span, dots counted, and the data
dependencies between sends and multiplies traced. Expected counts follow from the module's
schedule with m the model axis size: unidirectional m multiplies and m - 1
sends; bidirectional 2 * floor(m / 2) sends and m + 1 multiplies for even m
(the opposite chunk goes in two halves), m for odd m.
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import numpy as jnp
import numpy as np
from praxis import base_layer
from praxis import pax_fiddle
from praxis import pytypes

import hlo_text
from vit22b_pax.layers import collective_matmul

P = jax.sharding.PartitionSpec
NamedSharding = jax.sharding.NamedSharding
AXES = ('data', 'model')
MESHES = ((2, 4), (1, 8), (4, 2))
# B, T, D, N, K (= J): D / 8 = 8 keeps every chunk and half chunk >= 4 wide,
# so XLA does not rewrite the small dots into elementwise ops.
B, T, D, N, K = 8, 4, 64, 8, 12
SPECS = {
    'ag': dict(
        lhs=P('data', None, 'model'),  # x [B, T, D]
        rhs=P('data', 'model', None),  # w_in [D, N, K] as sharding.py has it
        out=P('data', None, 'model', None),
        einsum='BTD,DNK->BTNK',
        shapes=((B, T, D), (D, N, K)),
        fn=collective_matmul.all_gather_matmul,
    ),
    'rs': dict(
        lhs=P('data', None, 'model', None),  # y [B, T, N, J]
        rhs=P('model', None, 'data'),  # w_out [N, J, D]
        out=P('data', None, 'model'),
        einsum='BTNJ,NJD->BTD',
        shapes=((B, T, N, K), (N, K, D)),
        fn=collective_matmul.matmul_reduce_scatter,
    ),
}


def _assert_close(got, want):
  # float32 sums in another order: tight relative to the array's scale; a
  # wrong chunk gives errors of the order of the scale itself.
  np.testing.assert_allclose(
      got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max())
  )


def _mesh(shape):
  devices = np.asarray(jax.devices()[:8]).reshape(shape)
  return jax.sharding.Mesh(devices, AXES)


def _operands(op, seed=0):
  rng = np.random.default_rng(seed)
  (lhs_shape, rhs_shape) = SPECS[op]['shapes']
  lhs = rng.normal(size=lhs_shape)
  # Scale so outputs are O(1): the contraction sums D (or N * J) terms.
  rhs = rng.normal(size=rhs_shape) / np.sqrt(np.prod(lhs_shape[2:]))
  out_shape = jnp.einsum(SPECS[op]['einsum'], lhs, rhs).shape
  cot = rng.normal(size=out_shape)
  return (jnp.asarray(a, jnp.float32) for a in (lhs, rhs, cot))


def _collective(op, bidirectional, **kwargs):
  kwargs = dict(data_axis='data', model_axis='model',
                weight_data_axis='data', bidirectional=bidirectional) | kwargs
  return lambda a, b: SPECS[op]['fn'](a, b, **kwargs)


def _plain(op):
  return lambda a, b: jnp.einsum(SPECS[op]['einsum'], a, b)


def _loss(f, cot):
  return lambda a, b: jnp.sum(f(a, b) * cot)


def _put(mesh, op, lhs, rhs):
  return (jax.device_put(lhs, NamedSharding(mesh, SPECS[op]['lhs'])),
          jax.device_put(rhs, NamedSharding(mesh, SPECS[op]['rhs'])))


def _sends(m, bidirectional):
  return 2 * (m // 2) if bidirectional else m - 1


def _dots(m, bidirectional):
  return m + 1 if bidirectional and m % 2 == 0 else m


def _hlo(mesh, f, *args):
  with mesh:
    return hlo_text.Hlo(jax.jit(f).lower(*args).compile().as_text(), mesh)


CASES = [
    dict(testcase_name=f'{op}_{d}x{m}_{"bidi" if bidi else "uni"}', op=op,
         mesh_shape=(d, m), bidirectional=bidi)
    for op in SPECS for (d, m) in MESHES for bidi in (False, True)
]


class CollectiveMatmulTest(parameterized.TestCase):

  @parameterized.named_parameters(*CASES)
  def test_forward_equals_einsum(self, op, mesh_shape, bidirectional):
    mesh = _mesh(mesh_shape)
    lhs, rhs, _ = _operands(op)
    f = jax.jit(_collective(op, bidirectional))
    with mesh:
      out = f(*_put(mesh, op, lhs, rhs))
    self.assertTrue(out.sharding.is_equivalent_to(
        NamedSharding(mesh, SPECS[op]['out']), out.ndim), out.sharding)
    _assert_close(out, _plain(op)(lhs, rhs))

  @parameterized.named_parameters(*CASES)
  def test_gradients_equal_einsum(self, op, mesh_shape, bidirectional):
    mesh = _mesh(mesh_shape)
    lhs, rhs, cot = _operands(op)
    grad = jax.jit(jax.grad(
        _loss(_collective(op, bidirectional), cot), argnums=(0, 1)
    ))
    with mesh:
      got = grad(*_put(mesh, op, lhs, rhs))
    want = jax.grad(_loss(_plain(op), cot), argnums=(0, 1))(lhs, rhs)
    for g, w, spec in zip(got, want, (SPECS[op]['lhs'], SPECS[op]['rhs'])):
      # Gradients come back laid out as their operands.
      self.assertTrue(g.sharding.is_equivalent_to(
          NamedSharding(mesh, spec), g.ndim), g.sharding)
      _assert_close(g, w)

  @parameterized.named_parameters(*CASES)
  def test_forward_hlo(self, op, mesh_shape, bidirectional):
    n_data, m = mesh_shape
    mesh = _mesh(mesh_shape)
    lhs, rhs, _ = _operands(op)
    hlo = _hlo(mesh, _collective(op, bidirectional),
               *_put(mesh, op, lhs, rhs))
    sends = hlo.permutes()
    self.assertLen(sends, _sends(m, bidirectional))
    self.assertEqual(hlo.num_dots, _dots(m, bidirectional))
    # Every send goes to a ring neighbour on the model axis.
    steps = [s for _, _, s in sends]
    self.assertTrue(all(s <= {1, -1} and len(s) == 1 for s in steps), steps)
    if m > 2:  # with two devices left and right are the same pairs
      # x chunks travel left, partial sums right; bidi: half each way.
      got = sorted(s.pop() for s in steps)
      want = (sorted([1, -1] * (m // 2)) if bidirectional
              else [-1 if op == 'ag' else 1] * (m - 1))
      self.assertEqual(got, want)
    # The only other collective is the weight's all-gather over 'data'
    # (FSDP), as the plain einsum also does: nothing gathers the activation
    # or reduces the output over 'model'.
    w_local = {'ag': (D, N // m, K), 'rs': (N // m, K, D)}[op]
    want = {('all-gather', ('data',), w_local): 1}
    self.assertEqual(hlo.collectives(), want if n_data > 1 else {})

  @parameterized.named_parameters(*CASES)
  def test_forward_sends_overlap_multiplies(self, op, mesh_shape,
                                            bidirectional):
    # Data dependencies between sends and multiplies (the order XLA:CPU
    # schedules them in proves nothing: its collectives are synchronous).
    # all-gather-matmul: step s's multiply needs exactly the s sends that
    # brought its chunk, so it can run while the next send is in flight;
    # matmul-reduce-scatter: the send of step s carries the sum of exactly
    # the s partial products before it. A version that gathers everything
    # first (or multiplies everything, then reduces) fails both.
    _, m = mesh_shape
    mesh = _mesh(mesh_shape)
    lhs, rhs, _ = _operands(op)
    hlo = _hlo(mesh, _collective(op, bidirectional),
               *_put(mesh, op, lhs, rhs))
    self.assertLen(hlo.dots(), hlo.num_dots)  # none hidden in fusions
    rounds = range(1, m // 2 + 1)
    if op == 'ag':
      got = sorted(hlo.upstream(d, hlo_text.is_permute) for d in hlo.dots())
      want = ([0] + [r for r in rounds for _ in range(2)] if bidirectional
              else list(range(m)))
    else:
      got = sorted(
          hlo.upstream(name, hlo_text.is_dot) for name, _, _ in hlo.permutes()
      )
      want = ([r for r in rounds for _ in range(2)] if bidirectional
              else list(range(1, m)))
    self.assertEqual(got, want)

  @parameterized.named_parameters(*CASES)
  def test_gradient_hlo(self, op, mesh_shape, bidirectional):
    # The transpose of each ring is the other ring: the backward pass sends
    # as many chunks again and issues no model-axis gather or reduction.
    # all-gather-matmul's backward also re-sends x's chunks (they feed dW);
    # matmul-reduce-scatter's forward sums are not needed for gradients.
    # The weight gradient is reduce-scattered over 'data' (FSDP).
    n_data, m = mesh_shape
    mesh = _mesh(mesh_shape)
    lhs, rhs, cot = _operands(op)
    hlo = _hlo(
        mesh,
        jax.grad(_loss(_collective(op, bidirectional), cot), argnums=(0, 1)),
        *_put(mesh, op, lhs, rhs),
    )
    sends = hlo.permutes()
    rings = 2 if op == 'ag' else 1
    self.assertLen(sends, rings * _sends(m, bidirectional))
    steps = [s for _, _, s in sends]
    self.assertTrue(all(s <= {1, -1} and len(s) == 1 for s in steps), steps)
    if m > 2:
      # dX of the all-gather-matmul is a ring of sums travelling right (x's
      # chunks still travel left for dW); the matmul-reduce-scatter's
      # cotangent chunks travel left. Bidirectional: half each way.
      got = sorted(s.pop() for s in steps)
      want = (sorted([1, -1] * (rings * (m // 2))) if bidirectional
              else sorted([-1] * (m - 1) + ([1] * (m - 1) if op == 'ag'
                                            else [])))
      self.assertEqual(got, want)
    self.assertEqual(hlo.num_dots, 2 * _dots(m, bidirectional))
    kinds = {(kind, axes) for kind, axes, _ in hlo.collectives()}
    self.assertEqual(
        kinds,
        {('all-gather', ('data',)), ('reduce-scatter', ('data',))}
        if n_data > 1 else set(),
    )

  @parameterized.parameters('ag', 'rs')
  def test_hlo_checks_catch_the_plain_einsum(self, op):
    # The same parser on XLA's own sharded einsum finds the whole-operand
    # all-gather (input projection) / all-reduce (output projection) over
    # 'model' that the collective matmul avoids.
    mesh = _mesh((2, 4))
    lhs, rhs, _ = _operands(op)
    out = NamedSharding(mesh, SPECS[op]['out'])
    with mesh:
      hlo = hlo_text.Hlo(jax.jit(_plain(op), out_shardings=out).lower(
          *_put(mesh, op, lhs, rhs)).compile().as_text(), mesh)
    whole = {
        'ag': ('all-gather', ('model',), (B // 2, T, D)),
        'rs': ('all-reduce', ('model',), (B // 2, T, D)),
    }[op]
    self.assertIn(whole, hlo.collectives())
    self.assertEqual(hlo.permutes(), [])

  @parameterized.parameters('ag', 'rs')
  def test_model_axis_of_one_is_the_plain_einsum(self, op):
    mesh = _mesh((8, 1))
    lhs, rhs, _ = _operands(op)
    f = _collective(op, bidirectional=True)
    with mesh:
      jaxpr = str(jax.make_jaxpr(f)(lhs, rhs))
      args = _put(mesh, op, lhs, rhs)
      out = jax.jit(f)(*args)
    self.assertNotIn('shard_map', jaxpr)
    self.assertIn('dot_general', jaxpr)
    _assert_close(out, _plain(op)(lhs, rhs))
    hlo = _hlo(mesh, f, *args)
    self.assertEqual(hlo.permutes(), [])
    self.assertEqual(hlo.num_dots, 1)

  @parameterized.parameters('ag', 'rs')
  def test_no_mesh_is_the_plain_einsum(self, op):
    # E.g. praxis' abstract init, which runs outside paxml's `with mesh:`.
    lhs, rhs, _ = _operands(op)
    f = _collective(op, bidirectional=False)
    self.assertIsNone(collective_matmul.current_mesh())
    self.assertNotIn('shard_map', str(jax.make_jaxpr(f)(lhs, rhs)))
    np.testing.assert_allclose(f(lhs, rhs), _plain(op)(lhs, rhs),
                               rtol=1e-6)

  @parameterized.parameters('ag', 'rs')
  def test_explicit_mesh_without_context(self, op):
    mesh = _mesh((2, 4))
    lhs, rhs, _ = _operands(op)
    f = jax.jit(_collective(op, bidirectional=True, mesh=mesh))
    out = f(*_put(mesh, op, lhs, rhs))
    self.assertIn('shard_map', str(jax.make_jaxpr(f)(lhs, rhs)))
    _assert_close(out, _plain(op)(lhs, rhs))

  @parameterized.parameters('ag', 'rs')
  def test_batch_and_weight_whole_on_data_axis(self, op):
    # data_axis=None (batch replicated) and weight_data_axis=None (weight
    # replicated over 'data'): every 'data' replica computes the same
    # thing, shard_map knows it (check_rep), so the gradient needs no
    # 'data' reduction and there is no collective but the ring's sends.
    mesh = _mesh((2, 4))
    lhs, rhs, cot = _operands(op)
    f = _collective(op, bidirectional=False, data_axis=None,
                    weight_data_axis=None)
    args = (jax.device_put(lhs, NamedSharding(
        mesh, P(None, *SPECS[op]['lhs'][1:]))), jax.device_put(
            rhs, NamedSharding(mesh, P(*(
                None if a == 'data' else a for a in SPECS[op]['rhs'])))))
    grad = jax.grad(_loss(f, cot), argnums=(0, 1))
    with mesh:
      out = jax.jit(f)(*args)
      got = jax.jit(grad)(*args)
    _assert_close(out, _plain(op)(lhs, rhs))
    want = jax.grad(_loss(_plain(op), cot), argnums=(0, 1))(lhs, rhs)
    for g, w in zip(got, want):
      _assert_close(g, w)
    hlo = _hlo(mesh, grad, *args)
    self.assertEqual(hlo.collectives(), {})
    self.assertLen(hlo.permutes(), 2 * _sends(4, False) if op == 'ag'
                   else _sends(4, False))

  def test_gradients_through_scan_and_remat(self):
    # How praxis runs the blocks: nn.scan over layers, jax.checkpoint with
    # a policy. Two layers, each x + RS(tanh(AG(x))).
    mesh = _mesh((2, 4))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    w_in = jnp.asarray(rng.normal(size=(2, D, N, K)) / 8, jnp.float32)
    w_out = jnp.asarray(rng.normal(size=(2, N, K, D)) / 8, jnp.float32)

    def loss(x, w_in, w_out, collective):
      ag = _collective('ag', True) if collective else _plain('ag')
      rs = _collective('rs', False) if collective else _plain('rs')

      def layer(h, w):
        return h + rs(jnp.tanh(ag(h, w[0])), w[1]), None

      body = jax.checkpoint(
          layer, policy=jax.checkpoint_policies.checkpoint_dots
      )
      return jnp.sum(jax.lax.scan(body, x, (w_in, w_out))[0] ** 2)

    grad = jax.grad(loss, argnums=(0, 1, 2))
    with mesh:
      got = jax.jit(grad, static_argnums=3)(
          jax.device_put(x, NamedSharding(mesh, SPECS['ag']['lhs'])),
          jax.device_put(w_in, NamedSharding(mesh, P(None, *SPECS['ag'][
              'rhs']))),
          jax.device_put(w_out, NamedSharding(mesh, P(None, *SPECS['rs'][
              'rhs']))),
          True,
      )
    want = grad(x, w_in, w_out, False)
    for g, w in zip(got, want):
      _assert_close(g, w)

  def test_preconditions(self):
    mesh = _mesh((2, 4))
    ag = collective_matmul.all_gather_matmul
    rs = collective_matmul.matmul_reduce_scatter
    kw = dict(data_axis='data', model_axis='model', mesh=mesh)
    x = jnp.zeros((B, T, D))
    cases = [
        (ag, (x, jnp.zeros((D, 6, K))), {}, r'heads N .* \(6\) .* by 4'),
        (ag, (jnp.zeros((3, T, D)), jnp.zeros((D, N, K))), {},
         r'batch B .* \(3\) .* by 2'),
        (ag, (jnp.zeros((B, T, 18)), jnp.zeros((18, N, K))), {},
         r'model dims D .* \(18\) .* by 4'),
        (ag, (jnp.zeros((B, T, 12)), jnp.zeros((12, N, K))),
         dict(bidirectional=True), r'chunk D / m \(3\) .* by 2'),
        (ag, (jnp.zeros((B, T, 6)), jnp.zeros((6, N, K))),
         dict(weight_data_axis='data', mesh=_mesh((4, 2))),
         r'weight dim D .* \(6\) .* by 4'),
        (ag, (x, jnp.zeros((D + 1, N, K))), {}, r'x \[B, T, D\]'),
        (ag, (x, jnp.zeros((D, N, K))), dict(model_axis='mdl'),
         r"model_axis 'mdl' is not an axis"),
        (ag, (x, jnp.zeros((D, N, K))), dict(model_axis=('model',)),
         r'model_axis must be one mesh axis name'),
        (rs, (jnp.zeros((B, T, N, K)), jnp.zeros((N, K + 1, D))), {},
         r'y \[B, T, N, J\]'),
        (rs, (jnp.zeros((B, T, N, K)), jnp.zeros((N, K, 18))), {},
         r'matmul_reduce_scatter: model dims D .* \(18\)'),
        (rs, (jnp.zeros((B, T, N, K)), jnp.zeros((N, K, D))),
         dict(data_axis='batch'), r"data_axis 'batch' is not an axis"),
    ]
    for fn, args, extra, message in cases:
      with self.subTest(message):
        with self.assertRaisesRegex(ValueError, message):
          fn(*args, **(kw | extra))


class _Projections(base_layer.BaseLayer):
  """x + RS(tanh(AG(x))), as the parallel block's projections (test only).

  Attributes:
    collective: Use the collective matmuls (else plain einsums).
    bidirectional: Their bidirectional variant.
  """

  collective: bool = False
  bidirectional: bool = False

  def setup(self):
    for name, shape, split in (('w_in', [D, N, K], ['data', 'model', None]),
                               ('w_out', [N, K, D], ['model', None, 'data'])):
      self.create_variable(name, base_layer.WeightHParams(
          shape=shape, mesh_shape=self.mesh_shape,
          tensor_split_dims_mapping=split))

  def __call__(self, x: pytypes.JTensor) -> pytypes.JTensor:
    if not self.collective:
      h = jnp.einsum('BTD,DNK->BTNK', x, self.theta.w_in)
      return x + jnp.einsum('BTNJ,NJD->BTD', jnp.tanh(h), self.theta.w_out)
    kw = dict(data_axis='data', model_axis='model', weight_data_axis='data',
              bidirectional=self.bidirectional)
    h = collective_matmul.all_gather_matmul(x, self.theta.w_in, **kw)
    return x + collective_matmul.matmul_reduce_scatter(
        jnp.tanh(h), self.theta.w_out, **kw)


class PraxisLayerTest(parameterized.TestCase):

  @parameterized.parameters(False, True)
  def test_inside_a_praxis_layer_under_pjit(self, bidirectional):
    # As paxml runs a layer: variables initialized and their partition
    # specs taken outside any mesh (the no-mesh path), then the jitted
    # apply and its gradient traced inside `with mesh:`.
    mesh = _mesh((2, 4))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(B, T, D)),
                    jnp.float32)
    layers = [
        base_layer.instantiate(_config(collective, bidirectional))
        for collective in (False, True)
    ]
    with base_layer.JaxContext.new_context():
      variables = layers[1].init(jax.random.PRNGKey(0), x)
      meta = layers[1].abstract_init_with_metadata(x)
    specs = base_layer.var_partition_specs(
        meta, mesh_shape=[2, 4], device_axis_names=list(AXES))
    shardings = jax.tree_util.tree_map(
        lambda s: NamedSharding(mesh, s), specs)

    def loss(layer, v, x):
      with base_layer.JaxContext.new_context():
        return jnp.sum(layer.apply(v, x) ** 2)

    with mesh:
      v = jax.device_put(variables, shardings)
      xs = jax.device_put(x, NamedSharding(mesh, P('data', None, 'model')))
      got = jax.jit(jax.value_and_grad(lambda v, x: loss(layers[1], v, x),
                                       argnums=(0, 1)))(v, xs)
      hlo = hlo_text.Hlo(jax.jit(lambda v, x: loss(layers[1], v, x)).lower(
          v, xs).compile().as_text(), mesh)
    want = jax.value_and_grad(lambda v, x: loss(layers[0], v, x),
                              argnums=(0, 1))(variables, x)
    for g, w in zip(jax.tree_util.tree_leaves(got),
                    jax.tree_util.tree_leaves(want)):
      _assert_close(g, w)
    self.assertLen(hlo.permutes(), 2 * _sends(4, bidirectional))
    # The one model-axis collective is the loss's scalar sum.
    self.assertEqual(
        [(kind, dims) for kind, axes, dims in hlo.collectives()
         if 'model' in axes],
        [('all-reduce', ())],
    )


def _config(collective, bidirectional):
  return pax_fiddle.Config(
      _Projections, name='proj', collective=collective,
      bidirectional=bidirectional, ici_mesh_shape=[2, 4],
      mesh_axis_names=list(AXES))


if __name__ == '__main__':
  absltest.main()
