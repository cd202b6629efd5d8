r"""Summarizes a finished training run from its job directory.

  python -m vit22b_pax.tools.train_summary --job_log_dir=runs/train_cpu \
      --data_dir=data/shapes

Reads the TensorBoard summaries paxml wrote under <job_log_dir>/summaries,
prints the run's figures with one line of explanation each, and writes
<job_log_dir>/summary.json and <job_log_dir>/training.png (train loss and
eval mAP, and the few-shot 10-shot accuracy when the run has it, against
steps).

summary.json keys:
  steps, train_loss_first, train_loss_last: the last step and the first and
    last logged train loss (sigmoid cross-entropy summed over classes).
  eval_step: the step of the last eval.
  eval_map, chance_map: mAP over all classes on the whole eval split (the
    eval program's 'map_dataset'; the mean of per-batch mAPs when that is
    missing) and the mAP of a scorer that ignores the image.
  eval_precision_at_1, chance_precision_at_1: the share of images whose
    top-scored class is one of their labels, and the most frequent class's
    share (a scorer that always names it).
  eval_map_leaf, chance_map_leaf, eval_precision_at_1_leaf,
  chance_precision_at_1_leaf: the same over the hierarchy's leaf classes
    ('map_leaf_dataset', 'precision_at_1_leaf_dataset'). With labels
    expanded to their ancestors a root class is in most images, so
    precision@1 over all classes is ~1 by construction; the leaves are the
    fine-grained task.
  num_classes, num_leaf_classes: from the dataset's class file.
  examples_per_sec: median train examples/s, the first measurement
    (compilation) left out.
  bad_records: how many times the inputs skipped a record that failed to
    decode, summed over inputs and hosts (once per pass that read it, see
    data/README.md); null when the inputs wrote no counts.
  fewshot_step: the step of the last few-shot evaluation (the experiment's
    FEWSHOT_DATASETS, summaries/eval_test_fewshot).
  fewshot_10shot, fewshot_chance: {dataset: accuracy} of the 10-shot linear
    probes on the frozen features (mean over shot draws) and of always
    naming the test split's most frequent class.
  fewshot: {dataset: {'<k>shot': {'mean', 'std'}}}: every shot count's
    accuracy, mean and sample standard deviation over the shot draws.
  skipped_steps: how many training steps had a non-finite loss or gradient
    and were skipped (no update; vit22b_pax/health.py), from
    <job_log_dir>/skipped_steps.json; null when the run wrote no such file.
  skipped_step_numbers: those steps (paxml's step numbers), or null.
Chance levels and class counts need --data_dir (null without it); the eval
metrics are null when the run did not evaluate or the eval program could
not compute them (e.g. leaf metrics on data without a hierarchy); the
few-shot keys are null without few-shot evaluations (fewshot_10shot also
when no probe had 10 shots).
"""

import collections
import json
import pathlib
import re
import sys
from typing import Sequence

from absl import app
from absl import flags
import numpy as np

from vit22b_pax import tools

_JOB_LOG_DIR = flags.DEFINE_string(
    'job_log_dir', None, 'The paxml job directory of the run (required).'
)
_DATA_DIR = flags.DEFINE_string(
    'data_dir',
    None,
    'Dataset directory, for chance levels and class counts; default: none.',
)
_EVAL_NAME = flags.DEFINE_string(
    'eval_name', 'eval', 'Name of the eval input (summaries/eval_test_NAME).'
)
_PLOT = flags.DEFINE_bool(
    'plot', True, 'Also write <job_log_dir>/training.png.'
)

PLOT_FILE = 'training.png'
SUMMARY_FILE = 'summary.json'
# fewshot_program.SUMMARY_DIR (not imported: it imports paxml, seconds).
FEWSHOT_SUMMARY_DIR = 'eval_test_fewshot'
_FEWSHOT_TAG = re.compile(r'^fewshot/(?P<dataset>[^/]+)/(?P<shots>\d+)shot$')

Scalars = dict[str, list[tuple[int, float, float]]]  # tag -> (step, t, value)


def read_scalars(summary_dir: pathlib.Path) -> Scalars:
  """Returns {tag: [(step, wall_time, value), ...]} of a summary directory."""
  # Imported here: --help stays fast (TensorFlow takes seconds to import).
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  scalars = collections.defaultdict(list)
  for path in sorted(summary_dir.glob('events.out.tfevents.*')):
    for record in tf.data.TFRecordDataset(str(path)):
      event = tf.compat.v1.Event.FromString(record.numpy())
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


def read_run(
    job_log_dir: str | pathlib.Path, eval_name: str = 'eval'
) -> tuple[Scalars, Scalars]:
  """(train scalars, eval scalars) of a job directory."""
  job = pathlib.Path(job_log_dir)
  train = read_scalars(job / 'summaries' / 'train')
  evals = read_scalars(job / 'summaries' / f'eval_test_{eval_name}')
  if not train.get('loss'):
    raise ValueError(f'No train loss summaries under {job}/summaries/train.')
  return train, evals


def read_fewshot(job_log_dir: str | pathlib.Path) -> Scalars:
  """The few-shot eval program's scalars ({} when the run has none)."""
  path = pathlib.Path(job_log_dir) / 'summaries' / FEWSHOT_SUMMARY_DIR
  return read_scalars(path) if path.is_dir() else {}


def fewshot_summary(fewshot: Scalars) -> dict[str, object]:
  """summary.json's few-shot keys (module docstring) from read_fewshot()."""
  table = collections.defaultdict(dict)
  chance, steps = {}, []
  for tag, series in fewshot.items():
    match = _FEWSHOT_TAG.match(tag)
    if not match or not series:
      continue
    dataset, shots = match['dataset'], int(match['shots'])
    std = fewshot.get(f'fewshot_std/{dataset}/{shots}shot')
    table[dataset][shots] = {'mean': series[-1][2],
                             'std': std[-1][2] if std else None}
    steps.append(series[-1][0])
    if fewshot.get(f'fewshot_chance/{dataset}'):
      chance[dataset] = fewshot[f'fewshot_chance/{dataset}'][-1][2]
  if not table:
    return {'fewshot_step': None, 'fewshot_10shot': None,
            'fewshot_chance': None, 'fewshot': None}
  ten = {d: t[10]['mean'] for d, t in sorted(table.items()) if 10 in t}
  return {
      'fewshot_step': int(max(steps)),
      'fewshot_10shot': ten or None,
      'fewshot_chance': chance or None,
      'fewshot': {
          d: {f'{k}shot': t[k] for k in sorted(t)}
          for d, t in sorted(table.items())
      },
  }


def summarize_run(
    job_log_dir: str | pathlib.Path,
    data_dir: str | None = None,
    eval_name: str = 'eval',
    scalars: tuple[Scalars, Scalars] | None = None,
    fewshot: Scalars | None = None,
) -> dict[str, object]:
  """Computes the summary dict of a job directory (see module docstring).

  Args:
    job_log_dir: The paxml job directory.
    data_dir: The dataset, for chance levels and class counts; None: null.
    eval_name: Name of the eval input.
    scalars: read_run()'s result, if already read.
    fewshot: read_fewshot()'s result, if already read.

  Returns:
    The summary, keys as in the module docstring.
  """
  # Imported here: --help stays fast (they import TensorFlow).
  # pylint: disable=g-import-not-at-top
  from vit22b_pax import health
  from vit22b_pax.input import data_format
  from vit22b_pax.input import stats
  # pylint: enable=g-import-not-at-top

  train, evals = scalars or read_run(job_log_dir, eval_name)
  losses = train['loss']
  examples_per_sec = [v for _, _, v in train.get('Examples/sec', [])]
  # The first measurement includes compilation: leave it out when possible.
  steady = examples_per_sec[1:] or examples_per_sec
  summary = {
      'steps': int(losses[-1][0]),
      'train_loss_first': losses[0][2],
      'train_loss_last': losses[-1][2],
      'eval_step': int(evals['loss'][-1][0]) if evals.get('loss') else None,
      'eval_map': _last(evals, 'Metrics/map_dataset', 'Metrics/map'),
      'chance_map': None,
      'eval_precision_at_1': _last(evals, 'Metrics/precision_at_1_dataset',
                                   'Metrics/precision_at_1'),
      'chance_precision_at_1': None,
      'eval_map_leaf': _last(evals, 'Metrics/map_leaf_dataset'),
      'chance_map_leaf': None,
      'eval_precision_at_1_leaf': _last(
          evals, 'Metrics/precision_at_1_leaf_dataset'
      ),
      'chance_precision_at_1_leaf': None,
      'num_classes': None,
      'num_leaf_classes': None,
      'examples_per_sec': float(np.median(steady)) if steady else None,
      'bad_records': _bad_records(stats, job_log_dir),
      'skipped_steps': None,
      'skipped_step_numbers': None,
  }
  summary.update(fewshot_summary(
      read_fewshot(job_log_dir) if fewshot is None else fewshot))
  skipped = health.read_skipped_steps(str(job_log_dir))
  if skipped is not None:
    summary['skipped_steps'] = len(skipped)
    summary['skipped_step_numbers'] = [s.step for s in skipped]
  if data_dir:
    leaves = stats.leaf_classes(data_dir)
    info = data_format.read_info(data_dir) or {}
    summary['num_classes'] = info.get('num_classes')
    summary['num_leaf_classes'] = len(leaves)
    summary['chance_map'] = stats.chance_map(data_dir, split=eval_name)
    summary['chance_precision_at_1'] = stats.chance_precision_at_1(
        data_dir, split=eval_name
    )
    summary['chance_map_leaf'] = stats.chance_map(
        data_dir, split=eval_name, classes=leaves
    )
    summary['chance_precision_at_1_leaf'] = stats.chance_precision_at_1(
        data_dir, split=eval_name, classes=leaves
    )
  return summary


def _bad_records(stats, job_log_dir) -> int | None:
  counts = stats.read_input_stats(str(job_log_dir))
  return sum(counts.values()) if counts else None


def format_summary(summary: dict[str, object]) -> str:
  """The printed summary: one figure per line, each with what it means."""

  def fmt(value, spec='.4f'):
    return 'n/a' if value is None else format(value, spec)

  def row(name, value, chance, meaning):
    chance_text = f'(chance {fmt(chance)})' if chance is not None else ''
    return f'{name:25s}{value:>14s}  {chance_text:16s} {meaning}'

  classes = summary.get('num_classes') or 'all'
  leaves = summary.get('num_leaf_classes') or 'the'
  bad = summary['bad_records']
  skipped = summary.get('skipped_steps')
  skipped_meaning = 'updates not applied: non-finite loss or gradient'
  if skipped:
    numbers = summary['skipped_step_numbers']
    skipped_meaning += '; steps ' + ', '.join(map(str, numbers[:5]))
    skipped_meaning += ', ...' if skipped > 5 else ''
  loss = (f"{fmt(summary['train_loss_first'], '.2f')} -> "
          f"{fmt(summary['train_loss_last'], '.2f')}")
  lines = [
      row('steps', str(summary['steps']), None,
          f"trained steps; the last eval was at step {summary['eval_step']}"),
      row('train loss', loss, None,
          'sigmoid cross-entropy summed over classes, first -> last logged'),
      row('eval mAP', fmt(summary['eval_map']), summary['chance_map'],
          f'mean AP over {classes} classes, whole eval split'),
      row('eval mAP, leaves', fmt(summary['eval_map_leaf']),
          summary['chance_map_leaf'],
          f'mean AP over {leaves} leaf classes: the fine-grained labels'),
      row('eval precision@1', fmt(summary['eval_precision_at_1']),
          summary['chance_precision_at_1'],
          'top-scored class is a label; chance: always the commonest class'),
      row('eval precision@1, leaves',
          fmt(summary['eval_precision_at_1_leaf']),
          summary['chance_precision_at_1_leaf'],
          'top-scored leaf class is one of the image\'s labels'),
  ]
  step = summary.get('fewshot_step')
  for dataset, accuracy in (summary.get('fewshot_10shot') or {}).items():
    std = summary['fewshot'][dataset]['10shot']['std']
    spread = f' (sd {std:.3f} over draws)' if std is not None else ''
    lines.append(row(
        'few-shot 10-shot', fmt(accuracy),
        (summary.get('fewshot_chance') or {}).get(dataset),
        f'{dataset} @{step}: linear probe on frozen features, 10 images per'
        f' new class{spread}'))
  lines += [
      row('examples/sec (train)', fmt(summary['examples_per_sec'], '.1f'),
          None, 'median over the run, compilation left out'),
      row('bad record skips', 'n/a' if bad is None else str(bad), None,
          'records that failed to decode, once per pass that read them'),
      row('skipped steps', 'n/a' if skipped is None else str(skipped), None,
          skipped_meaning),
  ]
  return '\n'.join(line.rstrip() for line in lines)


def plot_training(train: Scalars, evals: Scalars, summary: dict[str, object],
                  fewshot: Scalars | None = None):
  """A figure of loss (left) and mAP and few-shot accuracy (right).

  Args:
    train: Train scalars ('loss', and 'Metrics/map' when the run computed
      batch mAP in training).
    evals: Eval scalars ('loss', 'Metrics/map_dataset',
      'Metrics/map_leaf_dataset').
    summary: summarize_run()'s result, for the chance levels.
    fewshot: read_fewshot()'s result: the 10-shot accuracies are drawn.

  Returns:
    The matplotlib Figure (Agg backend: no display needed).
  """
  # Imported here: --help stays fast; Agg renders without a display.
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  def series(scalars, tag):
    points = scalars.get(tag, [])
    return [s for s, _, _ in points], [v for _, _, v in points]

  fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
  ax_loss.plot(*series(train, 'loss'), label='train loss')
  if evals.get('loss'):
    ax_loss.plot(*series(evals, 'loss'), 'o-', label='eval loss')
  ax_loss.set_xlabel('step')
  ax_loss.set_ylabel('sigmoid cross-entropy (summed over classes)')
  ax_loss.set_title('Loss')
  ax_loss.legend()
  if train.get('Metrics/map'):
    ax_map.plot(*series(train, 'Metrics/map'), alpha=0.4,
                label='train batch mAP, all classes')
  for tag, chance_key, label, colour in (
      ('Metrics/map_dataset', 'chance_map', 'all classes', 'C1'),
      ('Metrics/map_leaf_dataset', 'chance_map_leaf', 'leaf classes', 'C2'),
  ):
    if evals.get(tag):
      ax_map.plot(*series(evals, tag), 'o-', color=colour,
                  label=f'eval mAP, {label}')
    if summary.get(chance_key) is not None:
      ax_map.axhline(summary[chance_key], linestyle='--', color=colour,
                     linewidth=1, label=f'chance, {label}')
  fewshot_chance = summary.get('fewshot_chance') or {}
  for i, dataset in enumerate(summary.get('fewshot_10shot') or {}):
    colour = f'C{3 + i}'
    ax_map.plot(*series(fewshot or {}, f'fewshot/{dataset}/10shot'), 's-',
                color=colour, label=f'10-shot accuracy, {dataset}')
    if dataset in fewshot_chance:
      ax_map.axhline(fewshot_chance[dataset], linestyle=':', color=colour,
                     linewidth=1, label=f'chance, {dataset}')
  ax_map.set_xlabel('step')
  if summary.get('fewshot_10shot'):
    ax_map.set_ylabel('mAP; accuracy')
    ax_map.set_title('Eval mAP and few-shot accuracy')
  else:
    ax_map.set_ylabel('mAP')
    ax_map.set_title('Mean average precision')
  ax_map.set_ylim(0.0, 1.0)
  if ax_map.get_legend_handles_labels()[0]:  # Else the run has no mAP.
    ax_map.legend(fontsize='small')
  fig.tight_layout()
  return fig


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  job = pathlib.Path(_JOB_LOG_DIR.value)
  scalars = read_run(job, _EVAL_NAME.value)
  fewshot = read_fewshot(job)
  summary = summarize_run(
      job, _DATA_DIR.value, _EVAL_NAME.value, scalars=scalars,
      fewshot=fewshot,
  )
  out = job / SUMMARY_FILE
  out.write_text(json.dumps(summary, indent=2) + '\n')
  print(format_summary(summary))
  print(f'wrote {out}', file=sys.stderr)
  if _PLOT.value:
    fig = plot_training(*scalars, summary, fewshot)
    fig.savefig(job / PLOT_FILE, dpi=100)
    print(f'wrote {job / PLOT_FILE}', file=sys.stderr)


if __name__ == '__main__':
  flags.mark_flag_as_required('job_log_dir')
  tools.absl_warnings_only()
  app.run(main)
