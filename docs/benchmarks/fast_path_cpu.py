r"""The accelerator fast path's CPU measurements (docs/benchmarks.md): a table and a JSON.

    python docs/benchmarks/fast_path_cpu.py --output docs/benchmarks/cpu_fast_path.json

What a CPU can show of costs that only an accelerator makes large, each on today's code:
1. parameter-sized copies in the compiled scan of seed 000's step, with and without Lookahead;
2. the train call shapes a run compiles on an accelerator, batch 128 and 512 on 50,000 images;
3. collectives in one training step on 2 simulated devices, BatchNorm statistics global and
   per device;
4. the bytes the resident CIFAR-10 sets take on a device that tiles as a TPU does, as
   [N, 32, 32, 3] and as lane-dense rows;
5. compile seconds of a run's first call with the persistent cache cold, then warm (two runs of
   best.py's network on 256 real images, one epoch, in a fresh cache folder);
6. the benchmark's end-to-end row against its steady-state row (configs/smoke.py, real images).
Takes about 6 minutes on a 2-core CPU.
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO)]

import jax  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from resnet_jax import defaults  # noqa: E402  pylint: disable=g-import-not-at-top
from resnet_jax import models  # noqa: E402  pylint: disable=g-import-not-at-top
from resnet_jax import platforms  # noqa: E402  pylint: disable=g-import-not-at-top
from resnet_jax.bench import hlo  # noqa: E402  pylint: disable=g-import-not-at-top
from resnet_jax.models import optim  # noqa: E402  pylint: disable=g-import-not-at-top
from resnet_jax.reporting import report  # noqa: E402  pylint: disable=g-import-not-at-top
from resnet_jax.training import feed  # noqa: E402  pylint: disable=g-import-not-at-top
from resnet_jax.training import steps  # noqa: E402  pylint: disable=g-import-not-at-top


def lookahead_copies() -> dict:
  """Parameter-sized copies (and their bytes) in a 4-step lax.scan of seed 000's step, batch 8."""
  counts = {}
  for k in (5, 0):
    config = defaults.base_config()
    config.model = models.preset('best')
    config.optim.lookahead_k = k
    optimizer = optim.create_optimizer(config, 10)
    ctx = steps.StepContext(model=models.build_model(config.model), tx=optimizer.tx,
                            learning_rate=optimizer.learning_rate, config=config,
                            mean=(0.5,) * 3, std=(0.25,) * 3,
                            platform=platforms.Platform.of(jax.devices()))
    state = jax.eval_shape(lambda ctx=ctx: steps.create_train_state(ctx, 32))
    images, labels = jax.numpy.zeros((8, 32, 32, 3), np.uint8), jax.numpy.zeros(8, np.int32)
    call = lambda s, ctx=ctx: jax.lax.scan(
        lambda c, _: (steps.train_step(c, images, labels, ctx)[0], None), s, None, length=4)[0]
    text = jax.jit(call, donate_argnums=0).lower(state).compile().as_text()
    kernels = [leaf.shape for leaf in jax.tree.leaves(state.params) if leaf.ndim > 1]
    counts[f'lookahead_k={k}'] = hlo.summarize(text, parameter_shapes=kernels)[
        'parameter_sized_copies']
  return counts


def train_shapes() -> dict:
  """Distinct (steps, batch) train call shapes of an epoch of 50,000 images on an accelerator."""
  shapes = {}
  for batch_size in (128, 512):
    config = defaults.base_config()
    config.batch_size = batch_size
    gpu = platforms.Platform(name='gpu', device_kind='GPU', device_count=1, process_count=1,
                             memory_bytes=None)
    config.steps_per_call = feed.default_steps_per_call(50_000 // batch_size, gpu)
    plan = feed.epoch_plan(config, 50_000, gpu)
    shapes[f'batch {batch_size}'] = sorted({(count, size) for _, count, size in plan.calls(0)})
  return shapes


_COLLECTIVES = '''
import sys, tempfile
sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']
from conftest import synthetic_config
from resnet_jax.bench import hlo
from resnet_jax.training import feed, runs
for statistics in ('global', 'per_device'):
  config = synthetic_config(**{'batch_statistics': statistics, 'steps_per_call': 1})
  run = runs.setup_run(config, tempfile.mkdtemp())
  train_feed = feed.create_feed(config, run.plan, run.mesh, run.splits.train_images,
                                run.splits.train_labels, resident=True)
  counts = hlo.summarize(feed.jit_train_steps(run.ctx, run.mesh, resident=True).lower(
      run.abstract_state(), *train_feed.batch_specs(1, config.batch_size)).compile().as_text())
  print(statistics, counts['all-reduce'])
'''


def collectives() -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=2')
  out = subprocess.run([sys.executable, '-c', _COLLECTIVES, str(REPO)], env=env, cwd=REPO,
                       capture_output=True, text=True, check=True).stdout
  return {name: int(count) for name, count in (line.split() for line in out.splitlines())}


def resident_bytes() -> dict:
  images = {'train': 50_000, 'test': 10_000}
  as_images = sum(feed.device_bytes((n, 32, 32, 3), np.uint8) for n in images.values())
  as_rows = sum(feed.device_bytes((n, 3072), np.uint8) for n in images.values())
  return {'[N, 32, 32, 3] (MB)': as_images / 1e6, 'lane-dense [N, 3072] (MB)': as_rows / 1e6}


def _run_main(workdir: str, cache: str) -> dict:
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env.update(RESNET_JAX_COMPILATION_CACHE=cache, JAX_PLATFORMS='cpu')
  subprocess.run([sys.executable, '-m', 'resnet_jax.main', '--config=configs/best.py',
                  f'--workdir={workdir}', '--config.data.train_subset=256',
                  '--config.data.test_subset=256', '--config.num_epochs=1',
                  '--config.eval_batch_size=256'], env=env, cwd=REPO, check=True,
                 capture_output=True)
  return json.loads((pathlib.Path(workdir) / report.RESULTS_FILE).read_text())


def compile_cache() -> dict:
  with tempfile.TemporaryDirectory() as folder:
    cold = _run_main(f'{folder}/cold', f'{folder}/cache')
    warm = _run_main(f'{folder}/warm', f'{folder}/cache')
  return {'cold (s)': cold['compile_seconds'], 'warm (s)': warm['compile_seconds']}


def end_to_end() -> dict:
  with tempfile.TemporaryDirectory() as folder:
    output = f'{folder}/bench.json'
    subprocess.run([sys.executable, '-m', 'resnet_jax.benchmark', '--config=configs/smoke.py',
                    '--config.data.train_subset=5000', '--batch_sizes=128', '--dtypes=float32',
                    '--torch_steps=0', '--calls=20', '--end_to_end_epochs=3',
                    f'--output={output}'], cwd=REPO, check=True, capture_output=True,
                   env=dict(os.environ, JAX_PLATFORMS='cpu'))
    rows = json.loads(pathlib.Path(output).read_text())['results']
  steady, whole = rows[0], rows[-1]
  return {'steady state (img/s)': steady['train_images_per_second'],
          'end to end (img/s)': whole['train_images_per_second'],
          'ratio': whole['of_steady_state']}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--output', default='cpu_fast_path.json')
  args = parser.parse_args()
  measured = {
      '1. parameter-sized copies, seed 000 step': lookahead_copies(),
      '2. train call shapes (steps, batch), 50,000 images': train_shapes(),
      '3. all-reduces a step, 2 devices': collectives(),
      '4. resident CIFAR-10 train + test, TPU tiling': resident_bytes(),
      '5. first call compile, persistent cache': compile_cache(),
      '6. smoke, batch 128, 5,000 images': end_to_end(),
  }
  for name, values in measured.items():
    print(f'{name}: ' + ', '.join(f'{key} {value:.3g}' if isinstance(value, float)
                                  else f'{key} {value}' for key, value in values.items()))
  result = {'machine': f'{os.cpu_count()}-core CPU', 'versions': report.versions(),
            'python': platform.python_version(), 'command': ' '.join(sys.argv), **measured}
  pathlib.Path(args.output).write_text(json.dumps(result, indent=2, default=str))
  print(f'wrote {args.output}')


if __name__ == '__main__':
  main()
