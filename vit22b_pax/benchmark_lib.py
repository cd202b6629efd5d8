"""Throughput benchmarks: train steps, matmul peak, MFU and the input pipeline.

The logic behind `python -m vit22b_pax.tools.benchmark` (see that tool for
the command line and BENCHMARKS.md for results). Everything is measured in
one process, each figure the median of repeated timed repetitions after
warm-up, and the things compared with each other are timed interleaved
(A, B, C, A, B, C, ...) so that noise from other work on the machine hits
them alike.

Train steps are built the way paxml's trainer builds them: the experiment's
task (model + Learner with the experiment's optimizer) is instantiated,
paxml's partitioner (`paxml.partitioning.create_partitioner`) initializes
the train state and partitions `paxml.trainer_lib.train_step_single_learner`
(forward, backward, optimizer update) over the experiment's mesh. A fixed
device-resident batch feeds the step, so the model comparison excludes the
input; the input pipeline is measured on its own and, for `make train`'s
experiment, together with the step.

Three models of the same size are compared:
  parallel    the experiment with PARALLEL_BLOCK = True (ViT-22B blocks);
  sequential  the same experiment with PARALLEL_BLOCK = False;
  praxis      the sequential model's classifier with praxis' stock
              `transformers.Transformer` as the block (see
              `stock_block_config`).

Model FLOP utilization on a CPU (`mfu_cpu`) follows the paper's convention
(`vit22b_pax.flops`: 6 N_blocks + 12 L T D per token; patch embedding, MAP
head and classifier not counted) over the float32 matmul peak, the FLOP/s of
one 2048^3 float32 matmul timed interleaved with the steps of the same run.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import jax
from jax import numpy as jnp
import numpy as np
from paxml import checkpoint_types
from paxml import partitioning
from paxml import trainer_lib
from praxis import base_hyperparams
from praxis import pax_fiddle
from praxis import py_utils
from praxis.layers import activations
from praxis.layers import attentions
from praxis.layers import normalizations
from praxis.layers import transformers
import tensorflow as tf

from vit22b_pax import experiment_base
from vit22b_pax import flops
from vit22b_pax import knobs
from vit22b_pax.input import data_format
from vit22b_pax.input import shapes

NestedMap = py_utils.NestedMap
instantiate = base_hyperparams.instantiate

# Side of the square float32 matmul whose FLOP/s is the peak.
PEAK_MATMUL_SIZE = 2048
VARIANTS = ('parallel', 'sequential', 'praxis')
# Report keys every run has (tests/test_benchmark.py checks them).
HEADLINE_KEYS = (
    'parallel_vs_sequential',
    'parallel_vs_praxis',
    'mfu_cpu',
    'input_vs_baseline',
    'make_train_examples_per_sec',
)


@dataclasses.dataclass
class Timings:
  """Wall times (seconds) of repeated runs of one thing."""

  name: str
  seconds: list[float] = dataclasses.field(default_factory=list)

  @property
  def median(self) -> float:
    return statistics.median(self.seconds)

  def summary(self) -> dict[str, Any]:
    """{'median', 'min', 'max', 'all'} of the seconds."""
    return {
        'median': self.median,
        'min': min(self.seconds),
        'max': max(self.seconds),
        'all': list(self.seconds),
    }


def log(message: str) -> None:
  """A progress line on stderr (stdout may carry the JSON)."""
  print(f'[benchmark] {message}', file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# The machine and the matmul peak.
# ---------------------------------------------------------------------------


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
  """Cores, CPU model, load and library versions of this run."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count()
  try:
    load = list(os.getloadavg())
  except OSError:
    load = None
  versions = {}
  for dist in ('jax', 'jaxlib', 'praxis', 'paxml', 'tensorflow'):
    try:
      versions[f'{dist}_version'] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      versions[f'{dist}_version'] = None
  return {
      'cpu_model': _cpu_model(),
      'cores': cores,
      'load_average_at_start': load,
      'jax_backend': jax.default_backend(),
      'jax_devices': jax.device_count(),
      **versions,
      'python_version': platform.python_version(),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }


def matmul_peak_fn(size: int = PEAK_MATMUL_SIZE) -> tuple[Callable[[], Any],
                                                            float]:
  """(run, flops): `run()` does one size^3 float32 matmul and blocks."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)

  def run():
    return matmul(a, b).block_until_ready()

  return run, 2.0 * size**3


# ---------------------------------------------------------------------------
# Train steps as paxml runs them.
# ---------------------------------------------------------------------------


def stock_block_config(
    exp: experiment_base.ViTExperiment,
) -> pax_fiddle.Config[transformers.Transformer]:
  """praxis' stock Transformer with the experiment's block options.

  The sizes (D, F, N, H, depth) are set by the StackedTransformer as for the
  project's blocks. Options matched where praxis has the field: pre-LN
  without LayerNorm bias, GELU (tanh approximation), MLP biases on, no
  q/k/v/out biases, QK-norm (`DotProductAttention.ln_tpl`) when the
  experiment uses it. Everything else is praxis' default (separate q, k, v
  projections, per-dim query scale).

  Args:
    exp: The experiment whose model the stock block replaces.

  Returns:
    The block template.
  """
  ln = pax_fiddle.Config(normalizations.LayerNorm, use_bias=False)
  atten = pax_fiddle.Config(attentions.DotProductAttention, use_bias=False)
  if exp.USE_QK_NORM:
    atten.ln_tpl = ln.clone()
  ffn = pax_fiddle.Config(
      transformers.TransformerFeedForward,
      ln_tpl=ln.clone(),
      activation_tpl=pax_fiddle.Config(activations.GELU, approximate=True),
  )
  return pax_fiddle.Config(
      transformers.Transformer,
      ln_tpl=ln.clone(),
      tr_atten_tpl=atten,
      tr_fflayer_tpl=ffn,
  )


def variant_experiment(
    exp: experiment_base.ViTExperiment, parallel: bool
) -> experiment_base.ViTExperiment:
  """A copy of `exp` with PARALLEL_BLOCK set."""
  out = copy.copy(exp)
  out.PARALLEL_BLOCK = parallel
  return out


def variant_task_config(exp: experiment_base.ViTExperiment, variant: str):
  """The paxml task config of one of VARIANTS at the experiment's size."""
  if variant not in VARIANTS:
    raise ValueError(f'Unknown variant {variant!r}; use one of {VARIANTS}.')
  task_p = variant_experiment(exp, variant == 'parallel').task()
  if variant == 'praxis':
    encoder_p = task_p.model.encoder_tpl
    stack_p = getattr(encoder_p, 'block', encoder_p)
    if exp.mesh_shapes()[0][1] > 1:
      raise ValueError(
          'The praxis stock comparison has no model-axis sharding: use a '
          'mesh with model axis 1 (ICI_MESH_SHAPE=None or (N, 1)).'
      )
    stack_p.transformer_layer_params_tpl = stock_block_config(exp)
  return task_p


def synthetic_batch(specs: NestedMap, seed: int = 0) -> NestedMap:
  """A batch matching `specs`: images in [-1, 1], multi-hot labels."""
  rng = np.random.default_rng(seed)
  image = specs.image
  labels = specs.labels
  batch = NestedMap(
      image=rng.uniform(-1.0, 1.0, image.shape).astype(image.dtype),
      labels=(rng.random(labels.shape) < 0.1).astype(labels.dtype),
  )
  if 'weight' in specs:
    batch.weight = np.ones(specs.weight.shape, specs.weight.dtype)
  return batch


class TrainStep:
  """One experiment's paxml train step with its state, ready to time.

  Attributes:
    name: Label of the step in reports.
    batch_size: Global batch size B of a step.
    compile_seconds: Time of the first call (tracing + XLA compilation).
  """

  def __init__(self, name: str, task_p: Any, input_specs: NestedMap):
    self.name = name
    self.batch_size = int(input_specs.image.shape[0])
    task = instantiate(task_p)
    # paxml.main's default: reshard the (host-local) inputs for SPMD.
    self._partitioner = partitioning.create_partitioner(
        task, reshard_inputs=True
    )
    root_key = jax.random.PRNGKey(task.train.random_seed)
    self._partitioner.setup(task, root_key, input_specs)
    root_key, self._state, _ = (
        self._partitioner.initialize_prng_key_and_train_state(
            root_key, None, checkpoint_types.CheckpointType.GDA
        )
    )
    self._step_fn, input_pspecs = self._partitioner.partition(
        trainer_lib.train_step_single_learner, input_specs, is_eval=False
    )
    _, train_key = jax.random.split(root_key)
    self._key = self._partitioner.preprocess_prng_key(train_key)
    self._input_pspecs = input_pspecs
    self._static_args = trainer_lib.BaseStepFnStaticArgs(
        unpadded_global_batch_size=self.batch_size
    )
    self._batch = self.device_batch(synthetic_batch(input_specs))
    start = time.perf_counter()
    self.run()
    self.compile_seconds = time.perf_counter() - start

  def device_batch(self, batch: NestedMap) -> NestedMap:
    """A host batch on the devices, as paxml's train program puts it.

    (praxis `BaseInput.reshard_for_spmd`, which paxml's partitioner calls.)
    """
    batch = NestedMap({k: batch[k] for k in self._input_pspecs})
    shapes = jax.tree.map(py_utils.get_global_input_shape_dtype, batch)
    return py_utils.make_array(
        batch, shapes, self._partitioner.global_mesh, self._input_pspecs
    )

  def step(self, batch: NestedMap | None = None) -> jax.Array:
    """Dispatches one train step (default: on the fixed batch); no wait.

    Args:
      batch: A device batch (see `device_batch`), or None.

    Returns:
      The step's loss, possibly not computed yet.
    """
    batch = self._batch if batch is None else batch
    self._state, out = self._step_fn(
        self._state, self._key, batch, self._static_args
    )
    return out.loss

  def run(self) -> float:
    """One train step on the fixed batch, waited for; returns the loss."""
    return float(self.step())

  def run_steps(
      self, num_steps: int, next_batch: Callable[[], NestedMap] | None = None
  ) -> float:
    """Seconds for `num_steps` steps, each fed by next_batch() if given.

    Like paxml's train loop, a step is dispatched without waiting for the
    previous one, so fetching the next host batch overlaps the computation.

    Args:
      num_steps: Steps to run.
      next_batch: Returns the next host batch (e.g. an input's get_next), or
        None to reuse the fixed device batch.

    Returns:
      Wall seconds until the last step finished.
    """
    start = time.perf_counter()
    loss = None
    for _ in range(num_steps):
      batch = None if next_batch is None else self.device_batch(next_batch())
      loss = self.step(batch)
    jax.block_until_ready(loss)
    return time.perf_counter() - start


def experiment_train_step(
    exp: experiment_base.ViTExperiment, name: str, task_p: Any = None
) -> TrainStep:
  """The TrainStep of an experiment (or of `task_p` built from it)."""
  specs = instantiate(exp.get_input_specs_provider_params()).get_input_specs()
  return TrainStep(name, exp.task() if task_p is None else task_p, specs)


# ---------------------------------------------------------------------------
# Interleaved timing.
# ---------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> Callable[[], float]:
  """Wraps a blocking zero-argument callable into one returning its seconds."""

  def run() -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start

  return run


def interleaved(
    fns: dict[str, Callable[[], float]],
    reps: int,
    warmup: int = 1,
    label: str = 'round',
) -> dict[str, Timings]:
  """Runs every fn warmup + reps times, interleaved: A, B, C, A, B, C, ...

  Args:
    fns: name -> zero-argument callable returning the seconds it measured
      (see `timed`).
    reps: Timed rounds.
    warmup: Untimed rounds first.
    label: Name of the measurement in the progress lines.

  Returns:
    name -> Timings of the timed rounds.
  """
  out = {name: Timings(name) for name in fns}
  for r in range(warmup + reps):
    seconds = {name: fn() for name, fn in fns.items()}
    if r < warmup:
      log(f'{label}: warm-up {r + 1}/{warmup} done')
      continue
    for name, value in seconds.items():
      out[name].seconds.append(value)
    log(
        f'{label} {r + 1 - warmup}/{reps}: '
        + ', '.join(f'{n} {v:.3f} s' for n, v in seconds.items())
    )
  return out


# ---------------------------------------------------------------------------
# Input pipeline.
# ---------------------------------------------------------------------------


def baseline_input_dataset(
    data_dir: str,
    split: str,
    image_size: int,
    batch_size: int,
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
  """A minimal tf.data decode-and-crop over the split's shards.

  Reads the shards in parallel, parses only the image bytes, decodes, takes
  a random image_size crop (resizing first if the image is smaller), scales
  to [-1, 1] and batches: the least an image input does, as a yardstick.
  num_parallel_calls is its map's (tf.data.AUTOTUNE: the idiom).
  """
  files = data_format.list_shards(data_dir, split)
  if not files:
    raise ValueError(f'No {split!r} shards in {data_dir!r}.')
  feature = {data_format.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}

  def _decode(record):
    ex = tf.io.parse_single_example(record, feature)
    image = tf.io.decode_image(
        ex[data_format.IMAGE_KEY], channels=3, expand_animations=False
    )
    shape = tf.shape(image)
    if_small = tf.minimum(shape[0], shape[1]) < image_size
    image = tf.cond(
        if_small,
        lambda: tf.cast(
            tf.image.resize(image, [image_size, image_size]), tf.uint8
        ),
        lambda: image,
    )
    crop = tf.image.random_crop(image, [image_size, image_size, 3])
    return tf.cast(crop, tf.float32) / 127.5 - 1.0

  ds = tf.data.Dataset.from_tensor_slices(files).repeat()
  ds = ds.interleave(
      tf.data.TFRecordDataset,
      cycle_length=min(len(files), 8),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=False,
  )
  ds = ds.map(_decode, num_parallel_calls=num_parallel_calls)
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def train_input(exp: experiment_base.ViTExperiment):
  """The experiment's training input (its praxis BaseInput), instantiated."""
  input_p = exp.datasets()[0]
  input_p.num_infeed_hosts = jax.process_count()
  input_p.infeed_host_index = jax.process_index()
  if hasattr(input_p, 'stats_dir'):
    input_p.stats_dir = ''  # Not a training job: no stats files.
  return instantiate(input_p)


def ensure_dataset(data_dir: str | None, quick: bool) -> str:
  """`data_dir` if it holds a dataset, else the shapes dataset made there.

  Args:
    data_dir: A dataset directory, or None for a new temporary directory.
    quick: Make a smaller dataset when one has to be made.

  Returns:
    The dataset directory.
  """
  if data_dir and data_format.list_shards(data_dir, shapes.TRAIN_SPLIT):
    return data_dir
  if not data_dir:
    data_dir = os.path.join(tempfile.mkdtemp(prefix='vit22b_bench_'), 'shapes')
  num_train = 1024 if quick else shapes.DEFAULT_NUM_TRAIN
  log(
      f'no dataset in {data_dir}: generating the shapes dataset there '
      f'({num_train} train images; `python -m vit22b_pax.tools.make_dataset '
      'shapes --out DIR` makes the full one)'
  )
  shapes.generate(
      data_dir,
      num_train=num_train,
      num_eval=256 if quick else shapes.DEFAULT_NUM_EVAL,
      progress=False,
  )
  return data_dir


def input_window(
    start: Callable[[], Callable[[], Any]],
    stop: Callable[[], None],
    drain: int,
    batches: int,
):
  """A callable timing one pipeline's steady state from a fresh iterator.

  Input pipelines produce ahead in background threads: a pipeline left
  running while another is timed fills its buffers with CPU taken from the
  timed one, and its own next window then times buffered batches (in
  --quick runs the baseline's windows ran at twice what 2 cores can
  decode). So each window starts the pipeline afresh (`start`), pulls
  `drain` batches untimed (start-up, autotuning), times `batches`, and
  `stop`s it: a stopped or fresh, unpulled tf.data iterator runs nothing.

  Args:
    start: Starts the pipeline afresh; returns its next-batch callable.
    stop: Stops it (drops or replaces its iterator).
    drain: Batches pulled before the clock starts.
    batches: Batches timed.

  Returns:
    A zero-argument callable returning the timed window's seconds.
  """

  def run() -> float:
    next_batch = start()
    for _ in range(drain):
      next_batch()
    begin = time.perf_counter()
    for _ in range(batches):
      next_batch()
    seconds = time.perf_counter() - begin
    del next_batch
    stop()
    return seconds

  return run



# ---------------------------------------------------------------------------
# The benchmark.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
  """Repetition counts of one benchmark run.

  Attributes:
    step_reps: Timed rounds of the three train steps (and the peak).
    step_warmup: Untimed rounds first (after compilation).
    peak_per_round: 2048^3 matmuls timed per round.
    input_reps: Timed windows of each input pipeline.
    input_batches: Batches timed per input window.
    input_drain: Batches pulled untimed before each input window.
    train_reps: Timed windows of `make train`'s step, with and without
      its input.
    train_steps: Steps per such window.
  """

  step_reps: int = 9
  step_warmup: int = 2
  peak_per_round: int = 3
  input_reps: int = 7
  # Windows of 40 batches varied by +-15%: the prefetched batches a window
  # starts with are a tenth of it.
  input_batches: int = 120
  input_drain: int = 10
  train_reps: int = 5
  train_steps: int = 20


FULL = Settings()
QUICK = Settings(
    step_reps=3,
    step_warmup=1,
    peak_per_round=2,
    input_reps=3,
    input_batches=40,  # 10-batch windows (~0.06 s) swung by 2x.
    input_drain=4,
    train_reps=2,
    train_steps=5,
)


def flops_per_step(exp: experiment_base.ViTExperiment) -> float:
  """Model FLOPs of one train step (paper convention, `flops.py`)."""
  return float(
      exp.train_flops_per_token()
      * exp.tokens_per_image()
      * exp.GLOBAL_BATCH_SIZE
  )


def model_shape(exp: experiment_base.ViTExperiment) -> dict[str, Any]:
  """The experiment's size, batch and numerics, for the report."""
  size = exp.model_size()
  return {
      'experiment': type(exp).__name__,
      'model_dims': size.model_dims,
      'hidden_dims': size.hidden_dims,
      'num_heads': size.num_heads,
      'dim_per_head': size.dim_per_head,
      'num_layers': size.num_layers,
      'image_size': size.image_size,
      'patch_size': size.patch_size,
      'tokens_per_image': exp.tokens_per_image(),
      'global_batch_size': exp.GLOBAL_BATCH_SIZE,
      'fprop_dtype': exp.FPROP_DTYPE,
      'scan_layers': exp.SCAN_LAYERS,
      'remat_policy': exp.REMAT_POLICY,
      'knobs': knobs.knob_values(exp),
  }


def benchmark_models(
    exp: experiment_base.ViTExperiment, settings: Settings
) -> dict[str, Any]:
  """parallel_vs_sequential, parallel_vs_praxis and mfu_cpu, with timings."""
  steps = {}
  for variant in VARIANTS:
    log(f'building and compiling the {variant} train step')
    steps[variant] = experiment_train_step(
        exp, variant, variant_task_config(exp, variant)
    )
    log(f'{variant}: first step {steps[variant].compile_seconds:.1f} s')
  peak_run, peak_flops = matmul_peak_fn()
  peak_run()

  peak = Timings('matmul_peak')

  def peak_round() -> float:
    for _ in range(settings.peak_per_round):
      peak.seconds.append(timed(peak_run)())
    return peak.seconds[-1]

  fns = {v: timed(steps[v].run) for v in VARIANTS}
  fns['peak'] = peak_round
  timings = interleaved(
      fns, settings.step_reps, settings.step_warmup, label='train steps'
  )
  # The warm-up rounds' peak matmuls were appended too: drop them.
  peak.seconds = peak.seconds[settings.step_warmup * settings.peak_per_round:]
  peak_flops_per_sec = peak_flops / peak.median
  step_flops = flops_per_step(exp)
  median = {v: timings[v].median for v in VARIANTS}
  tokens = exp.GLOBAL_BATCH_SIZE * exp.tokens_per_image()
  mfu = {
      v: flops.mfu(
          tokens / median[v], exp.train_flops_per_token(), peak_flops_per_sec
      )
      for v in VARIANTS
  }
  return {
      'parallel_vs_sequential': median['sequential'] / median['parallel'],
      'parallel_vs_praxis': median['praxis'] / median['parallel'],
      'mfu_cpu': mfu['parallel'],
      'mfu_cpu_by_variant': mfu,
      'matmul_peak_flops_per_sec': peak_flops_per_sec,
      'model_flops_per_step': step_flops,
      'examples_per_sec': {
          v: exp.GLOBAL_BATCH_SIZE / median[v] for v in VARIANTS
      },
      'compile_seconds': {v: steps[v].compile_seconds for v in VARIANTS},
      'timings_seconds': {
          'train_step': {v: timings[v].summary() for v in VARIANTS},
          f'matmul_{PEAK_MATMUL_SIZE}': peak.summary(),
      },
  }


def benchmark_input(
    train_exp: experiment_base.ViTExperiment, settings: Settings, inp: Any
) -> dict[str, Any]:
  """input_vs_baseline: the training input against a minimal tf.data input.

  The baseline runs twice: as written (its map at tf.data.AUTOTUNE, at most
  one call per core), which input_vs_baseline compares with, and with its
  map at the training input's parallelism (input_vs_baseline_same_calls),
  which isolates the cost of the training input's per-example work.
  """
  size = train_exp.model_size().image_size
  batch_size = inp.batch_size
  calls = getattr(inp, 'map_parallel_calls', tf.data.AUTOTUNE)
  baselines = {
      'baseline': baseline_input_dataset(
          train_exp.DATA_DIR, train_exp.TRAIN_SPLIT, size, batch_size
      ),
      'baseline_same_calls': baseline_input_dataset(
          train_exp.DATA_DIR, train_exp.TRAIN_SPLIT, size, batch_size,
          num_parallel_calls=calls,
      ),
  }
  live = {}

  def start_pipeline():
    inp.reset()  # A fresh iterator, from the input's first batch.
    return inp.get_next

  def start_baseline(name):
    live[name] = baselines[name].as_numpy_iterator()
    return live[name].__next__

  # inp.reset() leaves a fresh iterator, idle until pulled.
  fns = {
      'pipeline': input_window(
          start_pipeline, inp.reset, settings.input_drain,
          settings.input_batches,
      ),
  }
  for name in baselines:
    fns[name] = input_window(
        functools.partial(start_baseline, name), live.clear,
        settings.input_drain, settings.input_batches,
    )
  timings = interleaved(fns, settings.input_reps, 1, label='input')
  images = settings.input_batches * batch_size
  rate = {k: images / t.median for k, t in timings.items()}
  return {
      'input_vs_baseline': rate['pipeline'] / rate['baseline'],
      'input_vs_baseline_same_calls': (
          rate['pipeline'] / rate['baseline_same_calls']
      ),
      'input_images_per_sec': rate['pipeline'],
      'input_baseline_images_per_sec': rate['baseline'],
      'input_baseline_same_calls_images_per_sec': rate['baseline_same_calls'],
      'input_config': {
          'experiment': type(train_exp).__name__,
          'data_dir': train_exp.DATA_DIR,
          'image_size': size,
          'batch_size': batch_size,
          'map_parallel_calls': calls,
      },
      'timings_seconds': {
          f'input_{k}_{settings.input_batches}_batches': t.summary()
          for k, t in timings.items()
      },
  }


def benchmark_make_train(
    train_exp: experiment_base.ViTExperiment, settings: Settings, inp: Any
) -> dict[str, Any]:
  """`make train`'s step: examples/s fed by its input and on a fixed batch."""
  log(f'building and compiling the {type(train_exp).__name__} train step')
  step = experiment_train_step(train_exp, 'make_train')
  fns = {
      'with_input': lambda: step.run_steps(settings.train_steps, inp.get_next),
      'step_only': lambda: step.run_steps(settings.train_steps),
  }
  timings = interleaved(fns, settings.train_reps, 1, label='make train')
  examples = settings.train_steps * step.batch_size
  rate = {k: examples / t.median for k, t in timings.items()}
  return {
      'make_train_examples_per_sec': rate['with_input'],
      'make_train_step_only_examples_per_sec': rate['step_only'],
      # 1.0: feeding the real input costs the step nothing.
      'make_train_with_input_vs_step_only': (
          rate['with_input'] / rate['step_only']
      ),
      'make_train_compile_seconds': step.compile_seconds,
      'make_train_shape': model_shape(train_exp),
      'timings_seconds': {
          f'make_train_{k}_{settings.train_steps}_steps': t.summary()
          for k, t in timings.items()
      },
  }


def run(
    exp: experiment_base.ViTExperiment,
    train_exp: experiment_base.ViTExperiment,
    settings: Settings,
) -> dict[str, Any]:
  """The whole benchmark; returns the report (see the tool for the keys).

  Args:
    exp: The experiment whose size the three models share.
    train_exp: `make train`'s experiment, with DATA_DIR holding a dataset:
      its training input is the input benchmarked, and its train step is
      timed with and without that input.
    settings: Repetition counts.

  Returns:
    The report dict.
  """
  report = {'machine': machine_info(), 'settings': dataclasses.asdict(settings)}
  report['model_shape'] = model_shape(exp)
  timings = {}
  models = benchmark_models(exp, settings)
  timings.update(models.pop('timings_seconds'))
  report.update(models)
  inp = train_input(train_exp)
  inputs = benchmark_input(train_exp, settings, inp)
  timings.update(inputs.pop('timings_seconds'))
  report.update(inputs)
  train = benchmark_make_train(train_exp, settings, inp)
  timings.update(train.pop('timings_seconds'))
  report.update(train)
  report['timings_seconds'] = timings
  return report
