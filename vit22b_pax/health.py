"""Non-finite guard: a step with a NaN/Inf loss or gradient changes nothing.

What paxml 1.4.0 already does (`learners.Learner`, which this builds on):
with `check_valid_step` the learner computes the global norm of the raw
gradients and marks the step invalid when it is not finite (summary
'learning/is_valid_step'); with `enable_skip_step_on_gradient_anomalies`
an invalid step's transformed gradients are zeroed, so `apply_gradient`
leaves every weight as it was, and every optimizer-state leaf keeps its old
value, the update count included (so the learning-rate and beta2 schedules,
which read that count, follow the applied updates). `TrainState.step`
still advances (the batch is consumed), and the loss paxml reports for the
step is the non-finite value.

What it lacks, added here:

  * the learner looks at the gradients only: `NonFiniteLossAggregator`
    makes a non-finite loss invalidate the step as well (its backward pass
    turns the gradients NaN when the loss is not finite);
  * nobody counts or names the skipped steps: `StepGuard` (driven by the
    train program) reads each step's validity, loss and gradient norm on the
    host, logs every skipped step with what was not finite, records it in
    `<job_log_dir>/skipped_steps.json` (which `tools/train_summary.py`
    reports as `skipped_steps`) and as the TensorBoard scalar
    'health/skipped_steps', and stops the run with `NonFiniteStepsError`
    after more than `max_consecutive` skipped steps in a row.

Steps are numbered as paxml's train loop numbers them: step S reads the
S-th batch (from 0) and updates the state of checkpoint S into that of
checkpoint S + 1; paxml writes its summaries at S + 1.

`poison_batch` implements the INJECT_NAN_AT_STEPS testing knob.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from absl import logging
import jax
from jax import numpy as jnp
import numpy as np
from paxml import base_metrics
from praxis import base_layer
from praxis import py_utils
import tensorflow as tf

# What the learner writes (paxml 1.4.0 learners.Learner.scale_gradients),
# keyed as the train step returns them (with the summary-type suffix).
_AGGREGATE = base_layer.get_summary_type_suffix(
    base_layer.SummaryType.AGGREGATE_SCALAR
)
VALID_STEP_SUMMARY = 'learning/is_valid_step' + _AGGREGATE
GRAD_NORM_SUMMARY = 'learning/raw_grad_norm' + _AGGREGATE
# The default of the knob of that name: skipped steps tolerated in a row.
MAX_CONSECUTIVE_BAD_STEPS = 10
# TensorBoard tag of the running count of skipped steps (train summaries).
SKIPPED_STEPS_TAG = 'health/skipped_steps'
# <job_log_dir>/SKIPPED_STEPS_FILE: {"skipped_steps": [SkippedStep...]}.
SKIPPED_STEPS_FILE = 'skipped_steps.json'


class NonFiniteStepsError(RuntimeError):
  """Too many consecutive training steps had a non-finite loss or gradient."""


@jax.custom_vjp
def nan_gradients_if_nonfinite(loss: jax.Array) -> jax.Array:
  """Identity on `loss`; its gradient is NaN when `loss` is not finite."""
  return loss


def _forward(loss):
  return loss, jnp.all(jnp.isfinite(loss))


def _backward(finite, g):
  return (jnp.where(finite, g, jnp.full_like(g, jnp.nan)),)


nan_gradients_if_nonfinite.defvjp(_forward, _backward)


class NonFiniteLossAggregator(base_metrics.LossAggregator):
  """paxml's LossAggregator whose loss invalidates the step when non-finite.

  The learner skips a step whose raw gradient norm is not finite; a loss
  that is Inf or NaN while its gradients happen to be finite would pass.
  Routing the differentiated loss through `nan_gradients_if_nonfinite`
  makes every gradient NaN in that case, so the learner's own check skips
  it. Finite losses are untouched (same value, same gradients).
  """

  def aggregate(self, batch_metrics):
    weighted_loss, mean_loss, loss_weight = super().aggregate(batch_metrics)
    return nan_gradients_if_nonfinite(weighted_loss), mean_loss, loss_weight


def poison_batch(batch: py_utils.NestedMap, field: str) -> py_utils.NestedMap:
  """A copy of the batch whose `field` is all NaN (INJECT_NAN_AT_STEPS).

  Args:
    batch: The model's input batch.
    field: A floating-point feature of it, e.g. the images: NaN inputs give
      a NaN loss and NaN gradients, as a corrupt batch would.

  Returns:
    The batch with batch[field] NaN, other features unchanged.
  """
  if field not in batch:
    raise KeyError(f'poison_batch: the batch has no {field!r} (has '
                   f'{sorted(batch)}).')
  poisoned = batch.copy()
  poisoned[field] = batch[field] * jnp.asarray(jnp.nan, batch[field].dtype)
  return poisoned


@dataclasses.dataclass(frozen=True)
class SkippedStep:
  """One skipped step, as logged and written to SKIPPED_STEPS_FILE.

  Attributes:
    step: paxml's step number (see the module docstring).
    loss: The step's mean loss, as text ('nan', 'inf', or a number).
    grad_norm: The global norm of its raw gradients, as text.
    nonfinite: Which of 'loss' and 'grad_norm' were not finite.
  """

  step: int
  loss: str
  grad_norm: str
  nonfinite: tuple[str, ...]

  def describe(self) -> str:
    """'non-finite loss (nan) and gradient norm (nan)'."""
    names = {'loss': f'loss ({self.loss})',
             'grad_norm': f'gradient norm ({self.grad_norm})'}
    parts = [names[n] for n in self.nonfinite] or [
        f'gradient norm ({self.grad_norm}) over the learner\'s limit'
    ]
    return 'non-finite ' + ' and '.join(parts)


def read_skipped_steps(job_log_dir: str) -> list[SkippedStep] | None:
  """The skipped steps a run recorded; None if it recorded nothing.

  Args:
    job_log_dir: The paxml job directory.

  Returns:
    The steps in SKIPPED_STEPS_FILE in step order ([] when the guard ran and
    skipped none), or None when the file does not exist (a run without the
    guard).
  """
  path = os.path.join(job_log_dir, SKIPPED_STEPS_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path, 'r') as f:
    try:
      records = json.load(f)['skipped_steps']
      return sorted(
          (SkippedStep(r['step'], r['loss'], r['grad_norm'],
                       tuple(r['nonfinite'])) for r in records),
          key=lambda s: s.step,
      )
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f'{path}: not a skipped-steps file ({e}).') from e


def _host_float(x: Any) -> float:
  return float(np.asarray(py_utils.maybe_unreplicate_for_fully_replicated(x)))


class StepGuard:
  """Host side of the guard: counts, logs and records skipped steps.

  The train program calls `add` after dispatching each step; the step is
  examined when the next one has been dispatched (or at `flush`), so
  reading it costs no extra wait (paxml already keeps up to two steps in
  flight). A stop therefore comes one step after the step that caused it;
  the weights are not affected since skipped steps never update them.

  Attributes:
    skipped: Every skipped step of the run, resumed runs included.
    consecutive: Skipped steps in a row up to the last examined step.
  """

  def __init__(
      self,
      max_consecutive: int,
      job_log_dir: str | None,
      init_step: int,
      write_scalar=None,
  ):
    """Sets up the guard of a run starting (or resuming) at init_step.

    Args:
      max_consecutive: Skipped steps in a row that are tolerated; one more
        raises NonFiniteStepsError.
      job_log_dir: Where SKIPPED_STEPS_FILE goes (read first when resuming:
        steps before init_step are kept); None: no file.
      init_step: The step the run starts at.
      write_scalar: Called as write_scalar(step, count) for each skipped step
        (the TensorBoard writer); None: not written.
    """
    if max_consecutive < 1:
      raise ValueError(
          f'MAX_CONSECUTIVE_BAD_STEPS must be >= 1, got {max_consecutive}.'
      )
    self._max_consecutive = max_consecutive
    self._path = (
        os.path.join(job_log_dir, SKIPPED_STEPS_FILE) if job_log_dir else None
    )
    self._write_scalar = write_scalar
    self._pending = []
    previous = read_skipped_steps(job_log_dir) if job_log_dir else None
    # Steps from init_step on will run again after a resume.
    self.skipped = [s for s in previous or [] if s.step < init_step]
    self.consecutive = 0
    steps = {s.step for s in self.skipped}
    while init_step - 1 - self.consecutive in steps:
      self.consecutive += 1
    self._write_file()

  def add(self, step: int, loss: Any, summary_tensors: dict[str, Any]) -> None:
    """Queues a dispatched step; examines the ones queued before it."""
    self.flush()
    if VALID_STEP_SUMMARY not in summary_tensors:
      raise KeyError(
          f'The train step returned no {VALID_STEP_SUMMARY!r} summary: the '
          'non-finite guard needs the learner\'s check_valid_step=True.'
      )
    self._pending.append((
        step,
        loss,
        summary_tensors[VALID_STEP_SUMMARY],
        summary_tensors.get(GRAD_NORM_SUMMARY),
    ))

  def flush(self) -> None:
    """Examines every queued step (blocks until they are computed)."""
    pending, self._pending = self._pending, []
    for step, loss, valid, grad_norm in pending:
      self._examine(step, loss, valid, grad_norm)

  def _examine(self, step, loss, valid, grad_norm) -> None:
    if _host_float(valid) > 0.5:
      self.consecutive = 0
      return
    loss = _host_float(loss)
    grad_norm = math.nan if grad_norm is None else _host_float(grad_norm)
    nonfinite = tuple(
        name for name, value in (('loss', loss), ('grad_norm', grad_norm))
        if not math.isfinite(value)
    )
    record = SkippedStep(step, repr(loss), repr(grad_norm), nonfinite)
    self.skipped.append(record)
    self.consecutive += 1
    self._write_file()
    if self._write_scalar is not None:
      self._write_scalar(step, len(self.skipped))
    first_bad = step - self.consecutive + 1
    if self.consecutive > self._max_consecutive:
      raise NonFiniteStepsError(
          f'Stopping at step {step}: {self.consecutive} consecutive training '
          f'steps ({first_bad}..{step}) had a non-finite loss or gradient, '
          f'more than MAX_CONSECUTIVE_BAD_STEPS={self._max_consecutive}. '
          f'Step {step}: {record.describe()}. None of them updated the '
          'weights or optimizer state, so every checkpoint holds the state '
          'of a good step: fix the cause (data, learning rate) and relaunch '
          'to resume from the last one.'
      )
    logging.warning(
        'Skipped training step %d: %s; the weights and optimizer state were '
        'not updated. %d step(s) skipped so far, %d in a row (the run stops '
        'after more than MAX_CONSECUTIVE_BAD_STEPS=%d).',
        step, record.describe(), len(self.skipped), self.consecutive,
        self._max_consecutive,
    )

  def _write_file(self) -> None:
    if self._path is None or jax.process_index() != 0:
      return
    payload = {'skipped_steps': [dataclasses.asdict(s) for s in self.skipped]}
    tf.io.gfile.makedirs(os.path.dirname(self._path))
    temp = self._path + '.tmp'
    with tf.io.gfile.GFile(temp, 'w') as f:
      f.write(json.dumps(payload, indent=1) + '\n')
    tf.io.gfile.rename(temp, self._path, overwrite=True)
