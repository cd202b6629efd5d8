"""Tests of the seqio task and the praxis input (vit22b_pax.input)."""

import io
import json
import math
import os
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image
from praxis import base_hyperparams
import seqio
import tensorflow as tf

from vit22b_pax.input import data_format
from vit22b_pax.input import hierarchy
from vit22b_pax.input import praxis_input
from vit22b_pax.input import preprocessing
from vit22b_pax.input import resumable
from vit22b_pax.input import stats
from vit22b_pax.input import tasks
from vit22b_pax.input import writer

NUM_CLASSES = 6
# 0 animal, 1 pet, 2 cat (animal, pet), 3 dog (animal, pet), 4 plant,
# 5 tree (plant).
PARENTS = [(), (), (0, 1), (0, 1), (), (4,)]
# The ancestor closure, written out by hand.
EXPANDED = {2: {0, 1, 2}, 3: {0, 1, 3}, 4: {4}, 5: {4, 5}}
TRAIN_IDS = list(range(19))  # 3 shards: 7 + 6 + 6 records.
EVAL_IDS = list(range(30, 39))  # 2 shards: 5 + 4 records.
SRC_SIZE = 8
SIZE = 4


def _labels_of(index):
  return [[2], [3, 5], [4]][index % 3]


def _png(index):
  """A uniform image whose colour encodes `index` (survives any crop)."""
  rgb = (4 * index + 2, 255 - 4 * index, 128)
  buf = io.BytesIO()
  Image.fromarray(np.full((SRC_SIZE, SRC_SIZE, 3), rgb, np.uint8)).save(
      buf, 'PNG')
  return buf.getvalue()


def _index_of(image):
  """Inverse of _png on a [S, S, 3] image in [-1, 1]."""
  red = (image[..., 0] + 1.0) * 127.5
  assert np.ptp(red) < 1e-3, 'image is not uniform'
  return int(round((float(red.mean()) - 2) / 4))


def _want_labels(index, expand=True):
  out = np.zeros([NUM_CLASSES], np.float32)
  for label in _labels_of(index):
    out[list(EXPANDED[label]) if expand else [label]] = 1.0
  return out


def _classes():
  return hierarchy.ClassHierarchy([
      hierarchy.ClassInfo(i, f'c{i}', p) for i, p in enumerate(PARENTS)])


def _make_clean(data_dir):
  for split, ids, shards in (('train', TRAIN_IDS, 3), ('eval', EVAL_IDS, 2)):
    with writer.SplitWriter(data_dir, split, shards, _classes()) as w:
      for i in ids:
        w.write(_png(i), _labels_of(i), str(i))
      w.finish()


BAD_POSITIONS = (2, 5, 9)


def _make_bad(data_dir):
  """10 records in one shard; 2: corrupt image, 5: not a tf.Example, 9:
  label id out of range."""
  os.makedirs(data_dir)
  hierarchy.write_class_file(
      _classes(), data_format.class_file_path(data_dir))
  for split in ('train', 'eval'):
    path = os.path.join(data_dir, data_format.shard_name(split, 0, 1))
    with tf.io.TFRecordWriter(path) as w:
      for i in range(10):
        if i == 2:
          w.write(data_format.make_example(_png(i)[:40], [2]))
        elif i == 5:
          w.write(b'\xffnot a tf.Example')
        elif i == 9:
          w.write(data_format.make_example(_png(i), [NUM_CLASSES]))
        else:
          w.write(data_format.make_example(_png(i), _labels_of(i)))


def _input(data_dir, split='eval', **kwargs):
  kwargs.setdefault('batch_size', 4)
  kwargs.setdefault('is_training', split == 'train')
  kwargs.setdefault('eval_crop_fraction', 1.0)
  kwargs.setdefault('stats_dir', '')
  p = praxis_input.MultiLabelImageInput.config(
      data_dir=data_dir, split=split, image_size=SIZE,
      num_classes=NUM_CLASSES, **kwargs)
  return base_hyperparams.instantiate(p)


def _drain(inp):
  batches = []
  while True:
    try:
      batches.append(inp.get_next())
    except StopIteration:
      return batches


class RecordsPerHostTest(parameterized.TestCase):

  @parameterized.parameters(
      ([7, 6, 6], 1, [19]),
      ([7, 6, 6], 2, [13, 6]),  # Files 0, 2 and file 1.
      ([5, 4], 3, [3, 3, 3]),  # Record level: 9 records, every 3rd.
      ([5, 5], 4, [3, 3, 2, 2]),
      ([1], 3, [1, 0, 0]),
  )
  def test_counts(self, shards, hosts, want):
    self.assertEqual(praxis_input.records_per_host(shards, hosts), want)


class PreprocessingTest(parameterized.TestCase):

  @parameterized.parameters(True, False)
  def test_multi_hot(self, expand):
    table = _classes().ancestor_table() if expand else None
    got = preprocessing.multi_hot(
        tf.constant([3, 5, 3], tf.int64), NUM_CLASSES, table).numpy()
    want = np.zeros([NUM_CLASSES], np.float32)
    for label in (3, 5):
      want[list(EXPANDED[label]) if expand else [label]] = 1.0
    np.testing.assert_array_equal(got, want)

  def test_ancestor_table(self):
    table = _classes().ancestor_table()
    self.assertEqual(table.shape, (NUM_CLASSES, 3))  # cat: cat, animal, pet.
    for c in range(NUM_CLASSES):
      row = [int(i) for i in table[c] if i != NUM_CLASSES]
      self.assertEqual(set(row), EXPANDED.get(c, {c}))
      self.assertEqual(len(row), len(set(row)))
      # The padding sits after the ids.
      self.assertTrue(np.all(table[c, len(row):] == NUM_CLASSES))

  def test_ancestor_table_limit(self):
    with mock.patch.object(hierarchy, 'MAX_ANCESTOR_TABLE_ENTRIES', 17):
      with self.assertRaisesRegex(
          hierarchy.HierarchyError, r"6 x 3 ids \(class 'c2' has 3"):
        _classes().ancestor_table()

  @parameterized.product(expand=(True, False), bad_id=(NUM_CLASSES, -1))
  def test_multi_hot_rejects_ids_out_of_range(self, expand, bad_id):
    table = _classes().ancestor_table() if expand else None
    with self.assertRaisesRegex(
        tf.errors.InvalidArgumentError, rf'{bad_id} is not in \[0, 6\)'):
      preprocessing.multi_hot(
          tf.constant([2, bad_id], tf.int64), NUM_CLASSES, table)

  def test_train_image_shape_dtype_range(self):
    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(0, 256, (20, 30, 3)), tf.uint8)
    seeds = [tf.constant([1, 2]), tf.constant([3, 4])]
    out = preprocessing.train_image(image, 16, seeds).numpy()
    self.assertEqual(out.shape, (16, 16, 3))
    self.assertEqual(out.dtype, np.float32)
    self.assertGreaterEqual(out.min(), -1.0)
    self.assertLessEqual(out.max(), 1.0)
    self.assertGreater(out.std(), 0.1)
    for value, want in ((0, -1.0), (255, 1.0)):
      flat = tf.fill([20, 30, 3], tf.constant(value, tf.uint8))
      np.testing.assert_array_equal(
          preprocessing.train_image(flat, 16, seeds).numpy(),
          np.full((16, 16, 3), want, np.float32))

  def test_full_area_crop_is_identity_or_mirror(self):
    ramp = np.tile(np.arange(8, dtype=np.uint8)[None, :, None] * 30,
                   (8, 1, 3))
    want = ramp / 127.5 - 1.0
    flips = []
    for s in range(12):
      seeds = [tf.constant([s, 0]), tf.constant([s, 1])]
      out = preprocessing.train_image(
          tf.constant(ramp), 8, seeds, min_area=1.0).numpy()
      if np.allclose(out, want, atol=1e-6):
        flips.append(False)
      else:
        np.testing.assert_allclose(out, want[:, ::-1], atol=1e-6)
        flips.append(True)
    self.assertIn(True, flips)
    self.assertIn(False, flips)

  def test_flip_matches_tf_image(self):
    # The control-flow-free flip draws the coin of tf.image's and flips
    # the same images the same way (both outcomes occur).
    image = tf.constant(
        np.random.default_rng(1).integers(0, 256, (5, 7, 3)), tf.uint8)
    flipped = 0
    for s in range(16):
      seed = tf.constant([s, 7])
      got = preprocessing.random_flip_left_right(image, seed).numpy()
      want = tf.image.stateless_random_flip_left_right(image, seed).numpy()
      np.testing.assert_array_equal(got, want)
      flipped += int(not np.array_equal(got, image.numpy()))
    self.assertBetween(flipped, 1, 15)

  def test_eval_central_crop_offsets(self):
    image = np.arange(8 * 12 * 3, dtype=np.float32).reshape(8, 12, 3)
    # crop_fraction 0.5: shorter side 8 = 4 / 0.5, so no resize; the crop
    # starts at row (8 - 4) / 2 = 2, column (12 - 4) / 2 = 4.
    out = preprocessing.resize_small_and_central_crop(
        tf.constant(image), 4, crop_fraction=0.5).numpy()
    np.testing.assert_allclose(out, image[2:6, 4:8], atol=1e-4)
    out = preprocessing.eval_image(
        tf.constant(image.astype(np.uint8)), 4, crop_fraction=0.5).numpy()
    np.testing.assert_allclose(out, image[2:6, 4:8] / 127.5 - 1, atol=1e-5)


class PipelineTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls.clean = os.path.join(cls._tmp.name, 'clean')
    cls.bad = os.path.join(cls._tmp.name, 'bad')
    _make_clean(cls.clean)
    _make_bad(cls.bad)

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()
    super().tearDownClass()

  def test_eval_round_trip_and_padding(self):
    inp = _input(self.clean, batch_size=4)
    for _ in range(2):  # reset() starts a second, identical pass.
      batches = _drain(inp)
      self.assertLen(batches, 3)  # ceil(9 / 4)
      weight = np.concatenate([b.weight for b in batches])
      np.testing.assert_array_equal(weight, [1.0] * 9 + [0.0] * 3)
      image = np.concatenate([b.image for b in batches])
      labels = np.concatenate([b.labels for b in batches])
      self.assertEqual(image.shape, (12, SIZE, SIZE, 3))
      self.assertEqual(image.dtype, np.float32)
      ids = [_index_of(x) for x in image[:9]]
      self.assertCountEqual(ids, EVAL_IDS)
      for i, row in zip(ids, labels[:9]):
        np.testing.assert_array_equal(row, _want_labels(i))
      # Padding: zero image, no labels.
      np.testing.assert_array_equal(image[9:], 0.0)
      np.testing.assert_array_equal(labels[9:], 0.0)
      inp.reset()
    self.assertEqual(inp.num_bad_records, 0)

  def test_eval_without_hierarchy_expansion(self):
    inp = _input(self.clean, batch_size=9, expand_hierarchy=False)
    (batch,) = _drain(inp)
    for x, row in zip(batch.image, batch.labels):
      np.testing.assert_array_equal(
          row, _want_labels(_index_of(x), expand=False))

  @parameterized.parameters(2, 3, 5)
  def test_eval_hosts_every_record_once(self, hosts):
    seen, num_batches = [], set()
    for h in range(hosts):
      inp = _input(self.clean, batch_size=2, num_infeed_hosts=hosts,
                   infeed_host_index=h)
      batches = _drain(inp)
      num_batches.add(len(batches))
      for b in batches:
        seen += [_index_of(x) for x, w in zip(b.image, b.weight) if w > 0]
        np.testing.assert_array_equal(b.image[b.weight == 0], 0.0)
    # Same number of batches on every host; 2 files over 2 hosts: 5 and 4
    # records; over 3 or 5 hosts: record-level, ceil(9 / hosts).
    want_records = {2: 5, 3: 3, 5: 2}[hosts]
    self.assertEqual(num_batches, {math.ceil(want_records / 2)})
    self.assertCountEqual(seen, EVAL_IDS)

  @parameterized.parameters(2, 4)
  def test_train_hosts_disjoint_and_complete(self, hosts):
    # 3 files over 2 hosts: whole files; over 4 hosts: every 4th record of
    # the (seeded, per-epoch) file order, the same on all hosts. Either way
    # the hosts partition every epoch. shuffle_buffer_size=1 keeps the
    # epochs apart in the stream.
    epochs = [[set() for _ in range(hosts)] for _ in range(2)]
    for h in range(hosts):
      inp = _input(self.clean, 'train', batch_size=1, num_infeed_hosts=hosts,
                   infeed_host_index=h, shuffle_buffer_size=1,
                   input_random_seed=7)
      local = praxis_input.records_per_host([7, 6, 6], hosts)[h]
      for e in range(2):
        for _ in range(local):
          b = inp.get_next()
          i = _index_of(b.image[0])
          np.testing.assert_array_equal(b.labels[0], _want_labels(i))
          self.assertNotIn(i, epochs[e][h])
          epochs[e][h].add(i)
    for per_host in epochs:
      self.assertEqual(sum(len(s) for s in per_host), len(TRAIN_IDS))
      self.assertEqual(set().union(*per_host), set(TRAIN_IDS))

  def test_train_deterministic_for_a_seed(self):
    def first_batches(seed):
      inp = _input(self.clean, 'train', batch_size=4, input_random_seed=seed,
                   crop_min_area=0.3)
      return [inp.get_next() for _ in range(3)]
    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x.image, y.image)
      np.testing.assert_array_equal(x.labels, y.labels)
    self.assertFalse(all(np.array_equal(x.labels, y.labels)
                         for x, y in zip(a, c)))

  def test_train_bad_records_keep_their_slots_with_weight_0(self):
    stats_dir = os.path.join(self._tmp.name, 'job')
    inp = _input(self.bad, 'train', batch_size=1, shuffle_buffer_size=1,
                 stats_dir=stats_dir)
    ids, counts = [], []
    for n in range(18):
      b = inp.get_next()
      if b.weight[0] == 0:
        ids.append(None)
        np.testing.assert_array_equal(b.image, 0.0)
        np.testing.assert_array_equal(b.labels, 0.0)
      else:
        ids.append(_index_of(b.image[0]))
        np.testing.assert_array_equal(b.labels[0], _want_labels(ids[-1]))
      counts.append(inp.num_bad_records)
      if n == 14:
        # The stats file is written at counts 1, 2, 4, 8, ...
        self.assertEqual(stats.read_input_stats(stats_dir), {'train': 4})
    # One file, blocks of 1: the records in file order, epoch after epoch;
    # a bad record's slot is a weight-0 example, so nothing moves.
    want = [None if i in BAD_POSITIONS else i for i in range(10)]
    self.assertEqual(ids, want + want[:8])
    # A bad record is counted when the next good record arrives.
    self.assertEqual(
        counts, [0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5])
    self.assertEqual(stats.read_input_stats(stats_dir), {'train': 4})
    inp.write_stats()
    self.assertEqual(stats.read_input_stats(stats_dir), {'train': 5})
    path = os.path.join(stats_dir, 'input_stats', 'train.host0.json')
    with open(path) as f:
      self.assertEqual(json.load(f)['num_bad_records'], 5)

  def test_train_bad_slots_across_batches(self):
    # Batches of 4 over epochs of 10 records: bad slots fall at every row
    # and straddle batch edges; the good rows keep their records.
    inp = _input(self.bad, 'train', batch_size=4, shuffle_buffer_size=1)
    for n in range(10):
      b = inp.get_next()
      for r in range(4):
        i = (4 * n + r) % 10
        if i in BAD_POSITIONS:
          self.assertEqual(b.weight[r], 0.0)
          np.testing.assert_array_equal(b.image[r], 0.0)
          np.testing.assert_array_equal(b.labels[r], 0.0)
        else:
          self.assertEqual(b.weight[r], 1.0)
          self.assertEqual(_index_of(b.image[r]), i)
          np.testing.assert_array_equal(b.labels[r], _want_labels(i))
    # 40 slots: four epochs of three bad records.
    self.assertEqual(inp.num_bad_records, 12)

  def test_eval_drops_and_counts_bad_records(self):
    inp = _input(self.bad, batch_size=4)
    batches = _drain(inp)
    self.assertLen(batches, 3)  # 10 records, bad or not, fit in 3 batches.
    weight = np.concatenate([b.weight for b in batches])
    self.assertEqual(weight.sum(), 7)
    image = np.concatenate([b.image for b in batches])
    self.assertCountEqual([_index_of(x) for x in image[weight > 0]],
                          [i for i in range(10) if i not in BAD_POSITIONS])
    # Exact after the pass, including the trailing bad record.
    self.assertEqual(inp.num_bad_records, 3)

  def test_eval_fails_on_stale_shard_counts(self):
    # Copy the clean eval split with an info file that undercounts a shard.
    stale = os.path.join(self._tmp.name, 'stale')
    os.makedirs(stale)
    for name in os.listdir(self.clean):
      with open(os.path.join(self.clean, name), 'rb') as f:
        data = f.read()
      with open(os.path.join(stale, name), 'wb') as f:
        f.write(data)
    info = data_format.read_info(stale)
    info['splits']['eval']['shards'][0]['num_examples'] = 1  # Really 5.
    data_format.write_info(stale, info)
    inp = _input(stale, batch_size=3)  # Believes 1 + 4 records: 2 batches.
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                'holds more records than the shard counts'):
      _drain(inp)

  def test_validation_errors(self):
    with self.assertRaisesRegex(
        ValueError, rf'{self.clean}/classes.tsv lists 6 classes but'
        ' NUM_CLASSES is 7'):
      base_hyperparams.instantiate(praxis_input.MultiLabelImageInput.config(
          data_dir=self.clean, split='eval', batch_size=2, image_size=SIZE,
          num_classes=7))
    with self.assertRaisesRegex(
        ValueError, rf"DATA_DIR '{self.clean}' has no shards for split"
        " 'test'"):
      _input(self.clean, split='test')

  def test_task_registration_is_idempotent(self):
    args = (self.clean, SIZE, NUM_CLASSES)
    name = tasks.register_task(*args, augment=False)
    self.assertEqual(tasks.register_task(*args, augment=False), name)
    self.assertIn(name, seqio.TaskRegistry.names())
    self.assertNotEqual(tasks.register_task(*args, augment=True), name)
    self.assertNotEqual(
        tasks.register_task(self.clean, 8, NUM_CLASSES), name)
    task = seqio.get_mixture_or_task(name)
    ex = next(task.get_dataset(split='eval', shuffle=False).as_numpy_iterator())
    self.assertEqual(ex['image'].shape, (SIZE, SIZE, 3))
    self.assertEqual(ex['labels'].shape, (NUM_CLASSES,))
    with self.assertRaisesRegex(ValueError, 'lists 6 classes but NUM_CLASSES'
                                ' is 5'):
      tasks.register_task(self.clean, SIZE, 5)

  def test_input_specs_are_static(self):
    inp = _input(self.clean, batch_size=3)
    spec = inp.dataset.element_spec
    self.assertEqual(spec['image'].shape, (3, SIZE, SIZE, 3))
    self.assertEqual(spec['labels'].shape, (3, NUM_CLASSES))
    self.assertEqual(spec['weight'].shape, (3,))
    self.assertEqual(sorted(inp.get_next().keys()),
                     ['image', 'labels', 'weight'])


def _textured_png(index):
  """A random 8 x 8 texture: crops and flips of it differ."""
  rgb = np.random.default_rng(index).integers(0, 256, (SRC_SIZE, SRC_SIZE, 3))
  buf = io.BytesIO()
  Image.fromarray(rgb.astype(np.uint8)).save(buf, 'PNG')
  return buf.getvalue()


NUM_TEXTURED = 23  # 3 shards, round robin: 8 + 8 + 7 records.


class TrainPositionTest(parameterized.TestCase):
  """Training batches are a function of (seed, step, slices), not of hosts
  or restarts: resumed and host-sliced inputs against one reference."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls.data = os.path.join(cls._tmp.name, 'textured')
    with writer.SplitWriter(cls.data, 'train', 3, _classes()) as w:
      for i in range(NUM_TEXTURED):
        w.write(_textured_png(i), _labels_of(i), f'r{i}')
      w.finish()
    cls.runs = 0

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()
    super().tearDownClass()

  def _batches(self, num, start=0, **kwargs):
    """(batches, ids per batch) of a training input started at `start`."""
    type(self).runs += 1
    log_dir = os.path.join(self._tmp.name, f'ids{self.runs}')
    p = praxis_input.MultiLabelImageInput.config(
        data_dir=self.data, split='train', image_size=SIZE,
        num_classes=NUM_CLASSES, is_training=True, crop_min_area=0.3,
        stats_dir='', input_random_seed=5, log_example_ids=True,
        id_log_dir=log_dir, **kwargs)
    p.deterministic_input_start_index._latest_model_step = start
    inp = base_hyperparams.instantiate(p)
    batches = [inp.get_next() for _ in range(num)]
    ids = resumable.read_id_log(os.path.join(
        log_dir, 'input_ids', f'train.host{inp.infeed_host_index}.jsonl'))
    self.assertEqual(sorted(ids), list(range(start, start + num)))
    return batches, [ids[i] for i in sorted(ids)]

  def _assert_same(self, got, want):
    for key in ('image', 'labels', 'weight'):
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)

  def test_id_log_does_not_change_the_batches(self):
    # Without the id log the ids are not parsed: the batches stay the same.
    logged, _ = self._batches(3, batch_size=4)
    p = praxis_input.MultiLabelImageInput.config(
        data_dir=self.data, split='train', image_size=SIZE,
        num_classes=NUM_CLASSES, is_training=True, crop_min_area=0.3,
        stats_dir='', input_random_seed=5, batch_size=4)
    inp = base_hyperparams.instantiate(p)
    self.assertNotIn('id', inp._ds.element_spec)
    for want in logged:
      self._assert_same(inp.get_next(), want)

  @parameterized.parameters(1, 2, 4)
  def test_restart_continues_the_stream(self, slices):
    # Blocks of 3 records and epochs of 23 (K=1), 16 + 7 (K=2: whole
    # files) or 6 + 6 + 6 + 5 (K=4: every 4th record): the starts below
    # land mid-block, on block edges and across epochs.
    kwargs = dict(batch_size=4, num_input_slices=slices,
                  shuffle_buffer_size=3)
    ref, ref_ids = self._batches(16, **kwargs)
    for start in (1, 3, 7, 10):
      got, got_ids = self._batches(4, start=start, **kwargs)
      self.assertEqual(got_ids, ref_ids[start:start + 4])
      for g, r in zip(got, ref[start:]):
        self._assert_same(g, r)  # Augmentation included.
    # Every example of the epoch once, then the next epoch.
    per_slice = [[] for _ in range(slices)]
    rows = 4 // slices
    for step_ids in ref_ids:
      for k in range(slices):
        per_slice[k] += step_ids[k * rows:(k + 1) * rows]
    counts = praxis_input.records_per_host([8, 8, 7], slices)
    everything = []
    for k, seen in enumerate(per_slice):
      n = counts[k]
      epoch0, epoch1 = seen[:n], seen[n:2 * n]
      self.assertLen(set(epoch0), n)
      self.assertCountEqual(epoch1, epoch0)
      self.assertNotEqual(epoch1, epoch0)  # Reshuffled per epoch.
      everything += epoch0
    self.assertCountEqual(everything, [f'r{i}' for i in range(NUM_TEXTURED)])

  @parameterized.parameters((4, 2), (4, 4), (2, 2))
  def test_hosts_hold_their_rows_of_the_global_batch(self, slices, hosts):
    kwargs = dict(num_input_slices=slices, shuffle_buffer_size=5)
    ref, ref_ids = self._batches(8, batch_size=8, **kwargs)
    start = 3  # Hosts restarted at step 3, too.
    per_host = [
        self._batches(5, start=start, batch_size=8 // hosts,
                      num_infeed_hosts=hosts, infeed_host_index=h, **kwargs)
        for h in range(hosts)
    ]
    for i in range(5):
      # Together the one-host global batch, row for row.
      host_ids = [ids[i] for _, ids in per_host]
      self.assertEqual(sum(host_ids, []), ref_ids[start + i])
      for key in ('image', 'labels'):
        np.testing.assert_array_equal(
            np.concatenate([b[i][key] for b, _ in per_host]),
            ref[start + i][key])
    if slices <= 3:
      # Whole files per slice: each host reads its own records, always.
      # (Record-level slices partition each epoch, whose file order
      # changes: test_train_hosts_disjoint_and_complete.)
      seen = [set(sum(ids, [])) for _, ids in per_host]
      self.assertEqual(sum(map(len, seen)), len(set().union(*seen)))

  def test_slice_errors_name_the_setting(self):
    base = dict(data_dir=self.data, split='train', image_size=SIZE,
                num_classes=NUM_CLASSES, is_training=True, stats_dir='')
    cases = (
        (dict(batch_size=4, num_infeed_hosts=2, num_input_slices=3),
         'num_input_slices=3 must be a positive multiple of the 2 hosts'),
        (dict(batch_size=3, num_input_slices=2),
         'num_input_slices=2 does not divide the global batch 3'),
        (dict(batch_size=32, num_input_slices=32),
         r"Split 'train' of .* has 23 records in 3 shards: too few for"
         r' num_input_slices=32 \(slice 23 gets none\)'),
        (dict(batch_size=4, num_parallel_calls=0),
         r'num_parallel_calls must be positive, None or tf.data.AUTOTUNE'
         r' \(-1\), got 0'),
    )
    for kwargs, message in cases:
      with self.assertRaisesRegex(ValueError, message):
        base_hyperparams.instantiate(
            praxis_input.MultiLabelImageInput.config(**base, **kwargs))

  @parameterized.parameters(1, 3, tf.data.AUTOTUNE, None)
  def test_batches_do_not_depend_on_map_parallelism(self, calls):
    # The map returns its examples in order, however many run at once.
    ref, _ = self._batches(6, batch_size=4, num_parallel_calls=8)
    got, _ = self._batches(6, batch_size=4, num_parallel_calls=calls)
    for g, r in zip(got, ref):
      self._assert_same(g, r)

  def test_map_parallel_calls(self):
    base = dict(data_dir=self.data, split='train', image_size=SIZE,
                num_classes=NUM_CLASSES, is_training=True, stats_dir='',
                batch_size=4)
    make = lambda **kw: base_hyperparams.instantiate(
        praxis_input.MultiLabelImageInput.config(**base, **kw))
    cores = len(os.sched_getaffinity(0))
    self.assertEqual(make().map_parallel_calls,
                     praxis_input.PARALLEL_CALLS_PER_CORE * cores)
    self.assertEqual(make(num_parallel_calls=3).map_parallel_calls, 3)
    self.assertEqual(
        make(num_parallel_calls=tf.data.AUTOTUNE).map_parallel_calls,
        tf.data.AUTOTUNE)


if __name__ == '__main__':
  absltest.main()
