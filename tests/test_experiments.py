"""Tests for vit22b_pax.experiments and experiment_base: the registered family.

Registry keys, every experiment building its task, the paper's numbers, the
device knobs set only by the TPU-pod mixin, the ablation twins, knob checks
on a real experiment, and derived values following the knobs.
"""

import inspect
import math

from absl.testing import absltest
from absl.testing import parameterized
from fiddle._src.absl_flags import utils as fdl_flag_utils
import jax
from jax import numpy as jnp
import numpy as np
from paxml import experiment_registry
from praxis import base_hyperparams
from praxis import base_layer

from vit22b_pax import experiment_base
from vit22b_pax import experiments
from vit22b_pax import knobs
from vit22b_pax import models
from vit22b_pax.layers import parallel_block
from vit22b_pax.layers import sequential_block

# Every name registered before the split into modules, written out.
_EXPECTED = (
    'ViT22BFinetune', 'ViT22BJFT', 'ViT22BJFTNoQKNorm', 'ViT22BJFTSequential',
    'ViTMid', 'ViTMidNoQKNorm', 'ViTMidSequential', 'ViTShapesCPU',
    'ViTShapesCPUNoQKNorm', 'ViTShapesCPUSequential', 'ViTSmoke',
    'ViTSmokeFinetune', 'ViTSmokeNoQKNorm', 'ViTSmokeSequential',
)
_BASES = ('ViT22BJFT', 'ViTMid', 'ViTShapesCPU', 'ViTSmoke')
_DEVICE_KNOBS = {'FPROP_DTYPE', 'ICI_MESH_SHAPE', 'PEAK_FLOPS_PER_DEVICE'}


def _mesh_devices(exp, default=8):
  ici, dcn = exp.mesh_shapes(default)
  return math.prod(ici) * (math.prod(dcn) if dcn else 1)


def _block_tpl(model_p):
  encoder = model_p.encoder_tpl
  if hasattr(encoder, 'block'):  # StackedTransformerRepeated.
    encoder = encoder.block
  return encoder.transformer_layer_params_tpl


class RegistryTest(parameterized.TestCase):

  def test_registers_exactly_the_family(self):
    self.assertCountEqual(experiments.registered(), _EXPECTED)
    source = inspect.getsource(experiments)
    for name, cls in experiments.registered().items():
      # The key paxml.main --exp and --fdl_config resolve.
      self.assertIs(
          experiment_registry.get(f'vit22b_pax.experiments.{name}'), cls
      )
      self.assertIs(getattr(experiments, name), cls)
      # Written out (grep finds it), with a docstring of its own.
      self.assertIn(f'\nclass {name}(', source)
      self.assertIn('__doc__', vars(cls))

  @parameterized.parameters(*_EXPECTED)
  def test_instantiates_checks_and_builds(self, name):
    exp = experiments.registered()[name]()
    exp.check(num_devices=_mesh_devices(exp))
    task_p = exp.task()
    self.assertEqual(task_p.train.num_train_steps, exp.NUM_TRAIN_STEPS)
    ici, _ = exp.mesh_shapes(_mesh_devices(exp))
    self.assertEqual(tuple(task_p.model.ici_mesh_shape), tuple(ici))
    self.assertEqual(
        [d.is_training for d in exp.datasets()], [True, False]
    )
    self.assertEqual(
        base_hyperparams.instantiate(task_p.train.learner.optimizer)
        .lr_schedule.total_steps,
        exp.NUM_TRAIN_STEPS,
    )

  def test_paper_experiment_numbers(self):
    exp = experiments.ViT22BJFT()
    size = exp.model_size()
    self.assertEqual(size, models.PRESETS['vit22b'])
    self.assertEqual(exp.tokens_per_image(), 256)
    self.assertEqual(
        (exp.GLOBAL_BATCH_SIZE, exp.NUM_TRAIN_STEPS, exp.NUM_CLASSES),
        (65_536, 177_000, 29_593),
    )
    self.assertEqual(
        (exp.PEAK_LR, exp.HEAD_WEIGHT_DECAY, exp.BODY_WEIGHT_DECAY),
        (1e-3, 3.0, 0.03),
    )
    self.assertEqual(
        (exp.WARMUP_STEPS, exp.RSQRT_TIMESCALE, exp.COOLDOWN_STEPS),
        (10_000, 10_000, 50_000),
    )
    self.assertEqual((exp.FPROP_DTYPE, exp.LOSS), ('bfloat16', 'sigmoid'))
    self.assertEqual(math.prod(exp.ICI_MESH_SHAPE), 1024)
    # 65,536 images over the 64-way data axis.
    self.assertEqual(exp.GLOBAL_BATCH_SIZE // exp.data_axis_size(1024), 1024)
    optimizer = exp.task().train.learner.optimizer
    self.assertEqual(optimizer.learning_rate, 1e-3)
    self.assertEqual(
        dict(optimizer.weight_decay_rules).get(r'^params/head/w$'), 3.0
    )

  def test_only_the_pod_mixin_sets_device_knobs(self):
    for name, cls in experiments.registered().items():
      # No registered class (nor a registered ancestor) sets them itself...
      for klass in cls.__mro__:
        if klass.__module__ == experiments.__name__:
          self.assertEmpty(_DEVICE_KNOBS & set(vars(klass)), klass.__name__)
      # ...so an experiment without the pod mixin keeps the neutral base's.
      if not issubclass(cls, experiment_base.TpuV4Pod):
        exp = cls()
        self.assertEqual(
            (exp.FPROP_DTYPE, exp.ICI_MESH_SHAPE, exp.PEAK_FLOPS_PER_DEVICE,
             exp.COLLECTIVE_MATMUL),
            ('float32', None, None, 'off'),
            name,
        )
    self.assertEqual(
        {n for n, c in experiments.registered().items()
         if issubclass(c, experiment_base.TpuV4Pod)},
        {'ViT22BJFT', 'ViT22BJFTSequential', 'ViT22BJFTNoQKNorm',
         'ViT22BFinetune'},
    )

  def test_runnable_experiment_validates_here(self):
    experiments.ViTSmoke().validate()  # 8 devices: mesh (8, 1), batch 16.

  def test_pod_experiment_refuses_this_machine(self):
    with self.assertRaisesRegex(
        knobs.ValidationError,
        r'ICI_MESH_SHAPE=\(64, 16\).*1024 devices but 8 are available',
    ):
      experiments.ViT22BJFT().validate()

  @parameterized.parameters(*_BASES)
  def test_ablation_twins_change_one_knob(self, base):
    base_exp = experiments.registered()[base]()
    seq = experiments.registered()[base + 'Sequential']()
    noqk = experiments.registered()[base + 'NoQKNorm']()
    base_knobs = knobs.knob_values(base_exp)
    # COLLECTIVE_MATMUL is the parallel block's: the sequential twin of an
    # experiment that turns it on must turn it off.
    seq_knobs = {'PARALLEL_BLOCK'} | (
        {'COLLECTIVE_MATMUL'} if base_exp.COLLECTIVE_MATMUL != 'off' else set()
    )
    for twin, changed in ((seq, seq_knobs), (noqk, {'USE_QK_NORM'})):
      diff = {
          k for k, v in knobs.knob_values(twin).items()
          if base_knobs[k] != v
      }
      self.assertEqual(diff, changed)
    self.assertIs(
        _block_tpl(base_exp.model(sharded=False)).cls,
        parallel_block.ParallelBlock,
    )
    self.assertIs(
        _block_tpl(seq.model(sharded=False)).cls,
        sequential_block.SequentialBlock,
    )
    self.assertFalse(_block_tpl(noqk.model(sharded=False)).use_qk_norm)
    self.assertTrue(_block_tpl(base_exp.model(sharded=False)).use_qk_norm)
    self.assertEqual(
        _block_tpl(base_exp.model(sharded=False)).collective_matmul,
        base_exp.COLLECTIVE_MATMUL,
    )

  def test_pod_experiment_uses_collective_matmul(self):
    # As ViT-22B: bidirectional rings over the (64, 16) mesh's model axis.
    exp = experiments.ViT22BJFT()
    self.assertEqual(exp.COLLECTIVE_MATMUL, 'bidirectional')
    exp.check(num_devices=1024)
    self.assertEqual(_block_tpl(exp.model()).collective_matmul,
                     'bidirectional')


class KnobTest(parameterized.TestCase):

  def test_misspelled_knob_through_fiddle_override_path(self):
    # The code paxml.main --fdl_config runs for --fdl.NUM_TRAIN_STEP=5.
    exp = experiments.ViTSmoke()
    with self.assertRaises(ValueError) as ctx:
      fdl_flag_utils.set_value(exp, 'NUM_TRAIN_STEP=5')
    self.assertIn(
        "did you mean 'NUM_TRAIN_STEPS'", str(ctx.exception.__cause__)
    )
    fdl_flag_utils.set_value(exp, 'NUM_TRAIN_STEPS=5')
    self.assertEqual(exp.NUM_TRAIN_STEPS, 5)
    self.assertEqual(experiments.ViTSmoke.NUM_TRAIN_STEPS, 20)  # Class intact.

  def test_wrong_type_names_the_knob(self):
    exp = experiments.ViTSmoke()
    for knob, value in (('NUM_TRAIN_STEPS', '10'), ('USE_QK_NORM', 1),
                        ('NUM_HEADS', '2'), ('IMAGE_SIZE', 448.0),
                        ('PEAK_FLOPS_PER_DEVICE', '275e12'),
                        ('ICI_MESH_SHAPE', (2, 2, 2)), ('LOSS', 'hinge'),
                        ('FPROP_DTYPE', 'float16'), ('INIT_OVERRIDES', 'A=1'),
                        ('COLLECTIVE_MATMUL', 'on'),
                        ('COLLECTIVE_MATMUL', True)):
      with self.assertRaisesRegex(TypeError, f'Knob {knob} of ViTSmoke'):
        setattr(exp, knob, value)
    exp.PEAK_LR = 1  # An int is a fine float.
    exp.ICI_MESH_SHAPE = [4, 2]
    exp.NUM_HEADS = 4
    exp.NUM_HEADS = None

  @parameterized.named_parameters(
      ('heads', dict(NUM_HEADS=3), r'NUM_HEADS=3 does not divide the width '
       r'MODEL_DIMS=32'),
      ('patch', dict(IMAGE_SIZE=18), r'IMAGE_SIZE=18 is not a multiple of '
       r'PATCH_SIZE=4'),
      ('mesh', dict(ICI_MESH_SHAPE=(2, 2)), r'ICI_MESH_SHAPE=\(2, 2\) x '
       r'DCN_MESH_SHAPE=None is 4 devices but 8 are available'),
      ('batch', dict(GLOBAL_BATCH_SIZE=12), r'GLOBAL_BATCH_SIZE=12 is not '
       r'divisible by the data axis size 8'),
      ('eval_batch', dict(ICI_MESH_SHAPE=(4, 2), EVAL_BATCH_SIZE=6),
       r'EVAL_BATCH_SIZE=6 is not divisible by the data axis size 4'),
      ('input_calls', dict(INPUT_PARALLEL_CALLS=0),
       r'INPUT_PARALLEL_CALLS=0 must be positive, None \(4 per CPU core\) or'
       r' -1 \(tf.data.AUTOTUNE\)'),
      ('schedule', dict(WARMUP_STEPS=15, COOLDOWN_STEPS=10),
       r'WARMUP_STEPS=15 \+ COOLDOWN_STEPS=10 is longer than '
       r'NUM_TRAIN_STEPS=20'),
      ('model_axis', dict(ICI_MESH_SHAPE=(2, 4)), r'NUM_HEADS=2 is not '
       r'divisible by the model axis size 4'),
      ('preset', dict(MODEL_SIZE='tinyy'), r"MODEL_SIZE='tinyy'.*did you "
       r"mean 'tiny'"),
      ('init', dict(INIT_CHECKPOINT_DIR='runs/x'), r'INIT_CHECKPOINT_DIR is '
       r'set but INIT_EXPERIMENT .* is empty'),
      ('collective_matmul_sequential',
       dict(COLLECTIVE_MATMUL='unidirectional', PARALLEL_BLOCK=False),
       r"COLLECTIVE_MATMUL='unidirectional' needs PARALLEL_BLOCK=True"),
      ('collective_matmul_odd_chunk',
       dict(COLLECTIVE_MATMUL='bidirectional', MODEL_DIMS=34,
            ICI_MESH_SHAPE=(4, 2)),
       r"COLLECTIVE_MATMUL='bidirectional': on an even model axis \(2\) each "
       r'chunk MODEL_DIMS / 2 = 17 .* must be even'),
  )
  def test_invalid_combination_fails_naming_the_knob(self, knob_values,
                                                     message):
    exp = experiments.ViTSmoke()
    exp.check(num_devices=8)  # Valid before the change.
    for k, v in knob_values.items():
      setattr(exp, k, v)
    with self.assertRaisesRegex(knobs.ValidationError, message):
      exp.check(num_devices=8)

  def test_input_knobs_reach_the_training_input(self):
    exp = experiments.ViTShapesCPU()
    self.assertIsNone(exp.datasets()[0].num_parallel_calls)
    exp.INPUT_PARALLEL_CALLS = 5
    exp.INPUT_SLICES = 2
    train, evaluation = exp.datasets()
    self.assertEqual(train.num_parallel_calls, 5)
    self.assertEqual(train.num_input_slices, 2)
    self.assertEqual(evaluation.num_parallel_calls, 5)  # Unused by eval.

  def test_derived_values_follow_base_knobs(self):
    exp = experiments.ViTSmoke()
    exp.GLOBAL_BATCH_SIZE = 32
    exp.NUM_HEADS = 4
    exp.IMAGE_SIZE = 24
    exp.NUM_TRAIN_STEPS = 50
    exp.ICI_MESH_SHAPE = (4, 2)
    train, _ = exp.datasets()
    self.assertEqual(train.batch_size, 32 // jax.process_count())
    self.assertEqual(train.image_size, 24)
    task_p = exp.task()
    stack = task_p.model.encoder_tpl.block
    self.assertEqual((stack.num_heads, stack.dim_per_head), (4, 32 // 4))
    self.assertEqual(task_p.model.patch_embed_tpl.image_size, 24)
    self.assertEqual(tuple(task_p.model.ici_mesh_shape), (4, 2))
    self.assertEqual(task_p.train.num_train_steps, 50)
    schedule = task_p.train.learner.optimizer.lr_schedule
    self.assertEqual(schedule.total_steps, 50)
    specs = base_hyperparams.instantiate(
        exp.get_input_specs_provider_params()
    ).get_input_specs()
    self.assertEqual(specs.image.shape, (32, 24, 24, 3))
    # Mesh None: every device on the data axis, recomputed per device count.
    exp.ICI_MESH_SHAPE = None
    self.assertEqual(exp.mesh_shapes(8)[0], (8, 1))
    self.assertEqual(exp.mesh_shapes(2)[0], (2, 1))


class CollectiveMatmulTest(absltest.TestCase):

  def _first_step(self, mode):
    """Loss and gradients of ViTSmoke's first step on a (2, 4) mesh."""
    exp = experiments.ViTSmoke()
    exp.NUM_HEADS = 8  # Divisible by the 4-way model axis.
    exp.ICI_MESH_SHAPE = (2, 4)
    exp.COLLECTIVE_MATMUL = mode
    exp.check(num_devices=8)
    model = base_hyperparams.instantiate(exp.task().model)
    batch = base_hyperparams.instantiate(exp.datasets()[0]).get_next()
    batch = jax.tree_util.tree_map(jnp.asarray, batch)
    with base_layer.JaxContext.new_context():
      variables = model.init(jax.random.PRNGKey(0), batch)
      meta = model.abstract_init_with_metadata(batch)
    mesh = jax.sharding.Mesh(
        np.asarray(jax.devices()).reshape(2, 4), ('data', 'model'))
    specs = base_layer.var_partition_specs(
        meta, mesh_shape=[2, 4], device_axis_names=['data', 'model'])

    def loss(v):
      with base_layer.JaxContext.new_context():
        metrics, _ = model.apply(v, batch, rngs={'random':
                                                 jax.random.PRNGKey(1)})
      return metrics['loss'][0]

    with mesh:
      placed = jax.device_put(variables, jax.tree_util.tree_map(
          lambda s: jax.sharding.NamedSharding(mesh, s), specs))
      step = jax.jit(jax.value_and_grad(loss))
      jaxpr = str(jax.make_jaxpr(step)(placed))
      return step(placed), jaxpr

  def test_first_step_equals_plain(self):
    # Through the experiment: the knob, set_sharding's mesh axes, the
    # scanned and rematerialized stack, under jit inside `with mesh:`.
    (loss, grads), jaxpr = self._first_step('bidirectional')
    (want_loss, want_grads), plain_jaxpr = self._first_step('off')
    self.assertIn('shard_map', jaxpr)
    self.assertNotIn('shard_map', plain_jaxpr)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    for g, w in zip(jax.tree_util.tree_leaves(grads),
                    jax.tree_util.tree_leaves(want_grads)):
      np.testing.assert_allclose(
          g, w, rtol=1e-5, atol=1e-5 * float(np.abs(w).max()))


if __name__ == '__main__':
  absltest.main()
