"""Tests of the converters and `python -m vit22b_pax.tools.make_dataset`."""

import contextlib
import io
import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image
import tensorflow as tf

from vit22b_pax.input import converters
from vit22b_pax.input import data_format
from vit22b_pax.input import hierarchy
from vit22b_pax.tools import make_dataset

HIERARCHY_CSV = """class,parent
animal,
pet,
cat,animal
cat,pet
dog,animal
dog,pet
plant,
"""
# ids follow first appearance: animal 0, pet 1, cat 2, dog 3, plant 4.
CSV_ANCESTORS = {0: {0}, 1: {1}, 2: {0, 1, 2}, 3: {0, 1, 3}, 4: {4}}


def _pixels(seed, size=(6, 5)):
  return np.random.default_rng(seed).integers(0, 256, size + (3,),
                                              dtype=np.uint8)


def _save(path, array, fmt, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  im = Image.fromarray(array)
  if mode:
    im = im.convert(mode)
  im.save(path, format=fmt)


def _write(path, text):
  with open(path, 'w') as f:
    f.write(text)


def _records(data_dir, split='train'):
  out = []
  for path in data_format.list_shards(data_dir, split):
    for r in tf.data.TFRecordDataset(path).as_numpy_iterator():
      out.append(data_format.parse_example(r))
  return out


def _decode(data):
  return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


def _run_cli(argv):
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = make_dataset.main(argv)
  return code, out.getvalue(), err.getvalue()


class CsvTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.tmp = tmp.name
    self.images = os.path.join(self.tmp, 'images')
    _save(os.path.join(self.images, 'a.png'), _pixels(0), 'PNG')
    _save(os.path.join(self.images, 'b.jpg'), _pixels(1), 'JPEG')
    _save(os.path.join(self.images, 'c.bmp'), _pixels(2), 'BMP')
    _save(os.path.join(self.images, 'sub', 'd.png'), _pixels(3), 'PNG', 'L')
    with open(os.path.join(self.images, 'bad.jpg'), 'wb') as f:
      f.write(b'\xff\xd8\xff\xe0 this is not a JPEG')
    with open(os.path.join(self.images, 'a.png'), 'rb') as f:
      png = f.read()
    with open(os.path.join(self.images, 'trunc.png'), 'wb') as f:
      f.write(png[:len(png) // 2])
    self.hierarchy = os.path.join(self.tmp, 'hierarchy.csv')
    _write(self.hierarchy, HIERARCHY_CSV)
    self.labels = os.path.join(self.tmp, 'labels.csv')
    self.out = os.path.join(self.tmp, 'out')

  def _convert(self, labels_text, **kwargs):
    _write(self.labels, labels_text)
    return converters.from_csv(self.images, self.labels, self.hierarchy,
                               self.out, progress=False, **kwargs)

  def test_round_trip(self):
    result = self._convert(
        'image,labels\na.png,cat\nb.jpg,dog|plant\nc.bmp,pet\n'
        'sub/d.png, cat | dog \n', num_shards=2)
    self.assertEqual(result.num_written, 4)
    classes = hierarchy.read_class_file(os.path.join(self.out, 'classes.tsv'))
    self.assertEqual(classes.names, ['animal', 'pet', 'cat', 'dog', 'plant'])
    self.assertEqual(classes.classes[2].parents, (0, 1))
    recs = {r['id']: r for r in _records(self.out)}
    self.assertEqual({k: r['labels'] for k, r in recs.items()},
                     {'a.png': [2], 'b.jpg': [3, 4], 'c.bmp': [1],
                      'sub/d.png': [2, 3]})
    # JPEG and PNG bytes are kept; BMP becomes a lossless PNG.
    with open(os.path.join(self.images, 'b.jpg'), 'rb') as f:
      self.assertEqual(recs['b.jpg']['image'], f.read())
    np.testing.assert_array_equal(_decode(recs['a.png']['image']),
                                  _pixels(0))
    self.assertEqual(recs['c.bmp']['image'][:8], b'\x89PNG\r\n\x1a\n')
    np.testing.assert_array_equal(_decode(recs['c.bmp']['image']),
                                  _pixels(2))
    # Every stored image decodes in TensorFlow.
    for r in recs.values():
      self.assertEqual(tf.io.decode_image(r['image'], channels=3).shape,
                       (6, 5, 3))
    info = data_format.read_info(self.out)
    split = info['splits']['train']
    self.assertEqual(split['num_examples'], 4)
    self.assertEqual([s['num_examples'] for s in split['shards']], [2, 2])
    labels = [r['labels'] for r in recs.values()]
    want = [sum(c in l for l in labels) for c in range(5)]
    want_expanded = [
        sum(any(c in CSV_ANCESTORS[i] for i in l) for l in labels)
        for c in range(5)]
    self.assertEqual(split['label_counts'], want)
    self.assertEqual(split['expanded_label_counts'], want_expanded)
    self.assertEqual(data_format.validate_data_dir(self.out, 5), classes)

  @parameterized.named_parameters(
      ('corrupt', 'a.png,cat\nbad.jpg,dog\n',
       r"labels\.csv row 3: image 'bad\.jpg' .*not a decodable image"),
      ('truncated', 'trunc.png,cat\n',
       r"labels\.csv row 2: image 'trunc\.png' .*not a decodable image"),
      ('missing', 'a.png,cat\nb.jpg,dog\nnope.png,cat\n',
       r"labels\.csv row 4: image 'nope\.png' .*cannot read file"),
      ('unknown_label', 'a.png,cat|unicorn\n',
       r"labels\.csv row 2: label 'unicorn' of image 'a\.png' is not in the"
       r' class file \(.*hierarchy\.csv\)'),
      ('no_labels', 'a.png,cat\nb.jpg, | \n',
       r"labels\.csv row 3: image 'b\.jpg' has no labels"),
  )
  def test_bad_row_names_file_and_row(self, rows, message):
    with self.assertRaisesRegex(converters.ConversionError, message):
      self._convert('image,labels\n' + rows)
    # Nothing is published.
    self.assertEqual(data_format.list_shards(self.out, 'train'), [])

  @parameterized.named_parameters(
      ('cycle', 'class,parent\na,\nb,a\nb,d\nc,b\nd,c\n',
       r"hierarchy\.csv: cycle in the class hierarchy: 'b' -> 'd' -> 'c' ->"
       r" 'b' \(rows 4, 6, 5\)"),
      ('unknown_parent', 'class,parent\nanimal,\ncat,animal\ncat,mammal\n',
       r"hierarchy\.csv row 4: class 'cat' has unknown parent 'mammal'"),
      ('columns', 'name,parent\na,\n',
       r"hierarchy\.csv row 1: expected columns \['class', 'parent'\]"),
  )
  def test_bad_hierarchy_names_file_and_row(self, text, message):
    _write(self.hierarchy, text)
    with self.assertRaisesRegex(converters.ConversionError, message):
      self._convert('image,labels\na.png,a\n', skip_bad=True)

  def test_skip_bad_counts(self):
    result = self._convert(
        'image,labels\na.png,cat\nbad.jpg,dog\nb.jpg,unicorn\nc.bmp,\n'
        'trunc.png,pet\nsub/d.png,dog\n', skip_bad=True)
    self.assertEqual(result.num_written, 2)
    self.assertEqual(result.skipped,
                     {'bad_image': 2, 'unknown_label': 1, 'no_labels': 1})
    info = data_format.read_info(self.out)
    self.assertEqual(info['splits']['train']['num_skipped'], result.skipped)
    self.assertEqual(sorted(r['id'] for r in _records(self.out)),
                     ['a.png', 'sub/d.png'])

  def test_cli(self):
    _write(self.labels, 'image,labels\na.png,cat\nbad.jpg,dog\n')
    argv = ['from-csv', '--images_dir', self.images, '--labels_csv',
            self.labels, '--hierarchy_csv', self.hierarchy, '--out',
            self.out, '--split', 'eval', '--no_progress']
    code, _, err = _run_cli(argv)
    self.assertEqual(code, 1)
    self.assertRegex(err, r"^error: .*labels\.csv row 3: image 'bad\.jpg'")
    code, out, _ = _run_cli(argv + ['--skip_bad'])
    self.assertEqual(code, 0)
    self.assertIn('wrote 1 eval examples, 5 classes', out)
    self.assertIn('skipped 1: {"bad_image": 1}', out)
    self.assertLen(data_format.list_shards(self.out, 'eval'), 1)


OI_CLASSES = '/m/01,Animal\n/m/02,Cat\n/m/03,Pet\n/m/04,Plant\n/m/05,Cat\n'
OI_HIERARCHY = {
    'LabelName': '/m/0bl9f',  # Entity: not a class, contracted.
    'Subcategory': [
        {'LabelName': '/m/01', 'Subcategory': [{'LabelName': '/m/02'}]},
        {'LabelName': '/m/03', 'Subcategory': [{'LabelName': '/m/02'}],
         'Part': [{'LabelName': '/m/04'}]},
        {'LabelName': '/m/04'},
        {'LabelName': '/m/99', 'Subcategory': [{'LabelName': '/m/05'}]},
    ],
}
OI_LABELS = """ImageID,Source,LabelName,Confidence
000a,verification,/m/02,1
000a,verification,/m/04,0
000b,human,/m/04,1
000c,machine,/m/01,1
000c,machine,/m/03,1
000b,human,/m/05,1
"""


class OpenImagesTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.tmp = tmp.name
    self.images = os.path.join(self.tmp, 'images')
    for i, name in enumerate(('000a', '000b', '000c')):
      _save(os.path.join(self.images, name + '.jpg'), _pixels(i), 'JPEG')
    with open(os.path.join(self.images, '000d.jpg'), 'wb') as f:
      f.write(b'garbage')
    self.classes = os.path.join(self.tmp, 'classes.csv')
    self.hierarchy = os.path.join(self.tmp, 'hierarchy.json')
    self.labels = os.path.join(self.tmp, 'labels.csv')
    self.out = os.path.join(self.tmp, 'out')
    _write(self.classes, OI_CLASSES)
    _write(self.hierarchy, json.dumps(OI_HIERARCHY))
    _write(self.labels, OI_LABELS)

  def _convert(self, **kwargs):
    return converters.from_openimages(
        self.images, self.labels, self.classes, self.hierarchy, self.out,
        progress=False, **kwargs)

  @parameterized.parameters(False, True)
  def test_round_trip(self, header):
    if header:
      _write(self.classes, 'LabelName,DisplayName\n' + OI_CLASSES)
    result = self._convert()
    self.assertEqual(result.num_written, 3)
    classes = hierarchy.read_class_file(os.path.join(self.out, 'classes.tsv'))
    # Duplicate display names carry their MID.
    self.assertEqual(classes.names, ['Animal', 'Cat (/m/02)', 'Pet', 'Plant',
                                     'Cat (/m/05)'])
    # Cat has two parents; Entity and /m/99 are contracted away.
    self.assertEqual(classes.classes[1].parents, (0, 2))
    self.assertEqual([c.parents for c in classes.classes],
                     [(), (0, 2), (), (), ()])
    recs = {r['id']: r['labels'] for r in _records(self.out)}
    # The Confidence 0 row (000a, Plant) is dropped.
    self.assertEqual(recs, {'000a': [1], '000b': [3, 4], '000c': [0, 2]})
    info = data_format.read_info(self.out)
    source = info['splits']['train']['source']
    self.assertEqual(source['negative_rows_dropped'], 1)
    self.assertEqual(source['hierarchy_nodes_contracted'], 2)
    self.assertEqual(info['splits']['train']['expanded_label_counts'],
                     [2, 1, 2, 1, 1])

  @parameterized.named_parameters(
      ('unknown_label', '000a,x,/m/77,1\n',
       r"labels\.csv row 8: label '/m/77' of image '000a' is not in the class"
       r' file'),
      ('no_labels', '000e,x,/m/01,0\n',
       r"labels\.csv row 8: image '000e' has no positive labels"),
      ('corrupt', '000d,x,/m/01,1\n',
       r"labels\.csv row 8: image '000d' .*000d\.jpg.*not a decodable image"),
      ('bad_confidence', '000a,x,/m/01,yes\n',
       r"labels\.csv row 8: Confidence 'yes' is not a number"),
  )
  def test_bad_row_names_file_and_row(self, extra, message):
    _write(self.labels, OI_LABELS + extra)
    with self.assertRaisesRegex(converters.ConversionError, message):
      self._convert()

  def test_skip_bad(self):
    _write(self.labels, OI_LABELS + '000a,x,/m/77,1\n000e,x,/m/01,0\n'
           '000d,x,/m/01,1\n')
    result = self._convert(skip_bad=True)
    self.assertEqual(result.num_written, 3)
    self.assertEqual(result.skipped,
                     {'unknown_label': 1, 'no_labels': 1, 'bad_image': 1})

  def test_cycle_in_hierarchy_json(self):
    tree = {'LabelName': '/m/01', 'Subcategory': [
        {'LabelName': '/m/02', 'Subcategory': [{'LabelName': '/m/01'}]}]}
    _write(self.hierarchy, json.dumps(tree))
    with self.assertRaisesRegex(
        converters.ConversionError,
        r"hierarchy\.json: cycle in the class hierarchy: 'Animal' ->"
        r" 'Cat \(/m/02\)' -> 'Animal' \(at /m/01 > /m/02 > /m/01;"
        r' /m/01 > /m/02\)'):
      self._convert()

  def test_cli(self):
    code, out, err = _run_cli([
        'from-openimages', '--images_dir', self.images, '--labels_csv',
        self.labels, '--classes_csv', self.classes, '--hierarchy_json',
        self.hierarchy, '--out', self.out, '--no_progress'])
    self.assertEqual((code, err), (0, ''))
    self.assertIn('wrote 3 train examples, 5 classes', out)


if __name__ == '__main__':
  absltest.main()
