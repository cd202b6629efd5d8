"""Converters from common layouts to the dataset format (data/README.md).

from_csv:
  images_dir/          the images (any format PIL reads)
  labels.csv           columns image,labels: path relative to images_dir,
                       class names separated by '|'
  hierarchy.csv        columns class,parent: one row per (class, parent)
                       link; a root has one row with an empty parent

from_openimages (Open Images V4-V7 layout):
  images_dir/<ImageID>.jpg
  image-level labels   ImageID,Source,LabelName,Confidence (Confidence 0
                       rows are verified negatives and are dropped)
  class descriptions   LabelName,DisplayName (no header in the real file;
                       a header row is also accepted)
  hierarchy JSON       {"LabelName": ..., "Subcategory": [...]} tree; a
                       label may appear under several parents (a DAG).
                       Nodes missing from the class descriptions (e.g. the
                       root "Entity") are contracted: their children attach
                       to the nearest described ancestor.

Bad input raises ConversionError naming the file and row: an unreadable or
corrupt image, a label not in the class file, an image without labels, and
(hierarchy) an unknown parent or a cycle. With skip_bad=True the bad images
(CSV rows; Open Images label rows for unknown labels) are skipped and
counted by reason instead; hierarchy errors are never skipped.

JPEG and PNG bytes are stored as they are; other formats (and JPEG/PNG in
modes TensorFlow cannot decode to RGB) are re-encoded as PNG.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import math
import os
import sys
from typing import Any, Iterable, Sequence

from absl import logging
from PIL import Image
import tensorflow as tf
import tqdm

from vit22b_pax.input import hierarchy
from vit22b_pax.input import writer

LABEL_SEPARATOR = '|'
_DECODABLE_MODES = ('RGB', 'L', 'RGBA', 'LA', 'P')
# Shards hold about this many records when num_shards is not given.
RECORDS_PER_SHARD = 1024


class ConversionError(ValueError):
  """Bad converter input; the message names the file and row."""


class BadImageError(Exception):
  """An image that cannot be read or decoded."""


@dataclasses.dataclass
class ConversionResult:
  """What a conversion wrote and skipped.

  Attributes:
    num_written: Examples written.
    skipped: Skipped items by reason (only with skip_bad).
    num_classes: Classes in the class file.
    split_info: The split's entry in dataset_info.json.
  """

  num_written: int
  skipped: dict[str, int]
  num_classes: int
  split_info: dict[str, Any]


def load_image_bytes(path: str) -> bytes:
  """Image bytes TensorFlow can decode; BadImageError if unreadable.

  Args:
    path: Image file.

  Returns:
    The original bytes for RGB/greyscale JPEG and PNG, else a PNG
    re-encoding.
  """
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      data = f.read()
  except (tf.errors.OpError, OSError) as e:
    raise BadImageError(f'cannot read file: {e}') from None
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()  # Decodes every pixel: truncated files fail here.
      fmt, mode = im.format, im.mode
      if fmt in ('JPEG', 'PNG') and mode in _DECODABLE_MODES:
        return data
      buf = io.BytesIO()
      im.convert('RGB').save(buf, format='PNG')
      return buf.getvalue()
  except Exception as e:  # pylint: disable=broad-except
    # PIL raises many types (OSError, SyntaxError, ValueError, ...).
    raise BadImageError(f'not a decodable image ({type(e).__name__}: {e})'
                        ) from None


def _auto_shards(num_items: int) -> int:
  return max(1, math.ceil(num_items / RECORDS_PER_SHARD))


def _open_csv(path: str) -> list[list[str]]:
  if not tf.io.gfile.exists(path):
    raise ConversionError(f'{path} does not exist.')
  with tf.io.gfile.GFile(path, 'r') as f:
    # lstrip: spreadsheet programs may start the file with a BOM.
    return list(csv.reader(io.StringIO(f.read().lstrip('\ufeff'))))


def _header_index(
    path: str, header: Sequence[str], required: Sequence[str]
) -> dict[str, int]:
  cols = [h.strip() for h in header]
  missing = [c for c in required if c not in cols]
  if missing:
    raise ConversionError(
        f'{path} row 1: expected columns {list(required)}, found {cols}.'
    )
  return {c: cols.index(c) for c in required}


def _progress(items: Iterable[Any], total: int, desc: str, enabled: bool):
  return tqdm.tqdm(items, total=total, desc=desc, unit='img',
                   file=sys.stderr, disable=not enabled, mininterval=0.5)


class _Skips:
  """Counts skipped items by reason, or raises when skipping is off."""

  def __init__(self, skip_bad: bool):
    self.skip_bad = skip_bad
    self.counts = collections.Counter()

  def bad(self, reason: str, message: str) -> None:
    if not self.skip_bad:
      raise ConversionError(message)
    if self.counts[reason] < 5:
      logging.warning('Skipping: %s', message)
    self.counts[reason] += 1


def read_hierarchy_csv(path: str) -> hierarchy.ClassHierarchy:
  """Reads a class,parent CSV; ids follow first appearance as a class."""
  rows = _open_csv(path)
  if not rows:
    raise ConversionError(f'{path} is empty.')
  idx = _header_index(path, rows[0], ('class', 'parent'))
  names, name_rows, edges, seen = [], [], [], set()
  for lineno, row in enumerate(rows[1:], start=2):
    if not any(cell.strip() for cell in row):
      continue
    if len(row) <= idx['class']:
      raise ConversionError(f'{path} row {lineno}: missing the class column.')
    name = row[idx['class']].strip()
    parent = row[idx['parent']].strip() if len(row) > idx['parent'] else ''
    if not name:
      raise ConversionError(f'{path} row {lineno}: empty class name.')
    if '\t' in name or LABEL_SEPARATOR in name:
      raise ConversionError(
          f'{path} row {lineno}: class name {name!r} contains a tab or'
          f' {LABEL_SEPARATOR!r}.'
      )
    if name not in seen:
      seen.add(name)
      names.append(name)
      name_rows.append(lineno)
    if parent:
      edges.append((name, parent, lineno))
  try:
    return hierarchy.ClassHierarchy.from_named_edges(
        names, edges, source=path, name_rows=name_rows
    )
  except hierarchy.HierarchyError as e:
    raise ConversionError(str(e)) from None


def from_csv(
    images_dir: str,
    labels_csv: str,
    hierarchy_csv: str,
    out_dir: str,
    split: str = 'train',
    num_shards: int = 0,
    skip_bad: bool = False,
    dataset_name: str = '',
    progress: bool = True,
) -> ConversionResult:
  """Converts an images directory + labels CSV + hierarchy CSV.

  Args:
    images_dir: Directory the CSV's image paths are relative to.
    labels_csv: CSV with columns image,labels ('|'-separated class names).
    hierarchy_csv: CSV with columns class,parent.
    out_dir: Dataset directory to write (other splits are kept).
    split: Split name of this conversion.
    num_shards: Shard files; 0 picks ceil(rows / 1024).
    skip_bad: Skip and count bad rows instead of failing.
    dataset_name: Name recorded in dataset_info.json.
    progress: Show a progress bar on stderr.

  Returns:
    A ConversionResult.

  Raises:
    ConversionError: bad input (file and row in the message).
  """
  classes = read_hierarchy_csv(hierarchy_csv)
  rows = _open_csv(labels_csv)
  if not rows:
    raise ConversionError(f'{labels_csv} is empty.')
  idx = _header_index(labels_csv, rows[0], ('image', 'labels'))
  body = [(n, r) for n, r in enumerate(rows[1:], start=2)
          if any(c.strip() for c in r)]
  skips = _Skips(skip_bad)
  shards = num_shards or _auto_shards(len(body))
  with writer.SplitWriter(out_dir, split, shards, classes,
                          dataset_name) as w:
    for lineno, row in _progress(body, len(body), split, progress):
      where = f'{labels_csv} row {lineno}'
      rel = row[idx['image']].strip() if len(row) > idx['image'] else ''
      cell = row[idx['labels']] if len(row) > idx['labels'] else ''
      names = [n.strip() for n in cell.split(LABEL_SEPARATOR) if n.strip()]
      if not rel:
        skips.bad('no_image', f'{where}: empty image path.')
        continue
      if not names:
        skips.bad('no_labels', f'{where}: image {rel!r} has no labels.')
        continue
      unknown = [n for n in names if not classes.has_name(n)]
      if unknown:
        skips.bad(
            'unknown_label',
            f'{where}: label {unknown[0]!r} of image {rel!r} is not in the'
            f' class file ({hierarchy_csv}).',
        )
        continue
      path = os.path.join(images_dir, rel)
      try:
        data = load_image_bytes(path)
      except BadImageError as e:
        skips.bad('bad_image', f'{where}: image {rel!r} ({path}): {e}.')
        continue
      w.write(data, sorted({classes.id_of(n) for n in names}), rel)
    info = w.finish({
        'source': {'format': 'csv', 'labels_csv': labels_csv,
                   'hierarchy_csv': hierarchy_csv},
        'num_skipped': dict(skips.counts),
    })
  return ConversionResult(info['num_examples'], dict(skips.counts),
                          classes.num_classes, info)


def _read_oi_classes(path: str) -> tuple[list[str], list[str], list[int]]:
  """(MIDs, unique display names, rows) of an Open Images class CSV."""
  rows = _open_csv(path)
  mids, names, linenos = [], [], []
  for lineno, row in enumerate(rows, start=1):
    if not any(c.strip() for c in row):
      continue
    if lineno == 1 and [c.strip().lower() for c in row[:2]] == [
        'labelname', 'displayname']:
      continue  # Optional header.
    if len(row) < 2 or not row[0].strip():
      raise ConversionError(
          f'{path} row {lineno}: expected LabelName,DisplayName, found'
          f' {row}.'
      )
    mid = row[0].strip()
    if mid in mids:
      raise ConversionError(f'{path} row {lineno}: duplicate label {mid!r}.')
    mids.append(mid)
    names.append(row[1].strip() or mid)
    linenos.append(lineno)
  if not mids:
    raise ConversionError(f'{path} lists no classes.')
  counts = collections.Counter(names)
  # Display names are not unique in Open Images; the class file needs them
  # to be, so duplicates carry their MID.
  names = [n if counts[n] == 1 else f'{n} ({m})' for n, m in zip(names, mids)]
  return mids, names, linenos


def _read_oi_hierarchy(
    path: str, known: set[str]
) -> tuple[list[tuple[str, str, str]], int]:
  """(child MID, parent MID, JSON path) links and the contracted nodes."""
  if not tf.io.gfile.exists(path):
    raise ConversionError(f'{path} does not exist.')
  with tf.io.gfile.GFile(path, 'r') as f:
    try:
      root = json.load(f)
    except json.JSONDecodeError as e:
      raise ConversionError(f'{path}: not valid JSON ({e}).') from None
  edges, contracted = [], set()
  # Locations are the chain of LabelNames from the root, e.g. "/m/0bl9f >
  # /m/01 > /m/02".
  stack = [(root, None, '')]
  while stack:
    node, parent, where = stack.pop()
    if not isinstance(node, dict) or 'LabelName' not in node:
      raise ConversionError(
          f'{path} at {where or "the root"}: expected an object with'
          ' "LabelName".'
      )
    mid = node['LabelName']
    here = f'{where} > {mid}' if where else mid
    if mid in known:
      if parent is not None:
        edges.append((mid, parent, here))
      effective = mid
    else:
      contracted.add(mid)
      effective = parent
    subs = node.get('Subcategory', [])
    for i in reversed(range(len(subs))):
      stack.append((subs[i], effective, here))
  return edges, len(contracted)


def read_openimages_classes(
    classes_csv: str, hierarchy_json: str
) -> tuple[hierarchy.ClassHierarchy, dict[str, int], int]:
  """(hierarchy, MID -> id, contracted node count) of Open Images files."""
  mids, names, linenos = _read_oi_classes(classes_csv)
  edges, contracted = _read_oi_hierarchy(hierarchy_json, set(mids))
  by_mid = dict(zip(mids, names))
  named = [(by_mid[c], by_mid[p], where) for c, p, where in edges]
  try:
    classes = hierarchy.ClassHierarchy.from_named_edges(
        names, named, source=hierarchy_json
    )
  except hierarchy.HierarchyError as e:
    raise ConversionError(str(e)) from None
  return classes, {m: i for i, m in enumerate(mids)}, contracted


def from_openimages(
    images_dir: str,
    labels_csv: str,
    classes_csv: str,
    hierarchy_json: str,
    out_dir: str,
    split: str = 'train',
    num_shards: int = 0,
    skip_bad: bool = False,
    image_ext: str = '.jpg',
    dataset_name: str = 'openimages',
    progress: bool = True,
) -> ConversionResult:
  """Converts Open Images' image-level labels (see the module docstring).

  Args:
    images_dir: Directory holding <ImageID><image_ext>.
    labels_csv: Image-level labels (ImageID,Source,LabelName,Confidence).
    classes_csv: Class descriptions (LabelName,DisplayName).
    hierarchy_json: The class hierarchy JSON.
    out_dir: Dataset directory to write.
    split: Split name of this conversion.
    num_shards: Shard files; 0 picks ceil(images / 1024).
    skip_bad: Skip and count bad rows/images instead of failing.
    image_ext: File extension of the images.
    dataset_name: Name recorded in dataset_info.json.
    progress: Show a progress bar on stderr.

  Returns:
    A ConversionResult.

  Raises:
    ConversionError: bad input (file and row in the message).
  """
  classes, mid_to_id, contracted = read_openimages_classes(
      classes_csv, hierarchy_json)
  rows = _open_csv(labels_csv)
  if not rows:
    raise ConversionError(f'{labels_csv} is empty.')
  idx = _header_index(labels_csv, rows[0],
                      ('ImageID', 'LabelName', 'Confidence'))
  skips = _Skips(skip_bad)
  labels: dict[str, set[int]] = {}
  first_row: dict[str, int] = {}
  negatives = 0
  width = max(idx.values()) + 1
  for lineno, row in enumerate(rows[1:], start=2):
    if not any(c.strip() for c in row):
      continue
    where = f'{labels_csv} row {lineno}'
    if len(row) < width:
      raise ConversionError(f'{where}: expected at least {width} columns.')
    image_id = row[idx['ImageID']].strip()
    mid = row[idx['LabelName']].strip()
    try:
      confidence = float(row[idx['Confidence']])
    except ValueError:
      raise ConversionError(
          f'{where}: Confidence {row[idx["Confidence"]]!r} is not a number.'
      ) from None
    first_row.setdefault(image_id, lineno)
    labels.setdefault(image_id, set())
    if confidence == 0:
      negatives += 1  # A verified negative: not a label.
      continue
    if mid not in mid_to_id:
      skips.bad(
          'unknown_label',
          f'{where}: label {mid!r} of image {image_id!r} is not in the class'
          f' file ({classes_csv}).',
      )
      continue
    labels[image_id].add(mid_to_id[mid])
  shards = num_shards or _auto_shards(len(labels))
  with writer.SplitWriter(out_dir, split, shards, classes,
                          dataset_name) as w:
    for image_id, ids in _progress(labels.items(), len(labels), split,
                                   progress):
      where = f'{labels_csv} row {first_row[image_id]}'
      if not ids:
        skips.bad('no_labels',
                  f'{where}: image {image_id!r} has no positive labels.')
        continue
      path = os.path.join(images_dir, image_id + image_ext)
      try:
        data = load_image_bytes(path)
      except BadImageError as e:
        skips.bad('bad_image', f'{where}: image {image_id!r} ({path}): {e}.')
        continue
      w.write(data, sorted(ids), image_id)
    info = w.finish({
        'source': {'format': 'openimages', 'labels_csv': labels_csv,
                   'classes_csv': classes_csv,
                   'hierarchy_json': hierarchy_json,
                   'negative_rows_dropped': negatives,
                   'hierarchy_nodes_contracted': contracted},
        'num_skipped': dict(skips.counts),
    })
  return ConversionResult(info['num_examples'], dict(skips.counts),
                          classes.num_classes, info)
