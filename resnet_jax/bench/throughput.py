"""One measurement: a config's training throughput, the way the training command runs it.

Compile time; steady-state training throughput end to end on the path config.data.placement
picks (the resident set with the batch gather, or host batches streamed; augmentation and
mixup as the config sets them, forward, backward, the optax chain with Lookahead, the training
plan's steps per compiled call); the device memory the compiled call needs; where asked,
evaluation throughput and the FLOPs per training image counted by XLA. `resnet_jax.benchmark`
measures variants of a config with it.
"""

import dataclasses
import tempfile
import time
from typing import Iterator, Optional

import jax
import ml_collections

from resnet_jax import files
from resnet_jax.bench import hlo
from resnet_jax.reporting import writers
from resnet_jax.training import evaluator
from resnet_jax.training import feed
from resnet_jax.training import population
from resnet_jax.training import runs
from resnet_jax.training import train

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
  """One row: a variant (or a PyTorch mode) at one batch size and dtype; None = not measured."""
  batch_size: int
  dtype: str
  steps_per_call: int
  compile_seconds: Optional[float]
  train_images_per_second: Optional[float]
  eval_images_per_second: Optional[float]
  train_gflop_per_image: Optional[float]
  mfu: Optional[float]
  memory_gib: Optional[float]
  variant: str = 'default'
  placement: str = 'device'  # device (resident set) | host (streamed) | synthetic (PyTorch)
  framework: str = 'jax'
  fastest: bool = False      # the fastest JAX row of its batch size and dtype
  speedup: Optional[float] = None  # PyTorch rows: the fastest JAX row's rate over this one's
  error: Optional[str] = None
  # The end-to-end row: its rate over the steady-state rate of the same batch size and dtype,
  # and the steps and wall seconds of its timed epochs (the rate is their images over that wall).
  of_steady_state: Optional[float] = None
  steps: Optional[int] = None
  wall_seconds: Optional[float] = None
  hlo: Optional[dict] = None  # the one-step call's HLO in numbers (`hlo.summarize`), first variant
  # The population row (`measure_population`): its members (each of batch_size), and its rate
  # (member-images/s) over that of one run of members x batch_size on the same devices, whose
  # row has members=None and of_one_run=None. Both rows have steps and wall_seconds: the timed
  # steps a member (a run) made and their seconds.
  members: Optional[int] = None
  of_one_run: Optional[float] = None


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


def _full_calls(train_feed: feed.Feed, plan: feed.EpochPlan) -> Iterator[tuple]:
  """The batch arguments of the epoch's calls of the first call's shape, epoch after epoch.

  The other calls (a shorter last one, the partial batch) are skipped, though a streamed feed
  still makes their host batches: its calls come in order.
  """
  shape = plan.calls(0)[0][1:]
  for epoch in range(1 << 30):
    call_batches = train_feed.epoch(epoch, 0)
    for first, count, batch_size in plan.calls(0):
      batches = call_batches(first, count, batch_size)
      if (count, batch_size) == shape:
        yield batches


def _eval_rate(run: runs.Run, variables: dict, repeats: int) -> float:
  splits, mesh = run.splits, run.mesh
  eval_set = evaluator.make_eval_set(splits.test_images, splits.test_labels,
                                     run.config.eval_batch_size, mesh)
  compiled = evaluator.compile_evaluate(run.ctx, mesh).lower(variables,
                                                             *eval_set.arrays()).compile()
  call_eval = lambda: compiled(variables, *eval_set.arrays())
  _timed(call_eval, 1)
  return repeats * eval_set.size / _timed(call_eval, repeats)


@dataclasses.dataclass
class TimedCalls:
  """A layout's train call compiled and timed over `calls` calls of `steps` steps each."""
  compiled: object
  compile_seconds: float
  state: object  # the state after the timed calls
  steps: int     # steps a call
  batch_size: int  # a member's
  members: int
  calls: int
  seconds: float

  @property
  def images_per_second(self) -> float:
    """Training images a second, of every member of the layout."""
    return self.members * self.calls * self.steps * self.batch_size / self.seconds


def time_train_calls(layout, *, calls: int, warmup_calls: int) -> TimedCalls:
  """Compiles a layout's (`train.Solo`, `population.Population`) train call of the first call's
  shape, as training does, and times `calls` of them (after `warmup_calls`), through the feed
  training uses."""
  plan = layout.members[0].plan
  _, steps, batch_size = plan.calls(0)[0]
  state = layout.initial_state()
  train_feed = layout.create_feed()
  run_steps = layout.jit_train_steps()
  start = time.perf_counter()
  compiled = run_steps.lower(state, *train_feed.batch_specs(steps, batch_size)).compile()
  compile_seconds = time.perf_counter() - start
  holder, batches = {'state': state}, _full_calls(train_feed, plan)

  def one_call():
    holder['state'], result = compiled(holder['state'], *next(batches))
    return result

  _timed(one_call, warmup_calls)
  seconds = _timed(one_call, calls)
  return TimedCalls(compiled, compile_seconds, holder['state'], steps, batch_size,
                    len(layout.members), calls, seconds)


def measure(config: ml_collections.ConfigDict, splits, *, calls: int, warmup_calls: int = 2,
            eval_repeats: int = 3, count_flops: bool = True) -> Measurement:
  """Measures one configuration as training runs it.

  Batch size, dtype, placement and steps per compiled call are config.batch_size,
  config.model.dtype, config.data.placement (`feed.resident_placement`) and the training plan's
  (`feed.epoch_plan`: config.steps_per_call, 0 = as training picks it). Timed are the epoch's
  calls of the first call's shape, through the feed training uses. eval_repeats=0 skips timing
  evaluation; count_flops=False skips counting FLOPs (another compile where a call has several
  steps).
  """
  run = runs.setup_run(config.copy_and_resolve_references(), workdir='', splits=splits)
  layout = train.Solo(run)
  timed = time_train_calls(layout, calls=calls, warmup_calls=warmup_calls)
  steps, batch_size = timed.steps, timed.batch_size
  flops_per_step = hlo_counts = None
  if count_flops:
    # XLA's cost analysis counts a loop body once, whatever its trip count, so a call of several
    # steps (a lax.scan off the CPU) would count one of them: the FLOPs are a one-step call's.
    one_step = timed.compiled if steps == 1 else layout.jit_train_steps().lower(
        timed.state, *layout.batch_specs(1, batch_size)).compile()
    flops_per_step = _flops(one_step)
    hlo_counts = hlo.summarize(
        one_step.as_text(), batch_size=batch_size,
        parameter_shapes=[leaf.shape for leaf in jax.tree.leaves(timed.state.params)
                          if leaf.ndim > 1])
  eval_rate = (_eval_rate(run, timed.state.eval_variables(), eval_repeats)
               if eval_repeats else None)
  # XLA counts a device's FLOPs: its share of the batch.
  gflop_per_image = (None if flops_per_step is None
                     else flops_per_step * run.plan.num_devices / batch_size / 1e9)
  return Measurement(batch_size=batch_size, dtype=run.compute_dtype,
                     steps_per_call=steps,
                     compile_seconds=timed.compile_seconds,
                     train_images_per_second=timed.images_per_second,
                     eval_images_per_second=eval_rate, train_gflop_per_image=gflop_per_image,
                     mfu=None, memory_gib=memory_gib(timed.compiled), placement=run.placement,
                     hlo=hlo_counts)


POPULATION = 'population'
ONE_RUN = 'one run'


def population_members(config: ml_collections.ConfigDict, devices=None) -> int:
  """The members of the population row by default: as many as `devices` (every one) hold in one
  program (`population.members_per_round`)."""
  devices = jax.devices() if devices is None else devices
  return population.members_per_round(config, len(devices), devices)


def measure_population(config: ml_collections.ConfigDict, splits, *, members: int, calls: int,
                       warmup_calls: int = 2) -> list[Measurement]:
  """A population of `members` runs of the config (seeds config.seed on), each of its batch,
  against one run of members x its batch on the same devices (every device), timed in turn.

  Returns:
    The population's row (its rate member-images/s, its ratio to the one run's in of_one_run)
    and the one run's.
  """
  config = config.copy_and_resolve_references()
  config.population.seeds = tuple(range(config.seed, config.seed + members))
  layout = population.create_population(population.seed_configs(config), [''] * members,
                                        splits=splits)
  one_run = config.copy_and_resolve_references()
  one_run.batch_size, one_run.population.seeds = members * config.batch_size, ()
  one_layout = train.Solo(runs.setup_run(one_run, workdir='', splits=splits))
  rows = []
  for name, timed_layout in ((POPULATION, layout), (ONE_RUN, one_layout)):
    timed = time_train_calls(timed_layout, calls=calls, warmup_calls=warmup_calls)
    run = timed_layout.members[0]
    rows.append(Measurement(
        batch_size=timed.batch_size, dtype=run.compute_dtype, steps_per_call=timed.steps,
        compile_seconds=timed.compile_seconds,
        train_images_per_second=timed.images_per_second,
        eval_images_per_second=None, train_gflop_per_image=None, mfu=None,
        memory_gib=memory_gib(timed.compiled), variant=name, placement=run.placement,
        steps=timed.calls * timed.steps, wall_seconds=timed.seconds,
        members=len(timed_layout.members) if name == POPULATION else None))
  population_row, one_run_row = rows
  population_row.of_one_run = (population_row.train_images_per_second
                               / one_run_row.train_images_per_second)
  return rows


END_TO_END = 'end to end'


def measure_end_to_end(config: ml_collections.ConfigDict, splits, *, epochs: int) -> Measurement:
  """A short whole run, timed as training images over wall time: what a user's run gets.

  Trains `epochs` + 1 epochs in a temporary workdir through `train.train_and_evaluate`, with
  evaluation every epoch and checkpoints as the config sets them; the first epoch (the compiles)
  is left out: the rate is the images of the other epochs over the wall time from the first
  epoch's end to the last's (metrics.jsonl's `elapsed_seconds`), evaluation, checkpoints and
  every host pause included.
  """
  config = config.copy_and_resolve_references()
  config.num_epochs, config.eval_every_epochs, config.write_plots = epochs + 1, 1, False
  with tempfile.TemporaryDirectory(prefix='resnet_jax_end_to_end_') as workdir:
    results = train.train_and_evaluate(config, workdir, splits=splits)
    history = [r for r in writers.read_jsonl(files.as_path(workdir) / writers.METRICS_FILE)
               if 'epoch' in r]
  wall = history[-1]['elapsed_seconds'] - history[0]['elapsed_seconds']
  images = epochs * results['train_examples']
  steps = history[-1]['step'] - history[0]['step']
  return Measurement(batch_size=config.batch_size, dtype=results['compute_dtype'],
                     steps_per_call=results['steps_per_call'],
                     compile_seconds=results['compile_seconds'],
                     train_images_per_second=images / wall, eval_images_per_second=None,
                     train_gflop_per_image=None, mfu=None, memory_gib=None, variant=END_TO_END,
                     placement=results['placement'], steps=steps, wall_seconds=wall)
