"""Deterministic, resumable, host-sliced inputs: where each example comes from.

Both inputs (synthetic.SyntheticInput, praxis_input.MultiLabelImageInput)
define a training stream of GLOBAL batches that does not depend on how many
hosts read it or where a run was restarted: batch i holds global examples
[i * B, (i + 1) * B) (B the global batch), and host h of H holds rows
[h * B / H, (h + 1) * B / H) of each global batch. A restarted run starts
the stream at the step it restored, so the trainer sees exactly the
examples it would have seen next: none repeated, none skipped.

Why the position is derived from the restored step instead of being
checkpointed with the model (paxml's `enable_input_checkpointing`, which
saves each host's input state in the orbax checkpoint):

  * one step consumes one batch, so the step number IS the input position;
    the model checkpoint already carries it, and orbax finalizes that
    checkpoint atomically (a half-written one is never restored), so the
    input and the weights cannot disagree;
  * nothing host-specific is saved: the same checkpoint resumes on another
    number of hosts (for the TFRecord input: any host count dividing its
    number of input slices) with the same global batches, which a
    checkpointed tf.data iterator (tied to the host, its shuffle buffer and
    prefetched, decoded images: ~600 MB per host at 224 px) cannot do;
  * positioning is cheap: the synthetic input makes example g from
    (seed, g); the TFRecord input skips whole shards by their record
    counts and reads at most one shard and one shuffle block of raw records
    (praxis_input).

paxml 1.4.0 has the hook: before it instantiates the train input, its
executor sets `deterministic_input_start_index._latest_model_step` on the
input's config to the checkpoint step it is about to restore, for any input
that has that field (executors._maybe_update_latest_model_step; meant for
deterministic seqio inputs, used only when input checkpointing is off, as
here). Eval inputs start every pass at example 0.

With `log_example_ids`, each host appends `{"batch": i, "ids": [...]}` per
batch to <job_log_dir>/input_ids/<name>.host<k>.jsonl: which examples each
step trained on (tests use it to check resume and host slicing).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

from absl import flags
import numpy as np
from praxis import base_input
from praxis import pax_fiddle

ID_LOG_DIR = 'input_ids'


@dataclasses.dataclass(frozen=True)
class StartIndex:
  """The step a training input starts at, set by paxml on restore.

  The field names are those of paxml's SeqIOInput.DeterministicInput, which
  paxml's executor sets (see the module docstring).

  Attributes:
    _latest_model_step: The step of the checkpoint being restored (0 for a
      fresh run): the first batch is global batch number this.
  """

  _latest_model_step: int = 0


def job_log_dir() -> str | None:
  """paxml's --job_log_dir when the flag is defined and parsed, else None."""
  try:
    return flags.FLAGS['job_log_dir'].value or None
  except (KeyError, flags.UnparsedFlagAccessError):
    return None


def read_id_log(path: str) -> dict[int, list[str]]:
  """{batch: ids} of an id log; a batch logged twice keeps its last line."""
  out = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        out[int(record['batch'])] = list(record['ids'])
  return out


class ResumableInput(base_input.BaseInput):
  """A BaseInput of global batches, started at the restored step.

  Subclasses produce, for batch index i, this host's rows `host_rows()` of
  global batch i, and call `log_ids(i, ids)`.

  Attributes:
    deterministic_input_start_index: Set by paxml to the restored step
      (training only; see the module docstring).
    log_example_ids: Append each batch's example ids to
      <id_log_dir>/input_ids/<name>.host<k>.jsonl.
    id_log_dir: Directory of input_ids/; None: paxml's --job_log_dir.
  """

  deterministic_input_start_index: pax_fiddle.Config[StartIndex] = (
      pax_fiddle.template_field(StartIndex)
  )
  log_example_ids: bool = False
  id_log_dir: str | None = None
  _id_log_path: Any = dataclasses.field(init=False, repr=False, default=None)

  def __post_init__(self):
    super().__post_init__()
    if not 0 <= self.infeed_host_index < self.num_infeed_hosts:
      raise ValueError(
          f'infeed_host_index {self.infeed_host_index} is not in [0,'
          f' num_infeed_hosts={self.num_infeed_hosts}).'
      )
    if self.log_example_ids:
      directory = self.id_log_dir or job_log_dir()
      if not directory:
        raise ValueError(
            f'Input {self.name}: log_example_ids needs id_log_dir or '
            'paxml\'s --job_log_dir.'
        )
      self._id_log_path = os.path.join(
          directory, ID_LOG_DIR, f'{self.name}.host{self.infeed_host_index}'
          '.jsonl',
      )
      os.makedirs(os.path.dirname(self._id_log_path), exist_ok=True)

  @property
  def start_batch(self) -> int:
    """Global batch index of the first batch (the restored step; eval: 0)."""
    if not self.is_training:
      return 0
    start = self.deterministic_input_start_index
    return int(getattr(start, '_latest_model_step', 0) or 0)

  @property
  def global_batch_size(self) -> int:
    return self.batch_size * self.num_infeed_hosts

  def host_rows(self) -> np.ndarray:
    """int64 [b]: the rows of each global batch this host holds."""
    b = self.batch_size
    return self.infeed_host_index * b + np.arange(b, dtype=np.int64)

  def log_ids(self, batch: int, ids: Sequence[str | bytes]) -> None:
    """Appends one batch's example ids to the id log (if enabled).

    bytes ids (a batch's 'id' array) are decoded only when logging.
    """
    if self._id_log_path is None:
      return
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
    line = json.dumps({'batch': int(batch), 'ids': ids})
    # One write per line, flushed: a killed run leaves whole lines.
    with open(self._id_log_path, 'a') as f:
      f.write(line + '\n')
