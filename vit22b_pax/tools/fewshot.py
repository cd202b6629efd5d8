r"""Few-shot linear probes of a training run's frozen features.

  python -m vit22b_pax.tools.fewshot --job_log_dir=runs/train_cpu \
      --data_dir=data/shapes_fewshot [--step=N] [--shots=1,5,10,25] \
      [--seeds=3] [--l2=1024] [--l2_sweep=default] [--json] \
      [--exp=vit22b_pax.experiments.ViTShapesCPU] [--fdl.KNOB=value ...]

Restores the model variables (no optimizer state) of the job's checkpoint
of step N (default: the latest), extracts the pre-logits of the dataset's
train and eval splits (a progress bar on stderr), fits closed-form ridge
probes on k shots per class (vit22b_pax.fewshot) and prints the eval-split
accuracy per shot count: the mean and sample standard deviation over seeds,
each seed's value and the l2 used. --json prints the numbers as JSON
instead.

The experiment is the run's: its class and knob values as recorded in
<job_log_dir>/experiment_knobs.txt (for an older job, the class named in
experiment_cls_vars.txt with its defaults), or --exp. --fdl.KNOB=value
overrides apply on top, as on the paxml command line (e.g.
--fdl.ICI_MESH_SHAPE=None to evaluate on other devices than the run's).
The tool compares the model with <job_log_dir>/model_params.txt and names
any setting that differs.

The dataset (data/README.md's format) needs a train split (shots) and an
eval split (test) whose images each carry exactly one label, e.g.
`python -m vit22b_pax.tools.make_dataset shapes --variant fewshot`.
Problems (no checkpoint or no such step, a directory not in the format, a
record without exactly one label, a class with fewer examples than the
shots) stop with `error: ...` naming the path, exit status 1.
"""

import json
import sys
from typing import Sequence

from absl import app
from absl import flags
from fiddle import absl_flags as fdl_flags

# Imported before app.run parses the flags: imported inside main(), the
# seqio input's tf.data functions fail to build (an absl/TF interaction).
from vit22b_pax import fewshot
from vit22b_pax import fewshot_features
from vit22b_pax import job_checkpoint
from vit22b_pax import knobs

_JOB_LOG_DIR = flags.DEFINE_string(
    'job_log_dir', None, 'The paxml job directory of the run (required).')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'Few-shot dataset directory (required).')
_STEP = flags.DEFINE_integer(
    'step', None, 'Checkpoint step; default: the latest.')
_EXP = flags.DEFINE_string(
    'exp', None,
    'Experiment that wrote the checkpoints (full name); default: the one'
    ' the job recorded (experiment_knobs.txt, experiment_cls_vars.txt).')
_SHOTS = flags.DEFINE_list(
    'shots', [str(k) for k in fewshot.DEFAULT_SHOTS],
    'Examples per class of each probe.')
_SEEDS = flags.DEFINE_integer(
    'seeds', fewshot.DEFAULT_NUM_SEEDS, 'Draws of the shots per shot count.')
_L2 = flags.DEFINE_float(
    'l2', fewshot.DEFAULT_L2, 'Ridge strength (2^10 as big_vision).')
_L2_SWEEP = flags.DEFINE_list(
    'l2_sweep', [],
    "L2 values to pick from by leave-one-out on the shots ('default': "
    '2^0, 2^2, ..., 2^16); empty: always --l2.')
_TRAIN_SPLIT = flags.DEFINE_string(
    'train_split', fewshot_features.TRAIN_SPLIT, 'Shot source.')
_TEST_SPLIT = flags.DEFINE_string(
    'test_split', fewshot_features.TEST_SPLIT, 'Test split.')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', fewshot_features.DEFAULT_BATCH_SIZE,
    'Images per forward pass.')
_JSON = flags.DEFINE_bool('json', False, 'Print JSON instead of a table.')


def _parse_numbers(values: Sequence[str], flag: str, kind: type) -> list:
  try:
    return [kind(v) for v in values]
  except ValueError:
    raise app.UsageError(
        f'--{flag} takes comma-separated numbers, got {",".join(values)!r}.'
    ) from None


def _l2_sweep() -> list[float] | None:
  if not _L2_SWEEP.value:
    return None
  if _L2_SWEEP.value == ['default']:
    return list(fewshot.DEFAULT_L2_SWEEP)
  return _parse_numbers(_L2_SWEEP.value, 'l2_sweep', float)


def run() -> dict:
  """Evaluates the flags' job and dataset; returns the JSON record."""
  shots = _parse_numbers(_SHOTS.value, 'shots', int)
  l2_sweep = _l2_sweep()
  job = _JOB_LOG_DIR.value
  experiment = job_checkpoint.job_experiment(job, _EXP.value)
  cls = type(experiment)
  name = f'{cls.__module__}.{cls.__name__}'
  # --fdl.KNOB=value, checked and applied as paxml.main's validate() does.
  knobs.apply_overrides(experiment, knobs.command_line_overrides())
  job_checkpoint.check_model_config(experiment, job)
  mdl_vars, step = job_checkpoint.restore_mdl_vars(
      experiment, job, _STEP.value)
  extractor = fewshot_features.FeatureExtractor.from_experiment(
      experiment, _BATCH_SIZE.value)
  report = fewshot_features.evaluate_data_dir(
      extractor, mdl_vars, _DATA_DIR.value, shots=shots,
      num_seeds=_SEEDS.value, l2=_L2.value, l2_sweep=l2_sweep,
      train_split=_TRAIN_SPLIT.value, test_split=_TEST_SPLIT.value,
      progress=True)
  record = {'experiment': name, 'job_log_dir': job, 'step': step}
  record.update(report.to_json())
  if _JSON.value:
    print(json.dumps(record, indent=2))
  else:
    title = (
        f'{name.rsplit(".", 1)[-1]} step {step} on {report.dataset}:'
        f' {report.num_classes} classes, {report.num_train} train (shot'
        f' pool) / {report.num_test} test images, features D'
        f' {report.feature_dim}; chance'
        f' {100 * report.chance_accuracy:.2f}%')
    if report.num_skipped:
      title += f'; {report.num_skipped} undecodable records skipped'
    print(fewshot.format_table(report.results, title))
  return record


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  for flag in (_JOB_LOG_DIR, _DATA_DIR):
    if not flag.value:
      raise app.UsageError(f'--{flag.name} is required.')
  try:
    run()
  except ValueError as e:  # Bad job, data or numbers: the message says.
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=fdl_flags.flags_parser)
