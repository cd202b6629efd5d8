r"""Parameter counts, training FLOPs and MFU of a registered experiment.

  python -m vit22b_pax.tools.summarize --exp=ViT22BJFT [--fdl.KNOB=value ...]
      [--tokens_per_sec_per_chip=1150 --peak_tflops=275] [--json]
  python -m vit22b_pax.tools.summarize --exp=ViT22BJFT --list_knobs

The model is built abstractly (jax.eval_shape over its init: nothing is
allocated), so ViT22BJFT answers on a laptop. --exp takes the full name
(vit22b_pax.experiments.ViT22BJFT) or the class name. Overrides are applied
exactly as paxml.main's --fdl_config path applies them (fiddle's
`--fdl.KNOB=value`, values through ast.literal_eval) and the experiment's
knob checks run, except the device-count check: the mesh is compared with
its own size rather than with this machine's devices.

FLOPs follow the paper's convention (vit22b_pax.flops): per token 6 x the
encoder-block weight-matrix parameters plus non-causal attention
12 x L x T x D; per image that times T tokens.
"""

import json
import math
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
from fiddle import absl_flags as fdl_flags

from vit22b_pax import tools

_EXP = flags.DEFINE_string(
    'exp',
    None,
    'Experiment: full name or class name in vit22b_pax.experiments.',
)
_JSON = flags.DEFINE_bool('json', False, 'Print JSON instead of a table.')
_TOKENS_PER_SEC = flags.DEFINE_float(
    'tokens_per_sec_per_chip', None, 'Measured training tokens/s per chip.'
)
_PEAK_TFLOPS = flags.DEFINE_float(
    'peak_tflops', None, 'Peak TFLOP/s of one chip (TPUv4 bf16: 275).'
)
_LIST_KNOBS = flags.DEFINE_bool(
    'list_knobs', False, 'Print the knobs and their values, then exit.'
)


def summarize(
    exp: Any,
    tokens_per_sec_per_chip: float | None = None,
    peak_tflops: float | None = None,
) -> dict[str, Any]:
  """Returns the summary dict of an experiment instance (overrides applied)."""
  import jax  # pylint: disable=g-import-not-at-top
  from vit22b_pax import flops  # pylint: disable=g-import-not-at-top

  ici, dcn = exp.mesh_shapes()
  exp.check(num_devices=math.prod(ici) * (math.prod(dcn) if dcn else 1))
  size = exp.model_size()
  counts = exp.abstract_param_counts()
  num_tokens = exp.tokens_per_image()
  per_token = flops.train_flops_per_token(
      num_block_matrix_params=counts['paper_block_matrix_params'],
      num_layers=size.num_layers,
      num_tokens=num_tokens,
      model_dims=size.model_dims,
  )
  out = {
      'experiment': type(exp).__name__,
      'model': {
          'model_size': exp.MODEL_SIZE,
          'model_dims': size.model_dims,
          'num_layers': size.num_layers,
          'hidden_dims': size.hidden_dims,
          'num_heads': size.num_heads,
          'dim_per_head': size.dim_per_head,
          'patch_size': size.patch_size,
          'image_size': size.image_size,
          'tokens_per_image': num_tokens,
          'parallel_block': exp.PARALLEL_BLOCK,
          'use_qk_norm': exp.USE_QK_NORM,
          'num_classes': exp.NUM_CLASSES,
      },
      'total_params': counts['total_params'],
      'params_by_component': counts['params_by_component'],
      'paper_block_matrix_params': counts['paper_block_matrix_params'],
      'train_flops_per_token': per_token,
      'train_flops_per_image': per_token * num_tokens,
      'global_batch_size': exp.GLOBAL_BATCH_SIZE,
      'train_flops_per_step': per_token * num_tokens * exp.GLOBAL_BATCH_SIZE,
      'mesh': {'ici': list(ici), 'dcn': list(dcn) if dcn else None},
      'jax_backend': jax.default_backend(),
  }
  if tokens_per_sec_per_chip is not None or peak_tflops is not None:
    if tokens_per_sec_per_chip is None or peak_tflops is None:
      raise app.UsageError(
          'MFU needs both --tokens_per_sec_per_chip and --peak_tflops.'
      )
    out['tokens_per_sec_per_chip'] = tokens_per_sec_per_chip
    out['peak_tflops'] = peak_tflops
    out['mfu'] = flops.mfu(
        tokens_per_sec_per_chip, per_token, peak_tflops * 1e12
    )
  return out


def format_table(summary: dict[str, Any]) -> str:
  m = summary['model']
  lines = [
      f"{summary['experiment']}: {m['model_size']} "
      f"(D {m['model_dims']}, L {m['num_layers']}, F {m['hidden_dims']}, "
      f"{m['num_heads']} heads x {m['dim_per_head']}, patch {m['patch_size']}"
      f", {m['image_size']} px = {m['tokens_per_image']} tokens, "
      f"{'parallel' if m['parallel_block'] else 'sequential'} blocks, "
      f"QK-norm {'on' if m['use_qk_norm'] else 'off'}, "
      f"{m['num_classes']} classes)",
      '',
      f"{'total parameters':36s}{summary['total_params']:>20,d}",
  ]
  for name, count in summary['params_by_component'].items():
    lines.append(f'  {name:34s}{count:>20,d}')
  lines += [
      f"{'paper count (block weight matrices)':36s}"
      f"{summary['paper_block_matrix_params']:>20,d}",
      '',
      f"{'train FLOPs / token':36s}{summary['train_flops_per_token']:>20.4e}",
      f"{'train FLOPs / image':36s}{summary['train_flops_per_image']:>20.4e}",
      f"{'train FLOPs / step':36s}{summary['train_flops_per_step']:>20.4e}"
      f"  (global batch {summary['global_batch_size']:,d})",
  ]
  if 'mfu' in summary:
    lines.append(
        f"{'MFU':36s}{100 * summary['mfu']:>19.1f}%  "
        f"({summary['tokens_per_sec_per_chip']:g} tokens/s/chip, "
        f"{summary['peak_tflops']:g} TFLOP/s peak)"
    )
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _EXP.value:
    raise app.UsageError('--exp is required.')
  from vit22b_pax import knobs  # pylint: disable=g-import-not-at-top

  exp = tools.resolve_experiment(_EXP.value)()

  # The same code path as `paxml.main --fdl_config=... --fdl.KNOB=value`.
  fdl_flags.apply_overrides_to(exp)
  if _LIST_KNOBS.value:
    for name, value in knobs.knob_values(exp).items():
      print(f'{name} = {value!r}')
    return
  summary = summarize(exp, _TOKENS_PER_SEC.value, _PEAK_TFLOPS.value)
  if _JSON.value:
    print(json.dumps(summary, indent=2))
  else:
    print(format_table(summary))


if __name__ == '__main__':
  tools.absl_warnings_only()
  app.run(main, flags_parser=fdl_flags.flags_parser)
