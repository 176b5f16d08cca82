"""What a run tells as it goes: its start lines, clock, running sums, progress and epoch lines.

The console gets, in order: what runs where (`log_start`), when the first compile starts and
ends, a progress line right after the first call and then every config.log_every_steps steps or
config.log_every_seconds seconds (the step within its epoch; images/s and the ETA of the epoch
and of the run, from the calls since the last line), one line an epoch, and the final results.
The first call of a process is not timed: it pays for what a compile leaves to the first
execution (loading the program, allocating, the other shapes compiling beside it), and an ETA
from it would say several times the run's time.
"""

import dataclasses
import functools
import time
from typing import Optional

from absl import logging
import ml_collections

from resnet_jax import accelerators
from resnet_jax import platforms
from resnet_jax.reporting import report
from resnet_jax.training import precompile
from resnet_jax.training import steps

# A model this large on a CPU gets a warning at the start (the reference model: 4.7M).
LARGE_FOR_A_CPU = 1_000_000
ELSEWHERE = ('for a first result in under a minute, run the quick start (python -m resnet_jax.main '
             '--config configs/smoke.py --workdir runs/smoke), or install jax for a GPU or TPU: '
             "pip install -e '.[cuda13]' or '.[tpu]' (README, Set up)")


@dataclasses.dataclass
class RunClock:
  """Wall-clock accounting of a run (host side); compile time is what its compiler waited."""
  compiler: Optional[precompile.Compiler] = None
  start: float = dataclasses.field(default_factory=time.time)
  train_seconds: float = 0.0
  train_images: int = 0
  eval_seconds: float = 0.0

  @property
  def compile_seconds(self) -> float:
    return self.compiler.wait_seconds if self.compiler else 0.0

  @property
  def images_per_second(self) -> float:
    return self.train_images / max(self.train_seconds, 1e-9)


@dataclasses.dataclass
class Progress:
  """The train-time mark of an epoch and the timing of the progress lines (the metric sums are
  each member's: `train.Member`).

  Attributes:
    last_log_step: the global step of the last progress line.
    mark: when the train time was last counted (perf_counter).
    compile_mark: the clock's compile_seconds then (compile waits are not train time).
    learning_rates: each member's rate at the last step read back.
    timed_seconds, timed_images: the train time and images of the window's calls, the first
      call of the process left out (the speed of the next line).
    calls: calls read by this process.
  """
  last_log_step: int
  mark: float = 0.0
  compile_mark: float = 0.0
  learning_rates: list = dataclasses.field(default_factory=list)
  last_log_time: float = 0.0  # perf_counter of the last progress line (0: none yet)
  large_on_cpu: bool = False  # the first ETA is then also a warning
  timed_seconds: float = 0.0
  timed_images: int = 0
  calls: int = 0
  warned: bool = False  # the large_on_cpu warning was given

  def due(self, config: ml_collections.ConfigDict, step: int, end_of_epoch: bool) -> bool:
    """Whether a progress line is due after the call that ended at global step `step`."""
    return (not self.last_log_time or end_of_epoch
            or step - self.last_log_step >= config.log_every_steps
            or time.perf_counter() - self.last_log_time >= config.log_every_seconds)

  def add_call(self, clock: RunClock, images: int, learning_rates: list[float]) -> None:
    """Counts a finished call: its train time and images (every member's) on the clock."""
    now = time.perf_counter()
    seconds = now - self.mark - (clock.compile_seconds - self.compile_mark)
    clock.train_seconds += seconds
    self.mark, self.compile_mark = now, clock.compile_seconds
    clock.train_images += images
    if self.calls:
      self.timed_seconds += seconds
      self.timed_images += images
    self.calls += 1
    self.learning_rates = learning_rates


def format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'


def log_progress(members, progress: Progress, config: ml_collections.ConfigDict,
                 steps_an_epoch: int, epoch: int, step: int) -> None:
  """The progress line after global step `step` of epoch `epoch` (0-based), and each member's
  scalars in its writer: epoch, step within it, loss, accuracy, lr; images/s and ETAs where calls
  were timed.

  Args:
    members: the loop's `train.Member`s: each has its metric sums since the last line (`window`,
      emptied here) and its writer. The line gives their loss and accuracy together, and for
      several members the images of all (member-images/s).
    progress: the loop's timing.
    config: the (first member's) config.
    steps_an_epoch: the plan's steps an epoch.
    epoch: the epoch, 0-based.
    step: the global step.
  """
  computed = steps.mean_of_sums(functools.reduce(steps.add_sums, [m.window for m in members]))
  learning_rates = progress.learning_rates
  low, high = min(learning_rates), max(learning_rates)
  rate = f'{low:.4g}' if low == high else f'{low:.4g}-{high:.4g}'
  line = (f'epoch {epoch + 1}/{config.num_epochs} step {step - epoch * steps_an_epoch}/'
          f'{steps_an_epoch}: loss {computed["loss"]:.4f} acc {100 * computed["accuracy"]:.2f}% '
          f'lr {rate}')
  images_per_second = None
  if progress.timed_seconds > 0:
    images_per_second = progress.timed_images / progress.timed_seconds
    seconds_a_step = progress.timed_seconds * config.batch_size * len(members) / (
        progress.timed_images)
    run_left = format_seconds((steps_an_epoch * config.num_epochs - step) * seconds_a_step)
    speed = (f'{images_per_second:.0f} images/s' if len(members) == 1 else
             f'{images_per_second:.0f} member-images/s ({len(members)} members)')
    line += (f', {speed}, ETA epoch '
             f'{format_seconds(((epoch + 1) * steps_an_epoch - step) * seconds_a_step)}, run '
             f'{run_left}')
  else:
    line += '; images/s and ETA from the next line (the first call is not timed)'
  for member, learning_rate in zip(members, learning_rates):
    member_computed = steps.mean_of_sums(member.window)
    scalars = {'train_loss': member_computed['loss'],
               'train_accuracy': member_computed['accuracy'], 'learning_rate': learning_rate}
    if images_per_second is not None:  # Its own images.
      scalars['images_per_second'] = images_per_second / len(members)
    member.writer.write_scalars(step, scalars)
    member.window = {}
  logging.info('%s', line)
  if progress.large_on_cpu and progress.timed_seconds > 0 and not progress.warned:
    logging.warning('measured on the calls after the first, this run would take %s on this '
                    'CPU; %s', run_left, ELSEWHERE)
    progress.warned = True
  progress.last_log_step = step
  progress.timed_seconds, progress.timed_images = 0.0, 0
  progress.last_log_time = time.perf_counter()


def log_start(run) -> None:
  """What runs where, in two lines, and a warning where the machine is not what was expected.

  Args:
    run: the `runs.Run` about to train.
  """
  plan, splits, platform = run.plan, run.splits, run.platform
  logging.info('data: %s images; %s placement', splits.source, run.placement)
  logging.info('running on %d x %s (%s), %d process%s; %s, batch %d (%d a device), %s an '
               'epoch, up to %d a compiled call', platform.device_count, platform.device_kind,
               platform.name, platform.process_count,
               '' if platform.process_count == 1 else 'es', run.compute_dtype, plan.batch_size,
               plan.batch_size // plan.num_devices, report.counted(plan.steps, 'step'),
               plan.steps_per_call)
  warning = accelerators.accelerator_warning(platform.name)
  if warning:
    logging.warning('%s', warning)
  if is_large_on_cpu(run.parameters, platform):
    logging.warning('the model (%s parameters) is large for a CPU: an epoch may take hours; the '
                    'calls after the first measure how long', f'{run.parameters:,}')


def is_large_on_cpu(parameters: int, platform: platforms.Platform) -> bool:
  """Whether a model of this size runs on a CPU here, where it would take hours."""
  return platform.is_cpu and parameters > LARGE_FOR_A_CPU


def log_compile(seconds: float, more: int) -> None:
  logging.info('compiled the first train call in %.1f s%s', seconds,
               f" ({report.counted(more, 'more shape')} compiling while it trains)" if more else '')


def log_epoch(config: ml_collections.ConfigDict, records: list[dict]) -> None:
  """One line an epoch: the run's record, or a population's members' (their mean, the range of
  their validation accuracies)."""
  if len(records) > 1:
    mean = lambda key: sum(r[key] for r in records) / len(records)
    line = (f"train loss {mean('train_loss'):.4f} acc {100 * mean('train_accuracy'):.2f}% "
            f'(mean of {len(records)} members)' if 'train_loss' in records[0] else
            'no training metrics (checkpoints without them)')
    if 'val_accuracy' in records[0]:
      accuracies = [100 * r['val_accuracy'] for r in records]
      line += (f", validation loss {mean('val_loss'):.4f} acc {sum(accuracies) / len(records):.2f}%"
               f' ({min(accuracies):.2f}-{max(accuracies):.2f}%)')
    logging.info('epoch %d/%d: %s (%.1fs)', records[0]['epoch'], config.num_epochs, line,
                 records[0]['epoch_seconds'])
    return
  record = records[0]
  train = (f"train loss {record['train_loss']:.4f} acc {100 * record['train_accuracy']:.2f}%"
           if 'train_loss' in record else 'no training metrics (a checkpoint without them)')
  val = (f", validation loss {record['val_loss']:.4f} acc {100 * record['val_accuracy']:.2f}%"
         if 'val_accuracy' in record else '')
  logging.info('epoch %d/%d: %s%s (%.1fs)', record['epoch'], config.num_epochs, train, val,
               record['epoch_seconds'])
