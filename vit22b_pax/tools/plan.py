r"""Plans a training run before the chips are booked: memory, fit, speed.

  python -m vit22b_pax.tools.plan --exp=ViT22BJFT --chips=1024 --chip=tpu-v4
      [--fdl.KNOB=value ...] [--mfu=0.549] [--json] [--compile_check]

Per chip: parameters, optimizer state, gradients, activations (under the
remat policy, scan and mesh) and input buffers; whether they fit the chip's
HBM; the global and per-chip batch; the step's FLOPs (the paper's
convention, vit22b_pax.flops) and the step time and images/s at the stated
MFU (default the paper's 54.9%). When the plan does not fit it says why and
suggests the closest mesh / remat policy / batch that does. Nothing is
allocated: the model and optimizer state are built abstractly. Chips:
tpu-v4, tpu-v5e, tpu-v5p, a100-80g, h100 (vit22b_pax.plan.CHIPS names each
number's source). --exp and --fdl.KNOB=value work as in
vit22b_pax.tools.summarize; when the experiment's mesh is for another
chip count, the plan keeps its model axis where it can.

--compile_check also lowers and compiles the experiment's real train step
(paxml's, with abstract inputs) on --chips simulated CPU devices and prints
XLA's per-device figure (from its buffer assignment) beside the estimate:
for small experiments (e.g. ViTSmoke, ViTMid on 8 devices).
"""

import json
import math
import os
from typing import Sequence

from absl import app
from absl import flags
from fiddle import absl_flags as fdl_flags

from vit22b_pax import tools

_CHIP_NAMES = ('tpu-v4', 'tpu-v5e', 'tpu-v5p', 'a100-80g', 'h100')
_EXP = flags.DEFINE_string(
    'exp', None,
    'Experiment: full name or class name in vit22b_pax.experiments.',
)
_CHIPS = flags.DEFINE_integer('chips', None, 'Number of chips (devices).')
_CHIP = flags.DEFINE_enum('chip', 'tpu-v4', _CHIP_NAMES, 'Chip kind.')
_MFU = flags.DEFINE_float(
    'mfu', None, 'Model FLOPs utilization for the step time (default: the '
    "paper's 0.549)."
)
_JSON = flags.DEFINE_bool('json', False, 'Print JSON instead of text.')
_COMPILE_CHECK = flags.DEFINE_bool(
    'compile_check', False,
    'Also compile the train step on --chips simulated CPU devices and '
    "print XLA's per-device bytes beside the estimate.",
)
# Simulated devices are cheap but each one is a compile partition.
_MAX_SIMULATED = 64


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _EXP.value:
    raise app.UsageError('--exp is required.')
  if not _CHIPS.value or _CHIPS.value < 1:
    raise app.UsageError('--chips must be a positive number of chips.')
  if _COMPILE_CHECK.value:
    if _CHIPS.value > _MAX_SIMULATED:
      raise app.UsageError(
          f'--compile_check simulates --chips CPU devices: at most '
          f'{_MAX_SIMULATED}, got {_CHIPS.value}.'
      )
    # Before jax is first imported (below): XLA reads it once.
    os.environ['XLA_FLAGS'] = (
        os.environ.get('XLA_FLAGS', '')
        + f' --xla_force_host_platform_device_count={_CHIPS.value}'
    ).strip()
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  # Imported here: --help stays fast (paxml imports TensorFlow and lingvo).
  from vit22b_pax import plan  # pylint: disable=g-import-not-at-top
  from vit22b_pax import recipe  # pylint: disable=g-import-not-at-top

  exp = tools.resolve_experiment(_EXP.value)()
  # The same code path as `paxml.main --fdl_config=... --fdl.KNOB=value`.
  fdl_flags.apply_overrides_to(exp)
  mfu = recipe.PAPER_MFU if _MFU.value is None else _MFU.value
  try:
    result = plan.make_plan(exp, _CHIPS.value, _CHIP.value, mfu)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if _COMPILE_CHECK.value:
    result['compile_check'] = _compile_check(plan, exp, result)
  if _JSON.value:
    print(json.dumps(result, indent=2))
    return
  print(plan.format_plan(result))
  if _COMPILE_CHECK.value:
    check = result['compile_check']
    print(
        f"compile check on {_CHIPS.value} simulated CPU devices: XLA "
        f"{check['compiler_total_bytes']:,d} bytes per device, estimate "
        f"{check['estimate_total_bytes']:,d} (ratio {check['ratio']:.3f})"
    )


def _compile_check(plan, exp, result):
  """XLA's buffer-assignment bytes of the planned layout's train step."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  mesh = result['mesh']
  exp = plan.with_knobs(
      exp, ICI_MESH_SHAPE=(mesh['data'], mesh['model']), DCN_MESH_SHAPE=None
  )
  devices = np.asarray(jax.devices()[: math.prod(
      (mesh['data'], mesh['model']))]).reshape(mesh['data'], mesh['model'])
  compiled = plan.compiled_memory(exp, devices)
  estimate = plan.memory(
      exp, plan.layout_of(exp), plan.abstract_train_state(exp)
  )['bytes']['total']
  return {
      'compiler_total_bytes': compiled['total'],
      'compiler_parameter_bytes': compiled['parameters'],
      'compiler_temp_bytes': compiled['temp'],
      'estimate_total_bytes': estimate,
      'ratio': estimate / compiled['total'],
  }


if __name__ == '__main__':
  tools.absl_warnings_only()
  app.run(main, flags_parser=fdl_flags.flags_parser)
