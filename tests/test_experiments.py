"""Tests for vit22b_pax.experiments: registry, knobs, validation, programs."""

import collections
import math
import re

from absl import flags
from absl.testing import absltest
from absl.testing import parameterized
from fiddle._src.absl_flags import utils as fdl_flag_utils
import jax
import numpy as np
from paxml import experiment_registry
from praxis import base_hyperparams
from praxis import pax_fiddle
import tensorflow as tf

from vit22b_pax import experiments
from vit22b_pax import models
from vit22b_pax.layers import parallel_block
from vit22b_pax.layers import sequential_block

_BASES = ('ViT22BJFT', 'ViTMid', 'ViTShapesCPU', 'ViTSmoke')
_EXPECTED = set(_BASES) | {
    f'{b}{s}' for b in _BASES for s in ('Sequential', 'NoQKNorm')
} | {'ViT22BFinetune', 'ViTSmokeFinetune'}


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
    self.assertEqual(set(experiments.registered()), _EXPECTED)
    for name, cls in experiments.registered().items():
      # The key paxml.main --exp and --fdl_config resolve.
      self.assertIs(
          experiment_registry.get(f'vit22b_pax.experiments.{name}'), cls
      )
      self.assertIs(getattr(experiments, name), cls)

  @parameterized.parameters(*sorted(_EXPECTED))
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
    self.assertEqual(math.prod(exp.ICI_MESH_SHAPE), 1024)
    # 65,536 images over the 64-way data axis.
    self.assertEqual(exp.GLOBAL_BATCH_SIZE // exp.data_axis_size(1024), 1024)

  def test_runnable_experiment_validates_here(self):
    experiments.ViTSmoke().validate()  # 8 devices: mesh (8, 1), batch 16.

  def test_pod_experiment_refuses_this_machine(self):
    with self.assertRaisesRegex(
        experiments.ValidationError,
        r'ICI_MESH_SHAPE=\(64, 16\).*1024 devices but 8 are available',
    ):
      experiments.ViT22BJFT().validate()

  @parameterized.parameters(*_BASES)
  def test_ablation_twins_change_one_knob(self, base):
    base_exp = experiments.registered()[base]()
    seq = experiments.registered()[base + 'Sequential']()
    noqk = experiments.registered()[base + 'NoQKNorm']()
    base_knobs = experiments.knob_values(base_exp)
    for twin, knob in ((seq, 'PARALLEL_BLOCK'), (noqk, 'USE_QK_NORM')):
      diff = {
          k for k, v in experiments.knob_values(twin).items()
          if base_knobs[k] != v
      }
      self.assertEqual(diff, {knob})
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


class KnobTest(parameterized.TestCase):

  @parameterized.parameters('NUM_TRAIN_STEP', 'num_train_steps',
                            'NUM_TRAIN_STEPSS')
  def test_misspelled_knob_names_closest(self, name):
    exp = experiments.ViTSmoke()
    with self.assertRaisesRegex(
        AttributeError, "no knob .*did you mean 'NUM_TRAIN_STEPS'"
    ):
      setattr(exp, name, 5)

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
    with self.assertRaisesRegex(TypeError, 'NUM_TRAIN_STEPS'):
      exp.NUM_TRAIN_STEPS = '10'
    with self.assertRaisesRegex(TypeError, 'USE_QK_NORM'):
      exp.USE_QK_NORM = 1
    exp.PEAK_LR = 1  # An int is a fine float.
    exp.ICI_MESH_SHAPE = [4, 2]
    # Knobs whose default is None still have a type.
    with self.assertRaisesRegex(TypeError, 'NUM_HEADS'):
      exp.NUM_HEADS = '2'
    with self.assertRaisesRegex(TypeError, 'IMAGE_SIZE'):
      exp.IMAGE_SIZE = 448.0
    with self.assertRaisesRegex(TypeError, 'PEAK_FLOPS_PER_DEVICE'):
      exp.PEAK_FLOPS_PER_DEVICE = '275e12'
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
      ('schedule', dict(WARMUP_STEPS=15, COOLDOWN_STEPS=10),
       r'WARMUP_STEPS=15 \+ COOLDOWN_STEPS=10 is longer than '
       r'NUM_TRAIN_STEPS=20'),
      ('model_axis', dict(ICI_MESH_SHAPE=(2, 4)), r'NUM_HEADS=2 is not '
       r'divisible by the model axis size 4'),
      ('preset', dict(MODEL_SIZE='tinyy'), r"MODEL_SIZE='tinyy'.*did you "
       r"mean 'tiny'"),
  )
  def test_invalid_combination_fails_naming_the_knob(self, knobs, message):
    exp = experiments.ViTSmoke()
    exp.check(num_devices=8)  # Valid before the change.
    for k, v in knobs.items():
      setattr(exp, k, v)
    with self.assertRaisesRegex(experiments.ValidationError, message):
      exp.check(num_devices=8)

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


class CommandLineOverrideTest(absltest.TestCase):
  """validate() catches --fdl.* overrides that paxml.main --exp dropped."""

  def setUp(self):
    super().setUp()
    self._was_parsed = flags.FLAGS.is_parsed()
    flags.FLAGS.unparse_flags()

  def tearDown(self):
    flags.FLAGS.unparse_flags()
    if self._was_parsed:
      flags.FLAGS(['test'], known_only=True)
    super().tearDown()

  def _parse(self, *assignments):
    flags.FLAGS(
        ['test'] + [f'--fdl_set={a}' for a in assignments], known_only=True
    )

  def test_dropped_override_fails(self):
    self._parse('NUM_TRAIN_STEPS=7')
    exp = experiments.ViTSmoke()  # As paxml.main --exp builds it.
    with self.assertRaisesRegex(
        ValueError, r'--fdl.NUM_TRAIN_STEPS=7 did not reach the experiment'
    ):
      exp.validate()

  def test_applied_override_passes(self):
    self._parse('NUM_TRAIN_STEPS=12', "DATA_SOURCE='synthetic'")
    exp = experiments.ViTSmoke()
    experiments.apply_overrides(
        exp, ['NUM_TRAIN_STEPS=12', "DATA_SOURCE='synthetic'"]
    )
    exp.validate()
    self.assertEqual(exp.NUM_TRAIN_STEPS, 12)

  def test_unknown_knob_on_command_line_fails(self):
    self._parse('PEAK_LRR=0.1')
    with self.assertRaisesRegex(ValueError, "did you mean 'PEAK_LR'"):
      experiments.ViTSmoke().validate()


class SyntheticInputTest(absltest.TestCase):

  def _input(self, **kwargs):
    params = dict(batch_size=64, image_size=8, num_classes=6, noise=0.05)
    params.update(kwargs)
    return base_hyperparams.instantiate(
        pax_fiddle.Config(experiments.SyntheticInput, **params)
    )

  def test_batch_contract_and_learnable_labels(self):
    inp = self._input(is_training=True)
    batch = inp.get_next()
    self.assertEqual(batch.image.shape, (64, 8, 8, 3))
    self.assertEqual(batch.labels.shape, (64, 6))
    self.assertEqual(batch.image.dtype, np.float32)
    self.assertLessEqual(np.abs(batch.image).max(), 1.0)
    np.testing.assert_array_equal(batch.weight, np.ones(64))
    self.assertTrue((batch.labels.sum(axis=1) >= 1).all())
    # Labels are readable from pixels: least squares against the class
    # patterns recovers the label mix, whose top entry is always a label.
    patterns = inp._patterns.reshape(6, -1)
    mix, *_ = np.linalg.lstsq(
        patterns.T, batch.image.reshape(64, -1).T, rcond=None
    )
    top = mix.T.argmax(axis=1)
    self.assertEqual(batch.labels[np.arange(64), top].min(), 1.0)

  def test_eval_is_finite_and_repeatable(self):
    inp = self._input(is_training=False, num_eval_batches=3)
    first = [inp.get_next() for _ in range(3)]
    with self.assertRaises(tf.errors.OutOfRangeError):
      inp.get_next()
    inp.reset()
    np.testing.assert_array_equal(inp.get_next().image, first[0].image)


class ProgramsTest(absltest.TestCase):

  def test_eval_program_adds_dataset_level_metrics(self):
    # Two batches; class 0's AP needs examples from both (per-batch mAPs
    # would differ), class 1 has no positive and is excluded.
    logits = [np.array([[3.0, 0.0], [1.0, 2.0]]),
              np.array([[2.0, 5.0], [0.0, 1.0], [9.0, 9.0]])]
    labels = [np.array([[1.0, 0.0], [0.0, 0.0]]),
              np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])]
    weight = [np.ones(2), np.array([1.0, 1.0, 0.0])]  # Last one padding.
    batches = [dict(logits=l, labels=y, weight=w)
               for l, y, w in zip(logits, labels, weight)]
    metrics = collections.defaultdict(list)
    fake = (2, [0.0], {}, metrics, batches, {})
    program = object.__new__(experiments.DatasetMetricsEvalProgram)
    program._name = 'eval'
    base = experiments.programs.SingleTaskEvalProgram
    original = base._run_eval_loop
    base._run_eval_loop = lambda self, state: fake
    try:
      out = program._run_eval_loop(None)
    finally:
      base._run_eval_loop = original
    self.assertIs(out, fake)
    # Class 0 scores of the 4 real examples: 3 (+), 1, 2 (+), 0 (+).
    # Ranked: 3+, 2+, 1-, 0+ -> AP = (1/1 + 2/2 + 3/4) / 3.
    (value, count), = metrics['map_dataset']
    self.assertAlmostEqual(float(value), (1 + 1 + 0.75) / 3, places=6)
    self.assertEqual(float(count), 4.0)
    # Top-1: ex0 class 0 (+), ex1 class 1 (-), ex2 class 1 (-), ex3 1 (-).
    (p1, _), = metrics['precision_at_1_dataset']
    self.assertAlmostEqual(float(p1), 0.25, places=6)

  def test_train_program_gets_paper_flops(self):
    exp = experiments.ViT22BJFT()
    (program,) = exp.train_programs()
    self.assertIsInstance(program, experiments.ThroughputTrainProgram)
    d, l, f, t = 6144, 48, 24576, 256
    self.assertEqual(
        program._flops_per_token,
        6 * l * (4 * d * d + 2 * d * f) + 12 * l * t * d,
    )
    self.assertEqual(program._tokens_per_image, 256)
    self.assertEqual(program._peak_flops_per_device, 275e12)


class FinetuneConfigTest(absltest.TestCase):

  def test_rules_restore_everything_but_the_head(self):
    exp = experiments.ViTSmokeFinetune()
    task_p = exp.task()
    self.assertIs(task_p.cls, experiments.FinetuneTask)
    (ckpt_dir, rules), = task_p.train.init_from_checkpoint_rules.items()
    self.assertEqual(ckpt_dir, exp.INIT_CHECKPOINT_DIR)
    # The checkpoint's task is the pre-training one, at its resolution.
    self.assertEqual(rules.task_p.model.patch_embed_tpl.image_size, 16)
    self.assertEqual(task_p.model.patch_embed_tpl.image_size, 24)
    names = [
        k for k, _ in experiments.NestedMap.FromNestedDict(
            exp.abstract_variables()['params']
        ).FlattenItems()
    ]
    loaded, ignored = [], []
    for name in names:
      path = 'params/' + name.replace('.', '/')
      if any(re.match(p, path) for p in rules.ignore_rules):
        ignored.append(path)
      elif any(re.match(p, path) for p, _ in rules.load_rules):
        loaded.append(path)
    self.assertCountEqual(ignored, ['params/head/w', 'params/head/b'])
    self.assertIn('params/patch_embed/pos_emb', loaded)
    self.assertEqual(len(loaded) + 2, len(names))

  def test_init_overrides_reach_the_checkpoint_task(self):
    exp = experiments.ViTSmokeFinetune()
    exp.INIT_OVERRIDES = ('IMAGE_SIZE=20', 'NUM_CLASSES=3')
    rules = exp.checkpoint_loading_rules()
    self.assertEqual(rules.task_p.model.patch_embed_tpl.image_size, 20)
    self.assertEqual(rules.task_p.model.num_classes, 3)


if __name__ == '__main__':
  absltest.main()
