"""Tests of the embedded shapes dataset generator."""

import contextlib
import io
import os
import tempfile

from absl.testing import absltest
import numpy as np
from PIL import Image
import tensorflow as tf

from vit22b_pax.input import data_format
from vit22b_pax.input import shapes
from vit22b_pax.input import stats
from vit22b_pax.tools import make_dataset

SMALL = dict(num_train=24, num_eval=12, image_size=32, train_shards=2,
             eval_shards=1)


def _records(data_dir, split):
  out = []
  for path in data_format.list_shards(data_dir, split):
    for r in tf.data.TFRecordDataset(path).as_numpy_iterator():
      out.append(data_format.parse_example(r))
  return out


def _names_with_ancestors(leaf):
  """Independent expansion of a leaf name by the dataset's definition."""
  colour, shape = leaf.split(' ')
  names = {leaf, colour, shape}
  names |= {g for g, members in shapes.SHAPE_GROUPS.items() if shape in members}
  names |= {g for g, members in shapes.COLOUR_GROUPS.items()
            if colour in members}
  return names


class ShapesTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls.a = os.path.join(cls._tmp.name, 'a')
    cls.info = shapes.generate(cls.a, seed=3, progress=False, **SMALL)

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()
    super().tearDownClass()

  def test_deterministic(self):
    b = os.path.join(self._tmp.name, 'b')
    c = os.path.join(self._tmp.name, 'c')
    shapes.generate(b, seed=3, progress=False, **SMALL)
    shapes.generate(c, seed=4, progress=False, **SMALL)
    for name in os.listdir(self.a):
      with open(os.path.join(self.a, name), 'rb') as f:
        want = f.read()
      with open(os.path.join(b, name), 'rb') as f:
        self.assertEqual(f.read(), want, name)
    with open(os.path.join(self.a, 'train-00000-of-00002.tfrecord'),
              'rb') as f1, open(
                  os.path.join(c, 'train-00000-of-00002.tfrecord'), 'rb') as f2:
      self.assertNotEqual(f1.read(), f2.read())

  def test_labels_match_hierarchy_and_counts(self):
    classes = shapes.shape_classes()
    for split, num in (('train', 24), ('eval', 12)):
      recs = _records(self.a, split)
      self.assertLen(recs, num)
      counts = np.zeros(classes.num_classes, int)
      expanded = np.zeros(classes.num_classes, int)
      for r in recs:
        leaves = [classes.names[i] for i in r['labels']]
        self.assertBetween(len(leaves), 1, 3)
        names = set().union(*(_names_with_ancestors(l) for l in leaves))
        counts[r['labels']] += 1
        expanded[[classes.id_of(n) for n in names]] += 1
      info = self.info['splits'][split]
      self.assertEqual(info['label_counts'], counts.tolist())
      self.assertEqual(info['expanded_label_counts'], expanded.tolist())
      # The stored chance level is the closed form over the recounted labels.
      want = np.mean([stats.expected_random_ap(n, num) for n in expanded
                      if n > 0])
      self.assertAlmostEqual(self.info['chance_map'][split], want)

  def test_pixels_show_a_labelled_colour(self):
    classes = shapes.shape_classes()
    for r in _records(self.a, 'eval'):
      image = np.asarray(Image.open(io.BytesIO(r['image'])), np.float64)
      self.assertEqual(image.shape, (32, 32, 3))
      # The most saturated pixel belongs to a shape (the background is
      # grey): its colour is one of the labelled colours, within jitter and
      # antialiasing.
      sat = image.max(-1) - image.min(-1)
      pixel = image.reshape(-1, 3)[np.argmax(sat)]
      colours = {classes.names[i].split(' ')[0] for i in r['labels']}
      dist = min(np.abs(pixel - shapes.COLOURS[c]).max() for c in colours)
      self.assertLess(dist, 45, (colours, pixel))

  def test_cli_generates_once(self):
    out = os.path.join(self._tmp.name, 'cli')
    argv = ['shapes', '--out', out, '--num_train', '8', '--num_eval', '4',
            '--train_shards', '2', '--eval_shards', '1', '--image_size', '16']
    for expect in ('', 'already holds this shapes dataset'):
      buf, err = io.StringIO(), io.StringIO()
      with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        self.assertEqual(make_dataset.main(argv), 0)
      self.assertIn(expect, buf.getvalue())
      self.assertIn('chance mAP (eval, hierarchy expanded): '
                    f'{stats.chance_map(out):.4f}', buf.getvalue())
    self.assertEqual(data_format.validate_data_dir(out, 60, ('train', 'eval'))
                     .num_classes, 60)


if __name__ == '__main__':
  absltest.main()
