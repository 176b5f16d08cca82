r"""Compiles every shipped config for the Cloud TPU slices docs/tpu.md lists, and writes its table.

    python docs/tpu_figures.py                          # every config on every slice
    python docs/tpu_figures.py --only best,smoke --slices v5litepod-8
    python docs/tpu_figures.py --table                  # docs/tpu.md again from the JSON kept

Each pair runs the command docs/tpu.md prints,
`python -m resnet_jax.compile_check --config configs/<config>.py --topology <slice>
--output docs/tpu/<config>_<slice>.json`, on this machine (libtpu, the [tpu] extra, compiles for
the slice; no TPU is needed), and docs/tpu.md is written from every JSON in docs/tpu/, with the
versions and the machine each was compiled with. A pair whose JSON is there already is kept
unless --force. On 2 CPU cores a best.py check takes minutes.
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys

DOCS = pathlib.Path(__file__).resolve().parent
REPO = DOCS.parent
FOLDER = DOCS / 'tpu'
TABLE = DOCS / 'tpu.md'
CONFIGS = ('smoke', 'best', 'fast', 'resnet18', 'seed001_resnet10', 'seed002_improved',
           'seed003_resnet10_onecycle', 'seed004_resnet24')
# One host of each generation, and a pod slice of several hosts.
SLICES = ('v4-8', 'v5litepod-8', 'v5p-8', 'v6e-8', 'v5litepod-32')


def command(config: str, slice_name: str) -> list[str]:
  return ['python', '-m', 'resnet_jax.compile_check', '--config', f'configs/{config}.py',
          '--topology', slice_name, '--output', f'docs/tpu/{config}_{slice_name}.json']


def check(config: str, slice_name: str) -> None:
  """Runs one check; a run that does not fit writes its JSON too (fits: false), and one that
  ends without it (the compiler crashed) is recorded as failed, with its last line."""
  args = command(config, slice_name)
  print(' '.join(args), flush=True)
  path = FOLDER / f'{config}_{slice_name}.json'
  path.unlink(missing_ok=True)
  result = subprocess.run([sys.executable, *args[1:]], cwd=REPO, capture_output=True, text=True,
                          check=False)
  if path.exists():
    record = json.loads(path.read_text())
  else:
    lines = [line for line in result.stderr.splitlines() if 'so far' not in line] or ['?']
    crash = next((line for line in lines if line.startswith('Fatal Python error')), lines[-1])
    record = {'config': f'configs/{config}.py', 'topology': slice_name,
              'failed': f'exit status {result.returncode}: {crash}'}
    print(f'failed: {record["failed"]}', flush=True)
  record['machine'] = f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores'
  path.write_text(json.dumps(record, indent=2))


def _mb(count) -> str:
  return '-' if count is None else f'{count / 1e6:,.0f}'


def _bytes(count: int) -> str:
  return f'{count / 1e6:,.1f} MB' if count >= 1e5 else f'{count / 1e3:,.1f} kB'


def row(record: dict) -> str:
  if 'failed' in record:
    name = record['config'].removeprefix('configs/').removesuffix('.py')
    return f"| {name} | {record['topology']} | failed to compile: {record['failed']} |" + ' |' * 9
  train = [c for c in record['calls'] if c['kind'] == 'train']
  largest = max(record['calls'], key=lambda c: c['bytes_per_chip'])
  rate, epoch = record['images_per_second_estimate'], record['epoch_seconds_estimate']
  idle = record.get('utilisation_estimate')
  members = record.get('members', 1)
  # A population: its members at once, each of the batch; images/s are member-images/s.
  name = record['config'].removeprefix('configs/').removesuffix('.py')
  batch = record['batch_size']
  if members > 1:
    name, batch = f"{name}, {record['seeds']} seeds", f'{members} runs x {batch}'
  return (f"| {name} "
          f"| {record['topology']} | {record['chips']} x {record['device_kind']}, "
          f"{record['hosts']} host{'s' if record['hosts'] > 1 else ''} "
          f"| {batch} ({record['images_per_chip']} a chip) "
          f"| {'yes' if record['fits'] else '**no**'} | {_mb(largest['bytes_per_chip'])} "
          f"| {'-' if rate is None else f'{rate:,.0f}'} "
          f"| {'-' if epoch is None else f'{epoch:.3g}'} "
          f"| {'-' if idle is None else f'{idle:.0%}'} "
          f"| {record['all_reduces_per_step']} ({_bytes(record['all_reduce_bytes_per_step'])}) "
          f"| {sum(c['compile_seconds'] for c in record['calls']):.0f} "
          f"| {', '.join(str(c['steps']) + 'x' + str(c['batch']) for c in train)} |")


def write_table() -> None:
  records = [json.loads(path.read_text()) for path in sorted(FOLDER.glob('*.json'))]
  order = {name: i for i, name in enumerate(CONFIGS)}
  slices = {name: i for i, name in enumerate(SLICES)}
  records.sort(key=lambda r: (order.get(r['config'].split('/')[-1][:-3], 99),
                              slices.get(r['topology'], 99), r.get('members', 1)))
  versions = sorted({', '.join(f'{k} {v}' for k, v in r['versions'].items()
                               if k in ('python', 'jax', 'jaxlib', 'libtpu', 'flax'))
                     for r in records if 'versions' in r})
  machines = sorted({r.get('machine', '?') for r in records})
  header = ('| config | slice | chips | batch | fits | MB a chip (largest call) '
            '| images/s (estimate) | epoch s (estimate) | of peak (estimate) '
            '| all-reduces a step | compile s | train calls (steps x batch) |')
  lines = [header, '|' + '---|' * 12] + [row(r) for r in records]
  text = TABLE.read_text()
  start, end = '<!-- table: docs/tpu_figures.py -->', '<!-- end of table -->'
  before, rest = text.split(start, 1)
  after = rest.split(end, 1)[1]
  made = (f'{start}\n' + '\n'.join(lines) + '\n\nCompiled with ' + '; '.join(versions)
          + f' on {", ".join(machines)}.\n{end}')
  TABLE.write_text(before + made + after)
  print(f'wrote {TABLE} ({len(records)} checks)')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--only', default=','.join(CONFIGS), help='configs, comma-separated')
  parser.add_argument('--slices', default=','.join(SLICES), help='slices, comma-separated')
  parser.add_argument('--force', action='store_true', help='check again pairs already in docs/tpu')
  parser.add_argument('--table', action='store_true', help='only write docs/tpu.md again')
  args = parser.parse_args()
  FOLDER.mkdir(exist_ok=True)
  if not args.table:
    for config in args.only.split(','):
      for slice_name in args.slices.split(','):
        if args.force or not (FOLDER / f'{config}_{slice_name}.json').exists():
          check(config, slice_name)
  write_table()


if __name__ == '__main__':
  main()
