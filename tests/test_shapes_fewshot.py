"""Tests of the single-label few-shot variant of the shapes dataset."""

import contextlib
import io
import itertools
import os
import tempfile

from absl.testing import absltest
import numpy as np
from PIL import Image
import tensorflow as tf

from vit22b_pax.input import data_format
from vit22b_pax.input import hierarchy
from vit22b_pax.input import shapes
from vit22b_pax.tools import make_dataset

_NUM_CLASSES = 30
# 2 train and 1 eval image per class, plus a partial round (uneven counts).
SMALL = dict(num_train=2 * _NUM_CLASSES + 5, num_eval=_NUM_CLASSES,
             image_size=48, train_shards=2, eval_shards=1,
             variant=shapes.FEWSHOT)
# Saturated shape colours vs the grey background: a pixel within this
# L-inf distance of a base colour belongs to a shape of that colour (the
# jitter is +-18; antialiased edges mostly fall outside).
_COLOUR_TOLERANCE = 24
_MIN_PIXELS = 4


def _records(data_dir, split):
  out = []
  for path in data_format.list_shards(data_dir, split):
    for r in tf.data.TFRecordDataset(path).as_numpy_iterator():
      out.append(data_format.parse_example(r))
  return out


def _colours_present(image):
  """Base colours with at least _MIN_PIXELS pixels near them."""
  pixels = image.reshape(-1, 3).astype(np.int64)
  present = set()
  for name, rgb in shapes.COLOURS.items():
    near = np.abs(pixels - np.array(rgb)).max(axis=1) <= _COLOUR_TOLERANCE
    if near.sum() >= _MIN_PIXELS:
      present.add(name)
  return present


class FewShotVariantTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls.dir = os.path.join(cls._tmp.name, 'fs')
    cls.info = shapes.generate(cls.dir, seed=5, progress=False, **SMALL)

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()
    super().tearDownClass()

  def test_classes_are_flat_colour_pairs(self):
    classes = hierarchy.read_class_file(
        data_format.class_file_path(self.dir))
    self.assertEqual(classes.num_classes, _NUM_CLASSES)
    colours = list(shapes.COLOURS)
    want = [f'{a} round + {b} angular'
            for a, b in itertools.permutations(colours, 2)]
    self.assertEqual(classes.names, want)
    # No hierarchy: no pre-training label (shape, colour, group) is a class.
    for c in classes.classes:
      self.assertEqual(c.parents, ())
    self.assertEmpty(set(classes.names) & set(shapes.shape_classes().names))
    self.assertEqual(
        sorted(shapes.ROUND_SHAPES + shapes.ANGULAR_SHAPES),
        sorted(shapes.SHAPES))
    self.assertEqual(shapes.ROUND_SHAPES, ('circle', 'ring'))

  def test_one_label_per_image_balanced_and_counted(self):
    for split, num in (('train', SMALL['num_train']),
                       ('eval', SMALL['num_eval'])):
      recs = _records(self.dir, split)
      self.assertLen(recs, num)
      for r in recs:
        self.assertLen(r['labels'], 1, r['id'])
        # Image i shows class i mod 30.
        index = int(r['id'].split('-')[1])
        self.assertEqual(r['labels'][0], index % _NUM_CLASSES, r['id'])
      counts = np.bincount([r['labels'][0] for r in recs],
                           minlength=_NUM_CLASSES)
      self.assertEqual(self.info['splits'][split]['label_counts'],
                       counts.tolist())
      self.assertLessEqual(counts.max() - counts.min(), 1)
      self.assertAlmostEqual(self.info['chance_accuracy'][split],
                             counts.max() / num)
    self.assertEqual(self.info['name'], 'shapes_fewshot')
    self.assertEqual(self.info['generator']['name'], 'shapes_fewshot')
    self.assertNotIn('chance_map', self.info)

  def test_every_image_shows_exactly_its_two_colours(self):
    pairs = list(itertools.permutations(shapes.COLOURS, 2))
    for r in _records(self.dir, 'train') + _records(self.dir, 'eval'):
      image = np.asarray(Image.open(io.BytesIO(r['image'])).convert('RGB'))
      self.assertEqual(image.shape, (48, 48, 3))
      self.assertEqual(_colours_present(image), set(pairs[r['labels'][0]]),
                       r['id'])

  def test_round_and_angular_shapes_carry_the_class_colours(self):
    # Pixels cannot tell which shape has which colour; the sampler's
    # objects, from the image's own random stream, can.
    pairs = list(itertools.permutations(shapes.COLOURS, 2))
    kinds = set()
    for index in range(2 * _NUM_CLASSES):
      rng = np.random.default_rng([5, shapes._FEWSHOT_STREAM, 0, index])
      image, objects = shapes.sample_fewshot_image(
          rng, 48, *pairs[index % _NUM_CLASSES])
      round_colour, angular_colour = pairs[index % _NUM_CLASSES]
      self.assertLen(objects, 2)
      for colour, kind in objects:
        if kind in ('circle', 'ring'):
          self.assertEqual(colour, round_colour)
        else:
          self.assertIn(kind, ('square', 'triangle', 'diamond', 'star',
                               'cross'))
          self.assertEqual(colour, angular_colour)
        kinds.add(kind)
      self.assertNotEqual(objects[0][1] in ('circle', 'ring'),
                          objects[1][1] in ('circle', 'ring'))
      stored, labels, _ = shapes.fewshot_example(5, 'train', index, 48)
      self.assertEqual(labels, [index % _NUM_CLASSES])
      np.testing.assert_array_equal(
          np.asarray(Image.open(io.BytesIO(stored)).convert('RGB')), image)
    self.assertEqual(kinds, set(shapes.SHAPES))  # Every kind is drawn.

  def test_deterministic_and_seeded(self):
    again = os.path.join(self._tmp.name, 'again')
    other = os.path.join(self._tmp.name, 'other')
    shapes.generate(again, seed=5, progress=False, **SMALL)
    shapes.generate(other, seed=6, progress=False, **SMALL)
    shard = data_format.shard_name('train', 0, 2)
    with open(os.path.join(self.dir, shard), 'rb') as f:
      want = f.read()
    with open(os.path.join(again, shard), 'rb') as f:
      self.assertEqual(f.read(), want)
    with open(os.path.join(other, shard), 'rb') as f:
      self.assertNotEqual(f.read(), want)

  def test_too_few_images_for_one_per_class(self):
    args = dict(SMALL, num_eval=_NUM_CLASSES - 1)
    with self.assertRaisesRegex(ValueError, 'at least 30 train and eval'):
      shapes.generate(os.path.join(self._tmp.name, 'few'), progress=False,
                      **args)

  def test_cli_variant_generates_once_with_its_defaults_and_chance(self):
    out = os.path.join(self._tmp.name, 'cli')
    argv = ['shapes', '--variant', 'fewshot', '--out', out,
            '--num_train', '30', '--num_eval', '30', '--train_shards', '1',
            '--eval_shards', '1', '--image_size', '16']
    for expect in ('', 'already holds this shapes dataset'):
      buf, err = io.StringIO(), io.StringIO()
      with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        self.assertEqual(make_dataset.main(argv), 0)
      self.assertIn(expect, buf.getvalue())
      self.assertIn('classes: 30 (one label per image); chance accuracy'
                    ' (eval, most frequent class): 0.0333', buf.getvalue())
    classes = data_format.validate_data_dir(out, 30, ('train', 'eval'))
    self.assertEqual(classes.names[5], 'orange round + red angular')
    self.assertEqual(shapes.default_num_examples(shapes.FEWSHOT),
                     (30 * 48, 30 * 16))


if __name__ == '__main__':
  absltest.main()
