"""Tests of frozen-feature extraction and few-shot evaluation of a data dir."""

import io
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
from PIL import Image
from praxis import base_hyperparams
from praxis import base_layer
from praxis import py_utils
import tensorflow as tf

from vit22b_pax import experiments
from vit22b_pax import fewshot
from vit22b_pax import fewshot_features
from vit22b_pax.input import data_format
from vit22b_pax.input import hierarchy
from vit22b_pax.input import preprocessing

_NAMES = ['cat', 'dog', 'fox', 'owl', 'yak']
_CLASSES = hierarchy.ClassHierarchy.from_named_edges(_NAMES, [], source='t')


def _png(seed, size=(20, 26)):
  pixels = np.random.default_rng(seed).integers(0, 256, size + (3,),
                                                dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format='PNG')
  return buf.getvalue()


def _write_split(data_dir, split, records, num_shards=1):
  """Writes raw records round-robin into shards; the class file too."""
  os.makedirs(data_dir, exist_ok=True)
  hierarchy.write_class_file(_CLASSES, data_format.class_file_path(data_dir))
  writers = [tf.io.TFRecordWriter(os.path.join(
      data_dir, data_format.shard_name(split, i, num_shards)))
             for i in range(num_shards)]
  for n, record in enumerate(records):
    writers[n % num_shards].write(record)
  for w in writers:
    w.close()


def _example(seed, labels):
  return data_format.make_example(_png(seed), labels, f'img{seed}')


def _reference_features(model, variables, data_dir, split, image_size):
  """Pre-logits of every decodable record, each image preprocessed alone."""
  images, labels = [], []
  for path in data_format.list_shards(data_dir, split):
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      ex = data_format.parse_example(record)
      try:
        pixels = np.asarray(Image.open(io.BytesIO(ex['image'])).convert('RGB'))
      except OSError:
        continue  # Undecodable: the input skips it too.
      images.append(
          preprocessing.eval_image(tf.constant(pixels), image_size).numpy())
      labels.append(ex['labels'][0])
  with base_layer.JaxContext.new_context(
      hparams=base_layer.JaxContext.HParams(do_eval=True)):
    out = model.apply(variables, py_utils.NestedMap(image=np.stack(images)),
                      method=model.compute_predictions)
  return np.asarray(out.pre_logits, np.float64), np.array(labels)


class ReadSingleLabelsTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.dir = tmp.name

  def test_labels_in_shard_order(self):
    labels = [3, 0, 4, 1, 1, 2, 0]
    _write_split(self.dir, 'train',
                 [_example(i, [l]) for i, l in enumerate(labels)], 2)
    got, classes = fewshot_features.read_single_labels(self.dir, 'train')
    # Shard 0 holds records 0, 2, 4, 6; shard 1 records 1, 3, 5.
    np.testing.assert_array_equal(got, labels[0::2] + labels[1::2])
    self.assertEqual(classes.names, _NAMES)

  @parameterized.named_parameters(
      ('two_labels', _example(5, [1, 2]),
       r"train-00000-of-00001\.tfrecord record 5 \(image/id 'img5'\): 2"
       r' labels \[1, 2\]; a few-shot dataset needs exactly one label'),
      ('no_label', _example(5, []),
       r"record 5 \(image/id 'img5'\): 0 labels \[\]"),
      ('out_of_range', _example(5, [7]),
       r"record 5 \(image/id 'img5'\): label 7 is outside \[0, 5\) \(the"
       r' class file has 5 classes\)'),
      ('not_an_example', b'\x00garbage',
       r'train-00000-of-00001\.tfrecord record 5: not a tf\.Example\.'),
  )
  def test_bad_record_names_file_record_and_id(self, bad, message):
    records = [_example(i, [i]) for i in range(5)] + [bad, _example(6, [0])]
    _write_split(self.dir, 'train', records)
    with self.assertRaisesRegex(fewshot_features.FewShotDataError, message):
      fewshot_features.read_single_labels(self.dir, 'train')

  def test_truncated_shard_names_the_file(self):
    _write_split(self.dir, 'train', [_example(i, [i % 5]) for i in range(6)])
    path = os.path.join(self.dir, data_format.shard_name('train', 0, 1))
    with open(path, 'rb') as f:
      data = f.read()
    with open(path, 'wb') as f:
      f.write(data[:len(data) - 40])
    with self.assertRaisesRegex(
        fewshot_features.FewShotDataError,
        r'train-00000-of-00001\.tfrecord: corrupt shard at or after record'
        r' 0 \('):
      fewshot_features.read_single_labels(self.dir, 'train')

  def test_wrong_format_names_the_path(self):
    with self.assertRaisesRegex(ValueError, 'classes.tsv'):
      fewshot_features.read_single_labels(self.dir, 'train')
    _write_split(self.dir, 'train', [_example(0, [0])])
    with self.assertRaisesRegex(
        ValueError, f"DATA_DIR '{self.dir}' has no shards for split 'eval'"):
      fewshot_features.read_single_labels(self.dir, 'eval')


class FeatureExtractionTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls.dir = cls._tmp.name
    # 14 train images (classes 3, 3, 3, 3, 2 times) in 2 shards; 7 eval
    # images and one whose image does not decode.
    _write_split(cls.dir, 'train',
                 [_example(i, [i % 5]) for i in range(14)], 2)
    bad = data_format.make_example(b'not an image', [2], 'bad')
    _write_split(cls.dir, 'eval',
                 [_example(100 + i, [i % 5]) for i in range(4)] + [bad]
                 + [_example(104 + i, [(4 + i) % 5]) for i in range(3)])
    cls.experiment = experiments.ViTSmoke()  # 16 px, D 32.
    model_p = cls.experiment.task().model
    cls.model = base_hyperparams.instantiate(model_p)
    specs = base_hyperparams.instantiate(
        cls.experiment.get_input_specs_provider_params()).get_input_specs()
    batch = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), specs)
    with base_layer.JaxContext.new_context():
      cls.variables = cls.model.init(jax.random.PRNGKey(3), batch)
    cls.extractor = fewshot_features.FeatureExtractor(model_p, batch_size=4)

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()
    super().tearDownClass()

  def _assert_same_rows(self, got, got_labels, want, want_labels):
    """Equal up to order: each wanted row matches one distinct got row."""
    self.assertEqual(got.shape, want.shape)
    used = set()
    for row, label in zip(want, want_labels):
      dist = np.abs(got - row).max(axis=1)
      j = int(np.argmin(dist))
      self.assertLess(dist[j], 1e-5)
      self.assertEqual(got_labels[j], label)
      used.add(j)
    self.assertLen(used, len(want))

  def test_features_are_the_eval_view_pre_logits_with_class_ids(self):
    for split, num in (('train', 14), ('eval', 7)):
      feats, labels = self.extractor(self.variables, self.dir, split)
      self.assertEqual(feats.dtype, np.float64)
      self.assertEqual(labels.dtype, np.int64)
      self.assertEqual(feats.shape, (num, 32))  # Padding dropped.
      want, want_labels = _reference_features(
          self.model, self.variables, self.dir, split, 16)
      self._assert_same_rows(feats, labels, want, want_labels)

  def test_extract_features_of_an_experiment(self):
    feats, labels = fewshot_features.extract_features(
        self.experiment, self.variables, self.dir, 'eval', batch_size=3)
    want, want_labels = self.extractor(self.variables, self.dir, 'eval')
    self._assert_same_rows(feats, labels, want, want_labels)

  def test_evaluate_data_dir(self):
    report = fewshot_features.evaluate_data_dir(
        self.extractor, self.variables, self.dir, shots=(1, 2), num_seeds=2,
        l2=64.0)
    self.assertEqual(
        (report.dataset, report.num_classes, report.num_train,
         report.num_test, report.feature_dim, report.num_skipped),
        (os.path.basename(self.dir), 5, 14, 7, 32, 1))
    self.assertAlmostEqual(report.chance_accuracy, 2 / 7)
    train = self.extractor(self.variables, self.dir, 'train')
    test = self.extractor(self.variables, self.dir, 'eval')
    want = fewshot.evaluate(*train, *test, 5, shots=(1, 2), num_seeds=2,
                            l2=64.0)
    self.assertEqual(report.results, want)
    self.assertEqual(
        report.scalars(),
        {f'fewshot/{report.dataset}/{k}shot': r.mean
         for k, r in want.items()})
    record = report.to_json()
    self.assertEqual(record['results']['2']['accuracies'],
                     list(want[2].accuracies))
    self.assertIsNone(record['l2_sweep'])

  def test_short_classes_fail_before_any_image_is_decoded(self):

    def extractor(*args):
      raise AssertionError(f'features extracted: {args}')

    with self.assertRaisesRegex(
        fewshot.FewShotError,
        r"class 4 \('yak'\) has 2 training examples, fewer than the 3 shots"):
      fewshot_features.evaluate_data_dir(
          extractor, self.variables, self.dir, shots=(1, 3))


if __name__ == '__main__':
  absltest.main()
