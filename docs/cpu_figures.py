r"""Re-measures every CPU figure that README.md and docs/ quote, with the commands they print.

    python docs/cpu_figures.py                      # all of them: about 45 minutes on 2 cores
    python docs/cpu_figures.py --only quick_start,smoke

Each figure runs its documented command in a scratch folder, exactly as printed beside it (from
the repository root, as the README's commands run, with whatever data `auto` finds there), and
records what it measured in docs/cpu_figures.json: the command, the figures, the date, the machine,
the versions and the data (the fingerprint a run's checkpoint records of its images and labels).
The images the docs show are copied to docs/images/. tests/docs_test.py checks that the README and
docs quote the figures of that file with their date, machine and versions, so a figure can only
change with a new measurement.

Accuracies repeat exactly for the same data, versions, CPU model and core count; wall times depend
on the machine's load. XLA:CPU compiles for the CPU's vector instructions (AVX2, AVX-512) and
splits its work over the cores it may use, so another CPU sums floats in another order, and a
15-epoch run's accuracy moves by up to about a point. Run it on a machine without an accelerator
(or with JAX_PLATFORMS=cpu, as jax's default backend must be the CPU).
"""

import argparse
import csv
import datetime
import json
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

DOCS = pathlib.Path(__file__).resolve().parent
REPO = DOCS.parent
RECORD = DOCS / 'cpu_figures.json'

# name: (command as the docs print it, with W for its scratch workdir; what it yields)
COMMANDS = {
    'quick_start': 'python -m resnet_jax.main --config configs/smoke.py --workdir W',
    'smoke': ('python -m resnet_jax.main --config configs/smoke.py --workdir W '
              '--config.data.train_subset=10000 --config.data.test_subset=2000 '
              '--config.eval_batch_size=500 --config.num_epochs=15 --config.batch_size=128 '
              '--config.optim.learning_rate=0.1'),
    'sweep_tiny': ('python -m resnet_jax.sweep --config configs/sweeps/tiny.py --workdir W '
                   '--config.base.data.train_subset=5000 --config.base.data.test_subset=1000 '
                   '--config.base.eval_batch_size=500 --config.base.num_epochs=8'),
    'compare_smoke': ('python -m resnet_jax.compare --config configs/smoke.py --workdir W '
                      '--seeds=0,1 --torch_threads=1'),
    'compare_narrow': ("python -m resnet_jax.compare --config configs/best.py --workdir W "
                       "--seeds=0,1 --torch_threads=1 --config.model.channels='(16,32,64)' "
                       "--config.model.stem_channels=16 --config.model.name=best_narrow4 "
                       "--config.data.train_subset=2000 --config.data.test_subset=500 "
                       "--config.num_epochs=3 --config.eval_batch_size=500"),
    'benchmark_smoke': ('python -m resnet_jax.benchmark --config configs/smoke.py '
                        '--output docs/benchmarks/cpu_smoke.json'),
    'benchmark_best': ('python -m resnet_jax.benchmark --config configs/best.py '
                       '--config.data.train_subset=2048 --config.data.test_subset=500 '
                       '--config.eval_batch_size=250 --batch_sizes=128 --dtypes=float32 --calls=2 '
                       '--end_to_end_epochs=1 --torch_steps=0 '
                       '--output docs/benchmarks/cpu_best.json'),
    'benchmark_variants': ('python -m resnet_jax.benchmark --config configs/smoke.py '
                           '--variants configs/benchmarks/gpu_variants.py --batch_sizes=128 '
                           '--dtypes=float32 --calls=3 '
                           '--output docs/benchmarks/cpu_smoke_variants.json'),
    # The CPU split into 8 devices: the population rows.
    'benchmark_population': ('XLA_FLAGS=--xla_force_host_platform_device_count=8 '
                             'python -m resnet_jax.benchmark --config configs/smoke.py '
                             '--batch_sizes=64 --dtypes=float32 --calls=5 --torch_steps=0 '
                             '--end_to_end_epochs=0 '
                             '--output docs/benchmarks/cpu8_smoke_population.json'),
    'benchmark_population_best': ('XLA_FLAGS=--xla_force_host_platform_device_count=8 '
                                  'python -m resnet_jax.benchmark --config configs/best.py '
                                  '--config.data.train_subset=2048 --config.data.test_subset=500 '
                                  '--config.eval_batch_size=250 --batch_sizes=16 '
                                  '--dtypes=float32 --calls=2 --torch_steps=0 '
                                  '--end_to_end_epochs=0 '
                                  '--output docs/benchmarks/cpu8_best_population.json'),
    'numerics': ('python -m resnet_jax.benchmark --config configs/smoke.py '
                 '--variants configs/benchmarks/gpu_variants.py --check_numerics '
                 '--output docs/benchmarks/cpu_smoke_numerics.json'),
}


def run(command: str, workdir: pathlib.Path) -> float:
  """Runs a documented command with W replaced (and its leading NAME=value settings in its
  environment); its wall seconds. Stops on failure."""
  args = [sys.executable if a == 'python' else a
          for a in shlex.split(command.replace(' W', f' {workdir}'))]
  env = dict(os.environ)
  while '=' in args[0]:
    name, value = args.pop(0).split('=', 1)
    env[name] = value
  start = time.time()
  result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, check=False)
  if result.returncode:
    sys.exit(f'{command}\nfailed:\n{result.stderr[-3000:]}')
  return time.time() - start


def data_identity(workdir: pathlib.Path) -> str:
  """The data fingerprint recorded in the checkpoint of the (first) run under workdir."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)  # orbax's notes on opening a checkpoint read-only
  run_dir = min(path.parent for path in workdir.rglob('checkpoints'))
  return checkpoints.read_meta(str(run_dir)).run[checkpoints.DATA_KEY]


def training_figures(name: str, scratch: pathlib.Path) -> dict:
  workdir = scratch / name
  wall = run(COMMANDS[name], workdir)
  results = json.loads((workdir / 'results.json').read_text())
  figures = {'final_test_accuracy': round(100 * results['final_test_accuracy'], 2),
             'test_examples': results['test_examples'], 'wall_seconds': round(wall),
             'data_source': results['data_source']}
  if name == 'smoke':
    shutil.copyfile(workdir / 'curves.png', DOCS / 'images' / 'smoke_curves.png')
    shutil.copyfile(workdir / 'confusion.png', DOCS / 'images' / 'smoke_confusion.png')
    run(f'python -m resnet_jax.inspect --workdir {workdir}', scratch / 'unused')
    shutil.copyfile(workdir / 'inspect' / 'gradcam.png', DOCS / 'images' / 'smoke_gradcam.png')
  return figures


def sweep_figures(scratch: pathlib.Path) -> dict:
  workdir = scratch / 'sweep_tiny'
  wall = run(COMMANDS['sweep_tiny'], workdir)
  shutil.copyfile(workdir / 'curves.png', DOCS / 'images' / 'sweep_tiny_curves.png')
  with open(workdir / 'sweep.csv', newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  return {'wall_seconds': round(wall),
          'points': [{key: value for key, value in row.items()
                      if key not in ('point', 'status', 'final_val_accuracy',
                                     'best_val_accuracy', 'best_test_accuracy')}
                     for row in rows]}


def compare_figures(name: str, scratch: pathlib.Path) -> dict:
  workdir = scratch / name
  run(COMMANDS[name], workdir)
  image = {'compare_smoke': 'compare_smoke.png', 'compare_narrow': 'compare_narrow.png'}[name]
  shutil.copyfile(workdir / 'compare.png', DOCS / 'images' / image)
  summary = json.loads((workdir / 'compare.json').read_text())
  keep = ('final', 'final_per_seed', 'wall_seconds', 'images_per_second')
  return {'jax': {key: summary['jax'][key] for key in keep},
          'torch': {key: summary['torch'][key] for key in keep},
          'gap': summary['gap'], 'seed_std': summary['seed_std']}


def benchmark_figures(name: str, scratch: pathlib.Path) -> dict:
  """The benchmark's table (its JSON beside docs/benchmarks.md), or the numerics checks' worst."""
  wall = run(COMMANDS[name], scratch / 'unused')
  output = REPO / COMMANDS[name].split('--output ')[1]
  written = json.loads(output.read_text())
  if name == 'numerics':
    return {'wall_seconds': round(wall), 'passed': all(c['passed'] is not False for c in written),
            'checks': len(written)}
  return {'wall_seconds': round(wall), 'table': written['table']}


MEASURE = {
    'quick_start': lambda scratch: training_figures('quick_start', scratch),
    'smoke': lambda scratch: training_figures('smoke', scratch),
    'sweep_tiny': sweep_figures,
    'compare_smoke': lambda scratch: compare_figures('compare_smoke', scratch),
    'compare_narrow': lambda scratch: compare_figures('compare_narrow', scratch),
    **{name: lambda scratch, name=name: benchmark_figures(name, scratch)
       for name in ('benchmark_smoke', 'benchmark_best', 'benchmark_variants',
                    'benchmark_population', 'benchmark_population_best', 'numerics')},
}


def versions() -> dict:
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import PIL  # pylint: disable=g-import-not-at-top  # Its libjpeg decodes the JPEG copy.
  return {'jax': jax.__version__, 'flax': flax.__version__, 'python': platform.python_version(),
          'pillow': PIL.__version__}


def machine() -> str:
  """The CPU: the cores this process may use, its model and its widest vector instructions."""
  model, flags = platform.processor() or platform.machine(), set()
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      fields = dict(map(str.strip, line.split(':', 1)) for line in f if ':' in line)
    model = ' '.join(fields['model name'].replace('(R)', '').replace('(TM)', '').split())
    flags = set(fields['flags'].split())
  except (OSError, KeyError, ValueError):
    pass
  vector = ('AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else
            platform.machine())
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return f'{cores}-core {model} ({vector})'


def provenance(entry: dict) -> str:
  """How the docs name a figure's measurement: its date, machine and versions."""
  v = entry['versions']
  return (f"{entry['measured']}, {entry['machine']}, jax {v['jax']}, flax {v['flax']}, "
          f"Python {v['python']}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--only', default=','.join(MEASURE), help='comma-separated figure names')
  args = parser.parse_args()
  names = [n for n in args.only.split(',') if n]
  unknown = sorted(set(names) - set(MEASURE))
  if unknown:
    sys.exit(f'error: no figure named {", ".join(unknown)}; the figures: {", ".join(MEASURE)}')
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != 'cpu':
    sys.exit(f'error: these are CPU figures, and jax runs on {jax.default_backend()} here; run '
             'with JAX_PLATFORMS=cpu, or on a machine without an accelerator')
  record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
  with tempfile.TemporaryDirectory(prefix='resnet_jax_figures_') as folder:
    for name in names:
      print(f'{name}: {COMMANDS[name]}', flush=True)
      scratch = pathlib.Path(folder)
      figures = MEASURE[name](scratch)
      record[name] = {'command': COMMANDS[name], 'figures': figures,
                      'measured': datetime.date.today().isoformat(), 'machine': machine(),
                      # The machine's load as the command ended: what its wall time says.
                      'load_average': round(os.getloadavg()[0], 1), 'versions': versions()}
      if (scratch / name).is_dir():
        record[name]['data_fingerprint'] = data_identity(scratch / name)
      print(f'  {json.dumps(figures)}\n  {provenance(record[name])}', flush=True)
      RECORD.write_text(json.dumps(record, indent=2) + '\n')
  print(f'wrote {RECORD}')


if __name__ == '__main__':
  main()
