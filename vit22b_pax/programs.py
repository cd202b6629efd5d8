"""paxml train/eval programs that report what paxml's own do not.

ThroughputTrainProgram adds examples/s and model FLOPs utilization (MFU) to
the train log and summaries, runs the non-finite guard (health.py) and
gives the attention diagnostics per-layer names; DatasetMetricsEvalProgram
adds mAP and precision@1 over the whole eval split, which per-batch
averages cannot give.
"""

from typing import Any, NamedTuple

from absl import logging
import jax
import numpy as np
from paxml import programs
from paxml import summary_utils
from paxml import tasks_lib
from paxml import trainer_lib
from praxis import base_layer

from vit22b_pax import attention_summaries
from vit22b_pax import flops
from vit22b_pax import health
from vit22b_pax import metrics as metrics_lib
from vit22b_pax.input import stats

TrainState = tasks_lib.TrainState


class EvalLoopOutput(NamedTuple):
  """What paxml 1.4.0's SingleTaskEvalProgram._run_eval_loop returns.

  paxml returns a plain 6-tuple; its caller (SingleTaskEvalProgram.run)
  unpacks it under these names, in this order. tests/test_programs.py
  compares them with paxml's source, so an upgrade that changes the tuple
  fails there instead of reading the wrong field.

  Attributes:
    num_steps: Eval batches run.
    loss: Per-batch losses.
    summary_tensors: {name: per-batch summary values}.
    metrics: {name: [(value, weight) per batch]}; a defaultdict(list).
    per_example_scores: Per-batch NestedMaps of the model's per-example
      outputs (here logits, labels, weight), on the host.
    clu_metrics: Merged clu metrics.
  """

  num_steps: int
  loss: list[Any]
  summary_tensors: dict[str, Any]
  metrics: dict[str, list[Any]]
  per_example_scores: list[Any]
  clu_metrics: dict[str, Any]


class ThroughputTrainProgram(programs.SingleTaskTrainProgram):
  """paxml's train program with throughput, a non-finite guard and names.

  Throughput: paxml reports steps/s only. With the global batch known here,
  each steps/s measurement becomes examples/s (and, with FLOPs per image
  and the chips' peak FLOP/s, model FLOPs utilization), logged and written
  to the train summaries as 'Examples/sec' and 'MFU'.

  Non-finite guard: the learner skips a step whose loss or gradients are
  not finite (health.py); a `health.StepGuard` counts, logs and records
  each skipped step and raises `health.NonFiniteStepsError` after more
  than max_consecutive_bad_steps in a row. Steps in inject_nan_at_steps
  get NaN in their inject_nan_field input (`health.poison_batch`), to test
  the guard.

  Attention diagnostics: the per-layer summaries of the attention cores
  are written as 'attention/layer_LL/max_logit' (and '/entropy'), the same
  names for unrolled and scanned encoders (`attention_summaries`).
  """

  def __init__(
      self,
      tokens_per_image: int = 1,
      flops_per_token: float | None = None,
      peak_flops_per_device: float | None = None,
      max_consecutive_bad_steps: int = health.MAX_CONSECUTIVE_BAD_STEPS,
      inject_nan_at_steps: tuple[int, ...] = (),
      inject_nan_field: str = 'image',
  ):
    super().__init__()
    self._tokens_per_image = tokens_per_image
    self._flops_per_token = flops_per_token
    self._peak_flops_per_device = peak_flops_per_device
    self._max_consecutive_bad_steps = max_consecutive_bad_steps
    self._inject_nan_at_steps = frozenset(inject_nan_at_steps)
    self._inject_nan_field = inject_nan_field
    self._guard: health.StepGuard | None = None

  def setup(self, task, train_input, partitioner, job_log_dir, *args,
            **kwargs) -> None:
    super().setup(task, train_input, partitioner, job_log_dir, *args,
                  **kwargs)
    self._guard = health.StepGuard(
        self._max_consecutive_bad_steps,
        str(job_log_dir),
        self._initial_step,
        write_scalar=self._write_skipped_steps,
    )

  def _write_skipped_steps(self, step: int, count: int) -> None:
    # At step + 1, beside paxml's 'learning/is_valid_step' of that step.
    with self._train_summary_writer.as_default():
      summary_utils.write_summary_tensor(
          step + 1, health.SKIPPED_STEPS_TAG, count,
          base_layer.SummaryType.AGGREGATE_SCALAR,
      )

  def train_step(
      self,
      step: int,
      state: TrainState,
      prng_key: Any,
      inputs: Any,
      static_args: trainer_lib.BaseStepFnStaticArgs,
  ) -> tuple[int, TrainState, trainer_lib.StepFnOutput]:
    if step in self._inject_nan_at_steps:
      logging.warning(
          'INJECT_NAN_AT_STEPS: step %d gets NaN %r.', step,
          self._inject_nan_field,
      )
      inputs = health.poison_batch(inputs, self._inject_nan_field)
    new_step, new_state, outputs = super().train_step(
        step, state, prng_key, inputs, static_args
    )
    self._guard.add(step, outputs.loss, outputs.summary_tensors)
    if new_step >= self._task.train.num_train_steps:
      self._guard.flush()  # The last step: nothing comes after it.
    outputs = outputs.replace(
        summary_tensors=attention_summaries.rename(outputs.summary_tensors)
    )
    return new_step, new_state, outputs

  def shutdown(self) -> None:
    try:
      if self._guard is not None:
        self._guard.flush()
    finally:
      super().shutdown()

  def _compute_steps_per_sec(self, step: int):
    steps_per_sec = super()._compute_steps_per_sec(step)
    examples_per_sec = steps_per_sec * self._train_unpadded_global_batch_size
    message = f'step {step + 1}: {examples_per_sec:.1f} examples/sec'
    scalars = {'Examples/sec': examples_per_sec}
    if self._flops_per_token and self._peak_flops_per_device:
      tokens_per_sec_per_device = (
          examples_per_sec * self._tokens_per_image / jax.device_count()
      )
      mfu = flops.mfu(
          tokens_per_sec_per_device,
          self._flops_per_token,
          self._peak_flops_per_device,
      )
      message += f', MFU {100 * mfu:.1f}%'
      scalars['MFU'] = mfu
    logging.info(message)
    with self._train_summary_writer.as_default():
      for key, value in scalars.items():
        summary_utils.write_summary_tensor(
            step + 1, key, value, base_layer.SummaryType.AGGREGATE_SCALAR
        )
    return steps_per_sec


class DatasetMetricsEvalProgram(programs.SingleTaskEvalProgram):
  """paxml's eval program plus metrics over the whole eval split.

  paxml averages per-batch metrics; mAP is not an average over batches
  (a class's AP depends on every example). This program also computes mAP
  and precision@1 over all eval examples from the model's per-example
  logits/labels/weight and reports them as 'map_dataset' and
  'precision_at_1_dataset'; on a dataset with a class hierarchy, also over
  its leaf classes ('map_leaf_dataset', 'precision_at_1_leaf_dataset').

  Multi-host: every host needs every host's examples. paxml 1.4.0's pjit
  eval step returns all its outputs fully replicated (partitioning.py:
  out_shardings PartitionSpec()), so XLA all-gathers the per-example
  outputs over the data axis inside the step (across processes: Gloo on
  CPU, the interconnect elsewhere) and each host's per-batch outputs hold
  the whole global batch; the metrics are then the same on every host and
  equal to a one-host run's. `global_rows` checks that before using them:
  a partitioner that returned only this host's rows would otherwise give a
  mAP over 1 / num_hosts of the split.
  """

  def global_rows(self, batch: dict[str, np.ndarray]) -> None:
    """Raises unless the batch's outputs hold the global eval batch."""
    want = getattr(self, '_eval_unpadded_global_batch_size', None)
    rows = len(batch['weight'])
    if want is not None and rows != want:
      raise ValueError(
          f'Eval {self._name}: per-example outputs hold {rows} rows, not the'
          f' global eval batch of {want} ({jax.process_count()} hosts): the'
          ' eval step did not replicate them across hosts, so the'
          ' dataset-level metrics would cover part of the split.'
      )

  def _run_eval_loop(self, state: TrainState) -> EvalLoopOutput:
    # Raises TypeError if paxml ever returns another arity.
    out = EvalLoopOutput(*super()._run_eval_loop(state))
    try:
      batches = [
          {k: np.asarray(b[k]) for k in ('logits', 'labels', 'weight')}
          for b in out.per_example_scores
      ]
    except KeyError as e:
      logging.warning(
          'Eval %s: no dataset-level metrics (no per-example %s).',
          self._name, e,
      )
      return out
    if not batches:
      return out
    for batch in batches:
      self.global_rows(batch)
    logits, labels, weight = (
        np.concatenate([b[k] for b in batches])
        for k in ('logits', 'labels', 'weight')
    )
    count = np.float32(weight.sum())
    map_all = metrics_lib.np_mean_average_precision(logits, labels, weight)
    p1_all = metrics_lib.np_precision_at_1(logits, labels, weight)
    out.metrics['map_dataset'].append((np.float32(map_all), count))
    out.metrics['precision_at_1_dataset'].append((np.float32(p1_all), count))
    # Over the leaf classes too: roots are in most images (see stats.py).
    data_dir = getattr(self._input_p, 'data_dir', '')  # '': no hierarchy.
    leaf = stats.leaf_metrics(data_dir, logits, labels, weight)
    for key, value in leaf.items():
      out.metrics[key].append((np.float32(value), count))
    return out
