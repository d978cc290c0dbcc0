"""effnet-data: look at a chest X-ray set before training, and write what to leave out.

    effnet-data report --data-dir ../shared/data/chest_xray [--out /tmp/data_report]
    effnet-data clean  --data-dir ../shared/data/chest_xray [--out /tmp/data_clean]

--data-dir is the raw chest_xray folder (or a parent, or its zip), or a TFDS data dir
holding a prepared chest_xray set. `report` writes report.json and PNG figures; `clean`
writes exclusions.json/.csv (file + reason) and cleaning.json. Nothing in --data-dir is
touched: prepare with data.exclude_list=<out>/exclusions.json to leave the files out.
"""

import argparse
import json
from pathlib import Path
import sys

from effnet_jax.data.eda import cleaning
from effnet_jax.data.eda import exclusions
from effnet_jax.data.eda import hashing
from effnet_jax.data.eda import scan

LEAKAGE_EXIT = 3  # `clean --fail-on-leakage` exits with this when train/val overlaps test


def _add_common(p: argparse.ArgumentParser, default_out: str) -> None:
  p.add_argument('--data-dir', required=True,
                 help='raw chest_xray folder / parent / zip, or a TFDS dir with it prepared')
  p.add_argument('--out', default=default_out, help=f'output folder (default ./{default_out})')
  p.add_argument('--no-progress', action='store_true', help='no progress bar')
  t = cleaning.Thresholds()
  p.add_argument('--near-bits', type=int, default=t.near_bits,
                 help=f'near duplicate: pHash bits apart, of {hashing.PHASH_BITS} (default '
                      f'{t.near_bits})')
  p.add_argument('--min-std', type=float, default=t.min_std,
                 help=f'near-constant below this grayscale std (default {t.min_std})')
  p.add_argument('--min-side', type=int, default=t.min_side, help='too small below (px)')
  p.add_argument('--max-side', type=int, default=t.max_side, help='too large above (px)')
  p.add_argument('--max-aspect', type=float, default=t.max_aspect,
                 help='extreme aspect above this longer/shorter side ratio')
  p.add_argument('--patient-leakage', choices=cleaning.PATIENT_LEAKAGE, default=t.patient_leakage,
                 help='exclude train/val images of patients also in test, or only report them')


def parser() -> argparse.ArgumentParser:
  """The effnet-data argument parser (subcommands report and clean)."""
  p = argparse.ArgumentParser(prog='effnet-data', description=__doc__.split('\n\n')[0])
  sub = p.add_subparsers(dest='command', required=True)
  r = sub.add_parser('report', help='counts, patients, image properties, figures, findings')
  _add_common(r, 'data_report')
  r.add_argument('--exclude-list', help='also count what remains after this exclusion list')
  r.add_argument('--samples', type=int, default=8, help='sample images per class in the grid')
  c = sub.add_parser('clean', help='find duplicates, leakage and bad images; write exclusions')
  _add_common(c, 'data_clean')
  c.add_argument('--fail-on-leakage', action='store_true',
                 help=f'exit with status {LEAKAGE_EXIT} when train/val overlaps test')
  return p


def _thresholds(args) -> cleaning.Thresholds:
  return cleaning.Thresholds(near_bits=args.near_bits, min_std=args.min_std,
                             min_side=args.min_side, max_side=args.max_side,
                             max_aspect=args.max_aspect, patient_leakage=args.patient_leakage)


def report(args) -> dict:
  """Run `effnet-data report`; returns the report dict (also written as report.json)."""
  from effnet_jax.data.eda import figures  # pylint: disable=g-import-not-at-top
  from effnet_jax.data.eda import report as report_lib  # pylint: disable=g-import-not-at-top
  th = _thresholds(args)  # validate flags before a long scan
  listed = exclusions.read(args.exclude_list) if args.exclude_list else None
  inv = scan.scan_any(args.data_dir, samples_per_class=args.samples, progress=not args.no_progress)
  rep = report_lib.build(inv, cleaning.find(inv, th), listed)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  rep['figures'] = figures.draw_all(inv, rep, out)
  (out / 'report.json').write_text(json.dumps(rep, indent=1) + '\n')
  print(report_lib.summary(rep))
  print(f'effnet-data report: wrote {out}/report.json and {", ".join(rep["figures"])}')
  return rep


def clean(args) -> dict:
  """Run `effnet-data clean`; returns the findings (also written as cleaning.json)."""
  th = _thresholds(args)
  inv = scan.scan_any(args.data_dir, progress=not args.no_progress)
  if inv.kind != 'raw':
    print(f'effnet-data clean: {inv.source} is a prepared data set; the list is written, but '
          'prepare again from the raw folder with data.exclude_list to apply it', file=sys.stderr)
  found = cleaning.find(inv, th)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  meta = {'source': inv.source, 'created_by': 'effnet-data clean', 'thresholds': found['thresholds'],
          'counts_before': found['counts_before'], 'counts_after': found['counts_after']}
  json_path = exclusions.write(out / 'exclusions.json', found['excluded'], **meta)
  exclusions.write(out / 'exclusions.csv', found['excluded'])
  (out / 'cleaning.json').write_text(json.dumps({'source': inv.source, **found}, indent=1) + '\n')
  before = sum(sum(v.values()) for v in found['counts_before'].values())
  print(f'{inv.source}: {before:,} images, {found["num_excluded"]} to exclude'
        + ''.join(f'\n  {r}: {n}' for r, n in found['by_reason'].items()))
  for split in found['counts_before']:
    b, a = found['counts_before'][split], found['counts_after'].get(split, {})
    print(f'  {split}: ' + ', '.join(f'{c} {b[c]:,} -> {a.get(c, 0):,}' for c in b))
  banner = cleaning.leakage_banner(found)
  if banner:
    print(banner, file=sys.stderr)
  print(f'effnet-data clean: wrote {json_path}, {out}/exclusions.csv and {out}/cleaning.json\n'
        f'  apply it when preparing: data.exclude_list={json_path.resolve()}')
  return found


def main(argv=None) -> int:
  """Parse `argv` (default sys.argv[1:]) and run the subcommand; returns the exit status."""
  args = parser().parse_args(argv)
  if not Path(args.data_dir).expanduser().exists():
    print(f'effnet-data: --data-dir {args.data_dir}: does not exist; expected the chest_xray '
          'folder ({train,val,test}/{NORMAL,PNEUMONIA}), a parent of it, its zip, or a TFDS '
          'data dir holding it prepared', file=sys.stderr)
    return 2
  try:
    if args.command == 'report':
      report(args)
      return 0
    found = clean(args)
  except (ValueError, FileNotFoundError) as e:  # LayoutError, bad lists: the message names the file
    print(f'effnet-data: {e}', file=sys.stderr)
    return 2
  leaked = found['leakage']['images'] or found['leakage']['patients']
  return LEAKAGE_EXIT if args.fail_on_leakage and leaked else 0


def run() -> None:
  """Console-script entry point (effnet-data)."""
  sys.exit(main())


if __name__ == '__main__':
  run()
