r"""Will a config fit, and how fast? Compiles a run for a Cloud TPU slice or GPUs, from any machine.

    python -m resnet_jax.compile_check --config configs/best.py --topology v5litepod-8
    python -m resnet_jax.compile_check --config configs/best.py --topology v5p-64 --output c.json
    python -m resnet_jax.compile_check --config configs/best.py --gpu h100 --gpus 8

The run is set up exactly as `main` sets it up on those devices (`runs.setup_run`: config,
model, optimizer, the mesh over every chip of every host, dtype, steps per call, placement), but
without them and without reading the data: the splits are the config's sizes (CIFAR-10's 50,000
and 10,000 images unless a subset or a held-out validation says otherwise), as shapes. Every
distinct call the run makes is compiled (`targets` gives the devices: libtpu for a TPU slice,
jax's CUDA plugin for a GPU): each train call's shape (the full calls, a shorter or partial last
one) and each evaluation's. A pod slice compiles as every one of its hosts would, as the one
global program.

Printed: a table of the calls (per chip: arguments, temporaries, outputs, their total against
the chip's memory; FLOPs; all-reduces; while loops; compile seconds; XLA's estimate) and a
summary: the run's largest call against the memory, FLOPs a training image, collectives a step,
each host's share of a batch, and, on a TPU, XLA's cost-model estimate of a step, of images/s
and of an epoch, with what to change where it shows a slice mostly idle. The estimate is XLA:TPU's
cost model (`optimal_seconds`), not a measurement: that model counts -1 s for each op it cannot
cost (`UNCOSTED_CUSTOM_CALLS`), which is added back; a call that loops (several steps, several
evaluation batches) is estimated from its one-step (one-batch) call times its count. XLA:GPU
makes no estimate. A run that does not fit, or a call that does not compile, ends with one
`error:` line and exit status 2; `--output` writes it all as JSON.

A config with population.seeds compiles as `main` trains it: its first round's members at once
(`population.members_per_round`), each on its group of the chips, in one program. The figures a
chip and a step are then a member's, the estimate's images/s every member's (member-images/s),
and the summary says each collective's groups of devices and how many join two members (none:
the members train apart; any is an error).

    python -m resnet_jax.compile_check --config configs/best.py --topology v5litepod-8 \
        --config.population.seeds='(0,1,2,3,4,5,6,7)'
"""

import dataclasses
import faulthandler
import importlib.metadata
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from typing import Optional

from absl import flags
from absl import logging
import jax
import ml_collections
import numpy as np

from resnet_jax import cli
from resnet_jax import console_logs
from resnet_jax import files
from resnet_jax import platforms
from resnet_jax import targets
from resnet_jax.bench import hlo
from resnet_jax.bench import throughput
from resnet_jax.data import input_pipeline
from resnet_jax.errors import UserError, one_line
from resnet_jax.reporting import report
from resnet_jax.training import evaluator
from resnet_jax.training import population
from resnet_jax.training import runs
from resnet_jax.training import train

# The split sizes of CIFAR-10 (and CIFAR-100), which every shipped config trains on.
TRAIN_EXAMPLES, TEST_EXAMPLES = 50_000, 10_000
# Custom calls XLA:TPU's cost model cannot cost: it counts each as -1 s in `optimal_seconds`.
UNCOSTED_CUSTOM_CALLS = ('ConcatBitcast',)
# Below this share of the chips' peak FLOP/s (XLA's estimate), a slice is mostly idle.
MOSTLY_IDLE = 0.3
# Fewer images a chip than this: a larger batch is the first thing to try.
LARGE_PER_CHIP = 64
ESTIMATE_LABEL = "XLA's cost-model estimate"
# Set in the process that compiles (`compile_in_child`): the command's log file, or '-'.
_CHILD_ENV = 'RESNET_JAX_COMPILE_CHECK_CHILD'


@dataclasses.dataclass
class Call:
  """One compiled call of the run, its bytes and FLOPs per chip."""
  kind: str            # 'train' or 'eval'
  steps: int           # optimizer steps (train) or batches (eval) in the call
  batch: int           # global batch
  arguments: int = 0   # bytes a chip
  temporaries: int = 0
  outputs: int = 0
  bytes_per_chip: int = 0  # arguments + temporaries + outputs, less donated (aliased) buffers
  flops: Optional[float] = None  # a chip's, for the whole call
  estimated_seconds: Optional[float] = None  # XLA's cost-model estimate of the whole call
  estimate_from: Optional[str] = None  # 'this call', or the one-step (one-batch) call's
  all_reduces: int = 0
  all_reduce_bytes: int = 0  # a chip's
  # The collectives' groups of devices as the HLO writes them (distinct), and how many of the
  # collectives span the devices of two members of a population.
  collective_groups: list = dataclasses.field(default_factory=list)
  cross_member_collectives: int = 0
  while_loops: Optional[int] = None
  kernels: int = 0
  copies: int = 0
  compile_seconds: float = 0.0
  error: Optional[str] = None

  @property
  def name(self) -> str:
    return f'{self.kind} call ({_count(self.kind, self.steps)} of {self.batch})'


def _count(kind: str, count: int) -> str:
  """'1 step', '30 steps' (train), '1 batch', '40 batches' (eval)."""
  return report.counted(count, 'step') if kind == 'train' else report.counted(count, 'batch',
                                                                               'batches')


def splits_without_data(config: ml_collections.ConfigDict) -> input_pipeline.Splits:
  """The config's splits as arrays that hold no data (every image one shared zero byte): their
  sizes as the run would have them, for setting the run up without reading the data."""
  data = config.data
  for key, size in (('train_subset', TRAIN_EXAMPLES), ('test_subset', TEST_EXAMPLES)):
    if not 0 <= data[key] <= size:
      raise UserError(f'config.data.{key}={data[key]} must be in [0, {size}] (0 = all)')
  train_size = data.train_subset or TRAIN_EXAMPLES
  test_size = data.test_subset or TEST_EXAMPLES
  fraction = input_pipeline.validation_fraction(data.validation)
  val_size = int(round(fraction * train_size)) if fraction is not None else test_size
  if fraction is not None:
    train_size -= val_size
  size = data.image_size
  images = lambda n: np.broadcast_to(np.zeros((), np.uint8), (n, size, size, 3))
  labels = lambda n: np.broadcast_to(np.zeros((), np.int32), (n,))
  test = images(test_size), labels(test_size)
  val = test if fraction is None else (images(val_size), labels(val_size))
  source = (f'no data read: the config\'s sizes, {train_size} train, {val_size} validation, '
            f'{test_size} test')
  return input_pipeline.Splits(images(train_size), labels(train_size), *val, *test,
                               tuple(str(i) for i in range(config.model.num_classes)),
                               tuple(data.mean), tuple(data.std), source)


def uncosted_ops(hlo_text: str) -> int:
  """Ops of a compiled call that XLA:TPU's cost model cannot cost (each -1 s in its estimate)."""
  return sum(len(re.findall(rf'custom_call_target="{target}"', hlo_text))
             for target in UNCOSTED_CUSTOM_CALLS)


# `name = (f32[8]{0:T(256)}, f32[16]{0}) all-reduce(`: the result's types (the done half of an
# asynchronous one).
_ALL_REDUCE = re.compile(r'=\s+(.*?)\s+all-reduce(?:-done)?\(', re.MULTILINE)
_ARRAY = re.compile(r'\b([a-z]+\d*)\[([\d,]*)\]')
# Bytes of an element of each HLO type.
_HLO_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4,
              's32': 4, 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8}


def all_reduce_bytes(hlo_text: str) -> int:
  """Bytes a chip all-reduces in a compiled call (each all-reduce's result, tuples summed)."""
  total = 0
  for result in _ALL_REDUCE.findall(hlo_text):
    for dtype, dims in _ARRAY.findall(result):
      total += _HLO_BYTES.get(dtype, 0) * math.prod(int(d) for d in dims.split(',') if d)
  return total


def _analysis(compiled) -> dict:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0] if analysis else None
  return analysis or {}


def xla_estimate(compiled) -> Optional[float]:
  """XLA's cost-model seconds of a compiled call, the uncosted ops' -1 s each added back; None
  where the compiler gives none (XLA:GPU) or a non-positive one."""
  seconds = _analysis(compiled).get('optimal_seconds')
  if seconds is None:
    return None
  seconds += uncosted_ops(compiled.as_text())
  return seconds if seconds > 0 else None


def cross_member(groups: Optional[list], devices_per_member: int) -> bool:
  """Whether a collective's groups (`hlo.collective_groups`; None: every device) join devices of
  two members, member i holding devices [i * devices_per_member, (i + 1) * devices_per_member)
  of the program's devices."""
  if groups is None:
    return True
  return any(len({device // devices_per_member for device in group}) > 1 for group in groups)


def describe(call: Call, compiled, seconds: float, devices_per_member: int) -> None:
  """Fills call's bytes, FLOPs, collectives, loops and estimate from its compiled program."""
  memory = compiled.memory_analysis()
  call.arguments, call.outputs = memory.argument_size_in_bytes, memory.output_size_in_bytes
  call.temporaries = memory.temp_size_in_bytes
  call.bytes_per_chip = (call.arguments + call.outputs + call.temporaries
                         - getattr(memory, 'alias_size_in_bytes', 0))
  text = compiled.as_text()
  summary = hlo.summarize(text)
  call.all_reduces, call.all_reduce_bytes = summary['all-reduce'], all_reduce_bytes(text)
  collectives = hlo.collective_groups(text)
  call.collective_groups = sorted({written for _, written, _ in collectives})
  call.cross_member_collectives = sum(cross_member(groups, devices_per_member)
                                      for _, _, groups in collectives)
  call.kernels, call.copies = summary['kernels'], summary['copies']
  call.while_loops = summary.get('while_loops')
  call.compile_seconds = seconds
  flops = _analysis(compiled).get('flops')
  call.flops = float(flops) if flops and flops > 0 else None
  call.estimated_seconds = xla_estimate(compiled)
  call.estimate_from = 'this call' if call.estimated_seconds is not None else None


def _compile(what: str, jitted, args) -> tuple[object, float]:
  start = time.perf_counter()
  with console_logs.phase(f'compiling the {what}'):
    compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def compile_calls(layout) -> tuple[list[Call], dict]:
  """Compiles every distinct call a run (`train.Solo`) or a population's round makes; a call
  that fails to compile has its error.

  Returns:
    The calls, and the one-step (one-batch) calls by (kind, batch) that estimate them.
  """
  run = layout.members[0]
  config, plan, splits = run.config, run.plan, run.splits
  state = layout.abstract_state()
  train_fn, eval_fn = layout.jit_train_steps(), layout.evaluate_fn()
  eval_specs = lambda size: evaluator.eval_set_specs(size, config.eval_batch_size,
                                                     config.data.image_size, layout.mesh)
  devices_per_member = run.mesh.devices.size
  shapes = []
  for _, count, batch in plan.calls(0):
    if ('train', count, batch) not in shapes:
      shapes.append(('train', count, batch))
  eval_sizes = [len(splits.val_labels)] + ([] if splits.val_labels is splits.test_labels
                                           else [len(splits.test_labels)])
  for size in eval_sizes:
    num_batches, batch = evaluator.batches(size, config.eval_batch_size, plan.num_devices)
    if ('eval', num_batches, batch) not in shapes:
      shapes.append(('eval', num_batches, batch))

  def args(kind, count, batch):
    if kind == 'train':
      return (state, *layout.batch_specs(count, batch))
    return (state.eval_variables(), *eval_specs(count * batch))

  calls, one_step = [], {}
  for kind, count, batch in shapes:
    call = Call(kind=kind, steps=count, batch=batch)
    calls.append(call)
    jitted = train_fn if kind == 'train' else eval_fn
    try:
      compiled, seconds = _compile(call.name, jitted, args(kind, count, batch))
      describe(call, compiled, seconds, devices_per_member)
      if count > 1:  # XLA costs a loop's body once: the estimate is the one-step call's.
        if (kind, batch) not in one_step:
          single, _ = _compile(f'{kind} call ({_count(kind, 1)} of {batch}) for the estimate',
                               jitted, args(kind, 1, batch))
          one_step[kind, batch] = Call(kind=kind, steps=1, batch=batch)
          describe(one_step[kind, batch], single, 0.0, devices_per_member)
        single = one_step[kind, batch]
        call.flops = None if single.flops is None else single.flops * count
        call.estimated_seconds = (None if single.estimated_seconds is None
                                  else single.estimated_seconds * count)
        call.estimate_from = f'the call of {_count(kind, 1)}, times {count}'
        call.all_reduces, call.all_reduce_bytes = single.all_reduces, single.all_reduce_bytes
    except jax.errors.JaxRuntimeError as e:
      call.error = one_line(e)
    if kind == 'train' and count == 1 and (kind, batch) not in one_step:
      one_step[kind, batch] = call
  return calls, one_step


@dataclasses.dataclass
class Check:
  """What compile_check found, for the table, the summary and the JSON.

  A population (config.population.seeds) is its first round's program: `members` runs at once,
  `run` the first of them, each on its group of the target's chips; the figures a chip and a
  step are a member's, the images/s all members'.
  """
  target: targets.Target
  run: runs.Run
  calls: list
  step: Call  # the full batch's one-step train call (FLOPs, collectives, estimate a step)
  members: int = 1  # runs in the program
  seeds: int = 0  # config.population.seeds (0: one run)

  @property
  def platform(self) -> platforms.Platform:
    return self.run.platform

  @property
  def hbm(self) -> Optional[int]:
    return self.platform.memory_bytes

  @property
  def fits(self) -> bool:
    return all(call.error is None and (self.hbm is None or call.bytes_per_chip <= self.hbm)
               for call in self.calls)

  @property
  def flops_per_image(self) -> Optional[float]:
    if self.step.flops is None:
      return None
    return self.step.flops * self.platform.device_count / self.step.batch

  @property
  def images_per_second(self) -> Optional[float]:
    """Training images a second, of every member (a population's member-images/s)."""
    seconds = self.step.estimated_seconds
    return None if seconds is None else self.members * self.step.batch / seconds

  @property
  def cross_member_collectives(self) -> int:
    return sum(call.cross_member_collectives for call in self.calls) if self.members > 1 else 0

  @property
  def epoch_seconds(self) -> Optional[float]:
    """The estimate of an epoch's training calls (evaluation aside)."""
    plan, by_shape = self.run.plan, {(c.steps, c.batch): c for c in self.calls if c.kind == 'train'}
    seconds = [by_shape[count, batch].estimated_seconds for _, count, batch in plan.calls(0)]
    return None if None in seconds else sum(seconds)

  @property
  def utilisation(self) -> Optional[float]:
    """The share of the chips' peak FLOP/s the estimate keeps busy in a training step."""
    peak = throughput.peak_flops(self.platform.device_kind, self.run.compute_dtype)
    if not peak or self.step.flops is None or self.step.estimated_seconds is None:
      return None
    return self.step.flops / self.step.estimated_seconds / peak


def set_up(config: ml_collections.ConfigDict, target: targets.Target):
  """The run as `main` sets it up on the target's devices (`train.Solo`), or with
  config.population.seeds, its population's first round (`population.create_population`: as
  many members as `population.members_per_round` puts in one program; one at a time on several
  hosts)."""
  splits = splits_without_data(config)
  configs = population.seed_configs(config) if config.population.seeds else [config]
  count = 1 if target.hosts > 1 else population.members_per_round(configs[0], len(configs),
                                                                 target.devices)
  if count == 1:
    return train.Solo(runs.setup_run(configs[0], '', splits=splits, devices=target.devices))
  return population.create_population(configs[:count], [''] * count, devices=target.devices,
                                      splits=splits)


def check(config: ml_collections.ConfigDict, target: targets.Target) -> Check:
  """Sets the run (or population) up as `main` does on the target's devices, and compiles its
  calls."""
  layout = set_up(config, target)
  run = layout.members[0]
  # Executables for devices this process does not hold cannot be loaded back from the persistent
  # compilation cache (a warning, then a compile again): they stay out of it.
  cached = jax.config.jax_enable_compilation_cache
  jax.config.update('jax_enable_compilation_cache', False)
  try:
    calls, one_step = compile_calls(layout)
  finally:
    jax.config.update('jax_enable_compilation_cache', cached)
  batch = run.plan.batch_size
  # A call that failed to compile leaves nothing to estimate from (its error ends the command).
  step = one_step.get(('train', batch)) or Call(kind='train', steps=1, batch=batch)
  return Check(target=target, run=run, calls=calls, step=step,
               members=len(layout.members), seeds=len(config.population.seeds))


def _mb(count: int) -> str:
  return f'{count / 1e6:,.1f} MB' if count >= 1e5 else f'{count / 1e3:,.1f} kB'


def _gib(count: int) -> str:
  return f'{count / 2**30:.1f} GiB'


def _seconds(seconds: Optional[float]) -> str:
  if seconds is None:
    return '-'
  return f'{1e3 * seconds:,.2f} ms' if seconds < 1 else f'{seconds:,.1f} s'


def format_table(result: Check) -> str:
  hbm = result.hbm
  lines = ['| call | arguments | temporaries | outputs | total a chip | of memory | GFLOP a chip '
           '| all-reduces | while loops | compile s | ' + ESTIMATE_LABEL + ' |',
           '|' + '---|' * 11]
  for call in result.calls:
    if call.error:
      lines.append(f'| {call.name} | failed to compile: {call.error} |' + ' |' * 9)
      continue
    share = '-' if not hbm else f'{call.bytes_per_chip / hbm:.1%}'
    flops = '-' if call.flops is None else f'{call.flops / 1e9:,.1f}'
    loops = '-' if call.while_loops is None else str(call.while_loops)
    lines.append(
        f'| {call.name} | {_mb(call.arguments)} | {_mb(call.temporaries)} | {_mb(call.outputs)} '
        f'| {_mb(call.bytes_per_chip)} | {share} | {flops} | {call.all_reduces} '
        f'({_mb(call.all_reduce_bytes)}) | {loops} | {call.compile_seconds:.1f} '
        f'| {_seconds(call.estimated_seconds)} |')
  return '\n'.join(lines)


def summary_lines(result: Check) -> list[str]:
  """The summary under the table: memory, FLOPs, collectives, hosts' shares, the estimate."""
  run, platform, step = result.run, result.platform, result.step
  plan, hosts = run.plan, result.target.hosts
  largest = max((c for c in result.calls if c.error is None), key=lambda c: c.bytes_per_chip,
                default=None)
  lines = []
  if largest is not None:
    memory = (f'of the {_gib(result.hbm)} a chip has ({largest.bytes_per_chip / result.hbm:.1%})'
              if result.hbm else 'a chip')
    lines.append(f'memory: the largest call ({largest.name}) needs {_mb(largest.bytes_per_chip)} '
                 f'{memory}; {"fits" if result.fits else "does NOT fit"}')
  if result.flops_per_image:
    lines.append(f'FLOPs a training image (forward and backward): '
                 f'{result.flops_per_image / 1e9:.3g} G')
  lines.append(f'collectives a step: {step.all_reduces} all-reduces, '
               f'{_mb(step.all_reduce_bytes)} a chip')
  if result.seeds:
    lines += population_lines(result)
  if step.while_loops is not None:
    lines.append(f'while loops in a training step: {step.while_loops} (each runs its iterations '
                 'one after another)')
  per_chip = plan.batch_size // plan.num_devices
  lines.append(f'a batch of {plan.batch_size}{" a member" if result.members > 1 else ""}: '
               f'{per_chip} images a chip'
               + (f', {plan.batch_size // hosts} a host on each of {hosts} hosts (each host '
                  f'feeds its share; one global program)' if hosts > 1 else ''))
  if result.images_per_second is None:
    if platform.name == 'tpu':
      lines.append(f'{ESTIMATE_LABEL}: none (the cost model gave no time for the step)')
    return lines
  epoch = result.epoch_seconds
  images = (f'{result.images_per_second:,.0f} member-images/s ({result.members} members of '
            f'{step.batch} images a step)' if result.members > 1
            else f'{result.images_per_second:,.0f} images/s')
  lines.append(f'{ESTIMATE_LABEL} (not a measurement): {_seconds(step.estimated_seconds)} a step, '
               f'{images}'
               + ('' if epoch is None else f', {_seconds(epoch)} an epoch of training calls'))
  utilisation = result.utilisation
  if utilisation is not None:
    lines.append(f'{ESTIMATE_LABEL}: the chips compute at {utilisation:.1%} of their '
                 f'{run.compute_dtype} peak')
    if utilisation < MOSTLY_IDLE and result.members == 1:
      larger = (f'a larger batch with a recipe made for it (configs/fast.py: batch 512, '
                f'{512 // platform.device_count} images a chip here), or '
                if per_chip < LARGE_PER_CHIP else '')
      lines.append(
          f'mostly idle: with {per_chip} images a chip the chips wait on collectives and small '
          f'kernels most of a step; {larger}several runs at once use '
          f'{platform.device_count} chips better than this one run: seeds as a population, '
          "each on its share of these chips (--config.population.seeds='(0,1,...)'), or a "
          "sweep's points, each on a smaller slice")
  return lines


def population_lines(result: Check) -> list[str]:
  """A population's lines: its members, and whether any collective joins two of them."""
  chips, rounds = result.run.platform.device_count, -(-result.seeds // result.members)
  lines = [f'population: {report.counted(result.seeds, "seed")}, '
           f'{report.counted(result.members, "member")} at once '
           f'({report.counted(rounds, "round")}), each on {report.counted(chips, "chip")} of '
           f'the {len(result.target.devices)}' + (': one program' if result.members > 1 else '')]
  if result.members == 1:
    return lines
  groups = sorted({g for call in result.calls for g in call.collective_groups})
  crossing = result.cross_member_collectives
  lines.append(f'collectives across members: {crossing or "none"} (groups of the collectives: '
               f'{", ".join(groups) or "no collective"})')
  return lines


def as_json(result: Check, config_path: str) -> dict:
  platform, run = result.platform, result.run
  return {
      'config': config_path,
      'topology': result.target.name,
      'layout': result.target.description,
      'chips': len(result.target.devices),
      'hosts': result.target.hosts,
      'members': result.members,
      'seeds': result.seeds,
      'chips_per_member': platform.device_count,
      'device_kind': platform.device_kind,
      'hbm_bytes_per_chip': result.hbm,
      'fits': result.fits,
      'compute_dtype': run.compute_dtype,
      'batch_size': run.plan.batch_size,
      'images_per_chip': run.plan.batch_size // run.plan.num_devices,
      'images_per_host': result.members * run.plan.batch_size // result.target.hosts,
      'steps_per_call': run.plan.steps_per_call,
      'placement': run.placement,
      'flops_per_image': result.flops_per_image,
      'all_reduces_per_step': result.step.all_reduces,
      'all_reduce_bytes_per_step': result.step.all_reduce_bytes,
      'collective_groups': sorted({g for call in result.calls for g in call.collective_groups}),
      'cross_member_collectives': result.cross_member_collectives,
      'estimate': ESTIMATE_LABEL + (' (XLA:TPU, not a measurement)' if platform.name == 'tpu'
                                    else ': none on this platform'),
      'images_per_second_estimate': result.images_per_second,
      'step_seconds_estimate': result.step.estimated_seconds,
      'epoch_seconds_estimate': result.epoch_seconds,
      'utilisation_estimate': result.utilisation,
      'calls': [dataclasses.asdict(call) | {'name': call.name} for call in result.calls],
      'versions': versions(),
  }


def versions() -> dict:
  """The run's versions (`report.versions`), with the compiler's: jaxlib, libtpu, CUDA plugin."""
  found = report.versions()
  for package in ('jaxlib', 'libtpu', 'jax-cuda12-plugin'):
    try:
      found[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  return found


def fewer_members(result: Check) -> str:
  """What to change for fewer members a round, each on more chips ('' for one run)."""
  if result.members == 1:
    return ''
  fewer = max((k for k in population.group_sizes(len(result.target.devices),
                                                 result.run.plan.batch_size)
               if k < result.members), default=1)
  chips = len(result.target.devices) // fewer
  return (f', or train fewer members at once ({result.members} now, '
          f'{report.counted(result.run.platform.device_count, "chip")} each): '
          f'config.population.seeds of {fewer} seeds trains them on '
          f'{report.counted(chips, "chip")} each')


def failure(result: Check) -> Optional[str]:
  """The one line for a call that does not compile or does not fit, or a population whose
  members' program joins two of them, else None."""
  hbm, kind = result.hbm, result.platform.device_kind
  if result.cross_member_collectives:
    crossing = report.counted(result.cross_member_collectives, 'collective')
    return (f"the population's program has {crossing} joining devices of two members, which "
            'would not train apart: a bug of this version; train the seeds one at a time '
            '(config.population.seeds=())')
  for call in result.calls:
    batch_key = 'batch_size' if call.kind == 'train' else 'eval_batch_size'
    change = f'lower config.{batch_key}' + (
        ' or keep the training set on the host (--config.data.placement=host)'
        if result.run.resident and call.kind == 'train' and result.members == 1 else '') + (
            fewer_members(result))
    if call.error and re.search(r'RESOURCE_EXHAUSTED|out of memory', call.error, re.IGNORECASE):
      return (f'the {call.name} needs more than the {_gib(hbm) if hbm else "memory"} of a {kind} '
              f'(XLA: {call.error}): {change}')
    if call.error:
      return (f'the {call.name} does not compile for {result.target.name}: {call.error}; '
              'check the config on this machine first (python -m resnet_jax.main --config ... '
              '--config.data.source=synthetic)')
    if hbm and call.bytes_per_chip > hbm:
      return (f'the {call.name} needs {_mb(call.bytes_per_chip)} a chip, more than the '
              f'{_gib(hbm)} of a {kind}: {change}' + ('' if result.members > 1
                                                      else ', or use more chips'))
  return None


_TOPOLOGY = flags.DEFINE_string(
    'topology', None, 'A Cloud TPU slice to compile for, as gcloud names its accelerator type '
    '(v4-8, v5litepod-8, v5p-8, v6e-8, v5litepod-256, ...; v5e-8 too) or as jax does (v5e:2x4).')
_GPU = flags.DEFINE_enum('gpu', None, sorted(targets.GPU_SPECS), 'A GPU to compile for instead.')
_GPUS = flags.DEFINE_integer('gpus', 1, "With --gpu: the GPUs of the run's one host.",
                             lower_bound=1)
_OUTPUT = cli.output_flag(None, 'File the JSON goes to (optional).')


def target_from_flags() -> targets.Target:
  if bool(_TOPOLOGY.value) == bool(_GPU.value):
    raise UserError('give one of --topology (a TPU slice, e.g. v5litepod-8) or --gpu (h100, h200)')
  if _TOPOLOGY.value:
    if flags.FLAGS['gpus'].present:
      raise UserError('--gpus counts the GPUs of --gpu; a TPU slice names its chips in --topology')
    return targets.tpu_slice(_TOPOLOGY.value)
  return targets.gpus(_GPU.value, _GPUS.value)


def compile_in_child(config_path: str, target_name: str) -> None:
  """Runs this command again in a child process and exits as it does.

  The compiler can crash the process that calls it (libtpu 0.0.42.1 segfaults on every v6e
  compile): in a child, a crash is one line here instead of a dead command.
  """
  console_logs.watch_command(None)  # The child says its own lines, and breaks its own silences.
  log = console_logs.log_path()
  sys.stdout.flush()
  sys.stderr.flush()
  # The console's streams, not file descriptors 1 and 2: 2 is this command's log file.
  process = subprocess.run([sys.executable, '-m', 'resnet_jax.compile_check', *sys.argv[1:]],
                           env={**os.environ, _CHILD_ENV: log or '-'}, stdout=sys.stdout,
                           stderr=sys.stderr, check=False)
  if process.returncode < 0:
    found = versions()
    compilers = ', '.join(f'{name} {found[name]}' for name in ('libtpu', 'jax-cuda12-plugin')
                          if name in found)
    raise UserError(f'the compiler crashed ({signal.Signals(-process.returncode).name}) while '
                    f'compiling {config_path} for {target_name} ({compilers or "jaxlib"}): a bug '
                    "of the compiler, not of the config; a newer one may compile it (pip install "
                    "-U 'jax[tpu]'), or check another slice" + (f'; its stack is in {log}' if log
                                                                 else ''))
  sys.exit(process.returncode)


def main(argv):
  del argv
  config_path = cli.config_path(sys.argv)
  crash_log = os.environ.get(_CHILD_ENV)
  if crash_log is None:
    compile_in_child(config_path, _TOPOLOGY.value or _GPU.value)
  if crash_log != '-':  # A crash's stack goes to the command's log, not the console.
    faulthandler.enable(open(crash_log, 'a', encoding='utf-8'))  # pylint: disable=consider-using-with
  config = cli.CONFIG.value
  if _OUTPUT.value:
    files.check_writable(_OUTPUT.value, '--output', is_file=True)
  cli.say_outputs(_OUTPUT.value or 'the console')
  target = target_from_flags()
  logging.info('compiling %s for %s (%s, %s)', config_path, target.name, target.description,
               target.devices[0].device_kind)
  result = check(config, target)
  logging.info('%s', format_table(result))
  logging.info('%s', '\n'.join(summary_lines(result)))
  if _OUTPUT.value:
    files.write_atomic(_OUTPUT.value, json.dumps(as_json(result, config_path), indent=2))
    logging.info('wrote %s', _OUTPUT.value)
  line = failure(result)
  if line:
    raise UserError(line)


if __name__ == '__main__':
  cli.run(main, 'compile_check', require_workdir=False)
