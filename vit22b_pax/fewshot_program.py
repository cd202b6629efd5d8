"""A paxml eval program: few-shot linear probes on the frozen features.

ViT-22B is evaluated during and after pre-training by how well its frozen
image embeddings transfer (Dehghani et al. 2023): linear probes fit on k
images per class of other datasets (big_vision's `fewshot_lsr`).
FewShotEvalProgram runs that evaluation (fewshot_features.evaluate_data_dir)
inside a paxml training job, on the current train state's model variables,
for every dataset directory it is given, and writes to the job directory's
TensorBoard summaries, under summaries/eval_test_fewshot/:

  fewshot/<dataset>/<k>shot       mean test accuracy over the shot draws
  fewshot_std/<dataset>/<k>shot   its sample standard deviation over draws
  fewshot_chance/<dataset>        accuracy of always naming the test split's
                                  most frequent class

(<dataset> is the directory's base name), and logs each dataset's table
(fewshot.format_table). tools/train_summary.py reads these summaries into
summary.json.

When it runs. paxml 1.4.0 calls every eval program of a training job (only
with --eval_on_test) after the train steps that are multiples of
EVAL_INTERVAL_STEPS and after the last step; this program evaluates at the
calls whose step is a multiple of `interval_steps` or at least
`num_train_steps` (interval_steps 0: the last step only), and returns
without work at the others. In a separate `--mode=eval` job paxml calls it
on each new checkpoint, and the same rule picks which.

Cost. The model's forward pass is jitted once per job (in setup()) and
reused at every evaluation: batches have one shape (the last one padded),
and the train state's variables keep their shardings from step to step, so
nothing recompiles. Each evaluation reads and decodes every image of both
splits of every dataset, on the host, then solves the probes in float64
numpy.

One process only: fewshot_features reads a whole split in the calling
process, and the jitted forward gets host batches, which a multi-process
(multi-host) job cannot feed to its globally sharded variables.
check_single_process() refuses such jobs (the experiments' validate() calls
it; so does setup()); evaluate their checkpoints on one host with
`python -m vit22b_pax.tools.fewshot` instead.

paxml 1.4.0 drives eval programs through this interface, which the program
implements (its batch-by-batch BaseEvalProgram machinery does not apply):
setup(task, partitioner, job_log_dir, eval_prng_seed, enable_summary_writer)
once, run(state, step) -> EvalProgramOutput at every eval, shutdown() at
the end, and `eval_input`, of which paxml reads only the name
(trainer_lib.check_unique_names reads `.hparams.name`, eval_lib
`.name`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Sequence

from absl import logging
import jax
from paxml import programs
from paxml import summary_utils
from paxml import tasks_lib
import tensorflow as tf

from vit22b_pax import fewshot
from vit22b_pax import fewshot_features

NAME = 'fewshot'
# summaries/<SUMMARY_DIR>: paxml's naming of an eval program's summaries.
SUMMARY_DIR = f'eval_test_{NAME}'

TrainState = tasks_lib.TrainState


class MultiProcessError(ValueError):
  """The few-shot eval program was asked to run in a multi-process job."""


def check_single_process() -> None:
  """Raises MultiProcessError in a job of more than one process."""
  if jax.process_count() > 1:
    raise MultiProcessError(
        'the few-shot eval program runs in single-process jobs only (this'
        f' one has {jax.process_count()} processes): it reads every'
        ' dataset in one process. Evaluate the checkpoints on one host'
        ' with `python -m vit22b_pax.tools.fewshot --job_log_dir=...'
        ' --data_dir=... --fdl.ICI_MESH_SHAPE=None`.')


def check_names(data_dirs: Sequence[str]) -> None:
  """Raises ValueError if two directories share a base name."""
  names = [fewshot_features.dataset_name(d) for d in data_dirs]
  if len(set(names)) != len(names):
    raise ValueError(
        f'{tuple(data_dirs)} has two directories with the same base name:'
        ' their summaries (fewshot/<base name>/...) would mix.')


def check_dataset(data_dir: str, max_shots: int,
                  train_split: str = fewshot_features.TRAIN_SPLIT,
                  test_split: str = fewshot_features.TEST_SPLIT) -> None:
  """Checks a few-shot dataset without decoding an image.

  Args:
    data_dir: Dataset directory in the project's format.
    max_shots: The largest shot count: every class needs as many training
      examples.
    train_split: The shots' split.
    test_split: The test split.

  Raises:
    ValueError: the directory is not in the format, a record has not
      exactly one label, a class has fewer than max_shots training
      examples, or the test split is empty; the message names the file,
      record or class.
  """
  train, classes = fewshot_features.read_single_labels(data_dir, train_split)
  test, _ = fewshot_features.read_single_labels(data_dir, test_split)
  fewshot.class_indices(train, classes.num_classes, max_shots,
                        fewshot_features.dataset_name(data_dir),
                        classes.names)
  if not len(test):
    raise fewshot.FewShotError(
        f'{data_dir}: the {test_split!r} split (the test images) is empty.')


class _InputName:
  """What paxml 1.4.0 reads of an eval program's `eval_input`: its name."""

  def __init__(self, name: str):
    self.name = name

  @property
  def hparams(self) -> _InputName:
    return self


class FewShotEvalProgram(programs.Program):
  """Few-shot probes of the train state's frozen features (module docstring).

  Attributes:
    extractor: The FeatureExtractor (built in setup(), once per job).
    last_reports: The DatasetReports of the latest evaluation, one per
      dataset, in order; empty before the first.
  """

  def __init__(
      self,
      model_p: Any,
      data_dirs: Sequence[str],
      shots: Sequence[int] = fewshot.DEFAULT_SHOTS,
      num_seeds: int = fewshot.DEFAULT_NUM_SEEDS,
      l2: float = fewshot.DEFAULT_L2,
      l2_sweep: Sequence[float] | None = None,
      interval_steps: int = 0,
      num_train_steps: int = 0,
      batch_size: int = fewshot_features.DEFAULT_BATCH_SIZE,
  ):
    """Configures the program (nothing is built or read here).

    Args:
      model_p: The task's ViTClassifier config (mesh set as the task's).
      data_dirs: Few-shot dataset directories (train split: shots, eval
        split: test); their base names must differ.
      shots: Examples per class of each probe.
      num_seeds: Draws of the shots per shot count.
      l2: Ridge strength.
      l2_sweep: Optional grid; the l2 of each probe of >= 2 shots is then
        picked by leave-one-out on its shots.
      interval_steps: Evaluate at steps that are multiples of it; 0: only
        at num_train_steps.
      num_train_steps: The job's last step (always evaluated).
      batch_size: Images per forward pass; a multiple of the mesh's data
        axis size.
    """
    check_names(data_dirs)
    self._model_p = model_p
    self._data_dirs = tuple(data_dirs)
    self._shots = tuple(shots)
    self._num_seeds = num_seeds
    self._l2 = l2
    self._l2_sweep = tuple(l2_sweep) if l2_sweep else None
    self._interval_steps = interval_steps
    self._num_train_steps = num_train_steps
    self._batch_size = batch_size
    self._eval_input = _InputName(NAME)
    self._writer = None
    self._exitstack = contextlib.ExitStack()  # Closes the writer.
    self.extractor: fewshot_features.FeatureExtractor | None = None
    self.last_reports: list[fewshot_features.DatasetReport] = []

  @property
  def eval_input(self) -> _InputName:
    return self._eval_input

  def setup(
      self,
      task: Any,
      partitioner: Any,
      job_log_dir: Any,
      eval_prng_seed: Any,
      enable_summary_writer: bool = True,
  ) -> None:
    """Builds the extractor and opens the summary writer (paxml calls it).

    Args:
      task: paxml's task (unused: the model comes from the config).
      partitioner: paxml's partitioner (unused: the extractor's mesh is
        made from the same mesh shapes as the partitioner's).
      job_log_dir: The job directory (paxml passes an etils Path).
      eval_prng_seed: Unused (the forward pass is deterministic).
      enable_summary_writer: False: summaries are not written.
    """
    del task, partitioner, eval_prng_seed  # Unused.
    check_single_process()
    self.extractor = fewshot_features.FeatureExtractor(
        self._model_p, self._batch_size)
    summary_dir = programs.get_summary_base_dir(job_log_dir) / SUMMARY_DIR
    self._writer = self._exitstack.enter_context(
        summary_utils.get_summary_writer(summary_dir, enable_summary_writer))

  def should_run(self, state: TrainState, step: int) -> bool:
    """Whether `step` is an evaluation step (see the module docstring)."""
    del state  # The rule depends on the step only.
    if self._interval_steps > 0 and step % self._interval_steps == 0:
      return True
    return step >= self._num_train_steps

  def run(self, state: TrainState, step: int) -> programs.EvalProgramOutput:
    """Evaluates every dataset on state.mdl_vars if should_run(step)."""
    if not self.should_run(state, step):
      return programs.EvalProgramOutput(state)
    if self.extractor is None:
      raise RuntimeError('FewShotEvalProgram.run() before setup().')
    start = time.time()
    reports, metrics = [], {}
    for data_dir in self._data_dirs:
      report = fewshot_features.evaluate_data_dir(
          self.extractor, state.mdl_vars, data_dir, shots=self._shots,
          num_seeds=self._num_seeds, l2=self._l2, l2_sweep=self._l2_sweep)
      reports.append(report)
      metrics.update(report.scalars())
      self._write(step, report)
      logging.info('%s', fewshot.format_table(
          report.results,
          f'Few-shot probes at step {step} on {report.dataset}:'
          f' {report.num_classes} classes, {report.num_train} train /'
          f' {report.num_test} test images; chance'
          f' {100 * report.chance_accuracy:.2f}%'))
    self._writer.flush()
    self.last_reports = reports
    logging.info('Few-shot evaluation at step %d took %.1f s: %s', step,
                 time.time() - start,
                 ', '.join(f'{k}={v:.4f}' for k, v in metrics.items()))
    return programs.EvalProgramOutput(state, eval_metrics=metrics)

  def _write(self, step: int, report: fewshot_features.DatasetReport):
    with self._writer.as_default():
      for tag, mean in report.scalars().items():
        tf.summary.scalar(tag, mean, step=step)
      for k, result in report.results.items():
        tf.summary.scalar(f'fewshot_std/{report.dataset}/{k}shot',
                          result.std, step=step)
      tf.summary.scalar(f'fewshot_chance/{report.dataset}',
                        report.chance_accuracy, step=step)

  def shutdown(self) -> None:
    self._exitstack.close()
    self._writer = None
