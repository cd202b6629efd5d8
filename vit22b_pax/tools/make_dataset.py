r"""Makes a dataset directory in the vit22b_pax format (data/README.md).

  python -m vit22b_pax.tools.make_dataset shapes --out data/shapes
  python -m vit22b_pax.tools.make_dataset shapes --variant fewshot \
      --out data/shapes_fewshot
  python -m vit22b_pax.tools.make_dataset from-csv --images_dir imgs \
      --labels_csv labels.csv --hierarchy_csv hierarchy.csv --out mydata \
      --split train
  python -m vit22b_pax.tools.make_dataset from-openimages \
      --images_dir oi/train \
      --labels_csv oidv7-train-annotations-human-imagelabels.csv \
      --classes_csv oidv7-class-descriptions.csv \
      --hierarchy_json bbox_labels_600_hierarchy.json --out oi --split train

Bad input stops with `error: <file> row <n>: ...` and exit status 1; with
--skip_bad the bad rows are skipped and the counts reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from vit22b_pax.input import converters
from vit22b_pax.input import data_format
from vit22b_pax.input import hierarchy
from vit22b_pax.input import shapes
from vit22b_pax.input import stats


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m vit22b_pax.tools.make_dataset',
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest='command', required=True)

  p = sub.add_parser('shapes', help='generate the embedded shapes dataset')
  p.add_argument('--variant', choices=shapes.VARIANTS,
                 default=shapes.MULTILABEL,
                 help='multilabel: the pre-training dataset; fewshot: the '
                 'single-label transfer dataset (see data/README.md)')
  p.add_argument('--out', default=None,
                 help='default: data/shapes (data/shapes_fewshot)')
  p.add_argument('--num_train', type=int, default=None,
                 help='default: 8192 (fewshot: 1440)')
  p.add_argument('--num_eval', type=int, default=None,
                 help='default: 1024 (fewshot: 480)')
  p.add_argument('--image_size', type=int,
                 default=shapes.DEFAULT_IMAGE_SIZE)
  p.add_argument('--seed', type=int, default=shapes.DEFAULT_SEED)
  p.add_argument('--train_shards', type=int,
                 default=shapes.DEFAULT_TRAIN_SHARDS)
  p.add_argument('--eval_shards', type=int,
                 default=shapes.DEFAULT_EVAL_SHARDS)
  p.add_argument('--format', choices=('png', 'jpeg'), default='png')
  p.add_argument('--overwrite', action='store_true',
                 help='regenerate even if --out already holds this dataset')

  def common(p):
    p.add_argument('--out', required=True, help='dataset directory')
    p.add_argument('--split', default='train')
    p.add_argument('--num_shards', type=int, default=0,
                   help='0: one shard per ~1024 images')
    p.add_argument('--skip_bad', action='store_true',
                   help='skip and count bad rows instead of failing')
    p.add_argument('--no_progress', action='store_true')

  p = sub.add_parser('from-csv', help='images dir + labels/hierarchy CSVs')
  p.add_argument('--images_dir', required=True)
  p.add_argument('--labels_csv', required=True,
                 help='columns image,labels (names separated by |)')
  p.add_argument('--hierarchy_csv', required=True,
                 help='columns class,parent')
  p.add_argument('--name', default='')
  common(p)

  p = sub.add_parser('from-openimages', help='Open Images layout')
  p.add_argument('--images_dir', required=True)
  p.add_argument('--labels_csv', required=True,
                 help='ImageID,Source,LabelName,Confidence')
  p.add_argument('--classes_csv', required=True,
                 help='LabelName,DisplayName')
  p.add_argument('--hierarchy_json', required=True)
  p.add_argument('--image_ext', default='.jpg')
  common(p)
  return parser


def _report(out: str, split: str, result: converters.ConversionResult):
  print(f'wrote {result.num_written} {split} examples, {result.num_classes}'
        f' classes, to {out}')
  if result.skipped:
    total = sum(result.skipped.values())
    print(f'skipped {total}: ' + json.dumps(result.skipped, sort_keys=True))


def run(args: argparse.Namespace) -> None:
  if args.command == 'shapes':
    fewshot = args.variant == shapes.FEWSHOT
    if args.out is None:
      args.out = 'data/shapes_fewshot' if fewshot else 'data/shapes'
    params = shapes.generator_params(
        args.num_train, args.num_eval, args.image_size, args.seed,
        args.train_shards, args.eval_shards, args.format, args.variant)
    if not args.overwrite and shapes.is_generated(args.out, params):
      print(f'{args.out} already holds this shapes dataset (use --overwrite'
            ' to regenerate).')
    else:
      shapes.generate(args.out, progress=True, variant=args.variant, **{
          k: v for k, v in params.items() if k != 'name'})
    info = data_format.read_info(args.out)
    for split in (shapes.TRAIN_SPLIT, shapes.EVAL_SPLIT):
      print(f'{split}: {info["splits"][split]["num_examples"]} examples')
    if fewshot:
      print(f'classes: {info["num_classes"]} (one label per image); chance'
            ' accuracy (eval, most frequent class):'
            f' {shapes.chance_accuracy(info, shapes.EVAL_SPLIT):.4f}')
    else:
      print(f'classes: {info["num_classes"]}; chance mAP (eval, hierarchy'
            f' expanded): {stats.chance_map(args.out):.4f}')
  elif args.command == 'from-csv':
    result = converters.from_csv(
        args.images_dir, args.labels_csv, args.hierarchy_csv, args.out,
        split=args.split, num_shards=args.num_shards,
        skip_bad=args.skip_bad, dataset_name=args.name,
        progress=not args.no_progress)
    _report(args.out, args.split, result)
  elif args.command == 'from-openimages':
    result = converters.from_openimages(
        args.images_dir, args.labels_csv, args.classes_csv,
        args.hierarchy_json, args.out, split=args.split,
        num_shards=args.num_shards, skip_bad=args.skip_bad,
        image_ext=args.image_ext, progress=not args.no_progress)
    _report(args.out, args.split, result)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    run(args)
  except (converters.ConversionError, hierarchy.HierarchyError,
          ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
