"""Model variables of a paxml job directory, for tools that evaluate them.

Under --job_log_dir a training run leaves:

  experiment_knobs.txt      (written by the experiments' validate(), see
                            knobs.py) the experiment's full name and every
                            knob's effective value, overrides included
  experiment_cls_vars.txt   (paxml) the experiment class's variables by
                            owning class, the experiment itself last; class
                            defaults only
  model_params.txt          (paxml) the inputs' and the task's configs as
                            text, overrides applied
  checkpoints/checkpoint_XXXXXXXX/   orbax checkpoints (step XXXXXXXX):
                            metadata/ (shapes) and state/ (one tensorstore
                            array per variable, mdl_vars.* and opt_states.*)

`job_experiment` rebuilds the run's experiment: its class, with the knob
values recorded in experiment_knobs.txt (a job written before that file
existed gives the class from experiment_cls_vars.txt and its defaults; the
caller applies the run's overrides). `check_model_config` then compares its
task's `model.*` lines with model_params.txt, so a model that differs from
the run's fails there, naming the setting, rather than in the checkpoint
restore (or not at all, for knobs that change no shape, such as
FPROP_DTYPE). `restore_mdl_vars` reads only the model variables (`mdl_vars`,
no optimizer state) after checking their shapes against the checkpoint's
metadata.
"""

from __future__ import annotations

import ast
import json
import os
import re
from typing import Any

from absl import logging
import jax
import numpy as np
from paxml import checkpoint_metadata
from paxml import checkpoint_paths
from paxml import checkpoint_types
from paxml import checkpoints
from paxml import experiment_registry
from paxml import train_states
from praxis import base_hyperparams
from praxis import base_layer
from praxis import py_utils
import tensorflow as tf

from vit22b_pax import knobs

CLS_VARS_FILE = 'experiment_cls_vars.txt'
MODEL_PARAMS_FILE = 'model_params.txt'
CHECKPOINTS_DIR = 'checkpoints'
# <step dir>/metadata/metadata: orbax's JsonCheckpointHandler file of the
# PaxMetadata (shapes and dtypes of the train state).
_METADATA_FILE = 'metadata'
# Written last on GCS (orbax); a local checkpoint is renamed into place.
_COMMIT_SUCCESS_FILE = 'commit_success.txt'
_STEP_DIR = re.compile(r'^checkpoint_(\d+)$')
# Model settings that depend on the devices, not on the trained function.
_DEVICE_DEPENDENT = re.compile(r'mesh|split_dims_mapping')
_HEADER = re.compile(r'^(\S+):$')


class JobError(ValueError):
  """A job directory that cannot be evaluated (the message names the path)."""


def _read(path: str) -> str | None:
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return f.read()


def experiment_name(job_log_dir: str) -> str:
  """Full name of the experiment class that ran in job_log_dir."""
  path = os.path.join(job_log_dir, CLS_VARS_FILE)
  text = _read(path)
  if text is None:
    raise JobError(
        f'{path} does not exist: {job_log_dir!r} is not a paxml job directory'
        ' (or paxml did not start there); name the experiment with --exp.'
    )
  headers = [m.group(1) for m in map(_HEADER.match, text.splitlines()) if m]
  if not headers:
    raise JobError(f'{path} names no experiment class; use --exp.')
  return headers[-1]  # Base classes first, the experiment last.


def experiment_class(name: str) -> type[Any]:
  """The registered experiment class of a full (or unique partial) name."""
  module, _, _ = name.rpartition('.')
  for candidate in (module, 'vit22b_pax.experiments'):
    if candidate:
      try:
        __import__(candidate)
      except ImportError:
        pass
  cls = experiment_registry.get(name)
  if cls is None:
    raise JobError(f'{name!r} is not a registered experiment.')
  return cls


def recorded_knobs(job_log_dir: str) -> tuple[str, dict[str, Any]] | None:
  """(experiment name, {knob: value}) of experiment_knobs.txt, if any."""
  path = os.path.join(job_log_dir, knobs.KNOBS_FILE)
  text = _read(path)
  if text is None:
    return None
  lines = text.splitlines()
  m = re.match(r'^# (\S+): ', lines[0]) if lines else None
  if not m:
    raise JobError(f'{path} line 1: expected "# <experiment>: ...".')
  values = {}
  for number, line in enumerate(lines[1:], start=2):
    if not line.strip() or line.startswith('#'):
      continue
    name, _, text = line.partition(' = ')
    try:
      # The trailing "# class default: ..." is a comment to the parser.
      values[name.strip()] = ast.literal_eval(text)
    except (SyntaxError, ValueError):
      raise JobError(
          f'{path} line {number}: expected KNOB = <Python literal>, got'
          f' {line!r}.') from None
  return m.group(1), values


def job_experiment(job_log_dir: str, name: str | None = None) -> Any:
  """The experiment instance of the run in job_log_dir.

  Args:
    job_log_dir: The paxml job directory.
    name: The experiment's name; None: the one the job recorded.

  Returns:
    An instance of the experiment class with the knob values recorded in
    experiment_knobs.txt applied (when the file exists and names this
    class); knobs the class no longer has are logged and skipped.
  """
  recorded = recorded_knobs(job_log_dir)
  if name is None:
    name = recorded[0] if recorded else experiment_name(job_log_dir)
  cls = experiment_class(name)
  experiment = cls()
  if recorded and experiment_class(recorded[0]) is cls:
    known = set(knobs.knob_names(cls))
    unknown = sorted(set(recorded[1]) - known)
    if unknown:
      logging.warning(
          '%s: knobs %s are not knobs of %s any more; not applied.',
          os.path.join(job_log_dir, knobs.KNOBS_FILE), unknown, cls.__name__)
    for knob, value in recorded[1].items():
      if knob in known:
        setattr(experiment, knob, value)
  return experiment


def _model_lines(text: str) -> dict[str, str]:
  out = {}
  for line in text.splitlines():
    if line.startswith('model.') and ' : ' in line:
      key, value = line.split(' : ', 1)
      if not _DEVICE_DEPENDENT.search(key):
        out[key] = value
  return out


def check_model_config(experiment: Any, job_log_dir: str) -> None:
  """Raises unless the experiment's model config matches the job's.

  Compares the `model.*` settings of experiment.task() with those paxml
  wrote to <job_log_dir>/model_params.txt, except mesh and sharding
  settings; settings present on one side only (code changed since) are
  ignored.

  Args:
    experiment: The experiment instance, overrides applied.
    job_log_dir: The job directory.

  Raises:
    JobError: naming the differing settings and the file.
  """
  path = os.path.join(job_log_dir, MODEL_PARAMS_FILE)
  text = _read(path)
  if text is None:
    raise JobError(
        f'{path} does not exist: cannot check that the experiment matches the'
        ' run (is this a paxml job directory?).'
    )
  job = _model_lines(text)
  ours = _model_lines(
      base_hyperparams.nested_struct_to_text(experiment.task()))
  diffs = [k for k in sorted(job) if k in ours and job[k] != ours[k]]
  if diffs:
    shown = '; '.join(
        f'{k} is {job[k]} there, {ours[k]} here' for k in diffs[:5])
    more = f' (and {len(diffs) - 5} more)' if len(diffs) > 5 else ''
    raise JobError(
        f'The run in {job_log_dir!r} trained another model than'
        f' {type(experiment).__name__} with these knobs: {shown}{more}'
        f' ({path}). A knob the run set differently? Set it with'
        ' --fdl.KNOB=value (the knobs in the run\'s experiment_knobs.txt,'
        ' when it has one, are applied already). Another class or template'
        ' means the code changed since the run.'
    )


def checkpoint_steps(job_log_dir: str) -> list[int]:
  """Sorted steps of the complete checkpoints under job_log_dir."""
  ckpt_dir = os.path.join(job_log_dir, CHECKPOINTS_DIR)
  if not tf.io.gfile.isdir(ckpt_dir):
    return []
  steps = []
  for name in tf.io.gfile.listdir(ckpt_dir):
    m = _STEP_DIR.match(name.rstrip('/'))  # Temporary dirs have suffixes.
    if not m:
      continue
    if ckpt_dir.startswith('gs://') and not tf.io.gfile.exists(
        os.path.join(ckpt_dir, m.group(0), _COMMIT_SUCCESS_FILE)):
      continue
    steps.append(int(m.group(1)))
  return sorted(steps)


def variable_shapes(experiment: Any) -> dict[str, Any]:
  """ShapeDtypeStruct tree of the model's variables (nothing allocated)."""
  model_p = experiment.task().model
  model = base_hyperparams.instantiate(model_p)
  specs = base_hyperparams.instantiate(
      experiment.get_input_specs_provider_params()).get_input_specs()

  def init(key, batch):
    with base_layer.JaxContext.new_context():
      return model.init(key, batch)

  return jax.eval_shape(init, jax.random.PRNGKey(0), specs)


def _flat(tree: Any) -> dict[str, Any]:
  return dict(py_utils.NestedMap.FromNestedDict(tree).FlattenItems())


def _check_shapes(
    shapes: dict[str, Any], metadata: dict[str, Any], where: str
) -> None:
  want = {k: tuple(v.shape) for k, v in _flat(shapes).items()}
  have = {}

  def visit(node, prefix):
    if 'unpadded_shape' in node:  # An array's metadata.
      have[prefix] = tuple(node['unpadded_shape'])
      return
    for key, child in node.items():
      if isinstance(child, dict):
        visit(child, f'{prefix}.{key}' if prefix else key)

  visit(metadata.get('train_state_metadata', {}).get('mdl_vars', {}), '')
  problems = []
  for key in sorted(set(want) | set(have)):
    if key not in have:
      problems.append(f'{key} is not in the checkpoint')
    elif key not in want:
      problems.append(f'{key} is in the checkpoint but not in the model')
    elif want[key] != have[key]:
      problems.append(
          f'{key} has shape {have[key]} in the checkpoint, {want[key]} in'
          ' the model')
  if problems:
    more = f' (and {len(problems) - 5} more)' if len(problems) > 5 else ''
    raise JobError(
        f'{where} does not hold this model\'s variables: '
        + '; '.join(problems[:5]) + more + '.'
    )


def restore_mdl_vars(
    experiment: Any, job_log_dir: str, step: int | None = None
) -> tuple[dict[str, Any], int]:
  """Restores the model variables of a checkpoint of the job.

  Args:
    experiment: The experiment that wrote the checkpoints (overrides
      applied; see check_model_config).
    job_log_dir: The paxml job directory.
    step: The checkpoint's step; None: the latest.

  Returns:
    (mdl_vars, step): the variables ({'params': ...}, jax arrays replicated
    over this process's devices) and the step restored.

  Raises:
    JobError: no checkpoint (for that step), or its variables do not match
      the experiment's model; the message names the path.
  """
  ckpt_dir = os.path.join(job_log_dir, CHECKPOINTS_DIR)
  steps = checkpoint_steps(job_log_dir)
  if not steps:
    raise JobError(f'No checkpoints in {ckpt_dir} (expected'
                   ' checkpoint_XXXXXXXX directories).')
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise JobError(
        f'No checkpoint of step {step} in {ckpt_dir}; steps saved: {steps}.')
  step_dir = os.path.join(ckpt_dir, checkpoint_paths.checkpoint_name(step))
  shapes = variable_shapes(experiment)
  mdl_shapes = {'params': shapes['params']} if 'params' in shapes else shapes
  metadata = _read(os.path.join(
      step_dir, checkpoint_metadata.METADATA_ITEM_NAME, _METADATA_FILE))
  if metadata is not None:
    _check_shapes(mdl_shapes, json.loads(metadata), step_dir)
  state = train_states.TrainState(step={}, mdl_vars=mdl_shapes, opt_states={})
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('replica',))
  replicated = jax.tree_util.tree_map(
      lambda _: jax.sharding.PartitionSpec(), state)
  with mesh:
    restored = checkpoints.restore_checkpoint(
        state,
        ckpt_dir,
        global_mesh=mesh,
        checkpoint_type=checkpoint_types.CheckpointType.GDA,
        state_specs=replicated,
        step=step,
        state_unpadded_shape_dtype_struct=state,
    )
  return restored.mdl_vars, step
