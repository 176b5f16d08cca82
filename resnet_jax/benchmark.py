"""Training throughput of a config and of its variants, in one table and one JSON.

    python -m resnet_jax.benchmark --config configs/best.py --output bench.json
    python -m resnet_jax.benchmark --config configs/best.py \
        --variants configs/benchmarks/gpu_variants.py --output bench.json

Each variant (`resnet_jax.bench.variants`; the config alone without --variants) is measured
(`throughput.measure`) at each batch size and compute dtype of the grid; the first variant also
counts FLOPs (which give every row its model FLOPs utilisation) and times evaluation. Variants
that set environment variables (XLA_FLAGS take effect only in a fresh process) run first, each
in a fresh process of this command restricted to it, before this process takes the device; the
others run here; a PyTorch baseline of the same model (`torch_baseline`) last, where torch is
importable. Then the end-to-end row (`throughput.measure_end_to_end`): a short whole run of the
config as given, timed over wall time, with its steps, its wall and its ratio to the
steady-state row; its training's lines go to the log file, not among the rows. Then, on
several devices, the population rows (`throughput.measure_population`): K runs of each batch
size trained at once in one program, one a group of devices, against one run of K times that
batch on the same devices, with their ratio (K: as many as the devices hold, or
--population_members). The JSON is
rewritten after every variant, so that a run cut short keeps what it measured; the fastest JAX
row of each batch size and dtype is marked, and each PyTorch row shows that row's speed-up over
it. `--check_numerics` instead trains one epoch of each variant
on this machine against the config alone (`variants.check_numerics`).
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from typing import Callable, Optional, Sequence

from absl import flags
from absl import logging
import jax
import ml_collections

from resnet_jax import cli
from resnet_jax import console_logs
from resnet_jax import errors
from resnet_jax import files
from resnet_jax import platforms
from resnet_jax.bench import throughput
from resnet_jax.bench import variants as variants_lib
from resnet_jax.bench.throughput import Measurement
from resnet_jax.data import input_pipeline
from resnet_jax.pytorch import torch_baseline
from resnet_jax.reporting import report

# What the JSON says of the devices measured.
DEVICE_KEYS = ('device_kind', 'platform', 'device_count')
# Set in a variant's own process (`run_child`): the variants' environment is its own already.
CHILD_ENV = 'RESNET_JAX_BENCHMARK_CHILD'



@dataclasses.dataclass(frozen=True)
class Options:
  """What a benchmark run measures.

  Attributes:
    batch_sizes, dtypes: the grid every variant is measured on (a variant overriding
      batch_size or model.dtype is measured once per distinct pair it gives).
    calls: timed calls after two warm-up calls.
    variants: in their file's order; the first also counts FLOPs and times evaluation.
    extras: False: no variant counts FLOPs or times evaluation (the parent run does).
    env_applied: the variants' environment is this process's already (a child run).
    torch_steps: PyTorch steps timed per mode (0: no PyTorch baseline).
    torch_modes: torch_baseline's modes.
    argv: the command line a child run repeats (with its own flags after it).
    end_to_end_epochs: epochs of the end-to-end row, timed after a first (compiling) one, for
      each batch size and dtype of the config as given (0: none).
    population_members: members of the population rows, for each batch size and dtype (0: as
      many as the devices hold in one program, none on one device or for a config that cannot
      train as a population; 1: none).
  """
  batch_sizes: Sequence[int] = (128, 512)
  dtypes: Sequence[str] = ('float32', 'bfloat16')
  calls: int = 5
  variants: Sequence[variants_lib.Variant] = (variants_lib.DEFAULT,)
  extras: bool = True
  env_applied: bool = False
  torch_steps: int = 0
  torch_modes: Sequence[str] = (torch_baseline.EAGER, torch_baseline.COMPILED)
  argv: Sequence[str] = ()
  end_to_end_epochs: int = 0
  population_members: int = 1


def grid_configs(config: ml_collections.ConfigDict, variant: variants_lib.Variant,
                 options: Options) -> list[ml_collections.ConfigDict]:
  """The variant's configs on the grid: one per distinct (dtype, batch size) it gives."""
  configs, seen = [], set()
  for dtype in options.dtypes:
    for batch_size in options.batch_sizes:
      cell = config.copy_and_resolve_references()
      cell.batch_size, cell.model.dtype = batch_size, dtype
      cell = variants_lib.apply(cell, variant)
      if (cell.model.dtype, cell.batch_size) not in seen:
        seen.add((cell.model.dtype, cell.batch_size))
        configs.append(cell)
  return configs


def _failed(config: ml_collections.ConfigDict, name: str, error: str) -> Measurement:
  return Measurement(config.batch_size, config.model.dtype, config.steps_per_call, None, None,
                     None, None, None, None, variant=name, error=error)


def measure_variant(config: ml_collections.ConfigDict, splits, variant: variants_lib.Variant,
                    options: Options, extras: bool) -> list[Measurement]:
  """The variant's rows in this process; a failure other than a user's mistake is its row's."""
  rows = []
  for cell in grid_configs(config, variant, options):
    try:
      with console_logs.phase(f'measuring {variant.name}, batch {cell.batch_size}, '
                              f'{cell.model.dtype}'):
        row = throughput.measure(cell, splits, calls=options.calls,
                                 eval_repeats=3 if extras else 0, count_flops=extras)
      rows.append(dataclasses.replace(row, variant=variant.name))
    except errors.UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # e.g. out of memory: the next runs.
      rows.append(_failed(cell, variant.name, errors.one_line(e)))
    log_row(rows[-1])
  return rows


def log_row(row: Measurement) -> None:
  """A measured row as the table shows it."""
  logging.info('%s', format_table([row]).splitlines()[-1])


def run_child(config: ml_collections.ConfigDict, variant: variants_lib.Variant,
              options: Options, extras: bool) -> tuple[list[Measurement], Optional[dict]]:
  """The variant's rows and device (`device_info`), measured by this command in a fresh
  process with the variant's environment; on its failure, rows saying so and no device."""
  with tempfile.TemporaryDirectory() as folder:
    output = os.path.join(folder, 'child.json')
    command = [sys.executable, '-m', 'resnet_jax.benchmark', *options.argv,
               f'--only_variants={variant.name}', f'--extras={extras}', '--torch_steps=0',
               f'--output={output}']
    env = dict(variants_lib.environment(variant, os.environ), **{CHILD_ENV: '1'})
    with console_logs.phase(f'measuring {variant.name} in its own process (its environment)'):
      result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode == 0:
      with open(output, encoding='utf-8') as f:
        written = json.load(f)
      return ([Measurement(**row) for row in written['results']],
              {key: written[key] for key in DEVICE_KEYS})
  lines = result.stderr.strip().splitlines() or [f'exit status {result.returncode}']
  logging.warning('variant %s failed:\n%s', variant.name, '\n'.join(lines[-20:]))
  error = f'its process failed: {lines[-1][:300]}'
  return [_failed(cell, variant.name, error)
          for cell in grid_configs(config, variant, options)], None


def population_rows(cell: ml_collections.ConfigDict, splits,
                    options: Options) -> list[Measurement]:
  """The population row of a batch size and dtype, and its one run's (none on one device)."""
  members = options.population_members or throughput.population_members(cell)
  if members == 1:
    return []
  with console_logs.phase(f'population: {members} runs of batch {cell.batch_size} at once '
                          f'against one run of batch {members * cell.batch_size}, '
                          f'{cell.model.dtype}'):
    try:
      rows = throughput.measure_population(cell, splits, members=members, calls=options.calls)
    except errors.UserError as e:
      if options.population_members:
        raise
      # Unasked for: a config that cannot train as a population has no such rows.
      logging.warning('no population rows: %s', e)
      return []
    except Exception as e:  # pylint: disable=broad-except  # e.g. out of memory: the next runs.
      rows = [dataclasses.replace(_failed(cell, throughput.POPULATION, errors.one_line(e)),
                                  members=members)]
  for row in rows:
    log_row(row)
  return rows


def torch_rows(config: ml_collections.ConfigDict, options: Options,
               groups: Sequence[tuple[str, int]]) -> list[Measurement]:
  """The PyTorch baseline at each (dtype, batch size) the JAX rows have."""
  rows = []
  for dtype, batch_size in groups:
    cell = config.copy_and_resolve_references()
    cell.batch_size, cell.model.dtype = batch_size, dtype
    with console_logs.phase(f'timing PyTorch ({", ".join(options.torch_modes)}), batch '
                            f'{batch_size}, {dtype}'):
      measured = torch_baseline.torch_baseline(cell, batch_size, dtype, steps=options.torch_steps,
                                               modes=options.torch_modes)
    for r in measured:
      rows.append(Measurement(batch_size, dtype, 1, r.compile_seconds, r.images_per_second,
                              None, None, None, r.memory_gib, variant=f'pytorch {r.mode}',
                              placement='synthetic', framework='torch', error=r.error))
      log_row(rows[-1])
  return rows


def finish(rows: Sequence[Measurement], device_kind: str,
           device_count: int) -> list[Measurement]:
  """Rows ordered by dtype and batch size, FLOPs and MFU filled in, the fastest marked.

  A group's FLOPs per image are those its first variant counted: the model's FLOPs, which
  variants do not change (MFU is the model's FLOPs over the time taken).
  """
  finished = []
  # A population row and its one run's are a pair of their own, after the others.
  paired = [r for r in rows if r.variant in (throughput.POPULATION, throughput.ONE_RUN)]
  rows = [r for r in rows if r not in paired]
  groups = sorted({(r.dtype, r.batch_size) for r in rows},
                  key=lambda g: (g[0] != 'float32', g[1]))
  for dtype, batch_size in groups:
    group = [r for r in rows if (r.dtype, r.batch_size) == (dtype, batch_size)]
    jax_rows = [r for r in group if r.framework == 'jax' and r.train_images_per_second
                and r.variant != throughput.END_TO_END]
    steady = jax_rows[0].train_images_per_second if jax_rows else None  # the config as given
    gflop = next((r.train_gflop_per_image for r in jax_rows if r.train_gflop_per_image), None)
    peak = throughput.peak_flops(device_kind, dtype)
    best = max((r.train_images_per_second for r in jax_rows), default=None)
    for r in group:
      rate = r.train_images_per_second
      if r.variant == throughput.END_TO_END:
        r = dataclasses.replace(r, of_steady_state=rate / steady if rate and steady else None)
      elif r.framework == 'jax':
        r = dataclasses.replace(
            r, train_gflop_per_image=gflop if rate else None,
            mfu=gflop * 1e9 * rate / (peak * device_count) if gflop and rate and peak else None,
            fastest=rate is not None and rate == best)
      elif rate and best:
        r = dataclasses.replace(r, speedup=best / rate)
      finished.append(r)
  return finished + paired


def _note(r: Measurement) -> str:
  if r.error:
    return f'error: {r.error}'
  if r.variant == throughput.END_TO_END:
    ratio = (f': {r.of_steady_state:.2f} of steady state (the first row of its batch and dtype)'
             if r.of_steady_state else '')
    return f'{r.steps} steps in {r.wall_seconds:.1f} s{ratio}'
  if r.variant == throughput.POPULATION:
    ratio = (f': {r.of_one_run:.2f}x the one run below (same devices, same images a step)'
             if r.of_one_run else '')
    return f'{r.members} runs at once, member-images/s{ratio}'
  if r.variant == throughput.ONE_RUN:
    return "one run of the population's images a step"
  if r.speedup:
    return f'fastest JAX is {r.speedup:.2f}x this'
  return '**fastest**' if r.fastest else ''


def format_table(rows: Sequence[Measurement]) -> str:
  header = ('| variant | batch | dtype | steps/call | placement | compile s | train img/s '
            '| eval img/s | GFLOP/img | MFU | memory GiB | note |')
  lines = [header, '|' + '---|' * 12]
  fmt = lambda value, spec: '-' if value is None else format(value, spec)
  for r in rows:
    lines.append(
        f'| {r.variant} | {r.batch_size} | {r.dtype} | {r.steps_per_call} | {r.placement} | '
        f'{fmt(r.compile_seconds, ".1f")} | {fmt(r.train_images_per_second, ",.0f")} | '
        f'{fmt(r.eval_images_per_second, ",.0f")} | {fmt(r.train_gflop_per_image, ".2f")} | '
        f'{fmt(r.mfu, ".1%")} | {fmt(r.memory_gib, ".2f")} | {_note(r)} |')
  return '\n'.join(lines)


def device_info() -> dict:
  """The devices a run of this process uses (starts its backend: on a GPU, takes most of its
  memory), as `runs.setup_run` sees them."""
  platform = platforms.Platform.of(jax.devices())
  return {'device_kind': platform.device_kind, 'platform': platform.name,
          'device_count': platform.device_count}


def run_benchmark(config: ml_collections.ConfigDict, options: Options,
                  write: Callable[[dict], None] = lambda result: None) -> dict:
  """Measures every variant on the grid, then the PyTorch baseline; returns the JSON's dict.

  `write` receives the result so far after every variant.
  """
  splits = input_pipeline.load_splits(config.data, config.seed, config.model.num_classes)
  for variant in options.variants:  # A mistake in any variant stops the run before it starts.
    grid_configs(config, variant, options)
  order = {v.name: i for i, v in enumerate(options.variants)}
  in_child = lambda v: bool(v.env) and not options.env_applied
  rows, device = [], None
  # Children first: they would share the device with this process once it has measured.
  for variant in sorted(options.variants, key=lambda v: not in_child(v)):
    extras = options.extras and order[variant.name] == 0
    if in_child(variant):
      measured, child_device = run_child(config, variant, options, extras)
      device = device or child_device
    else:
      measured, device = measure_variant(config, splits, variant, options, extras), device_info()
    rows = sorted(rows + measured, key=lambda r: order[r.variant])
    write(_result(config, splits, options, rows, device))
  if options.end_to_end_epochs and not options.env_applied:
    for cell in grid_configs(config, variants_lib.DEFAULT, options):
      # The training's own lines go to the log file: the console shows the rows.
      with console_logs.phase(f'end to end: {options.end_to_end_epochs} epochs of batch '
                              f'{cell.batch_size} in {cell.model.dtype} after a first',
                              quiet=True):
        rows.append(throughput.measure_end_to_end(cell, splits,
                                                  epochs=options.end_to_end_epochs))
      log_row(rows[-1])
      device = device or device_info()
      write(_result(config, splits, options, rows, device))
  if options.population_members != 1 and not options.env_applied:
    for cell in grid_configs(config, variants_lib.DEFAULT, options):
      rows += population_rows(cell, splits, options)
      device = device or device_info()
      write(_result(config, splits, options, rows, device))
  if options.torch_steps and torch_baseline.unavailable():
    logging.warning('no PyTorch baseline: %s', torch_baseline.unavailable())
  elif options.torch_steps:
    rows += torch_rows(config, options, sorted({(r.dtype, r.batch_size) for r in rows}))
  result = _result(config, splits, options, rows, device or device_info())
  write(result)
  return result


def _result(config: ml_collections.ConfigDict, splits, options: Options,
            rows: Sequence[Measurement], device: Optional[dict]) -> dict:
  device = device or dict.fromkeys(DEVICE_KEYS)  # Only children so far, each failed.
  rows = finish(rows, device['device_kind'], device['device_count'] or 1)
  return {
      'model': config.model.name,
      'data_source': splits.source,
      **device,
      'versions': report.versions(),
      'torch_version': torch_baseline.version(),
      'augment': config.augment.to_dict(),
      'variants': [dataclasses.asdict(v) for v in options.variants],
      'results': [dataclasses.asdict(r) for r in rows],
      'table': format_table(rows),
  }


_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['128', '512'], 'Global batch sizes.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
_STEPS_PER_CALL = flags.DEFINE_integer(
    'steps_per_call', 0, 'Steps fused in one compiled call (sets config.steps_per_call); 0 = '
    'as training picks them for this config and data size.')
_CALLS = flags.DEFINE_integer('calls', 5, 'Timed calls after two warm-up calls.', lower_bound=1)
_OUTPUT = cli.output_flag('benchmark.json', 'File the JSON goes to.')
_VARIANTS = flags.DEFINE_string(
    'variants', '', 'A variants file (configs/benchmarks/*.py); empty: the config alone.')
_ONLY_VARIANTS = flags.DEFINE_list('only_variants', [], 'Measure only these variants.')
_CHECK_NUMERICS = flags.DEFINE_bool(
    'check_numerics', False, 'Instead of timing: train one epoch of each variant here and '
    'compare it with the config alone (use a small config, e.g. configs/smoke.py).')
_TORCH_STEPS = flags.DEFINE_integer(
    'torch_steps', 20, 'PyTorch baseline steps timed per mode, where torch is importable; 0: '
    'no baseline.')
_TORCH_COMPILE = flags.DEFINE_bool('torch_compile', True, 'Also time torch.compile.')
_POPULATION_MEMBERS = flags.DEFINE_integer(
    'population_members', 0, 'The population rows: this many runs of each batch size trained '
    'at once, one a group of devices, against one run of this many times the batch on the same '
    'devices; 0: as many as the devices hold in one program (none on one device); 1: none.',
    lower_bound=0)
_EXTRAS = flags.DEFINE_bool(
    'extras', True, 'Count FLOPs and time evaluation (each another compile) on the first variant.')
_END_TO_END_EPOCHS = flags.DEFINE_integer(
    'end_to_end_epochs', 2, 'The end-to-end row: a whole run of this many epochs after a first '
    '(compiling) one, evaluation and checkpoints included, timed over wall time; 0: none.',
    lower_bound=0)


def _check_numerics(config, variants: Sequence[variants_lib.Variant]) -> None:
  """Prints the numerics checks; UserError naming the variants that failed."""
  flag_error = variants_lib.unknown_xla_flags(variants)
  if flag_error:
    raise errors.UserError(f'an XLA flag of the variants is unknown to this jax: {flag_error}')
  splits = input_pipeline.load_splits(config.data, config.seed, config.model.num_classes)
  checks = variants_lib.check_numerics(config, splits, variants, _DTYPES.value)
  logging.info('%s', variants_lib.format_checks(checks))
  files.write_atomic(_OUTPUT.value, json.dumps([dataclasses.asdict(c) for c in checks], indent=2))
  failed = sorted({c.variant for c in checks if c.passed is False})
  if failed:
    raise errors.UserError(f"variants train other numbers than the config alone: "
                           f"{', '.join(failed)}")
  logging.info('wrote %s', _OUTPUT.value)


def _write(result: dict) -> None:
  files.write_atomic(_OUTPUT.value, json.dumps(result, indent=2))


def main(argv):
  del argv
  config = cli.CONFIG.value
  files.check_writable(_OUTPUT.value, '--output', is_file=True)
  cli.say_outputs(_OUTPUT.value)
  try:
    batch_sizes = [int(b) for b in _BATCH_SIZES.value]
  except ValueError as e:
    raise errors.UserError(f'--batch_sizes must be integers, e.g. 128,512 ({e})') from e
  if _STEPS_PER_CALL.value:
    config.steps_per_call = _STEPS_PER_CALL.value
  listed = (variants_lib.load_variants(_VARIANTS.value) if _VARIANTS.value
            else [variants_lib.DEFAULT])
  selected = variants_lib.select(listed, _ONLY_VARIANTS.value)
  if _CHECK_NUMERICS.value:
    _check_numerics(config, selected)
    return
  modes = (torch_baseline.EAGER,) + ((torch_baseline.COMPILED,) if _TORCH_COMPILE.value else ())
  options = Options(batch_sizes=batch_sizes, dtypes=_DTYPES.value, calls=_CALLS.value,
                    variants=selected, extras=_EXTRAS.value,
                    env_applied=os.environ.get(CHILD_ENV) == '1',
                    torch_steps=_TORCH_STEPS.value, torch_modes=modes, argv=sys.argv[1:],
                    end_to_end_epochs=_END_TO_END_EPOCHS.value,
                    population_members=_POPULATION_MEMBERS.value)
  result = run_benchmark(config, options, write=_write)
  logging.info('%s on %s x %s (%s)\n%s', result['model'], result['device_count'],
               result['device_kind'], result['data_source'], result['table'])
  logging.info('wrote %s', _OUTPUT.value)


if __name__ == '__main__':
  cli.run(main, 'benchmark', require_workdir=False)
