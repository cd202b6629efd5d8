r"""Benchmarks the parallel block, MFU on CPU, the input and `make train`.

  python -m vit22b_pax.tools.benchmark [--quick] [--json FILE]
      [--exp NAME] [--fdl.KNOB=value ...] [--data_dir DIR]

Measures in one process, each figure the median of repeated timed runs
after warm-up (min and max in the JSON), with a progress line per round on
stderr:

  parallel_vs_sequential  the paxml train step (forward, backward, optimizer
                          update) of the parallel-block model over that of
                          its sequential twin of equal size (speed ratio:
                          > 1 means the parallel block is faster);
  parallel_vs_praxis      the same against praxis' stock
                          `transformers.Transformer` as the block of the same
                          classifier (`benchmark_lib.stock_block_config`);
  mfu_cpu                 model FLOP/s of the parallel model's train step
                          (paper convention, vit22b_pax/flops.py) over the
                          float32 matmul peak (2048^3) measured in the run;
  input_vs_baseline       the training input pipeline of `make train`'s
                          experiment (decode, hierarchy expansion, crop,
                          flip, shuffle) in images/s over a minimal tf.data
                          decode-and-crop of the same shards (its map at
                          tf.data.AUTOTUNE); input_vs_baseline_same_calls:
                          over that baseline with its map at the training
                          input's parallelism;
  make_train_examples_per_sec  `make train`'s experiment (ViTShapesCPU):
                          train steps fed by its input; also the same steps
                          on a fixed batch, so the input's cost shows.

The three model steps, and the peak matmul, are timed interleaved (A, B, C,
peak, A, B, C, peak, ...) so noise from other work hits them alike.

Default shape (no --exp): ViTMid's widths, D 768, F 3072, 12 heads of 64,
224 px images in patches of 14 (256 tokens), 1,000 classes, with 4 layers
and a batch of 8 (a step of ~2.7 s on a quiet 2-core machine; the issue
that asked for this benchmark measured the block at this width and depth),
float32, no scan and no rematerialization (recomputed FLOPs would be work
the MFU does not count). --quick uses 2 layers: compiling the three 4-layer
steps alone takes ~110 s. --exp NAME benchmarks a registered experiment as
it is configured; --fdl.KNOB=value overrides its knobs either way, as
paxml.main's --fdl_config path does.

--data_dir: the dataset of `make train` (the shapes dataset, `python -m
vit22b_pax.tools.make_dataset shapes --out DIR`); when missing or empty it
is generated (in a temporary directory without --data_dir), which the log
says. --quick runs fewer repetitions (and generates a smaller dataset):
under 3 minutes on 2 quiet cores.
"""

import json
import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from fiddle import absl_flags as fdl_flags

from vit22b_pax import tools

# Imported before flags are parsed: importing the TF/lingvo stack after
# absl parsed the flags leaves tf.data unable to run (functions missing from
# the registry).
from vit22b_pax import benchmark_lib
from vit22b_pax import knobs

# The benchmark's default model: ViTMid's widths at a CPU step size.
DEFAULT_EXP = 'ViTMid'
DEFAULT_OVERRIDES = (
    'NUM_LAYERS=4',
    'GLOBAL_BATCH_SIZE=8',
    'SCAN_LAYERS=False',
    'REMAT_POLICY=None',
    "FPROP_DTYPE='float32'",
)
# --quick on the default model: fewer layers, so it compiles in time.
QUICK_OVERRIDES = ('NUM_LAYERS=2',)
MAKE_TRAIN_EXP = 'ViTShapesCPU'

_EXP = flags.DEFINE_string(
    'exp',
    None,
    'Experiment whose size the three models share (full or class name); '
    f'default {DEFAULT_EXP} with {", ".join(DEFAULT_OVERRIDES)} '
    f'({", ".join(QUICK_OVERRIDES)} with --quick).',
)
_QUICK = flags.DEFINE_bool(
    'quick',
    False,
    'Fewer repetitions and, on the default model, 2 layers (a smoke run).',
)
_JSON = flags.DEFINE_string('json', None, 'Also write the report here.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir',
    None,
    'Dataset of the input and make-train benchmarks; generated when missing.',
)
_MAKE_TRAIN_EXP = flags.DEFINE_string(
    'make_train_exp', MAKE_TRAIN_EXP, "`make train`'s experiment."
)
_MAKE_TRAIN_OVERRIDES = flags.DEFINE_list(
    'make_train_overrides',
    [],
    'KNOB=value overrides of --make_train_exp (e.g. a smaller model).',
)


def build_experiments(argv: Sequence[str]):
  """(model experiment, make-train experiment) from the flags."""
  exp = tools.resolve_experiment(_EXP.value or DEFAULT_EXP)()
  if not _EXP.value:
    knobs.apply_overrides(exp, DEFAULT_OVERRIDES)
    if _QUICK.value:
      knobs.apply_overrides(exp, QUICK_OVERRIDES)
  # The same code path as `paxml.main --fdl_config=... --fdl.KNOB=value`.
  fdl_flags.apply_overrides_to(exp)
  exp.check_knobs()
  train_exp = tools.resolve_experiment(_MAKE_TRAIN_EXP.value)()
  knobs.apply_overrides(train_exp, _MAKE_TRAIN_OVERRIDES.value)
  data_dir = benchmark_lib.ensure_dataset(_DATA_DIR.value, _QUICK.value)
  train_exp.DATA_DIR = data_dir
  train_exp.check_knobs()
  del argv
  return exp, train_exp


def format_summary(report: dict) -> str:
  """The headline figures as a few lines of text."""
  shape = report['model_shape']
  lines = [
      f"model: {shape['experiment']} D {shape['model_dims']}, "
      f"F {shape['hidden_dims']}, {shape['num_heads']} heads, "
      f"{shape['num_layers']} layers, {shape['tokens_per_image']} tokens, "
      f"batch {shape['global_batch_size']}, {shape['fprop_dtype']}",
      f"machine: {report['machine']['cores']} cores, "
      f"{report['machine']['cpu_model']}, jax "
      f"{report['machine']['jax_version']}",
  ]
  steps = report['timings_seconds']['train_step']
  for variant, t in steps.items():
    lines.append(
        f'  {variant:10s} step {t["median"]:.3f} s '
        f'[{t["min"]:.3f} .. {t["max"]:.3f}], MFU '
        f'{report["mfu_cpu_by_variant"][variant]:.3f}'
    )
  lines += [
      f"matmul peak: {report['matmul_peak_flops_per_sec'] / 1e9:.1f} GFLOP/s",
      f"parallel_vs_sequential: {report['parallel_vs_sequential']:.3f}",
      f"parallel_vs_praxis:     {report['parallel_vs_praxis']:.3f}",
      f"mfu_cpu:                {report['mfu_cpu']:.3f}",
      f"input_vs_baseline:      {report['input_vs_baseline']:.3f} "
      f"({report['input_images_per_sec']:.0f} vs "
      f"{report['input_baseline_images_per_sec']:.0f} images/s; "
      f"vs the baseline at the input's "
      f"{report['input_config']['map_parallel_calls']} parallel calls: "
      f"{report['input_vs_baseline_same_calls']:.3f})",
      f"make_train_examples_per_sec: "
      f"{report['make_train_examples_per_sec']:.1f} "
      f"(step only {report['make_train_step_only_examples_per_sec']:.1f})",
  ]
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # paxml logs every variable at INFO; the progress lines are on stderr.
    logging.set_verbosity(logging.WARNING)
  exp, train_exp = build_experiments(argv)
  settings = benchmark_lib.QUICK if _QUICK.value else benchmark_lib.FULL
  report = benchmark_lib.run(exp, train_exp, settings)
  report['command'] = ' '.join(['python -m vit22b_pax.tools.benchmark']
                               + sys.argv[1:])
  report['quick'] = _QUICK.value
  text = json.dumps(report, indent=2, sort_keys=True)
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      f.write(text + '\n')
  print(format_summary(report))


if __name__ == '__main__':
  app.run(main, flags_parser=fdl_flags.flags_parser)
