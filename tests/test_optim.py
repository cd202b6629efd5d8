"""Tests for vit22b_pax.optim: schedule, Scaling-ViT Adafactor, WD groups.

The optimizer runs the way paxml runs it: through paxml.learners.Learner
(global-norm clipping, prefix vectorization of stacked variables) and, for
sharding, through paxml.tasks_lib's state partition specs under jit on the
8 simulated CPU devices of tests/conftest.py.
"""

import math

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import numpy as jnp
import numpy as np
import optax
from paxml import learners
from paxml import tasks_lib
from praxis import base_hyperparams
from praxis import base_layer
from praxis import optimizers
from praxis import pax_fiddle
from praxis import py_utils

from vit22b_pax import optim

NestedMap = py_utils.NestedMap
W = base_layer.WeightHParams
# Update tolerance: float32 optimizer vs float64 reference; the new-minus-old
# parameter difference also carries the float32 rounding of the parameters.
RTOL, ATOL = 2e-5, 1e-6


def _ref_mult(t, warmup, timescale, cooldown, total):
  """Closed-form rsqrt schedule multiplier (big_vision rsqrt), in float64."""
  warm = min(1.0, t / warmup) if warmup else 1.0
  decay = 1.0 / math.sqrt(1.0 + max(0.0, t - warmup) / timescale)
  cool = min(1.0, max(0.0, (total - t) / cooldown)) if cooldown else 1.0
  return warm * decay * cool


def _bf16_round(x):
  """Rounds float32 values to bfloat16 (nearest even), returned as float32."""
  bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
  bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
  return bits.astype(np.uint32).view(np.float32)


def _learner(vectorize=True, **knobs):
  return base_hyperparams.instantiate(
      pax_fiddle.Config(
          learners.Learner,
          name='learner',
          loss_name='loss',
          optimizer=optim.make_optimizer(**knobs),
          vectorize_on_repeat_prefix=vectorize,
      )
  )


def _step_fn(learner, var_hparams):
  """One paxml training update: clip, transform, apply."""

  def step(grads, states, mdl_vars):
    with base_layer.JaxContext.new_context():
      updates, states = learner.update_states(
          grads, states, mdl_vars, var_hparams
      )
      mdl_vars = learner.apply_gradient(mdl_vars, updates, var_hparams)
    return mdl_vars, states

  return step


def _random_vars(var_hparams, seed):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda h: jnp.asarray(
          rng.standard_normal(tuple(h.full_shape)), jnp.float32
      ),
      var_hparams,
  )


def _find(states, cls):
  """The states of type cls inside the learner's (nested) chain state."""
  is_state = lambda x: isinstance(x, cls)
  return [
      s for s in jax.tree_util.tree_leaves(states, is_leaf=is_state)
      if is_state(s)
  ]


def _adafactor_state(states):
  """count, v_row, v_col, v (optax.FactoredState) and m (optax.EmaState)."""
  (factored,) = _find(states, optax.FactoredState)
  (ema,) = _find(states, optax.EmaState)
  (schedule,) = _find(states, optax.ScaleByScheduleState)
  # The three counters of the chain advance together.
  assert int(ema.count) == int(schedule.count) == int(factored.count)
  return jax.tree_util.tree_map(np.asarray, NestedMap(
      count=factored.count, v_row=factored.v_row, v_col=factored.v_col,
      v=factored.v, m=ema.ema))


class RsqrtScheduleTest(parameterized.TestCase):

  def test_closed_form(self):
    knobs = dict(warmup_steps=100, timescale=50, cooldown_steps=200,
                 total_steps=1000)
    schedule = base_hyperparams.instantiate(
        pax_fiddle.Config(optim.RsqrtSchedule, **knobs)
    )
    lr = optim.learning_rate_fn(optim.make_optimizer(learning_rate=2e-3,
                                                     **knobs))
    ref = lambda t: _ref_mult(t, 100, 50, 200, 1000)
    # 0, mid-warmup, end of warmup, decay, start of cooldown, mid-cooldown,
    # one before the end, the end, past the end.
    for t in (0, 50, 100, 300, 800, 900, 999):
      with self.subTest(step=t):
        got = float(schedule.value_at(jnp.asarray(t, jnp.uint32)))
        self.assertAlmostEqual(got, ref(t), delta=1e-6 * ref(t) + 1e-12)
        self.assertAlmostEqual(float(lr(t)), 2e-3 * ref(t), delta=1e-8)
    self.assertEqual(float(schedule.value_at(0)), 0.0)
    self.assertAlmostEqual(float(schedule.value_at(100)), 1.0, places=6)
    self.assertAlmostEqual(
        float(schedule.value_at(900)), 0.5 / math.sqrt(1 + 800 / 50), places=6
    )
    self.assertEqual(float(schedule.value_at(1000)), 0.0)  # Exactly 0.
    self.assertEqual(float(schedule.value_at(1200)), 0.0)

  def test_recipe_defaults(self):
    lr = optim.learning_rate_fn(optim.make_optimizer())
    for t in (5_000, 10_000, 60_000, 152_000, 170_000, 177_000):
      with self.subTest(step=t):
        self.assertAlmostEqual(
            float(lr(t)), 1e-3 * _ref_mult(t, 10_000, 10_000, 50_000, 177_000),
            delta=1e-9,
        )

  @parameterized.named_parameters(
      ('overlap', dict(warmup_steps=600, cooldown_steps=500, total_steps=1000),
       r'warmup_steps \(600\) \+ cooldown_steps \(500\).*total_steps'),
      ('timescale', dict(timescale=0), 'timescale'),
      ('cap', dict(beta2_cap=1.5), 'beta2_cap'),
      ('beta1', dict(beta1=1.0), 'beta1'),
      ('dtype', dict(momentum_dtype='float16'), 'momentum_dtype'),
      ('regex', dict(rules=(('[', 0.1),)), 'bad regex'),
      ('lr', dict(learning_rate=0.0), 'learning_rate'),
  )
  def test_bad_knob_names_itself(self, knobs, message):
    with self.assertRaisesRegex(ValueError, message):
      optim.make_optimizer(**knobs)


_WD_VARS = NestedMap(params=NestedMap(
    patch_embed=NestedMap(w=W([12, 40]), pos_emb=W([16, 40])),
    encoder=NestedMap(
        x_layers_0=NestedMap(
            w_in=W([40, 4, 24]), b_in=W([4, 16]),
            ln=NestedMap(scale=W([40])),
        ),
        repeat=NestedMap(sub=NestedMap(x_layers_0=NestedMap(
            w_out=W([4, 16, 40], repeat_prefix=[3]),
            b_out=W([40], repeat_prefix=[3]),
        ))),
    ),
    map_head=NestedMap(probe=W([1, 40]), w_q=W([40, 4, 10])),
    head=NestedMap(w=W([40, 48]), b=W([48])),
))
_RECIPE_DECAY = {
    'params/patch_embed/w': 0.03,
    'params/patch_embed/pos_emb': 0.0,
    'params/encoder/x_layers_0/w_in': 0.03,
    'params/encoder/x_layers_0/b_in': 0.0,  # Rank 2, still a bias.
    'params/encoder/x_layers_0/ln/scale': 0.0,
    'params/encoder/repeat/sub/x_layers_0/w_out': 0.03,
    'params/encoder/repeat/sub/x_layers_0/b_out': 0.0,
    'params/map_head/probe': 0.0,
    'params/map_head/w_q': 0.03,
    'params/head/w': 3.0,
    'params/head/b': 0.0,
}
# A match-all rule still skips per-layer vectors, including the stacked
# [3, 40] b_out, but not the rank-2 ones.
_MATCH_ALL_DECAY = dict(
    {k: 0.5 for k in _RECIPE_DECAY},
    **{'params/encoder/x_layers_0/ln/scale': 0.0,
       'params/encoder/repeat/sub/x_layers_0/b_out': 0.0,
       'params/head/b': 0.0},
)


class WeightDecayTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('recipe', None, _RECIPE_DECAY),
      ('match_all_min_rank', (('.', 0.5),), _MATCH_ALL_DECAY),
  )
  def test_zero_gradient_step_is_pure_decay(self, rules, expected):
    vh = _WD_VARS
    self.assertEqual(optim.describe_weight_decay(vh, rules), expected)

    # No warmup, so lr(0) = peak and lr(1) = peak / sqrt(1 + 1 / timescale).
    knobs = dict(learning_rate=0.1, warmup_steps=0, timescale=4,
                 cooldown_steps=0, total_steps=100, rules=rules)
    learner = _learner(**knobs)
    lrs = [0.1 * _ref_mult(t, 0, 4, 0, 100) for t in (0, 1)]
    params = _random_vars(vh, seed=0)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    states = learner.get_grad_tx(vh).init(params)
    step = jax.jit(_step_fn(learner, vh))
    new = params
    for _ in lrs:
      new, states = step(zeros, states, new)

    names = py_utils.extract_prefixed_keys_from_nested_map(vh)
    for name, p0, p2 in zip(
        jax.tree_util.tree_leaves(names),
        jax.tree_util.tree_leaves(params),
        jax.tree_util.tree_leaves(new),
    ):
      wd = expected[name]
      with self.subTest(name=name):
        if wd:
          want = np.asarray(p0) * (1 - lrs[0] * wd) * (1 - lrs[1] * wd)
          np.testing.assert_allclose(p2, want, rtol=1e-6, atol=1e-7)
        else:
          np.testing.assert_array_equal(p2, p0)


class AdafactorReferenceTest(parameterized.TestCase):
  """Teacher-forced comparison against numpy, one step at a time.

  Each step's reference starts from the optimizer's own previous state, so
  the bfloat16 first moment is compared exactly where it is rounded.
  """

  PEAK = 0.05
  SCHEDULE = dict(warmup_steps=2, timescale=100_000, cooldown_steps=2,
                  total_steps=10_000)
  # Global gradient norms per step: clipping to 1.0 binds on some.
  NORMS = (3.0, 0.5, 2.0, 0.8)

  @classmethod
  def _ref_var(cls, g, m, v_row, v_col, v, p, count, lr, wd, cap,
               variant=''):
    """Numpy Scaling-ViT Adafactor for one variable (float64)."""
    g, m, p = (np.asarray(a, np.float64) for a in (g, m, p))
    if g.ndim == 3:
      # A [D, N, K] weight (D 40 < K 48): each head's [D, K] slice is
      # factored as its own matrix; the stored statistics are v_row [D, N]
      # (K, the largest dim, dropped) and v_col [N, K].
      heads = [
          cls._ref_var(g[:, n], m[:, n], v_row[:, n], v_col[n], v, p[:, n],
                       count, lr, wd, cap, variant)
          for n in range(g.shape[1])
      ]
      stack = lambda i, axis: np.stack([r[i] for r in heads], axis)
      return stack(0, 1), stack(1, 1), stack(2, 1), stack(3, 0), v
    t = count + 1.0
    beta2 = 1 - t**-0.8 if variant == 'no_cap' else min(cap, 1 - t**-0.8)
    beta2 = float(np.float32(beta2))  # The optimizer's float32 decay.
    g_sq = g * g + 1e-30
    if g.ndim == 2 and min(g.shape) >= 32:  # Factored: rows x cols.
      v_row = beta2 * v_row + (1 - beta2) * g_sq.mean(axis=1)
      v_col = beta2 * v_col + (1 - beta2) * g_sq.mean(axis=0)
      v_hat = np.outer(v_row, v_col) / v_row.mean()
      u = g / np.sqrt(v_hat)
    else:
      v = beta2 * v + (1 - beta2) * g_sq
      u = g / np.sqrt(v)
    m_new = 0.9 * m + 0.1 * u
    used = _bf16_round(m_new) if variant == 'rounded_update' else m_new
    update = -lr * used - lr * wd * p
    return update, m_new, v_row, v_col, v

  @parameterized.named_parameters(
      ('recipe', 0.999, 0, ('rounded_update', 'no_clip')),
      ('default_cap_binds', 0.999, 6000, ('no_cap', 'rounded_update')),
      ('small_cap_binds', 0.5, 0, ('no_cap', 'rounded_update', 'no_clip')),
  )
  def test_matches_numpy(self, cap, start_count, wrong_variants):
    vh = NestedMap(params=NestedMap(
        head=NestedMap(w=W([40, 48]), b=W([48])),
        body=NestedMap(w_in=W([40, 3, 48])),
    ))
    # params/head/w is the head kernel; body kernels get the body decay.
    wds = {'head/w': 3.0, 'head/b': 0.0, 'body/w_in': 0.03}
    get = lambda tree, n: tree.params[n.split('/')[0]][n.split('/')[1]]
    learner = _learner(learning_rate=self.PEAK, beta2_cap=cap,
                       **self.SCHEDULE)
    params = _random_vars(vh, seed=1)
    states = learner.get_grad_tx(vh).init(params)
    # Jump the update counters (beta2 and lr schedules) to start_count.
    states = jax.tree_util.tree_map(
        lambda x: jnp.full_like(x, start_count) if x.dtype == jnp.int32 else x,
        states,
    )
    step = jax.jit(_step_fn(learner, vh))
    rng = np.random.default_rng(2)
    max_diff = {v: 0.0 for v in wrong_variants}
    for k, norm in enumerate(self.NORMS):
      raw = {n: rng.standard_normal(get(params, n).shape) for n in wds}
      scale = norm / math.sqrt(sum(np.sum(g * g) for g in raw.values()))
      grads = jax.tree_util.tree_map(lambda x: x, params)
      for n, g in raw.items():
        grads.params[n.split('/')[0]][n.split('/')[1]] = jnp.asarray(
            g * scale, jnp.float32)
      before = _adafactor_state(states)
      count = start_count + k
      self.assertEqual(int(before.count), count)
      new_params, states = step(grads, states, params)
      after = _adafactor_state(states)
      lr = self.PEAK * _ref_mult(count, 2, 100_000, 2, 10_000)
      clip = min(1.0, 1.0 / norm)
      for n in wds:
        with self.subTest(step=k, var=n):
          head = lambda tree: np.asarray(get(tree, n), np.float64)
          state = [head(s) for s in (before.m, before.v_row, before.v_col,
                                     before.v)]
          args = (head(grads) * clip, *state, head(params), count, lr,
                  wds[n], cap)
          update, m, v_row, v_col, v = self._ref_var(*args)
          np.testing.assert_allclose(
              head(new_params) - head(params), update, rtol=RTOL, atol=ATOL
          )
          self.assertEqual(get(after.m, n).dtype, jnp.bfloat16)
          # Stored m is m rounded to bfloat16 (half an ulp <= 2^-8 relative;
          # atol for entries where 0.9 m and 0.1 u nearly cancel).
          np.testing.assert_allclose(
              head(after.m), m, rtol=2**-8, atol=1e-7
          )
          if n != 'head/b':
            np.testing.assert_allclose(head(after.v_row), v_row, rtol=1e-5)
            np.testing.assert_allclose(head(after.v_col), v_col, rtol=1e-5)
          else:
            np.testing.assert_allclose(head(after.v), v, rtol=1e-5)
          for variant in wrong_variants:
            wrong_args = args
            if variant == 'no_clip':
              wrong_args = (head(grads), *args[1:])
            # (XLA on CPU may elide an f32->bf16->f32 round trip, so the
            # 'rounded_update' variant only proves the tolerance is tight.)
            wrong = self._ref_var(*wrong_args, variant=variant)[0]
            excess = np.abs(wrong - update) / (RTOL * np.abs(update) + ATOL)
            max_diff[variant] = max(max_diff[variant], float(np.max(excess)))
      self.assertEqual(int(after.count), count + 1)
      params = new_params
    # The tolerance above separates the recipe from each plausible mistake.
    for variant, excess in max_diff.items():
      self.assertGreater(excess, 10, msg=variant)


class StackedVectorizationTest(absltest.TestCase):

  def test_stacked_equals_per_layer(self):
    # 4 stacked layers; min_dim_size_to_factor 4 so that factoring the
    # stacked [4, 8] bias over its layer dim would be possible (and wrong).
    num, knobs = 4, dict(learning_rate=0.05, warmup_steps=0,
                         cooldown_steps=0, total_steps=100,
                         min_dim_size_to_factor=4, body_weight_decay=0.5)
    stacked_vh = NestedMap(params=NestedMap(encoder=NestedMap(
        repeat=NestedMap(sub=NestedMap(x_layers_0=NestedMap(
            w_in=W([6, 8], repeat_prefix=[num]),
            b_in=W([8], repeat_prefix=[num]),
        ))))))
    layers_vh = NestedMap(params=NestedMap(encoder=NestedMap({
        f'x_layers_{i}': NestedMap(w_in=W([6, 8]), b_in=W([8]))
        for i in range(num)
    })))
    stacked = _random_vars(stacked_vh, seed=3)
    rng = np.random.default_rng(4)
    grads = [
        jax.tree_util.tree_map(
            lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32),
            stacked,
        ) for _ in range(2)
    ]

    def unstack(tree):
      sub = tree.params.encoder.repeat.sub.x_layers_0
      return NestedMap(params=NestedMap(encoder=NestedMap({
          f'x_layers_{i}': NestedMap(w_in=sub.w_in[i], b_in=sub.b_in[i])
          for i in range(num)
      })))

    def run(learner, vh, params, grad_list):
      states = learner.get_grad_tx(vh).init(params)
      step = jax.jit(_step_fn(learner, vh))
      for g in grad_list:
        params, states = step(g, states, params)
      return params

    got = unstack(run(_learner(**knobs), stacked_vh, stacked, grads))
    want = run(_learner(**knobs), layers_vh, unstack(stacked),
               [unstack(g) for g in grads])
    for a, b in zip(jax.tree_util.tree_leaves(got),
                    jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Without praxis' prefix vectorization the stacked bias gets factored.
    unvectorized = unstack(run(_learner(vectorize=False, **knobs), stacked_vh,
                               stacked, grads))
    bias = lambda t: np.stack(
        [t.params.encoder[f'x_layers_{i}'].b_in for i in range(num)])
    self.assertGreater(np.max(np.abs(bias(unvectorized) - bias(want))), 1e-4)
    # And the raw transformation refuses to shard stacked state.
    raw = base_hyperparams.instantiate(
        optim.make_optimizer(**knobs)).get_grad_transformation(stacked_vh)
    with self.assertRaisesRegex(ValueError, 'repeat_prefix'):
      raw.init_partition_spec(stacked_vh)


class PjitTest(absltest.TestCase):

  def test_sharded_state_on_2x4_mesh(self):
    mesh_shape, axes = [2, 4], ('data', 'model')
    sharded = lambda shape, split, **kw: W(
        shape, mesh_shape=mesh_shape, tensor_split_dims_mapping=split, **kw)
    vh = NestedMap(params=NestedMap(
        head=NestedMap(w=sharded([64, 96], ['data', 'model']),
                       b=sharded([96], ['model'])),
        encoder=NestedMap(repeat=NestedMap(sub=NestedMap(
            x_layers_0=NestedMap(
                w_in=sharded([64, 128], [None, 'model'], repeat_prefix=[2],
                             repeat_prefix_split_dims_mapping=[-1]),
                b_in=sharded([128], ['model'], repeat_prefix=[2],
                             repeat_prefix_split_dims_mapping=[-1]),
            )))),
    ))
    learner = _learner(learning_rate=0.01, warmup_steps=0, timescale=10,
                       cooldown_steps=0, total_steps=100)
    grad_tx = learner.get_grad_tx(vh)
    specs = tasks_lib.create_state_partition_specs(
        vh, mesh_shape=mesh_shape, mesh_axis_names=axes,
        discard_opt_states=False, learners=[learner],
    )
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), axes)
    to_sharding = lambda tree: jax.tree_util.tree_map(
        lambda s: jax.sharding.NamedSharding(mesh, s), tree,
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    var_sh, opt_sh = to_sharding(specs.mdl_vars), to_sharding(
        specs.opt_states[0])

    params = _random_vars(vh, seed=5)
    rng = np.random.default_rng(6)
    grads = [jax.tree_util.tree_map(
        lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32),
        params) for _ in range(2)]
    # State shapes and dtypes are what init_partition_spec promises.
    state0 = grad_tx.init(params)
    # As tasks_lib does, unwrap the MaskedState that sharded_chain adds.
    is_masked = lambda x: isinstance(x, optax.MaskedState)
    spec_hparams = jax.tree_util.tree_map(
        lambda x: x.inner_state if is_masked(x) else x,
        grad_tx.init_partition_spec(vh), is_leaf=is_masked)
    jax.tree_util.tree_map(
        lambda a, h: self.assertEqual(
            (tuple(a.shape), a.dtype), (tuple(h.full_shape), jnp.dtype(h.dtype))
        ),
        state0, spec_hparams,
    )

    step = _step_fn(learner, vh)
    sharded_init = jax.jit(grad_tx.init, in_shardings=(var_sh,),
                           out_shardings=opt_sh)
    sharded_step = jax.jit(step, in_shardings=(var_sh, opt_sh, var_sh),
                           out_shardings=(var_sh, opt_sh))
    p_sh, s_sh = params, sharded_init(params)
    p_ref, s_ref = params, state0
    for g in grads:
      p_sh, s_sh = sharded_step(g, s_sh, p_sh)
      p_ref, s_ref = jax.jit(step)(g, s_ref, p_ref)

    for a, b in zip(jax.tree_util.tree_leaves(p_sh),
                    jax.tree_util.tree_leaves(p_ref)):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    # One FactoredState and one EmaState per group (unstacked, stacked).
    factored = _find(s_sh, optax.FactoredState)
    ema = _find(s_sh, optax.EmaState)
    self.assertLen(factored, 2)
    self.assertLen(ema, 2)
    group = lambda states, ndim: [s for s in states if s.count.ndim == ndim][0]
    unstacked = NestedMap(m=group(ema, 0).ema, v_row=group(factored, 0).v_row,
                          v_col=group(factored, 0).v_col,
                          v=group(factored, 0).v)
    stacked = group(factored, 1)
    p = jax.sharding.PartitionSpec
    checks = [
        # (array, spec, per-device shard shape)
        (unstacked.v_row.params.head.w, p('data'), (32,)),
        (unstacked.v_col.params.head.w, p('model'), (24,)),
        (unstacked.m.params.head.w, p('data', 'model'), (32, 24)),
        (unstacked.v.params.head.b, p('model'), (24,)),
        (stacked.v_row.params.encoder.repeat.sub.x_layers_0.w_in,
         p(None, None), (2, 64)),
        (stacked.v_col.params.encoder.repeat.sub.x_layers_0.w_in,
         p(None, 'model'), (2, 32)),
    ]
    for array, spec, shard in checks:
      self.assertEqual(array.sharding.spec, spec)
      self.assertEqual(array.addressable_shards[0].data.shape, shard)
    self.assertEqual(unstacked.m.params.head.w.dtype, jnp.bfloat16)


class OptaxStateLayoutTest(absltest.TestCase):
  """The partition specs describe the state optax makes."""

  def test_spec_follows_optax_on_tied_dims(self):
    # [32, 32, 8, 8]: optax's (unstable) argsort drops dim 0 from v_row where
    # a stable sort would drop dim 1; the two dims are sharded differently.
    split = ['data', 'model', None, None]
    vh = NestedMap(params=NestedMap(body=NestedMap(
        w_tie=W([32, 32, 8, 8], mesh_shape=[2, 4],
                tensor_split_dims_mapping=split))))
    tx = optim.scaling_vit_adafactor(lambda count: 0.1)
    params = _random_vars(vh, seed=7)
    grads = _random_vars(vh, seed=8)
    _, state = tx.update(grads, tx.init(params), params)
    # The first update has beta2 = 0: v_row is mean(g^2 + eps) over the dim
    # it drops. Find that dim from the values.
    g_sq = np.asarray(grads.params.body.w_tie, np.float64) ** 2 + 1e-30
    v_row = np.asarray(state[0].v_row.params.body.w_tie)
    dropped = [d for d in (0, 1)
               if np.allclose(v_row, g_sq.mean(axis=d), rtol=1e-5)]
    self.assertLen(dropped, 1)
    kept = 1 - dropped[0]
    spec = tx.init_partition_spec(vh)[0]
    self.assertEqual(
        list(spec.v_row.params.body.w_tie.tensor_split_dims_mapping),
        [split[kept], None, None])
    self.assertEqual(
        list(spec.v_col.params.body.w_tie.tensor_split_dims_mapping),
        [split[dropped[0]], None, None])

  def test_praxis_generic_optax_specs_do_not_fit_the_state(self):
    # Why scaling_vit_adafactor carries its own init_partition_spec: for a
    # plain optax transformation paxml derives the state specs with
    # optax.tree_map_params (optimizers.partition_params), which gives every
    # params-shaped slot the variable's spec: v_row would be declared
    # [40, 48] float32 while it is [40], and m float32 while it is bfloat16.
    vh = NestedMap(params=NestedMap(head=NestedMap(
        w=W([40, 48], dtype=jnp.float32))))
    params = _random_vars(vh, seed=9)
    tx = optim.scaling_vit_adafactor(lambda count: 0.1)
    state = tx.init(params)
    plain = optax.chain(*[optax.scale_by_factored_rms(
        min_dim_size_to_factor=32), optax.ema(0.9, debias=False,
                                              accumulator_dtype=jnp.bfloat16)])
    generic = optimizers.partition_params(plain, vh, plain.init(params))
    self.assertEqual(generic[0].v_row.params.head.w.shape, [40, 48])
    self.assertEqual(generic[1].ema.params.head.w.dtype, jnp.float32)
    ours = tx.init_partition_spec(vh)
    self.assertEqual(state[0].v_row.params.head.w.shape, (40,))
    self.assertEqual(ours[0].v_row.params.head.w.shape, [40])
    self.assertEqual(state[1].ema.params.head.w.dtype, jnp.bfloat16)
    self.assertEqual(ours[1].ema.params.head.w.dtype, jnp.bfloat16)


if __name__ == '__main__':
  absltest.main()
