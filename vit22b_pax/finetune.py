"""Fine-tuning: warm start from a pre-training checkpoint.

An experiment with INIT_CHECKPOINT_DIR set trains a FinetuneTask whose
init_from_checkpoint_rules restore every variable of the checkpoint but the
classifier head (trained fresh for the new label set); position-embedding
tables are resampled to the new resolution's grid.
"""

import math
import re
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
from paxml import experiment_registry
from paxml import tasks_lib
from praxis import py_utils

from vit22b_pax import knobs
from vit22b_pax.layers import patch_embedding

NestedMap = py_utils.NestedMap
TrainState = tasks_lib.TrainState
_POS_EMB_RE = re.compile(r'(^|/)pos_emb$')
# Restored: every model variable but the classifier head.
LOAD_RULES = ((r'(params/.*)', '{}'),)
IGNORE_RULES = (r'^params/head/.*',)


class FinetuneTask(tasks_lib.SingleTask):
  """SingleTask whose warm start resamples the position-embedding table.

  paxml's init_from_checkpoint_rules copy checkpoint variables as they are,
  without a shape check. Here the loaded table of every variable named
  'pos_emb' whose token count differs from the model's is resampled to the
  model's grid (layers.patch_embedding.resample_pos_emb, 2-D bilinear); any
  other shape mismatch raises instead of training on a wrong tensor.
  """

  def apply_init_checkpoint_rules(
      self,
      train_state: TrainState,
      train_state_provenance: Any,
      train_state_partition_specs: TrainState | None = None,
      global_mesh: jax.sharding.Mesh | None = None,
      checkpoint_type: Any = None,
  ):
    target = {
        k: (v.shape, v.dtype)
        for k, v in NestedMap.FromNestedDict(
            train_state.mdl_vars
        ).FlattenItems()
    }
    kwargs = dict(
        train_state_partition_specs=train_state_partition_specs,
        global_mesh=global_mesh,
    )
    if checkpoint_type is not None:
      kwargs['checkpoint_type'] = checkpoint_type
    train_state, provenance, update_opt = super().apply_init_checkpoint_rules(
        train_state, train_state_provenance, **kwargs
    )
    mdl_vars = NestedMap.FromNestedDict(train_state.mdl_vars)
    pspecs = None
    if train_state_partition_specs is not None:
      pspecs = dict(
          NestedMap(train_state_partition_specs.mdl_vars).FlattenItems()
      )
    for name, value in list(mdl_vars.FlattenItems()):
      shape, dtype = target[name]
      if tuple(value.shape) == tuple(shape):
        continue
      slash_name = name.replace('.', '/')
      if not _POS_EMB_RE.search(slash_name) or len(shape) != 2:
        raise ValueError(
            f'Warm start: checkpoint variable {slash_name} has shape '
            f'{tuple(value.shape)} but the model expects {tuple(shape)}.'
        )
      new_grid = math.isqrt(shape[0])
      resampled = patch_embedding.resample_pos_emb(
          jnp.asarray(value, jnp.float32), new_grid
      ).astype(dtype)
      logging.info(
          'Warm start: resampled %s from %s to %s tokens.',
          slash_name, value.shape[0], shape[0],
      )
      if global_mesh is not None and pspecs is not None:
        resampled = jax.device_put(
            resampled, jax.sharding.NamedSharding(global_mesh, pspecs[name])
        )
      mdl_vars.Set(name, resampled)
    train_state = train_state.replace(mdl_vars=mdl_vars.ToNestedDict())
    return train_state, provenance, update_opt


def load_experiment(name: str, overrides: Sequence[str] = ()) -> Any:
  """An instance of registered experiment `name` with knob `overrides`.

  Args:
    name: Registry key, e.g. 'vit22b_pax.experiments.ViTSmoke'; its module
      is imported if needed.
    overrides: 'KNOB=value' strings (knobs.apply_overrides).

  Returns:
    The experiment instance.

  Raises:
    knobs.ValidationError: `name` is not registered or an override is bad.
  """
  module_name, _, class_name = name.rpartition('.')
  cls = experiment_registry.get(name)
  if cls is None and module_name:
    __import__(module_name)
    cls = experiment_registry.get(name)
  if cls is None:
    raise knobs.ValidationError(
        f'INIT_EXPERIMENT={name!r} is not a registered experiment (class '
        f'{class_name!r}).'
    )
  exp = cls()
  knobs.apply_overrides(exp, list(overrides))
  return exp


def checkpoint_loading_rules(
    init_exp: Any, step: int | None
) -> tasks_lib.CheckpointLoadingRules:
  """Rules restoring all of `init_exp`'s variables but the head at `step`.

  Args:
    init_exp: The experiment (overrides applied) that wrote the checkpoint;
      its task gives the checkpoint's variable shapes and its mesh (paxml
      copies it onto the restoring task).
    step: Checkpoint step; None restores the latest.

  Returns:
    paxml's CheckpointLoadingRules for init_from_checkpoint_rules.
  """
  return tasks_lib.CheckpointLoadingRules(
      task_p=init_exp.task(),
      load_rules=list(LOAD_RULES),
      ignore_rules=list(IGNORE_RULES),
      step=step,
      load_step=False,
      load_opt_states=False,
      input_specs_provider_p=init_exp.get_input_specs_provider_params(),
  )
