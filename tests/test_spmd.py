"""SPMD training on simulated meshes: it equals one device; what a block sends.

1. Launcher. `python -m paxml.main --exp=...ViTSmoke` runs as users run it,
   as subprocesses on 8 simulated CPU devices (1 for the (1, 1) reference;
   subprocess_runner.run_modules starts them a few at a time), 3 steps each:

     ViTSmoke (2 heads)       (1, 1) reference; (8, 1); DCN (2, 1) x ICI
                              (2, 2), the mesh a 2-slice job builds;
     ViTSmoke, NUM_HEADS=8    (1, 1) reference; (2, 4); (1, 8): an 8-way
                              model axis needs 8 heads (H = 32 / 8 = 4).

   Per-step losses and the final parameters equal the reference run's
   within 1e-5 (float32; losses are ~30, so relative 1e-5), and so does
   the optimizer state (its float32 second moments within 1e-4 of their
   largest value: Adafactor's normalized updates would hide a wrongly
   scaled gradient from the parameters, not from these; the bfloat16
   momentum within one bfloat16 step). The launched mesh and the
   checkpoint's recorded shardings are the requested ones, and training
   moved (losses and parameters change), so equality is not that of an
   untouched initialization. With the zero-initialized head the first two
   losses depend on the labels only; the third, the parameters and the
   optimizer state on the sharded forward and backward passes. Every mesh
   goes through the launcher: six launches, ~25 s of CPU each.
2. The synthetic input of one process yields the same global batches on
   every mesh (paxml only pads batches smaller than the local device
   count), which is what makes (1) a fair comparison.
3. paxml's CPU mesh for DCN (2, 1) x ICI (2, 2) is the mesh jax's
   create_hybrid_device_mesh builds for two 4-device slices; on the model
   axis a DCN split would not be (paxml reshapes CPU devices in order).
4. The collectives of one block's training step on the (2, 4) mesh, read
   from the compiled HLO (see HloCollectivesTest).
5. README's table of splits equals what sharding.py gives every variable
   and activation of a model.
"""

import ast
import base64
import collections
import json
import math
import pathlib
import re
import shutil
import tempfile
from typing import Any, NamedTuple
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax.experimental import mesh_utils
from jax.experimental.array_serialization import serialization
import jax.numpy as jnp
import numpy as np
from paxml import trainer_lib
from praxis import base_layer
from praxis import pax_fiddle
from praxis import py_utils

import hlo_text
import subprocess_runner
from vit22b_pax import experiments
from vit22b_pax import knobs
from vit22b_pax import models
from vit22b_pax import sharding
from vit22b_pax.input import synthetic
from vit22b_pax.layers import parallel_block
from vit22b_pax.tools import train_summary

P = jax.sharding.PartitionSpec
AXES = sharding.MESH_AXIS_NAMES
_SMOKE = 'vit22b_pax.experiments.ViTSmoke'
_STEPS = 3
_COMMON = (
    f'NUM_TRAIN_STEPS={_STEPS}', 'SUMMARY_INTERVAL_STEPS=1',
    'MAP_IN_TRAINING=False',  # Sorting logits compiles slowly; not tested.
)
_WIDE = ('NUM_HEADS=8',)
_PARAMS, _OPT = 'mdl_vars.params.', 'opt_states_0.'


class Run(NamedTuple):
  """One launch: knob overrides beyond _COMMON and the mesh it asks for."""

  overrides: tuple[str, ...]
  ici: tuple[int, int]
  dcn: tuple[int, int] | None = None
  reference: str = ''  # The run it must equal; '' for a reference.

  @property
  def num_devices(self) -> int:
    return math.prod(self.ici) * (math.prod(self.dcn) if self.dcn else 1)

  @property
  def mesh_shape(self) -> tuple[int, int]:
    dcn = self.dcn or (1, 1)
    return (self.ici[0] * dcn[0], self.ici[1] * dcn[1])

  def knobs(self) -> list[str]:
    out = [*_COMMON, *self.overrides, f'ICI_MESH_SHAPE={self.ici}']
    if self.dcn:
      out.append(f'DCN_MESH_SHAPE={self.dcn}')
    return out


RUNS = {
    'smoke_1x1': Run((), (1, 1)),
    'smoke_8x1': Run((), (8, 1), reference='smoke_1x1'),
    'smoke_dcn2x1_ici2x2': Run((), (2, 2), (2, 1), reference='smoke_1x1'),
    'wide_1x1': Run(_WIDE, (1, 1)),
    'wide_2x4': Run(_WIDE, (2, 4), reference='wide_1x1'),
    'wide_1x8': Run(_WIDE, (1, 8), reference='wide_1x1'),
}
SHARDED = [(name, name) for name, run in RUNS.items() if run.reference]


def _experiment(run: Run):
  exp = experiments.ViTSmoke()
  knobs.apply_overrides(exp, run.knobs())
  return exp


def _read_arrays(
    job: pathlib.Path, step: int, prefix: str
) -> dict[str, np.ndarray]:
  """Arrays of an orbax (tensorstore) paxml checkpoint, by name suffix.

  Args:
    job: The job directory.
    step: The checkpoint's step.
    prefix: Name prefix, e.g. 'mdl_vars.params.' or 'opt_states_0.'.

  Returns:
    {name without the prefix: array}.
  """
  state = job / 'checkpoints' / f'checkpoint_{step:08d}' / 'state'
  paths = sorted(state.glob(prefix + '*'))
  arrays = serialization.run_deserialization(
      [jax.sharding.SingleDeviceSharding(jax.devices()[0])] * len(paths),
      [serialization.get_tensorstore_spec(str(p)) for p in paths],
  )
  return {p.name[len(prefix):]: np.asarray(a) for p, a in zip(paths, arrays)}


def _recorded_shardings(job: pathlib.Path, step: int) -> dict[str, Any]:
  """{array name: NamedSharding record} orbax wrote beside the arrays."""
  path = job / 'checkpoints' / f'checkpoint_{step:08d}' / 'state' / (
      '_sharding'
  )
  return {
      base64.b64decode(k).decode(): json.loads(v)
      for k, v in json.loads(path.read_text()).items()
  }


def _logged_mesh(stderr: str) -> np.ndarray:
  """Device ids of the mesh paxml's partitioner logged (last one)."""
  found = re.findall(
      r'partitioning\.py:\d+\] device_mesh: (\[.*?\]\])', stderr, re.S
  )
  if not found:
    raise AssertionError('paxml logged no device_mesh')
  rows = re.findall(r'\[([^\[\]]*)\]', found[-1])
  return np.array([[int(i) for i in re.findall(r'id=(\d+)', r)]
                   for r in rows])


class _SliceDevice:
  """A CPU device as a TPU runtime would show it: with its slice."""

  def __init__(self, device, slice_index):
    self.id = device.id
    self.platform = device.platform
    self.device_kind = device.device_kind
    self.process_index = device.process_index
    self.slice_index = slice_index


def _multislice_mesh(ici, dcn) -> np.ndarray:
  """Device ids of jax's hybrid mesh when slices are consecutive id blocks."""
  devices = jax.devices()
  per_slice = len(devices) // math.prod(dcn)
  fake = [_SliceDevice(d, d.id // per_slice) for d in devices]
  mesh = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=fake)
  return np.vectorize(lambda d: d.id)(mesh)


class MeshTest(parameterized.TestCase):
  """In-process checks of what the launched runs rely on."""

  def test_synthetic_global_batch_does_not_depend_on_the_mesh(self):
    batches = {}
    for name, run in RUNS.items():
      exp = _experiment(run)
      devices = np.asarray(jax.devices()[: run.num_devices])
      mesh = jax.sharding.Mesh(devices.reshape(run.mesh_shape), AXES)
      # What paxml's PjitPartitioner.preprocess_input_config does to it.
      input_p = trainer_lib.adjust_input_params_for_small_batch(
          exp.datasets()[0], mesh
      )
      self.assertEqual(input_p.batch_size, exp.GLOBAL_BATCH_SIZE)
      self.assertEqual(input_p.batch_padding_size, 0)
      inp = pax_fiddle.instantiate(input_p)
      batches[name] = [inp.get_next() for _ in range(_STEPS)]
    for name, run in RUNS.items():
      ref = batches[run.reference or name]
      for got, want in zip(batches[name], ref):
        for key in ('image', 'labels', 'weight'):
          np.testing.assert_array_equal(got[key], want[key])
    # Steps see different batches (a constant input would hide little).
    first = batches['smoke_1x1']
    self.assertFalse(np.array_equal(first[0].image, first[1].image))

  def test_paxml_cpu_mesh_is_the_two_slice_mesh_for_dcn_on_data(self):
    # paxml (py_utils.create_device_mesh) reshapes the CPU device list,
    # which have no slice_index; jax groups devices by slice.
    ici, dcn = (2, 2), (2, 1)
    want = _multislice_mesh(ici, dcn)
    np.testing.assert_array_equal(
        want, [[0, 1], [2, 3], [4, 5], [6, 7]]
    )  # slice 0 on data rows 0-1, slice 1 on rows 2-3
    got = np.vectorize(lambda d: d.id)(py_utils.create_device_mesh(ici, dcn))
    np.testing.assert_array_equal(got, want)
    # Slices along the model axis: the hybrid mesh puts slice 1 in column
    # 1; paxml's CPU reshape does not, so only DCN on 'data' is tested.
    ici, dcn = (4, 1), (1, 2)
    got = np.vectorize(lambda d: d.id)(py_utils.create_device_mesh(ici, dcn))
    self.assertFalse(np.array_equal(got, _multislice_mesh(ici, dcn)))


class LaunchedMeshesTest(parameterized.TestCase):
  """The real launcher on each mesh against its one-device reference."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix='vit22b_spmd_'))
    commands = [
        (run.num_devices,
         ['paxml.main', f'--exp={_SMOKE}', f'--job_log_dir={cls.tmp / name}',
          *(f'--fdl.{k}' for k in run.knobs())])
        for name, run in RUNS.items()
    ]
    procs = subprocess_runner.run_modules(commands, timeout=1500)
    cls.procs = dict(zip(RUNS, procs))
    cls.losses, cls.params, cls.opt = {}, {}, {}
    for name, proc in cls.procs.items():
      if proc.returncode != 0:
        continue
      job = cls.tmp / name
      train = train_summary.read_scalars(job / 'summaries' / 'train')
      cls.losses[name] = [(s, v) for s, _, v in train['loss']]
      cls.params[name] = _read_arrays(job, _STEPS, _PARAMS)
      cls.opt[name] = _read_arrays(job, _STEPS, _OPT)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def _ok(self, name):
    proc = self.procs[name]
    self.assertEqual(proc.returncode, 0, f'{name}:\n{proc.stderr[-4000:]}')

  def test_references_trained(self):
    for name in ('smoke_1x1', 'wide_1x1'):
      self._ok(name)
      steps, values = zip(*self.losses[name])
      self.assertEqual(steps, (1, 2, 3))
      self.assertGreater(max(values) - min(values), 0.1)
      start = _read_arrays(self.tmp / name, 0, _PARAMS)
      moved = max(
          float(np.abs(self.params[name][k] - start[k]).max()) for k in start
      )
      self.assertGreater(moved, 1e-3)
    # The wide variant really has 8 heads: q_norm/k_norm scales are [H].
    h = self.params['wide_1x1'][
        'encoder.repeat.sub.x_layers_0.attention.q_norm.scale'
    ].shape[-1]
    self.assertEqual(h, 4)

  @parameterized.named_parameters(*SHARDED)
  def test_sharded_run_equals_one_device(self, name):
    run = RUNS[name]
    self._ok(name)
    self._ok(run.reference)
    # The launched run used the requested mesh...
    logged = _logged_mesh(self.procs[name].stderr)
    self.assertEqual(logged.shape, run.mesh_shape)
    if run.dcn:
      np.testing.assert_array_equal(
          logged, _multislice_mesh(run.ici, run.dcn)
      )
    # ... and sharded the fused input projection as sharding.py says.
    record = _recorded_shardings(self.tmp / name, _STEPS)[
        'mdl_vars.params.encoder.repeat.sub.x_layers_0.w_in'
    ]
    self.assertEqual(tuple(record['shape']), run.mesh_shape)
    self.assertEqual(record['partition_spec'], [None, 'data', 'model', None])
    # Same losses at every step, same final parameters.
    got, want = self.losses[name], self.losses[run.reference]
    self.assertEqual([s for s, _ in got], [s for s, _ in want])
    np.testing.assert_allclose(
        [v for _, v in got], [v for _, v in want], rtol=1e-5, atol=0
    )
    params, ref = self.params[name], self.params[run.reference]
    self.assertEqual(sorted(params), sorted(ref))
    for key in ref:
      np.testing.assert_allclose(
          params[key], ref[key], rtol=0, atol=1e-5, err_msg=key
      )
    # Adafactor's normalized updates hide a gradient's scale from the
    # parameters; its second moments (float32) record it.
    opt, ref = self.opt[name], self.opt[run.reference]
    self.assertEqual(sorted(opt), sorted(ref))
    for key in ref:
      want = ref[key].astype(np.float64)
      scale = float(np.abs(want).max()) if want.size else 0.0
      # One bfloat16 step at the largest value for the momentum.
      rel = 2.0**-7 if ref[key].dtype.itemsize == 2 else 1e-4
      np.testing.assert_allclose(
          opt[key].astype(np.float64), want, rtol=0, atol=rel * scale,
          err_msg=key,
      )


# --- One block's training step on the (2, 4) mesh: collectives. -----------

# Sizes chosen so that no block matrix shard has a dim equal to B, B/d or
# T, and each tensor class has its own element count.
B, T, D, N, H, F = 10, 7, 48, 8, 6, 96
MESH = (2, 4)


def _block_config(parallel: bool, bld=None) -> pax_fiddle.Config:
  """The block template of a classifier laid out by sharding.set_sharding."""
  size = models.ModelSize(D, 1, F, N, H, 4, 8)
  model_cfg = sharding.set_sharding(
      models.classifier_config(size, 8, parallel=parallel, remat_policy=None),
      MESH,
  )
  block = model_cfg.encoder_tpl.transformer_layer_params_tpl.clone()
  # What praxis' StackedTransformer and the model set on the block.
  block.set(
      name='block', input_dims=D, hidden_dims=F, num_heads=N,
      dim_per_head=H, ici_mesh_shape=list(MESH), mesh_axis_names=list(AXES),
  )
  if bld is not None:
    block.activation_split_dims_mapping.bld = bld
  return block


def _block_step_hlo(block_cfg) -> hlo_text.Hlo:
  """Compiled forward + backward (vjp) of one block, sharded as configured."""
  layer = pax_fiddle.instantiate(block_cfg)
  mesh = jax.sharding.Mesh(
      np.asarray(jax.devices()[:8]).reshape(MESH), AXES
  )
  x = jax.ShapeDtypeStruct((B, T, D), jnp.float32)
  with base_layer.JaxContext.new_context():
    meta = layer.abstract_init_with_metadata(x)
    abstract_vars = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)
  specs = base_layer.var_partition_specs(
      meta, mesh_shape=list(MESH), device_axis_names=list(AXES)
  )
  shard = lambda s: jax.sharding.NamedSharding(mesh, s)
  var_sh = jax.tree_util.tree_map(shard, specs)
  x_sh = shard(P('data', None, 'model'))

  def fwd_bwd(variables, inputs, cotangent):
    def apply(v, xs):
      with base_layer.JaxContext.new_context():
        return layer.apply(v, xs)[0]

    out, vjp = jax.vjp(apply, variables, inputs)
    return out, vjp(cotangent)

  step = jax.jit(
      fwd_bwd, in_shardings=(var_sh, x_sh, x_sh),
      out_shardings=(x_sh, (var_sh, x_sh)),
  )
  with mesh:
    compiled = step.lower(abstract_vars, x, x).compile()
  return hlo_text.Hlo(compiled.as_text(), mesh)


def _tally(hlo: hlo_text.Hlo):
  """Collectives by (direction, kind, axes, role): [count, elements].

  Roles: 'residual' (a [B/d, T, D] activation, D whole), 'small' (at most
  D elements: norm statistics, vectors), 'weight' (over 'data', a D dim
  whole and no batch or token dim: a block matrix, or a piece of one,
  gathered, or its gradient reduced), 'unexpected' (anything else).
  Direction: 'bwd' for ops jax traced in the transpose (backward), 'fwd'
  otherwise (ops XLA adds without metadata are small reshuffles).
  """
  b = B // MESH[0]
  tally = collections.defaultdict(lambda: [0, 0])
  unexpected = []
  for op in hlo.collective_ops():
    for shape in op.shapes:
      elements = math.prod(shape)
      if sorted(shape) == sorted((b, T, D)):
        role = 'residual'
      elif elements <= D:
        role = 'small'
      elif (hlo.axes_of(op) == ('data',) and D in shape
            and not {B, b, T} & set(shape)):
        role = 'weight'
      else:
        role = 'unexpected'
        unexpected.append(op.line.strip()[:200])
      direction = 'bwd' if 'transpose(' in op.op_name else 'fwd'
      key = (direction, op.kind, hlo.axes_of(op), role)
      if role == 'small':
        key = ('any', 'any', 'any', 'small')
      tally[key][0] += 1
      tally[key][1] += elements
  return dict(tally), unexpected


class HloCollectivesTest(parameterized.TestCase):
  """Collectives of one block's step implied by sharding.py's rules.

  Mesh (d, m) = (2, 4); per device the batch is b = B/d, the residual
  stream [b, T, D/m] (training_optimized splits D over 'model'), heads
  n = N/m, and every block matrix holds 1/d of its D dim. The parallel
  block has one pre-LN feeding one fused input projection and one fused
  output projection; the sequential block two of each (attention, MLP).
  The rules imply, per block:

    forward
      all-gather over model of each pre-LN's output [b, T, D/m] -> D whole
        (the residual split of training_optimized): 1 per pre-LN;
      all-reduce over model of each output projection's partial sums over
        heads, [b, T, D]: 1 per output projection (XLA on TPU/GPU turns
        all-reduce + slice into a reduce-scatter; XLA:CPU does not);
      all-gather over data of every block matrix's D shard: each matrix
        once (parallel w_in, w_out; sequential w_qkv, w_atten_out, mlp
        w_in, mlp w_out), in whole-matrix elements.
    backward
      all-reduce over model of each input projection's input gradient
        [b, T, D]: 1 per pre-LN;
      the gradient reduction over data: every matrix once, in elements;
      all-gather over model of each output projection's cotangent
        [b, T, D] (1 per output projection), plus, for a weight gradient,
        either the matrix regathered over data or its [b, T, D] activation
        operand regathered over model: XLA picks per product. Today the
        parallel block regathers both matrices (1 residual gather); the
        sequential block regathers w_qkv and, for the other three weight
        gradients, the activations (5 residual gathers).

  Everything else must be 'small' (LayerNorm statistics [b, T] over
  model, gradients of norm scales and biases: <= D elements each; their
  number follows XLA's layout choices and is not pinned). Weights are
  counted in elements, so a compute path that slices the fused matrices
  may gather them in pieces; the fused output projection must stay ONE
  model-axis reduction per block (the reason for fusing it); and a
  collective of any other activation (the batch gathered over 'data',
  heads over 'model', ...) is 'unexpected' and fails the test.
  """

  def _rules(self, parallel):
    """(pre-LNs, output projections, gathered size of each matrix)."""
    n = N // MESH[1]
    if parallel:
      k, j = 3 * H + F // N, H + F // N
      return 1, 1, {'w_in': D * n * k, 'w_out': n * j * D}
    f = F // MESH[1]
    return 2, 2, {'w_qkv': D * n * 3 * H, 'w_atten_out': n * H * D,
                  'mlp/w_in': D * f, 'mlp/w_out': f * D}

  @parameterized.named_parameters(('parallel', True), ('sequential', False))
  def test_block_step_collectives(self, parallel):
    pre_lns, out_projs, matrices = self._rules(parallel)
    weights = sum(matrices.values())
    hlo = _block_step_hlo(_block_config(parallel))
    tally, unexpected = _tally(hlo)
    self.assertEqual(unexpected, [])
    residual = B // MESH[0] * T * D
    count = lambda *key: tally.get(key, [0, 0])[0]
    elements = lambda *key: tally.get(key, [0, 0])[1]
    allowed = {
        ('fwd', 'all-gather', ('model',), 'residual'),
        ('fwd', 'all-reduce', ('model',), 'residual'),
        ('fwd', 'all-gather', ('data',), 'weight'),
        ('bwd', 'all-gather', ('model',), 'residual'),
        ('bwd', 'all-reduce', ('model',), 'residual'),
        ('bwd', 'all-gather', ('data',), 'weight'),
        ('bwd', 'all-reduce', ('data',), 'weight'),
        ('any', 'any', 'any', 'small'),
    }
    self.assertLessEqual(set(tally), allowed, tally)
    msg = f'tally: {tally}'
    # Forward.
    self.assertEqual(
        count('fwd', 'all-gather', ('model',), 'residual'), pre_lns, msg)
    self.assertEqual(
        count('fwd', 'all-reduce', ('model',), 'residual'), out_projs, msg)
    self.assertEqual(
        elements('fwd', 'all-gather', ('data',), 'weight'), weights, msg)
    # Backward.
    self.assertEqual(
        count('bwd', 'all-reduce', ('model',), 'residual'), pre_lns, msg)
    self.assertEqual(
        elements('bwd', 'all-reduce', ('data',), 'weight'), weights, msg)
    regathered = count('bwd', 'all-gather', ('model',), 'residual')
    self.assertBetween(regathered, out_projs, out_projs + len(matrices), msg)
    self.assertLessEqual(
        elements('bwd', 'all-gather', ('data',), 'weight'), weights, msg)
    for key in allowed - {('any', 'any', 'any', 'small')}:
      if key[3] == 'residual':  # whole [b, T, D] tensors, nothing else
        self.assertEqual(elements(*key), count(*key) * residual, key)

  def test_a_replicated_batch_is_caught(self):
    # The block told to keep [B, T, D] unsplit over 'data': its input
    # arrives split, so XLA gathers the batch, an activation all-gather
    # the sharding rules never ask for.
    hlo = _block_step_hlo(_block_config(True, bld=(None, None, 'model')))
    _, unexpected = _tally(hlo)
    self.assertNotEmpty(unexpected)
    self.assertTrue(
        any('all-gather' in line for line in unexpected), unexpected
    )


# --- README's table of splits. ----------------------------------------------

# Sizes with distinct values, so a shape identifies its letters.
_LETTERS = dict(B=2, T=16, D=60, N=5, H=12, F=70, P=4, C=11)


def _readme_rows() -> tuple[dict[str, tuple], list[tuple]]:
  """({weight path: (shape, split)}, [(shape, split)]) from README."""
  text = (subprocess_runner.ROOT / 'README.md').read_text()
  table = text[text.index('<!-- split-table -->'):
               text.index('<!-- /split-table -->')]
  weights, activations = {}, []
  for line in table.splitlines():
    cells = [c.strip() for c in line.strip().strip('|').split('|')]
    if len(cells) != 3 or not cells[1].startswith('['):
      continue
    name, shape, split = cells
    dims = tuple(
        eval(re.sub(r'(\d)([A-Z])', r'\1*\2', d).replace('/', '//'),
             {}, dict(_LETTERS))
        for d in shape.strip('[]').split(',')
    )
    split = ast.literal_eval(split)
    paths = re.findall(r'`([^`]+)`', name)
    if paths:
      for path in paths:
        weights[path] = (dims, split)
    else:
      activations.append((dims, split))
  return weights, activations


def _model(parallel: bool):
  s = _LETTERS
  size = models.ModelSize(s['D'], 2, s['F'], s['N'], s['H'], s['P'],
                          s['P'] * math.isqrt(s['T']))
  cfg = models.classifier_config(
      size, s['C'], parallel=parallel, remat_policy=None
  )
  return pax_fiddle.instantiate(sharding.set_sharding(cfg, (1, 1)))


class ReadmeSplitTableTest(absltest.TestCase):
  """README's table lists every variable's and constraint's split."""

  def test_table_matches_sharding(self):
    weights, activations = _readme_rows()
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1),
                             AXES)
    batch = synthetic.batch_specs(_LETTERS['B'], _LETTERS['P'] * 4,
                                  _LETTERS['C'])
    seen_weights, seen_activations = set(), set()
    for parallel in (True, False):
      model = _model(parallel)
      with base_layer.JaxContext.new_context():
        meta = model.abstract_init_with_metadata(batch)
        variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
      specs = base_layer.var_partition_specs(
          meta, mesh_shape=[1, 1], device_axis_names=list(AXES)
      )
      flat_specs = jax.tree_util.tree_leaves(
          specs, is_leaf=lambda x: isinstance(x, P)
      )
      flat_meta = jax.tree_util.tree_flatten_with_path(
          meta, is_leaf=lambda x: isinstance(x, base_layer.WeightHParams)
      )[0]
      for (path, hparams), spec in zip(flat_meta, flat_specs):
        name = '/'.join(k.key for k in path)
        name = re.sub(r'^params/encoder/x_layers_\d+/', 'block/', name)
        name = name.removeprefix('params/')
        if name not in weights:
          self.fail(f'{name} {hparams.shape} {spec} has no row in README')
        self.assertEqual(weights[name], (tuple(hparams.shape), tuple(spec)),
                         name)
        seen_weights.add(name)

      def forward(v, b):
        with base_layer.JaxContext.new_context():
          return model.apply(v, b, method=model.compute_predictions)

      # The parallel block multiplies per part on this one-device mesh and
      # by the whole fused weights when 'model' has several devices.
      for model_devices in (1, 2):
        with mesh, mock.patch.object(
            parallel_block.ParallelBlock, '_model_axis_devices',
            return_value=model_devices):
          jaxpr = jax.make_jaxpr(forward)(variables, batch)
        seen_activations |= _constraints(jaxpr.jaxpr)
    self.assertEqual(set(weights), seen_weights, 'README rows of nothing')
    self.assertEqual(set(activations), seen_activations)
    self.assertLen(activations, len(set(activations)))


def _constraints(jaxpr) -> set[tuple]:
  """(shape, split) of every sharding constraint in a jaxpr, nested too."""
  found = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'sharding_constraint':
      found.add((tuple(eqn.invars[0].aval.shape),
                 tuple(eqn.params['sharding'].spec)))
    for param in eqn.params.values():
      inner = getattr(param, 'jaxpr', param)
      if hasattr(inner, 'eqns'):
        found |= _constraints(inner)
  return found


if __name__ == '__main__':
  absltest.main()
