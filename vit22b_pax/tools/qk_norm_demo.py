r"""Why QK-norm: the same small ViT trained with and without it, side by side.

  python -m vit22b_pax.tools.qk_norm_demo [--steps N] [--out DIR] \
      [--peak_lr LR] [--data_dir DIR] [--fdl.KNOB=value ...]

Dehghani et al. (2023, Sec. 2 and Fig. 1) saw an ~8B-parameter ViT diverge
after a few thousand steps: its attention logits grew without bound and
the softmax became almost one-hot (near-zero attention entropy). LayerNorm
on the queries and keys before their dot product (QK-norm) removed the
problem. This tool shows the mechanism on 2 CPU cores in minutes: it trains
ViTShapesCPU and its twin ViTShapesCPUNoQKNorm (the 'small' ViT, 6
parallel blocks, on the embedded shapes dataset) with the same seed, data
and a learning rate high enough to trigger it, through the real launcher
(`python -m paxml.main`, both runs at once), and reads the per-layer
attention diagnostics the runs write to TensorBoard (ATTENTION_DIAGNOSTICS:
'attention/layer_LL/max_logit' and '.../entropy').

Writes, under --out (default runs/qk_norm_demo):
  qk_norm_demo.png   max attention logit, attention entropy and training
                     loss against steps, both runs;
  qk_norm_demo.json  those curves per run ('steps', 'loss', 'max_logit' and
                     'entropy' per layer, their max / min / mean over
                     layers), the settings, each run's exit status and the
                     headline numbers at the last step;
  runs/qk_norm, runs/no_qk_norm   the two paxml job directories (replaced
                     on every run) with their logs (train.log).
A missing --data_dir is generated first (`make_dataset shapes`).

Every --fdl.KNOB=value flag goes to both runs after the demo's own
(e.g. --fdl.NUM_LAYERS=2 for a quicker look). Without QK-norm the
non-finite guard may stop the run (MAX_CONSECUTIVE_BAD_STEPS): the curves
then end there, which is the paper's divergence, and the JSON says so.

The learning rate. ViTShapesCPU trains at PEAK_LR 8e-3; the demo's default
is 1.5e-2, chosen by trying (both variants, 100 steps of batch 64, 20
warmup steps, no cooldown, 2 CPU cores; max logit: the largest over the
encoder layers, entropy: the lowest layer's, in nats; uniform attention
over the 16 tokens has log 16 = 2.77; measured before the GELU and MAP-head
changes of BENCHMARKS.md, which move these losses with rounding but not the
logits' growth, see the README):

  PEAK_LR  QK-norm  max logit at step   entropy at step     loss at step
                    20 / 40 / 100       20 / 40 / 100       20 / 40 / 100
  8e-3     without  66 / 263 / 405      1.94 / 1.27 / 1.01  74 / 123 / 23
  1.5e-2   with     7.0 / 7.6 / 9.4     2.20 / 2.51 / 1.93  74 / 58 / 22
  1.5e-2   without  121 / 362 / 1,695   1.66 / 1.57 / 0.41  99 / 62 / 30
  3e-2     with     6.0 / 7.1 / 7.4     2.61 / 2.67 / 2.70  821 / 507 / 7,478
  3e-2     without  521 / 2,226 / 5,590 0.83 / 0.36 / 0.06  241 / 261 / 49

Without QK-norm the logits grow at every one of these rates, in every
layer and fastest in the first, whose attention concentrates on ever fewer
tokens; with QK-norm the
largest logit stays below ~10 (LayerNorm bounds |q.k| / sqrt(H) by
sqrt(H) = 8 times the learned scales). At ViTShapesCPU's own 8e-3 the
growth is there but slow (entropy still ~1 nat at step 100); 1.5e-2 shows
it clearly in 100 steps while both runs still train (the loss falls in
both); at 3e-2 the attention collapses fastest (entropy 0.06) but the
learning rate is too high for the rest of the model: the QK-norm run's
loss diverged as well (and an earlier 3e-2 pair, with the layers
unrolled, did not: the dynamics there are chaotic), which muddles the
comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Sequence, TextIO

from vit22b_pax import tools
from vit22b_pax.tools import train

DEFAULT_OUT = os.path.join('runs', 'qk_norm_demo')
DEFAULT_DATA_DIR = os.path.join('data', 'shapes')
DEFAULT_STEPS = 100
DEFAULT_PEAK_LR = 1.5e-2
DEFAULT_WARMUP_STEPS = 20
DEFAULT_SUMMARY_INTERVAL = 5
PLOT_FILE = 'qk_norm_demo.png'
JSON_FILE = 'qk_norm_demo.json'
# Seconds between progress lines when stdout is not a terminal.
LINE_SECONDS = 15.0
POLL_SECONDS = 1.0
STOP_GRACE_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class Variant:
  """One of the two trainings.

  Attributes:
    key: JSON key and job subdirectory.
    label: Legend and progress label.
    experiment: The registered experiment the launcher runs.
    colour: matplotlib colour of its curves.
  """

  key: str
  label: str
  experiment: str
  colour: str


VARIANTS = (
    Variant('qk_norm', 'with QK-norm',
            'vit22b_pax.experiments.ViTShapesCPU', 'C0'),
    Variant('no_qk_norm', 'without QK-norm',
            'vit22b_pax.experiments.ViTShapesCPUNoQKNorm', 'C3'),
)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m vit22b_pax.tools.qk_norm_demo',
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      allow_abbrev=False,
  )
  parser.add_argument('--steps', type=int, default=DEFAULT_STEPS,
                      help='training steps of each run')
  parser.add_argument('--out', default=DEFAULT_OUT,
                      help='output directory (PNG, JSON, the two job dirs)')
  parser.add_argument('--peak_lr', type=float, default=DEFAULT_PEAK_LR,
                      help='PEAK_LR of both runs (see the docstring)')
  parser.add_argument('--warmup_steps', type=int,
                      default=DEFAULT_WARMUP_STEPS,
                      help='linear warmup (at most --steps)')
  parser.add_argument('--summary_interval', type=int,
                      default=DEFAULT_SUMMARY_INTERVAL,
                      help='steps between curve points (and progress)')
  parser.add_argument('--data_dir', default=DEFAULT_DATA_DIR,
                      help='shapes dataset; generated when missing')
  parser.add_argument('--timeout_minutes', type=float, default=0.0,
                      help='stop both runs and fail after this long (0: no'
                      ' limit)')
  return parser


def launch_flags(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
  """The --fdl overrides both runs get (the demo's, then the user's)."""
  steps = args.steps
  return [
      f"--fdl.DATA_DIR='{args.data_dir}'",
      f'--fdl.PEAK_LR={args.peak_lr!r}',
      f'--fdl.NUM_TRAIN_STEPS={steps}',
      f'--fdl.WARMUP_STEPS={min(args.warmup_steps, steps)}',
      '--fdl.COOLDOWN_STEPS=0',  # The learning rate stays high to the end.
      f'--fdl.SUMMARY_INTERVAL_STEPS={args.summary_interval}',
      f'--fdl.STEPS_PER_SEC_INTERVAL_STEPS={args.summary_interval}',
      f'--fdl.SAVE_INTERVAL_STEPS={steps}',
      '--fdl.EVAL_INTERVAL_STEPS=0',
      '--fdl.MAP_IN_TRAINING=False',
      # One scanned block compiles several times faster than 6 unrolled
      # ones (45 s vs 140-240 s on our loaded 2 cores); same model.
      '--fdl.SCAN_LAYERS=True',
      '--fdl.ATTENTION_DIAGNOSTICS=True',
      *extra,
  ]


class _Run:
  """One launcher subprocess, its log file and what the log said so far."""

  def __init__(self, variant: Variant, job: str, flags: Sequence[str]):
    self.variant = variant
    self.job = job
    self.log_path = os.path.join(job, train.LOG_FILE)
    os.makedirs(job)
    command = [sys.executable, '-m', 'paxml.main',
               f'--exp={variant.experiment}', f'--job_log_dir={job}', *flags]
    self._log = open(self.log_path, 'w', encoding='utf-8')
    self._log.write('# ' + ' '.join(command) + '\n')
    self._log.flush()
    self.process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=self._log,
        stderr=subprocess.STDOUT,
        env=dict(tools.ORIGINAL_ENVIRON, PYTHONUNBUFFERED='1'),
    )
    self.progress = train.Progress()
    self._reader = open(self.log_path, 'r', encoding='utf-8',
                        errors='replace')
    self._partial = ''

  def poll(self) -> bool:
    """Reads new log lines; True if a new train loss was logged."""
    text = self._partial + self._reader.read()
    *lines, self._partial = text.split('\n')
    now = time.monotonic()
    return any(self.progress.feed(l, now) == 'loss' for l in lines)

  def status(self) -> str:
    p = self.progress
    if p.step is None:
      text = 'compiling'
    else:
      text = f'step {p.step}/{p.total_steps or "?"}'
      if p.loss is not None:
        text += f' loss {p.loss:.3g}'
    if self.process.poll() is not None:
      text += ' (done)' if self.process.returncode == 0 else (
          f' (exit {self.process.returncode})')
    return f'{self.variant.label}: {text}'

  def tail(self, lines: int = train.TAIL_LINES) -> str:
    with open(self.log_path, encoding='utf-8', errors='replace') as f:
      return ''.join(f.readlines()[-lines:])

  def stop(self) -> None:
    """SIGTERM, then SIGKILL after STOP_GRACE_SECONDS (if still running)."""
    if self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(timeout=STOP_GRACE_SECONDS)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()

  def close(self) -> None:
    self._reader.close()
    self._log.close()


def _ensure_dataset(data_dir: str, out: TextIO) -> None:
  # pylint: disable=g-import-not-at-top
  from vit22b_pax.input import data_format
  from vit22b_pax.tools import make_dataset
  # pylint: enable=g-import-not-at-top

  if data_format.read_info(data_dir):
    return
  out.write(f'{data_dir} holds no dataset: generating the shapes dataset.\n')
  if make_dataset.main(['shapes', '--out', data_dir]):
    raise SystemExit(f'could not generate {data_dir}')


def train_both(
    args: argparse.Namespace, extra: Sequence[str], out: TextIO
) -> dict[str, _Run]:
  """Runs both trainings at once, showing their progress; returns them."""
  flags = launch_flags(args, extra)
  runs_dir = os.path.join(args.out, 'runs')
  interactive = out.isatty()
  runs = {}
  try:
    for variant in VARIANTS:
      job = os.path.join(runs_dir, variant.key)
      shutil.rmtree(job, ignore_errors=True)  # Else paxml would resume it.
      runs[variant.key] = _Run(variant, job, flags)
    out.write(f'training both for {args.steps} steps at PEAK_LR '
              f'{args.peak_lr:g}; logs: {runs_dir}/*/{train.LOG_FILE}\n')
    start = last_line = time.monotonic()
    while True:
      if (args.timeout_minutes
          and time.monotonic() - start > 60 * args.timeout_minutes):
        raise TimeoutError(
            f'the runs took longer than --timeout_minutes='
            f'{args.timeout_minutes:g}; stopped them. Logs: {runs_dir}'
        )
      # Whether any still runs, then their logs: a run that ends in between
      # has all its lines read before the last progress line.
      running = any(r.process.poll() is None for r in runs.values())
      changed = [run.poll() for run in runs.values()]
      now = time.monotonic()
      line = ' | '.join(r.status() for r in runs.values())
      line += f' | {train.format_seconds(now - start)}'
      if interactive:
        out.write('\r' + line[:max(shutil.get_terminal_size().columns - 1,
                                   40)] + '\x1b[K')
        out.flush()
      elif not running or (any(changed) and
                           now - last_line >= LINE_SECONDS):
        out.write(line + '\n')
        out.flush()
        last_line = now
      if not running:
        break
      time.sleep(POLL_SECONDS)
    if interactive:
      out.write('\n')
  finally:
    for run in runs.values():
      run.stop()
      run.close()
  return runs


def _finite_or_none(value: float) -> float | None:
  return value if math.isfinite(value) else None


def read_curves(job: str) -> dict[str, Any]:
  """A run's curves from its TensorBoard train summaries.

  Args:
    job: The paxml job directory.

  Returns:
    {'steps', 'loss', 'max_logit': {layer: [...]}, 'entropy': {layer:
    [...]}, 'max_logit_max', 'entropy_min', 'entropy_mean'} over the
    encoder layers (the MAP head's attention is kept in the per-layer dicts
    as 'map_head' but left out of the max / min / mean), aligned on 'steps'
    (the steps with a loss summary); None where a value was not finite or
    not written.
  """
  # pylint: disable=g-import-not-at-top
  from vit22b_pax import attention_summaries
  from vit22b_pax.tools import train_summary
  # pylint: enable=g-import-not-at-top

  scalars = train_summary.read_scalars(
      pathlib.Path(job) / 'summaries' / 'train'
  )
  by_step = lambda tag: {s: v for s, _, v in scalars.get(tag, [])}
  loss = by_step('loss')
  steps = sorted(loss)
  curves: dict[str, Any] = {
      'steps': steps,
      'loss': [_finite_or_none(loss[s]) for s in steps],
      'max_logit': {},
      'entropy': {},
  }
  for tag in sorted(scalars):
    m = attention_summaries.TAG.match(tag)
    if m:
      values = by_step(tag)
      curves[m['name']][m['layer']] = [
          _finite_or_none(values[s]) if s in values else None for s in steps
      ]

  def across_layers(name, reduce):
    layers = [v for k, v in curves[name].items() if k != 'map_head']
    out = []
    for i in range(len(steps)):
      values = [v[i] for v in layers if v[i] is not None]
      out.append(reduce(values) if values else None)
    return out

  curves['max_logit_max'] = across_layers('max_logit', max)
  curves['entropy_min'] = across_layers('entropy', min)
  curves['entropy_mean'] = across_layers(
      'entropy', lambda v: sum(v) / len(v)
  )
  return curves


def _last(values: list[float | None]) -> float | None:
  finite = [v for v in values if v is not None]
  return finite[-1] if finite else None


def headline(curves: dict[str, Any]) -> dict[str, Any]:
  """The numbers quoted in the README: last logged values and the peak."""
  peaks = [v for v in curves['max_logit_max'] if v is not None]
  return {
      'last_step': curves['steps'][-1] if curves['steps'] else None,
      'max_logit_last': _last(curves['max_logit_max']),
      'max_logit_peak': max(peaks) if peaks else None,
      'entropy_min_last': _last(curves['entropy_min']),
      'entropy_mean_last': _last(curves['entropy_mean']),
      'loss_last': _last(curves['loss']),
  }


def plot(results: dict[str, Any], tokens: int):
  """Max logit, entropy and loss against steps for both runs (a Figure)."""
  # pylint: disable=g-import-not-at-top
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  # pylint: enable=g-import-not-at-top

  fig, (ax_logit, ax_entropy, ax_loss) = plt.subplots(1, 3, figsize=(15, 4))
  for variant in VARIANTS:
    curves = results['runs'][variant.key]['curves']
    steps, colour = curves['steps'], variant.colour
    ax_logit.plot(steps, curves['max_logit_max'], color=colour,
                  label=variant.label)
    ax_entropy.plot(steps, curves['entropy_min'], color=colour,
                    label=f'{variant.label}, lowest layer')
    ax_entropy.plot(steps, curves['entropy_mean'], color=colour,
                    linestyle='--', label=f'{variant.label}, layer mean')
    ax_loss.plot(steps, curves['loss'], color=colour, label=variant.label)
  ax_logit.set_yscale('symlog', linthresh=10.0)
  ax_logit.set_title('Largest attention logit (over layers)')
  ax_logit.set_ylabel('max pre-softmax logit')
  ax_entropy.axhline(math.log(tokens), color='grey', linestyle=':',
                     linewidth=1, label=f'uniform over {tokens} tokens')
  ax_entropy.set_title('Attention entropy')
  ax_entropy.set_ylabel('nats')
  ax_entropy.set_ylim(bottom=0.0)
  ax_loss.set_yscale('log')
  ax_loss.set_title('Training loss')
  ax_loss.set_ylabel('sigmoid cross-entropy (summed over classes)')
  for ax in (ax_logit, ax_entropy, ax_loss):
    ax.set_xlabel('step')
    ax.legend(fontsize='small')
  settings = results['settings']
  title = (f"ViTShapesCPU with and without QK-norm, PEAK_LR "
           f"{settings['peak_lr']:g}")
  if settings['user_flags']:
    title += ' (' + ' '.join(settings['user_flags']) + ')'
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def num_tokens(flags: Sequence[str]) -> int:
  """Tokens per image of both runs; raises on a bad --fdl flag first.

  Builds both experiments with the flags the launcher will get, so a
  misspelled or ill-typed knob fails here, naming it, before anything
  trains.

  Args:
    flags: launch_flags()'s result.

  Returns:
    T, the same for both runs (the uniform-attention entropy is log T).
  """
  # Imported here: --help stays fast (paxml imports TensorFlow).
  from vit22b_pax import finetune  # pylint: disable=g-import-not-at-top

  overrides = [f.removeprefix('--fdl.') for f in flags]
  with tools.without_registry_lines():
    exps = [finetune.load_experiment(v.experiment, overrides)
            for v in VARIANTS]
  for exp in exps:
    exp.check(num_devices=1)
  return exps[0].tokens_per_image()


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
  args, extra = _parser().parse_known_args(argv)
  unknown = [a for a in extra if not a.startswith('--fdl.')]
  if unknown:
    _parser().error(f'unrecognized arguments: {" ".join(unknown)} (only '
                    '--fdl.KNOB=value flags go to the runs)')
  if args.steps < 1 or args.summary_interval < 1:
    _parser().error('--steps and --summary_interval must be positive')
  _ensure_dataset(args.data_dir, out)
  tokens = num_tokens(launch_flags(args, extra))
  os.makedirs(args.out, exist_ok=True)
  previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
  try:
    runs = train_both(args, extra, out)
  except TimeoutError as e:
    out.write(f'\nerror: {e}\n')
    return 1
  finally:
    signal.signal(signal.SIGTERM, previous)

  results = {
      'settings': {
          'steps': args.steps, 'peak_lr': args.peak_lr,
          'warmup_steps': min(args.warmup_steps, args.steps),
          'summary_interval': args.summary_interval,
          'data_dir': args.data_dir, 'fdl_flags': launch_flags(args, extra),
          'user_flags': list(extra),
      },
      'num_tokens': tokens,
      'runs': {},
  }
  failed = False
  for key, run in runs.items():
    code = run.process.returncode
    log = run.tail(400)
    stopped = 'NonFiniteStepsError' in log
    if code != 0 and not stopped:
      failed = True
      out.write(f'{run.variant.label} failed (exit status {code}); the end '
                f'of {run.log_path}:\n{run.tail()}')
      continue
    curves = read_curves(run.job)
    results['runs'][key] = {
        'experiment': run.variant.experiment,
        'exit_status': code,
        'stopped_by_guard': stopped,
        'curves': curves,
        'headline': headline(curves),
    }
  if failed:
    return 1
  json_path = os.path.join(args.out, JSON_FILE)
  with open(json_path, 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=1)
    f.write('\n')
  fig = plot(results, tokens)
  png_path = os.path.join(args.out, PLOT_FILE)
  fig.savefig(png_path, dpi=100)
  for variant in VARIANTS:
    run = results['runs'][variant.key]
    h = run['headline']
    note = ''
    if run['stopped_by_guard']:
      note = ' (stopped by the non-finite guard)'
    out.write(
        f"{variant.label:16s} step {h['last_step']}: max logit "
        f"{_fmt(h['max_logit_last'])} (peak {_fmt(h['max_logit_peak'])}), "
        f"entropy lowest layer {_fmt(h['entropy_min_last'])} / mean "
        f"{_fmt(h['entropy_mean_last'])} nats, loss {_fmt(h['loss_last'])}"
        f'{note}\n'
    )
  out.write(f'wrote {png_path} and {json_path}\n')
  return 0


def _fmt(value: float | None) -> str:
  return 'n/a' if value is None else f'{value:.3g}'


def _exit_on_sigterm(signum, frame):
  del frame
  raise SystemExit(128 + signum)  # train_both's finally stops the runs.


if __name__ == '__main__':
  sys.exit(main())
