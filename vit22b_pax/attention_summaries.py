"""Per-layer names for the attention diagnostics, unrolled or scanned.

`AttentionCore` (with `diagnostics`) adds the summaries 'max_logit' and
'entropy' in every attention. praxis names them by where the layer sits,
which differs between the two encoders (paxml 1.4.0 / praxis 1.4.0):

  unrolled StackedTransformer:
    encoder/x_layers_L/attention/max_logit_scalar
  scanned StackedTransformerRepeated: nn.scan stacks the summaries of the
  repeated block over its iterations and, because the stack sets
  `Repeat.unpack_summaries`, paxml's `flatten_flax_summaries` splits them
  into one key per iteration R (a block of K layers is repeated):
    encoder/repeat/sub/x_layers_J/attention/max_logit_R_scalar  (L = R*K + J)
  MAP head:
    map_head/attention/max_logit_scalar

`rename` maps both encoders to 'attention/layer_LL/max_logit_scalar' (and
the head to 'attention/map_head/max_logit_scalar'), so TensorBoard shows the
same per-layer scalars (those tags) whichever way the encoder is compiled.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

NAMES = ('max_logit', 'entropy')
_NAME = '(?P<name>' + '|'.join(NAMES) + ')'
_SUFFIX = '_scalar'
_UNROLLED = re.compile(
    r'^(?:.*/)?encoder/x_layers_(?P<layer>\d+)/attention/' + _NAME
    + _SUFFIX + '$'
)
_SCANNED = re.compile(
    r'^(?:.*/)?encoder/repeat/sub/x_layers_(?P<layer>\d+)/attention/' + _NAME
    + r'_(?P<iteration>\d+)' + _SUFFIX + '$'
)
_HEAD = re.compile(r'^(?:.*/)?map_head/attention/' + _NAME + _SUFFIX + '$')
# The TensorBoard tags of rename()'s keys (paxml keeps the '_scalar' suffix
# in scalar tags, as in 'learning/lr_scalar').
TAG = re.compile(
    r'^attention/(?P<layer>layer_\d+|map_head)/' + _NAME + _SUFFIX + '$'
)


def layer_name(layer: int) -> str:
  """'layer_03' for layer 3 (0-based)."""
  return f'layer_{layer:02d}'


def rename(summary_tensors: Mapping[str, Any]) -> dict[str, Any]:
  """The summaries with the attention diagnostics under per-layer names.

  Args:
    summary_tensors: {key: value} as a paxml train step returns them.

  Returns:
    A new dict: the attention diagnostics keyed
    'attention/layer_LL/NAME_scalar' or 'attention/map_head/NAME_scalar',
    every other entry unchanged.
  """
  scanned = {k: m for k in summary_tensors if (m := _SCANNED.match(k))}
  layers_per_block = 1 + max(
      (int(m['layer']) for m in scanned.values()), default=0
  )
  renamed = {}
  for key, value in summary_tensors.items():
    if m := scanned.get(key):
      layer = int(m['iteration']) * layers_per_block + int(m['layer'])
      key = f'attention/{layer_name(layer)}/{m["name"]}{_SUFFIX}'
    elif m := _UNROLLED.match(key):
      key = f'attention/{layer_name(int(m["layer"]))}/{m["name"]}{_SUFFIX}'
    elif m := _HEAD.match(key):
      key = f'attention/map_head/{m["name"]}{_SUFFIX}'
    renamed[key] = value
  return renamed
