"""The embedded dataset: coloured shapes with a JFT-style label hierarchy.

Each image holds 1-3 shapes (7 kinds) in 6 colours on a noisy gradient
background, with colour jitter, random size, rotation and occlusion. An
image is labelled with the leaf class of every shape it holds ("red
circle"); the class file links each leaf to its shape and its colour, which
link to groups, a multi-parent DAG:

  red circle -> circle -> round shape
             -> red    -> warm colour
  red triangle -> triangle -> polygon, pointy shape

60 classes: 5 groups, 7 shapes, 6 colours, 42 coloured shapes. An image has
1-3 leaf labels; with the hierarchy expanded, 5-14 positive classes. A
leaf needs both the form and the colour of a shape, so the task is
learnable but not trivial. A model that ignores the image scores the
chance mAP of stats.chance_map, 0.1487 on the default eval split (stored in
dataset_info.json['chance_map']).

Generation is deterministic: image i of a split depends only on (seed,
split, i). The default size (8192 train, 1024 eval at 48 px) takes about
20 s on 2 cores:

  python -m vit22b_pax.tools.make_dataset shapes --out data/shapes

The few-shot variant (`--variant fewshot`) measures transfer: single-label
images whose 30 classes the pre-training labels never name. Every image
holds exactly two shapes in two different colours, one round (circle or
ring) and one angular (square, triangle, diamond, star or cross); its class
is the pair (colour of the round shape, colour of the angular shape), e.g.
"red round + blue angular". The kinds within each group, positions, sizes,
rotations, drawing order and background are random. Knowing which colours
an image holds narrows the class to two (red round + blue angular, or blue
round + red angular), so a feature of colours alone reaches at most 50%;
the rest needs features that bind each colour to its shape, as the
pre-training leaf labels ("red circle", "blue star") do. No pre-training
label is such a pair: the probe must learn the combination. Class i holds
images i, i + 30, ... of a split (balanced); the default is 48 train and 16
eval images per class (1,440 + 480, a few seconds), drawn from random
streams disjoint from the pre-training images':

  python -m vit22b_pax.tools.make_dataset shapes --variant fewshot \
      --out data/shapes_fewshot

"""

from __future__ import annotations

import io
import math
import sys
from typing import Any

import numpy as np
from PIL import Image
from PIL import ImageDraw
import tqdm

from vit22b_pax.input import data_format
from vit22b_pax.input import hierarchy
from vit22b_pax.input import stats
from vit22b_pax.input import writer

SHAPES = ('circle', 'ring', 'square', 'triangle', 'diamond', 'star', 'cross')
SHAPE_GROUPS = {
    'round shape': ('circle', 'ring'),
    'polygon': ('square', 'triangle', 'diamond', 'cross'),
    'pointy shape': ('triangle', 'diamond', 'star'),
}
COLOURS = {
    'red': (210, 40, 40),
    'orange': (235, 135, 30),
    'yellow': (225, 215, 45),
    'green': (45, 170, 65),
    'blue': (45, 90, 215),
    'purple': (145, 60, 200),
}
COLOUR_GROUPS = {
    'warm colour': ('red', 'orange', 'yellow'),
    'cool colour': ('green', 'blue', 'purple'),
}

DEFAULT_NUM_TRAIN = 8192
DEFAULT_NUM_EVAL = 1024
DEFAULT_IMAGE_SIZE = 48
DEFAULT_TRAIN_SHARDS = 8
DEFAULT_EVAL_SHARDS = 2
DEFAULT_SEED = 0
TRAIN_SPLIT = 'train'
EVAL_SPLIT = 'eval'

MULTILABEL = 'multilabel'  # The pre-training dataset.
FEWSHOT = 'fewshot'  # The single-label transfer dataset.
VARIANTS = (MULTILABEL, FEWSHOT)
# The few-shot variant's shape groups: one shape of each per image.
ROUND_SHAPES = SHAPE_GROUPS['round shape']
ANGULAR_SHAPES = tuple(s for s in SHAPES if s not in ROUND_SHAPES)
# 48 train images per class (25 shots leave room for seeds to differ) and
# 16 eval images per class: 30 classes, ~3 s on 2 cores.
DEFAULT_FEWSHOT_NUM_TRAIN = 30 * 48
DEFAULT_FEWSHOT_NUM_EVAL = 30 * 16
_FEWSHOT_STREAM = 7  # Separates the variant's random streams.

_NUM_OBJECTS_P = (0.35, 0.4, 0.25)  # P(1, 2, 3 shapes)
_SUPERSAMPLE = 4  # Shapes are drawn at 4x and downsampled (antialiasing).
_COLOUR_JITTER = 18
_MARGIN = 0.08  # Keeps shapes inside an 0.875 central crop.


def leaf_name(colour: str, shape: str) -> str:
  return f'{colour} {shape}'


def shape_classes() -> hierarchy.ClassHierarchy:
  """The 60-class hierarchy of the shapes dataset."""
  names = list(SHAPE_GROUPS) + list(COLOUR_GROUPS) + list(SHAPES)
  names += list(COLOURS)
  names += [leaf_name(c, s) for c in COLOURS for s in SHAPES]
  edges = []
  for group, members in list(SHAPE_GROUPS.items()) + list(
      COLOUR_GROUPS.items()):
    edges += [(m, group, None) for m in members]
  for c in COLOURS:
    for s in SHAPES:
      edges += [(leaf_name(c, s), s, None), (leaf_name(c, s), c, None)]
  return hierarchy.ClassHierarchy.from_named_edges(
      names, edges, source='shapes.shape_classes()'
  )


def _polygon(kind: str, cx: float, cy: float, r: float, theta: float):
  """Vertices of a polygonal shape (circumradius r, rotation theta)."""
  if kind == 'square':
    pts = [(r * math.cos(a), r * math.sin(a))
           for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
  elif kind == 'triangle':
    pts = [(1.1 * r * math.cos(a), 1.1 * r * math.sin(a))
           for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
  elif kind == 'diamond':
    pts = [(r, 0.0), (0.0, 0.55 * r), (-r, 0.0), (0.0, -0.55 * r)]
  elif kind == 'star':
    pts = [((r if k % 2 == 0 else 0.42 * r) * math.cos(a),
            (r if k % 2 == 0 else 0.42 * r) * math.sin(a))
           for k, a in ((k, -math.pi / 2 + k * math.pi / 5)
                        for k in range(10))]
  elif kind == 'cross':
    w = 0.32 * r
    pts = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r),
           (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
  else:
    raise ValueError(kind)
  c, s = math.cos(theta), math.sin(theta)
  return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """Grey gradient plus pixel noise, float [S, S, 3]."""
  lo, hi = sorted(rng.uniform(15, 120, size=2))
  angle = rng.uniform(0, 2 * math.pi)
  yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
  t = (xx * math.cos(angle) + yy * math.sin(angle))
  t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
  tint = rng.uniform(-8, 8, size=3)
  base = lo + (hi - lo) * t[..., None] + tint
  return base + rng.normal(0, 6, size=(size, size, 3))


def _place_objects(rng: np.random.Generator, size: int, count: int):
  """Non-overlapping-ish (cx, cy, r) triples inside the margins."""
  placed = []
  for _ in range(count):
    for _ in range(50):
      r = rng.uniform(0.12, 0.2) * size
      lo, hi = _MARGIN * size + r, (1 - _MARGIN) * size - r
      cx, cy = rng.uniform(lo, hi, size=2)
      if all(math.hypot(cx - x, cy - y) >= 0.85 * (r + q)
             for x, y, q in placed):
        placed.append((cx, cy, r))
        break
  return placed


def _render(rng: np.random.Generator, size: int, placements, pick):
  """Draws one shape per placement on a background.

  Args:
    rng: The image's random generator (colour jitter, rotation, background).
    size: Image side length in pixels.
    placements: (cx, cy, r) triples, in drawing order.
    pick: pick(i) -> (colour, shape) of the i-th placement; called just
      before that shape is drawn (it may draw from rng).

  Returns:
    (uint8 [size, size, 3], [(colour, shape), ...]) in drawing order.
  """
  big = size * _SUPERSAMPLE
  layer = Image.new('RGBA', (big, big), (0, 0, 0, 0))
  draw = ImageDraw.Draw(layer)
  objects = []
  for i, (cx, cy, r) in enumerate(placements):
    colour, shape = pick(i)
    rgb = np.clip(
        np.array(COLOURS[colour]) + rng.integers(
            -_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3), 0, 255)
    fill = tuple(int(v) for v in rgb) + (255,)
    theta = rng.uniform(0, 2 * math.pi)
    k = _SUPERSAMPLE
    bx, by, br = cx * k, cy * k, r * k
    if shape == 'circle':
      rr = 0.9 * br
      draw.ellipse([bx - rr, by - rr, bx + rr, by + rr], fill=fill)
    elif shape == 'ring':
      rr = 0.95 * br
      draw.ellipse([bx - rr, by - rr, bx + rr, by + rr], outline=fill,
                   width=max(1, int(0.38 * br)))
    else:
      draw.polygon(_polygon(shape, bx, by, br, theta), fill=fill)
    objects.append((colour, shape))
  shapes_layer = np.asarray(
      layer.resize((size, size), Image.BOX), np.float64
  )
  alpha = shapes_layer[..., 3:] / 255.0
  image = _background(rng, size) * (1 - alpha) + shapes_layer[..., :3] * alpha
  return np.clip(np.round(image), 0, 255).astype(np.uint8), objects


def sample_image(
    rng: np.random.Generator, size: int
) -> tuple[np.ndarray, list[tuple[str, str]]]:
  """One image of the multi-label dataset and its (colour, shape) objects.

  Args:
    rng: The image's random generator.
    size: Image side length in pixels.

  Returns:
    (uint8 [size, size, 3], [(colour, shape), ...]) in drawing order.
  """
  count = int(rng.choice(len(_NUM_OBJECTS_P), p=_NUM_OBJECTS_P)) + 1
  colour_names = list(COLOURS)

  def pick(_):
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = colour_names[int(rng.integers(len(colour_names)))]
    return colour, shape

  return _render(rng, size, _place_objects(rng, size, count), pick)


def encode(image: np.ndarray, image_format: str = 'png') -> bytes:
  buf = io.BytesIO()
  if image_format == 'png':
    Image.fromarray(image).save(buf, format='PNG')
  elif image_format == 'jpeg':
    Image.fromarray(image).save(buf, format='JPEG', quality=92, subsampling=0)
  else:
    raise ValueError(f'image_format must be png or jpeg, got {image_format!r}')
  return buf.getvalue()


def _split_seed(split: str) -> int:
  return {TRAIN_SPLIT: 0, EVAL_SPLIT: 1}.get(split, 2)


def example(
    seed: int, split: str, index: int, size: int,
    classes: hierarchy.ClassHierarchy, image_format: str = 'png',
) -> tuple[bytes, list[int], str]:
  """(encoded image, leaf label ids, image id) of image `index`."""
  rng = np.random.default_rng([seed, _split_seed(split), index])
  image, objects = sample_image(rng, size)
  labels = sorted({classes.id_of(leaf_name(c, s)) for c, s in objects})
  return encode(image, image_format), labels, f'{split}-{index:06d}'


def fewshot_class_name(round_colour: str, angular_colour: str) -> str:
  return f'{round_colour} round + {angular_colour} angular'


def fewshot_colour_pairs() -> list[tuple[str, str]]:
  """(round colour, angular colour) of each few-shot class, in id order."""
  return [(a, b) for a in COLOURS for b in COLOURS if a != b]


def fewshot_classes() -> hierarchy.ClassHierarchy:
  """The 30 flat classes of the few-shot variant."""
  names = [fewshot_class_name(a, b) for a, b in fewshot_colour_pairs()]
  return hierarchy.ClassHierarchy.from_named_edges(
      names, [], source='shapes.fewshot_classes()'
  )


def sample_fewshot_image(
    rng: np.random.Generator, size: int, round_colour: str,
    angular_colour: str,
) -> tuple[np.ndarray, list[tuple[str, str]]]:
  """One image of the few-shot variant: a round and an angular shape.

  Args:
    rng: The image's random generator.
    size: Image side length in pixels.
    round_colour: Colour of the round shape (circle or ring, at random).
    angular_colour: Colour of the angular shape (one of ANGULAR_SHAPES).

  Returns:
    (uint8 [size, size, 3], [(colour, shape), ...]) in drawing order (which
    of the two is drawn last, on top, is random).
  """
  placements = []
  while len(placements) < 2:  # Two always fit; a retry is rare.
    placements = _place_objects(rng, size, 2)
  objects = [
      (round_colour, ROUND_SHAPES[int(rng.integers(len(ROUND_SHAPES)))]),
      (angular_colour,
       ANGULAR_SHAPES[int(rng.integers(len(ANGULAR_SHAPES)))]),
  ]
  order = rng.permutation(2)
  return _render(rng, size, placements, lambda i: objects[order[i]])


def fewshot_example(
    seed: int, split: str, index: int, size: int, image_format: str = 'png',
) -> tuple[bytes, list[int], str]:
  """(encoded image, [class id], image id) of few-shot image `index`.

  Image i shows class i mod 30, so every class has floor or ceil of
  num / 30 images. Its random stream is disjoint from the multi-label
  dataset's (the extra `_FEWSHOT_STREAM` entry), so no image repeats a
  pre-training image.
  """
  pairs = fewshot_colour_pairs()
  label = index % len(pairs)
  rng = np.random.default_rng(
      [seed, _FEWSHOT_STREAM, _split_seed(split), index])
  image, _ = sample_fewshot_image(rng, size, *pairs[label])
  return encode(image, image_format), [label], f'{split}-{index:06d}'


def default_num_examples(variant: str = MULTILABEL) -> tuple[int, int]:
  """(num_train, num_eval) of a variant's default size."""
  _check_variant(variant)
  if variant == FEWSHOT:
    return DEFAULT_FEWSHOT_NUM_TRAIN, DEFAULT_FEWSHOT_NUM_EVAL
  return DEFAULT_NUM_TRAIN, DEFAULT_NUM_EVAL


def _check_variant(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f'variant must be one of {VARIANTS}, got {variant!r}.')


def generator_params(
    num_train: int | None = None,
    num_eval: int | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
    train_shards: int = DEFAULT_TRAIN_SHARDS,
    eval_shards: int = DEFAULT_EVAL_SHARDS,
    image_format: str = 'png',
    variant: str = MULTILABEL,
) -> dict[str, Any]:
  """The parameters recorded in dataset_info.json['generator'].

  None sizes take the variant's defaults (default_num_examples). The
  variant is recorded as the name: 'shapes' or 'shapes_fewshot'.
  """
  default_train, default_eval = default_num_examples(variant)
  return {
      'name': 'shapes' if variant == MULTILABEL else 'shapes_fewshot',
      'num_train': default_train if num_train is None else num_train,
      'num_eval': default_eval if num_eval is None else num_eval,
      'image_size': image_size,
      'seed': seed,
      'train_shards': train_shards,
      'eval_shards': eval_shards,
      'image_format': image_format,
  }


def is_generated(out_dir: str, params: dict[str, Any]) -> bool:
  """Whether out_dir already holds the dataset these params describe."""
  info = data_format.read_info(out_dir)
  if not info or info.get('generator') != params:
    return False
  try:
    data_format.validate_data_dir(
        out_dir, info['num_classes'], splits=(TRAIN_SPLIT, EVAL_SPLIT)
    )
  except ValueError:
    return False
  return True


def chance_accuracy(info: dict[str, Any], split: str) -> float:
  """Accuracy of always predicting the most frequent class of `split`."""
  entry = info['splits'][split]
  return max(entry['label_counts']) / entry['num_examples']


def generate(
    out_dir: str,
    num_train: int | None = None,
    num_eval: int | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
    train_shards: int = DEFAULT_TRAIN_SHARDS,
    eval_shards: int = DEFAULT_EVAL_SHARDS,
    image_format: str = 'png',
    progress: bool = True,
    variant: str = MULTILABEL,
) -> dict[str, Any]:
  """Writes the shapes dataset (or its few-shot variant); returns its info.

  None sizes take the variant's defaults (default_num_examples).
  """
  params = generator_params(num_train, num_eval, image_size, seed,
                            train_shards, eval_shards, image_format, variant)
  if variant == FEWSHOT:
    classes = fewshot_classes()
    if min(params['num_train'], params['num_eval']) < classes.num_classes:
      raise ValueError(
          f'The few-shot variant needs at least {classes.num_classes} train'
          f' and eval images (one per class); got num_train='
          f'{params["num_train"]}, num_eval={params["num_eval"]}.'
      )

    def make(split, i):
      return fewshot_example(seed, split, i, image_size, image_format)
  else:
    classes = shape_classes()

    def make(split, i):
      return example(seed, split, i, image_size, classes, image_format)

  for split, num, shards in (
      (TRAIN_SPLIT, params['num_train'], train_shards),
      (EVAL_SPLIT, params['num_eval'], eval_shards)):
    with writer.SplitWriter(out_dir, split, shards, classes,
                            dataset_name=params['name']) as w:
      for i in _progress(range(num), split, progress):
        w.write(*make(split, i))
      w.finish({'source': 'vit22b_pax.input.shapes'})
  info = data_format.read_info(out_dir)
  info['generator'] = params
  splits = (TRAIN_SPLIT, EVAL_SPLIT)
  if variant == FEWSHOT:
    info['chance_accuracy'] = {s: chance_accuracy(info, s) for s in splits}
  else:
    info['chance_map'] = {
        s: stats.chance_map_from_info(info, s) for s in splits
    }
  data_format.write_info(out_dir, info)
  return info


def _progress(it, desc: str, enabled: bool):
  if not enabled:
    return it
  return tqdm.tqdm(it, desc=desc, unit='img', file=sys.stderr,
                   mininterval=0.5)
