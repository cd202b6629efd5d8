"""Tests for vit22b_pax.learner: which gradient-norm summaries are written."""

from absl.testing import absltest
from absl.testing import parameterized
from jax import numpy as jnp
import numpy as np
from paxml import learners
from praxis import base_hyperparams
from praxis import base_layer
from praxis import optimizers
from praxis import pax_fiddle
from praxis import py_utils
from praxis import schedules

from vit22b_pax import experiments
from vit22b_pax import health
from vit22b_pax import learner

NestedMap = py_utils.NestedMap
_SUFFIX = base_layer.get_summary_type_suffix(
    base_layer.SummaryType.AGGREGATE_SCALAR
)
_RAW = 'learning/raw_grad_norm' + _SUFFIX
_CLIPPED = 'learning/clipped_grad_norm' + _SUFFIX


def _learner(cls, **fields):
  p = pax_fiddle.Config(cls, name='learner', loss_name='loss', **fields)
  p.optimizer = pax_fiddle.Config(
      optimizers.Sgd,
      learning_rate=1.0,
      lr_schedule=pax_fiddle.Config(schedules.Constant),
      clip_gradient_norm_to_value=1.0,
  )
  return base_hyperparams.instantiate(p)


def _grads():
  rng = np.random.RandomState(0)
  return NestedMap(
      w=jnp.asarray(rng.randn(3, 4), jnp.float32),
      b=jnp.asarray(rng.randn(4), jnp.float32),
  )


def _summaries(layer, grads):
  with base_layer.JaxContext.new_context():
    clipped, _ = layer.scale_gradients(grads)
    return clipped, dict(base_layer.all_global_summaries())


class LearnerTest(parameterized.TestCase):

  def test_raw_norm_is_the_only_norm_summary(self):
    grads = _grads()
    _, summaries = _summaries(_learner(learner.Learner), grads)
    self.assertEqual(_RAW, health.GRAD_NORM_SUMMARY)
    expected = np.sqrt(sum(np.sum(np.square(g)) for g in grads.values()))
    self.assertGreater(expected, 1.0)  # So clipping changes the gradients.
    np.testing.assert_allclose(summaries[_RAW], expected, rtol=1e-6)
    self.assertNotIn(_CLIPPED, summaries)
    self.assertFalse([k for k in summaries if 'applied' in k])

  def test_gradients_clipped_as_by_paxml(self):
    grads = _grads()
    ours, _ = _summaries(_learner(learner.Learner), grads)
    theirs, _ = _summaries(
        _learner(learners.Learner, grad_norm_summary=True), grads
    )
    for key in grads:
      np.testing.assert_array_equal(ours[key], theirs[key])
    np.testing.assert_allclose(
        np.sqrt(sum(np.sum(np.square(g)) for g in ours.values())), 1.0,
        rtol=1e-6,
    )

  def test_grad_norm_summary_restores_paxml_summaries(self):
    grads = _grads()
    _, ours = _summaries(
        _learner(learner.Learner, grad_norm_summary=True), grads
    )
    _, theirs = _summaries(
        _learner(learners.Learner, grad_norm_summary=True), grads
    )
    self.assertEqual(sorted(ours), sorted(theirs))
    self.assertIn(_CLIPPED, ours)
    np.testing.assert_allclose(ours[_RAW], theirs[_RAW], rtol=1e-6)

  def test_raw_norm_summary_can_be_turned_off(self):
    _, summaries = _summaries(
        _learner(learner.Learner, raw_grad_norm_summary=False), _grads()
    )
    self.assertNotIn(_RAW, summaries)

  @parameterized.parameters(False, True)
  def test_experiment_knob(self, value):
    exp = experiments.ViTSmoke()
    exp.GRAD_NORM_SUMMARIES = value
    learner_p = exp.task().train.learner
    self.assertIs(learner_p.cls, learner.Learner)
    self.assertIs(learner_p.grad_norm_summary, value)

  def test_global_norm(self):
    self.assertEqual(float(learner.global_norm(NestedMap())), 0.0)
    tree = NestedMap(a=jnp.array([3.0]), b=NestedMap(c=jnp.array([[4.0]])))
    self.assertAlmostEqual(float(learner.global_norm(tree)), 5.0)


if __name__ == '__main__':
  absltest.main()
