"""Frozen features of a dataset directory, and few-shot probes on them.

`FeatureExtractor` runs a frozen ViTClassifier over one split of a dataset
directory (data/README.md) and returns its `pre_logits` (the MAP head's
output, the image embedding) with the class ids. It reads through the
project's input (praxis_input.MultiLabelImageInput, the seqio Task's
evaluation view: resize + central crop, no augmentation, no hierarchy
expansion) in batches of one shape: the last batch is padded with weight-0
images, so the forward compiles once per extractor. Records that fail to
decode are skipped by the input (and counted: a warning says how many).
`extract_features` is the same for a single use.

`read_single_labels` checks a few-shot split without decoding images: every
record must carry exactly one label (a clear error names the shard file,
the record and its image id otherwise).

`evaluate_data_dir` is the whole evaluation of one dataset: labels checked
(and the shot counts, before any image is decoded), features of the train
split (shots) and the test split, then fewshot.evaluate:

  extractor = fewshot_features.FeatureExtractor.from_experiment(experiment)
  report = fewshot_features.evaluate_data_dir(
      extractor, mdl_vars, 'data/shapes_fewshot', shots=(1, 5, 10, 25))
  report.scalars()  # {'fewshot/shapes_fewshot/10shot': 0.334, ...}

This module runs in one process: it reads the whole split on this host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from praxis import base_hyperparams
from praxis import base_layer
from praxis import pax_fiddle
from praxis import py_utils
import tensorflow as tf
import tqdm

from vit22b_pax import fewshot
from vit22b_pax.input import data_format
from vit22b_pax.input import hierarchy
from vit22b_pax.input import praxis_input

DEFAULT_BATCH_SIZE = 256
TRAIN_SPLIT = 'train'  # The shots are drawn from it.
TEST_SPLIT = 'eval'  # Accuracy is measured on it.
_PARSE_BATCH = 4096


class FewShotDataError(ValueError):
  """A dataset that cannot serve few-shot probes (names file and record)."""


def dataset_name(data_dir: str) -> str:
  """The dataset's name in summaries: the directory's base name."""
  return os.path.basename(os.path.normpath(data_dir))


def _record_error(path: str, index: int, record: bytes, problem: str):
  try:
    image_id = data_format.parse_example(record)['id']
  except Exception:  # pylint: disable=broad-except
    image_id = None
  what = f' (image/id {image_id!r})' if image_id else ''
  return FewShotDataError(f'{path} record {index}{what}: {problem}')


def _shard_labels(path: str, num_classes: int) -> np.ndarray:
  """Class ids of one shard's records, each checked to be single."""
  spec = {data_format.LABEL_KEY: tf.io.VarLenFeature(tf.int64)}
  out = []
  start = 0
  try:
    for batch in tf.data.TFRecordDataset(path).batch(_PARSE_BATCH):
      records = batch.numpy()
      try:
        parsed = tf.io.parse_example(batch, spec)[data_format.LABEL_KEY]
      except tf.errors.InvalidArgumentError:
        # Find the record the batch parse failed on.
        for i, record in enumerate(records):
          try:
            tf.io.parse_single_example(record, spec)
          except tf.errors.InvalidArgumentError:
            raise FewShotDataError(
                f'{path} record {start + i}: not a tf.Example.') from None
        raise
      ragged = tf.RaggedTensor.from_sparse(parsed)
      lengths = ragged.row_lengths().numpy()  # [len(records)]
      ids = ragged.flat_values.numpy()
      bad = np.flatnonzero(lengths != 1)
      if bad.size:
        i = int(bad[0])
        raise _record_error(
            path, start + i, records[i],
            f'{lengths[i]} labels {ragged[i].numpy().tolist()}; a few-shot'
            ' dataset needs exactly one label per image.')
      # One label per record: ids[i] is record i's.
      bad = np.flatnonzero((ids < 0) | (ids >= num_classes))
      if bad.size:
        i = int(bad[0])
        raise _record_error(
            path, start + i, records[i],
            f'label {ids[i]} is outside [0, {num_classes}) (the class file'
            f' has {num_classes} classes).')
      out.append(ids)
      start += len(records)
  except tf.errors.DataLossError as e:
    raise FewShotDataError(
        f'{path}: corrupt shard at or after record {start} ({e.message}).'
    ) from None
  return np.concatenate(out) if out else np.zeros([0], np.int64)


def read_single_labels(
    data_dir: str, split: str
) -> tuple[np.ndarray, hierarchy.ClassHierarchy]:
  """Class ids of every record of a split, checked to be one per image.

  Args:
    data_dir: Dataset directory in the project's format.
    split: Split name.

  Returns:
    (int64 [N] class ids in shard order, the class hierarchy).

  Raises:
    ValueError: the directory is not in the format (names the path).
    FewShotDataError: a record without exactly one label in [0, C), a record
      that is not a tf.Example or a corrupt shard; names file and record.
  """
  classes = hierarchy.read_class_file(data_format.class_file_path(data_dir))
  data_format.validate_data_dir(data_dir, classes.num_classes, (split,))
  labels = [_shard_labels(path, classes.num_classes)
            for path in data_format.list_shards(data_dir, split)]
  return np.concatenate(labels), classes


def device_mesh(model_p: Any) -> jax.sharding.Mesh | None:
  """The mesh of a model config's (ici, dcn) shapes; None if unsharded."""
  if model_p.ici_mesh_shape is None:
    return None
  return jax.sharding.Mesh(
      py_utils.create_device_mesh(
          model_p.ici_mesh_shape, model_p.dcn_mesh_shape),
      model_p.mesh_axis_names,
  )


def _input(data_dir: str, split: str, image_size: int, num_classes: int,
           batch_size: int):
  """The evaluation input of a split (whole split, this host)."""
  return base_hyperparams.instantiate(pax_fiddle.Config(
      praxis_input.MultiLabelImageInput,
      name=f'fewshot_{split}',
      data_dir=data_dir,
      split=split,
      is_training=False,
      batch_size=batch_size,
      image_size=image_size,
      num_classes=num_classes,
      expand_hierarchy=False,  # One stored label -> one class id.
      stats_dir='',  # Never mix into the training run's input stats.
      reset_for_eval=True,
      eval_loop_num_batches=-1,
      num_infeed_hosts=1,
      infeed_host_index=0,
  ))


class FeatureExtractor:
  """Runs a frozen ViTClassifier over dataset splits; compiles once.

  The jitted forward is kept, so every split (and every later call, e.g.
  at each evaluation of a training run) of the same batch size reuses one
  compilation.
  """

  def __init__(self, model_p: Any, batch_size: int = DEFAULT_BATCH_SIZE):
    """Builds the model.

    Args:
      model_p: The ViTClassifier config (experiment.task().model).
      batch_size: Images per forward pass (the last batch is padded).
    """
    self.model_p = model_p
    self.batch_size = batch_size
    self.image_size = model_p.patch_embed_tpl.image_size
    self._mesh = device_mesh(model_p)
    model = base_hyperparams.instantiate(model_p)
    eval_context = base_layer.JaxContext.HParams(do_eval=True)

    def forward(variables, images):
      with base_layer.JaxContext.new_context(hparams=eval_context):
        out = model.apply(variables, py_utils.NestedMap(image=images),
                          method=model.compute_predictions)
      return out.pre_logits.astype(jnp.float32)

    self._forward = jax.jit(forward)

  @classmethod
  def from_experiment(
      cls, experiment: Any, batch_size: int = DEFAULT_BATCH_SIZE
  ) -> FeatureExtractor:
    return cls(experiment.task().model, batch_size)

  def __call__(
      self, mdl_vars: Any, data_dir: str, split: str, progress: bool = False
  ) -> tuple[np.ndarray, np.ndarray]:
    """Frozen pre-logits of every image of a split, with its class id.

    Args:
      mdl_vars: The model variables ({'params': ...}).
      data_dir: Dataset directory in the project's format; each image must
        carry one label (see read_single_labels).
      split: Split name.
      progress: Show a progress bar (stderr).

    Returns:
      (features float64 [N, D], labels int64 [N]) of the N records that
      decode, in the input's order.
    """
    classes = hierarchy.read_class_file(
        data_format.class_file_path(data_dir))
    inp = _input(data_dir, split, self.image_size, classes.num_classes,
                 self.batch_size)
    features, labels = [], []
    bar = tqdm.tqdm(total=inp.num_batches, desc=f'features {split}',
                    unit='batch', file=sys.stderr, disable=not progress,
                    mininterval=0.5)
    with bar, (self._mesh or contextlib.nullcontext()):
      while True:
        try:
          batch = inp.get_next()
        except (StopIteration, tf.errors.OutOfRangeError):
          break
        real = batch.weight > 0
        pre_logits = np.asarray(self._forward(mdl_vars, batch.image))
        counts = batch.labels[real].sum(axis=1)
        if np.any(counts != 1):
          raise FewShotDataError(
              f'{data_dir} split {split!r}: an image with'
              f' {int(counts[counts != 1][0])} labels reached the features;'
              ' a few-shot dataset needs exactly one label per image.')
        features.append(pre_logits[real].astype(np.float64))
        labels.append(np.argmax(batch.labels[real], axis=1))
        bar.update()
    if inp.num_bad_records:
      logging.warning(
          'Few-shot features of %s split %r: %d record(s) failed to decode'
          ' and were skipped.', data_dir, split, inp.num_bad_records)
    return np.concatenate(features), np.concatenate(labels).astype(np.int64)


def extract_features(
    experiment: Any,
    mdl_vars: Any,
    data_dir: str,
    split: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  """Frozen pre-logits of a split: FeatureExtractor, used once.

  Args:
    experiment: The experiment instance whose task().model produced
      mdl_vars (a ViTClassifier config).
    mdl_vars: The model variables ({'params': ...}).
    data_dir: Dataset directory in the project's format.
    split: Split name.
    batch_size: Images per forward pass (the last batch is padded).
    progress: Show a progress bar (stderr).

  Returns:
    (features float64 [N, D], labels int64 [N]).
  """
  extractor = FeatureExtractor.from_experiment(experiment, batch_size)
  return extractor(mdl_vars, data_dir, split, progress)


@dataclasses.dataclass(frozen=True)
class DatasetReport:
  """Few-shot results of one dataset directory.

  Attributes:
    dataset: Name (the directory's base name).
    data_dir: The directory.
    num_classes: C.
    num_train: Training examples (the shot pool) with features.
    num_test: Test examples with features.
    feature_dim: D of the features.
    num_skipped: Records of either split that failed to decode.
    chance_accuracy: Accuracy of always predicting the test split's most
      frequent class.
    l2: The fixed l2 (also the 1-shot one when sweeping).
    l2_sweep: The sweep's grid, or None.
    results: {shots: fewshot.ShotResult}.
  """

  dataset: str
  data_dir: str
  num_classes: int
  num_train: int
  num_test: int
  feature_dim: int
  num_skipped: int
  chance_accuracy: float
  l2: float
  l2_sweep: tuple[float, ...] | None
  results: dict[int, fewshot.ShotResult]

  def scalars(self) -> dict[str, float]:
    """{'fewshot/<dataset>/<k>shot': mean accuracy}."""
    return fewshot.scalars(self.results, self.dataset)

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out['l2_sweep'] = list(self.l2_sweep) if self.l2_sweep else None
    out['results'] = fewshot.to_json(self.results)
    return out


def evaluate_data_dir(
    extractor: FeatureExtractor,
    mdl_vars: Any,
    data_dir: str,
    shots: Sequence[int] = fewshot.DEFAULT_SHOTS,
    num_seeds: int = fewshot.DEFAULT_NUM_SEEDS,
    l2: float = fewshot.DEFAULT_L2,
    l2_sweep: Sequence[float] | None = None,
    train_split: str = TRAIN_SPLIT,
    test_split: str = TEST_SPLIT,
    progress: bool = False,
) -> DatasetReport:
  """Few-shot probes of the model's frozen features on one dataset.

  Checks both splits' labels (one per image) and that every class has
  max(shots) training examples before any image is decoded, then extracts
  the features of both splits and runs fewshot.evaluate.

  Args:
    extractor: The FeatureExtractor of the model that produced mdl_vars
      (FeatureExtractor.from_experiment; keep it to compile once).
    mdl_vars: The model variables ({'params': ...}).
    data_dir: Dataset directory in the project's format.
    shots: Examples per class of each probe.
    num_seeds: Draws of the shots per shot count.
    l2: Ridge strength.
    l2_sweep: Optional grid for leave-one-out selection on the shots.
    train_split: Split the shots come from.
    test_split: Split the accuracy is measured on.
    progress: Show progress bars.

  Returns:
    The DatasetReport.
  """
  name = dataset_name(data_dir)
  stored_train, classes = read_single_labels(data_dir, train_split)
  stored_test, _ = read_single_labels(data_dir, test_split)
  fewshot.class_indices(stored_train, classes.num_classes, max(shots), name,
                        classes.names)
  train_x, train_y = extractor(mdl_vars, data_dir, train_split, progress)
  test_x, test_y = extractor(mdl_vars, data_dir, test_split, progress)
  skipped = len(stored_train) - len(train_y) + len(stored_test) - len(test_y)
  results = fewshot.evaluate(
      train_x, train_y, test_x, test_y, classes.num_classes, shots=shots,
      num_seeds=num_seeds, l2=l2, l2_sweep=l2_sweep, dataset=name,
      class_names=classes.names)
  return DatasetReport(
      dataset=name,
      data_dir=data_dir,
      num_classes=classes.num_classes,
      num_train=len(train_y),
      num_test=len(test_y),
      feature_dim=train_x.shape[1],
      num_skipped=skipped,
      chance_accuracy=float(
          np.bincount(test_y, minlength=classes.num_classes).max()
          / len(test_y)),
      l2=float(l2),
      l2_sweep=tuple(float(v) for v in l2_sweep) if l2_sweep else None,
      results=results,
  )
