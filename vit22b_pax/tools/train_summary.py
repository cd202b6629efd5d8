r"""Summarizes a finished training run from its job directory.

Reads the TensorBoard summaries paxml wrote under <job_log_dir>/summaries,
prints a readable summary and writes <job_log_dir>/summary.json with keys:
steps, train_loss_first, train_loss_last, eval_precision_at_1, eval_map,
eval_step, chance_map, examples_per_sec and bad_records (how many times the
inputs skipped a record that failed to decode, summed over inputs and hosts:
a bad record counts once per pass read, see data/README.md; null when the
inputs wrote no counts).

  python -m vit22b_pax.tools.train_summary --job_log_dir=runs/train_cpu \
      --data_dir=data/shapes

eval_map is the mean average precision over the whole eval split (the
'map_dataset' metric the experiments' eval program writes) when present,
else the mean of per-batch mAPs. chance_map is the mAP of a scorer that
ignores the image (the label prior), from the dataset's info file.
"""

import collections
import json
import pathlib
import sys
from typing import Sequence

from absl import app
from absl import flags
import numpy as np

from vit22b_pax.input import stats

_JOB_LOG_DIR = flags.DEFINE_string(
    'job_log_dir', None, 'The paxml job directory of the run (required).'
)
_DATA_DIR = flags.DEFINE_string(
    'data_dir',
    None,
    'Dataset directory, for the chance-level mAP; default: none reported.',
)
_EVAL_NAME = flags.DEFINE_string(
    'eval_name', 'eval', 'Name of the eval input (summaries/eval_test_NAME).'
)

Scalars = dict[str, list[tuple[int, float, float]]]  # tag -> (step, t, value)


def read_scalars(summary_dir: pathlib.Path) -> Scalars:
  """Returns {tag: [(step, wall_time, value), ...]} of a summary directory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  scalars = collections.defaultdict(list)
  for path in sorted(summary_dir.glob('events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.HasField('tensor'):
          array = tf.make_ndarray(value.tensor)
          if array.size != 1 or array.dtype.kind not in 'fiu':
            continue
          number = float(array.reshape(()))
        elif value.HasField('simple_value'):
          number = float(value.simple_value)
        else:
          continue
        scalars[value.tag].append((event.step, event.wall_time, number))
  for series in scalars.values():
    series.sort()
  return dict(scalars)


def _last(scalars: Scalars, *tags: str) -> float | None:
  for tag in tags:
    if scalars.get(tag):
      return scalars[tag][-1][2]
  return None


def summarize_run(
    job_log_dir: str | pathlib.Path,
    data_dir: str | None = None,
    eval_name: str = 'eval',
) -> dict[str, object]:
  """Computes the summary dict of a job directory (see module docstring)."""
  job = pathlib.Path(job_log_dir)
  train = read_scalars(job / 'summaries' / 'train')
  evals = read_scalars(job / 'summaries' / f'eval_test_{eval_name}')
  if not train.get('loss'):
    raise ValueError(f'No train loss summaries under {job}/summaries/train.')
  losses = train['loss']
  examples_per_sec = [v for _, _, v in train.get('Examples/sec', [])]
  # The first measurement includes compilation: leave it out when possible.
  steady = examples_per_sec[1:] or examples_per_sec
  summary = {
      'steps': int(losses[-1][0]),
      'train_loss_first': losses[0][2],
      'train_loss_last': losses[-1][2],
      'eval_precision_at_1': _last(evals, 'Metrics/precision_at_1_dataset',
                                   'Metrics/precision_at_1'),
      'eval_map': _last(evals, 'Metrics/map_dataset', 'Metrics/map'),
      'eval_step': int(evals['loss'][-1][0]) if evals.get('loss') else None,
      'chance_map': None,
      'examples_per_sec': float(np.median(steady)) if steady else None,
      'bad_records': _bad_records(job),
  }
  if data_dir:
    summary['chance_map'] = float(stats.chance_map(data_dir, split=eval_name))
  return summary


def _bad_records(job: pathlib.Path) -> int | None:
  counts = stats.read_input_stats(str(job))
  return sum(counts.values()) if counts else None


def format_summary(summary: dict[str, object]) -> str:
  def fmt(value, spec='.4f'):
    return 'n/a' if value is None else format(value, spec)

  lines = [
      f"steps                 {summary['steps']}",
      f"train loss            {fmt(summary['train_loss_first'])} -> "
      f"{fmt(summary['train_loss_last'])}",
      f"eval precision@1      {fmt(summary['eval_precision_at_1'])}",
      f"eval mAP              {fmt(summary['eval_map'])}"
      f"   (chance level {fmt(summary['chance_map'])})",
      f"examples/sec (train)  {fmt(summary['examples_per_sec'], '.1f')}",
      # Skips, not distinct records: see data/README.md.
      f"bad record skips      {summary['bad_records']}",
  ]
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  summary = summarize_run(_JOB_LOG_DIR.value, _DATA_DIR.value, _EVAL_NAME.value)
  out = pathlib.Path(_JOB_LOG_DIR.value) / 'summary.json'
  out.write_text(json.dumps(summary, indent=2) + '\n')
  print(format_summary(summary))
  print(f'wrote {out}', file=sys.stderr)


if __name__ == '__main__':
  flags.mark_flag_as_required('job_log_dir')
  app.run(main)
