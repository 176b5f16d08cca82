"""Training and evaluation throughput of a config, the way the training command runs it.

    python -m resnet_jax.benchmark --config configs/best.py --output bench.json

For each batch size and compute dtype: compile time; steady-state training throughput end to end
on the device-resident path (batch gather, augmentation and mixup as the config sets them, forward,
backward, the optax chain with Lookahead, several steps per compiled call); evaluation throughput;
FLOPs per training image counted by XLA and the model FLOPs utilisation they give against the
device's peak; and the device memory the compiled training call needs. The steps per call are
the training plan's. Prints a table and writes JSON.
"""

import dataclasses
import functools
import json
import time
from typing import Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
import numpy as np

from resnet_jax import cli
from resnet_jax import errors
from resnet_jax import evaluator
from resnet_jax import feed
from resnet_jax import input_pipeline
from resnet_jax import report
from resnet_jax import runs
from resnet_jax import writers

# Dense peak FLOP/s by device kind and compute dtype (vendor datasheets; float32 on NVIDIA GPUs
# means TF32 tensor cores, which XLA uses for float32 convolutions by default).
PEAK_FLOPS = {
    'NVIDIA H100 80GB HBM3': {'bfloat16': 989e12, 'float32': 494e12},
    'NVIDIA H100': {'bfloat16': 989e12, 'float32': 494e12},
    'NVIDIA H200': {'bfloat16': 989e12, 'float32': 494e12},
    'NVIDIA A100-SXM4-80GB': {'bfloat16': 312e12, 'float32': 156e12},
    'NVIDIA A100-SXM4-40GB': {'bfloat16': 312e12, 'float32': 156e12},
    'TPU v4': {'bfloat16': 275e12, 'float32': 275e12},
    'TPU v5 lite': {'bfloat16': 197e12, 'float32': 197e12},
    'TPU v5': {'bfloat16': 459e12, 'float32': 459e12},
    'TPU v6 lite': {'bfloat16': 918e12, 'float32': 918e12},
}


@dataclasses.dataclass
class Measurement:
  batch_size: int
  dtype: str
  steps_per_call: int
  compile_seconds: float
  train_images_per_second: float
  eval_images_per_second: float
  train_gflop_per_image: Optional[float]
  mfu: Optional[float]
  memory_gib: Optional[float]


def peak_flops(device_kind: str, dtype: str) -> Optional[float]:
  return PEAK_FLOPS.get(device_kind, {}).get(dtype)


def _flops(compiled) -> Optional[float]:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get('flops')
  return float(flops) if flops and flops > 0 else None


def memory_gib(compiled) -> Optional[float]:
  """Device memory a compiled call needs: arguments, outputs and temporaries, less donated buffers.

  From XLA's memory analysis of the executable, so each configuration gets its own figure (the
  runtime's peak_bytes_in_use counter never resets: it would report the largest so far).
  """
  stats = compiled.memory_analysis()
  if isinstance(stats, (list, tuple)):  # older jax: one per computation
    stats = stats[0] if stats else None
  if stats is None:
    return None
  used = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
          - getattr(stats, 'alias_size_in_bytes', 0))
  return used / 2**30


def _timed(fn, repeats: int) -> float:
  """Seconds for `repeats` calls of fn, which returns something to block on."""
  start = time.perf_counter()
  out = None
  for _ in range(repeats):
    out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - start


def measure(config: ml_collections.ConfigDict, splits, *, calls: int, warmup_calls: int = 2,
            eval_repeats: int = 3) -> Measurement:
  """Measures one configuration as training runs it.

  Batch size, dtype and steps per compiled call are config.batch_size, config.model.dtype and
  the training plan's (`feed.epoch_plan`: config.steps_per_call, 0 = as training picks it).
  Timed is the first call of an epoch, the training set on the devices.
  """
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.placement = 'device'
  run = runs.setup_run(config, workdir='', splits=splits)
  mesh, ctx, plan = run.mesh, run.ctx, run.plan
  batch_sharding = feed.batch_sharded(mesh)
  _, steps, batch_size = plan.calls(0)[0]

  state = feed.initial_state(ctx, config.data.image_size, mesh)
  train_images, train_labels = feed.put_train_set(splits.train_images, splits.train_labels, mesh)
  batches = np.stack(plan.epoch_batches(epoch=0)[:steps])
  indices = feed.put_global(batches.astype(np.int32), batch_sharding)

  run_steps = feed.jit_train_steps(ctx, mesh, resident=True)
  start = time.perf_counter()
  compiled = run_steps.lower(state, indices, train_images, train_labels).compile()
  compile_seconds = time.perf_counter() - start
  # XLA's cost analysis counts a loop body once, whatever its trip count, so a call of several
  # steps (a lax.scan off the CPU) would count one of them: the FLOPs are a one-step call's.
  one_step = compiled if steps == 1 else run_steps.lower(
      state, feed.put_global(batches[:1].astype(np.int32), batch_sharding), train_images,
      train_labels).compile()
  flops_per_step = _flops(one_step)

  holder = {'state': state}

  def one_call():
    holder['state'], result = compiled(holder['state'], indices, train_images, train_labels)
    return result

  _timed(one_call, warmup_calls)
  train_rate = calls * steps * batch_size / _timed(one_call, calls)

  eval_set = evaluator.make_eval_set(splits.test_images, splits.test_labels,
                                     config.eval_batch_size, mesh)
  variables = holder['state'].eval_variables()
  evaluate_compiled = evaluator.compile_evaluate(ctx, mesh).lower(
      variables, *eval_set.arrays()).compile()
  call_eval = lambda: evaluate_compiled(variables, *eval_set.arrays())
  _timed(call_eval, 1)
  eval_rate = eval_repeats * eval_set.size / _timed(call_eval, eval_repeats)

  gflop_per_image = None if flops_per_step is None else flops_per_step / batch_size / 1e9
  peak = peak_flops(jax.devices()[0].device_kind, config.model.dtype)
  mfu = None
  if gflop_per_image is not None and peak:
    mfu = gflop_per_image * 1e9 * train_rate / (peak * jax.device_count())
  return Measurement(batch_size=batch_size, dtype=config.model.dtype, steps_per_call=steps,
                     compile_seconds=compile_seconds, train_images_per_second=train_rate,
                     eval_images_per_second=eval_rate, train_gflop_per_image=gflop_per_image,
                     mfu=mfu, memory_gib=memory_gib(compiled))


def format_table(rows: Sequence[Measurement]) -> str:
  header = ('| batch | dtype | steps/call | compile s | train img/s | eval img/s '
            '| GFLOP/img | MFU | memory GiB |')
  lines = [header, '|' + '---|' * 9]
  fmt = lambda value, spec: '-' if value is None else format(value, spec)
  for r in rows:
    lines.append(
        f'| {r.batch_size} | {r.dtype} | {r.steps_per_call} | {r.compile_seconds:.1f} | '
        f'{r.train_images_per_second:,.0f} | {r.eval_images_per_second:,.0f} | '
        f'{fmt(r.train_gflop_per_image, ".2f")} | {fmt(r.mfu, ".1%")} | '
        f'{fmt(r.memory_gib, ".2f")} |')
  return '\n'.join(lines)


def run_benchmark(config: ml_collections.ConfigDict, batch_sizes: Sequence[int],
                  dtypes: Sequence[str], calls: int) -> dict:
  """Measures every (batch size, dtype) pair; returns what the JSON file holds."""
  splits = input_pipeline.load_splits(config.data, config.seed, config.model.num_classes)
  rows = []
  for dtype in dtypes:
    for batch_size in batch_sizes:
      variant = config.copy_and_resolve_references()
      variant.batch_size = batch_size
      variant.model.dtype = dtype
      rows.append(measure(variant, splits, calls=calls))
      logging.info('%s', rows[-1])
  device = jax.devices()[0]
  return {
      'model': config.model.name,
      'data_source': splits.source,
      'device_kind': device.device_kind,
      'platform': device.platform,
      'device_count': jax.device_count(),
      'versions': report.versions(),
      'augment': config.augment.to_dict(),
      'results': [dataclasses.asdict(r) for r in rows],
      'table': format_table(rows),
  }


_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['128', '512'], 'Global batch sizes.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
_STEPS_PER_CALL = flags.DEFINE_integer(
    'steps_per_call', 0, 'Steps fused in one compiled call (sets config.steps_per_call); 0 = '
    'as training picks them for this config and data size.')
_CALLS = flags.DEFINE_integer('calls', 5, 'Timed calls after two warm-up calls.')
_OUTPUT = flags.DEFINE_string('output', 'benchmark.json', 'Where the JSON goes.')


def _main(argv):
  del argv
  config = cli.CONFIG.value
  writers.check_writable(_OUTPUT.value, '--output', is_file=True)
  try:
    batch_sizes = [int(b) for b in _BATCH_SIZES.value]
  except ValueError as e:
    raise errors.UserError(f'--batch_sizes must be integers, e.g. 128,512 ({e})') from e
  if _STEPS_PER_CALL.value:
    config.steps_per_call = _STEPS_PER_CALL.value
  result = run_benchmark(config, batch_sizes, _DTYPES.value, _CALLS.value)
  with open(_OUTPUT.value, 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2)
  print(f'{result["model"]} on {result["device_count"]} x {result["device_kind"]} '
        f'({result["data_source"]})')
  print(result['table'])
  print(f'wrote {_OUTPUT.value}')


def main(argv):
  errors.exit_on_user_error(_main, argv)


if __name__ == '__main__':
  app.run(main, flags_parser=functools.partial(cli.parse_flags, require_workdir=False))
