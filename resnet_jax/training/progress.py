"""What a run tells as it goes: its start lines, clock, running sums, progress and epoch lines.

The console gets, in order: what runs where (`log_start`), when the first compile starts and
ends, a progress line right after the first call and then every config.log_every_steps steps or
config.log_every_seconds seconds (images/s, ETA of the epoch and of the run), one line an epoch,
and the final results (`log_results`).
"""

import dataclasses
import time
from typing import Optional

from absl import logging
import ml_collections

from resnet_jax import accelerators
from resnet_jax import platforms
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
  """The host's running metric sums (`steps.metric_sums` dicts) and the train-time mark of an epoch.

  Attributes:
    epoch_sums: the epoch's sums so far.
    last_log_step: the global step of the last progress line.
    window: sums since that line.
    mark: when the train time was last counted (perf_counter).
    compile_mark: the clock's compile_seconds then (compile waits are not train time).
    learning_rate: of the last step read back.
  """
  epoch_sums: dict
  last_log_step: int
  window: dict = dataclasses.field(default_factory=dict)
  mark: float = 0.0
  compile_mark: float = 0.0
  learning_rate: float = float('nan')
  last_log_time: float = 0.0  # perf_counter of the last progress line (0: none yet)
  large_on_cpu: bool = False  # the first line's ETA is then also a warning

  def due(self, config: ml_collections.ConfigDict, step: int, end_of_epoch: bool) -> bool:
    """Whether a progress line is due after the call that ended at global step `step`."""
    return (not self.last_log_time or end_of_epoch
            or step - self.last_log_step >= config.log_every_steps
            or time.perf_counter() - self.last_log_time >= config.log_every_seconds)

  def add_call(self, clock: RunClock, summed: steps.Metrics, images: int,
               learning_rate: float) -> None:
    """Counts a finished call: its train time and images on the clock, its sums in both windows."""
    now = time.perf_counter()
    clock.train_seconds += now - self.mark - (clock.compile_seconds - self.compile_mark)
    self.mark, self.compile_mark = now, clock.compile_seconds
    clock.train_images += images
    sums = steps.metric_sums(summed)
    self.epoch_sums = steps.add_sums(self.epoch_sums, sums)
    self.window = steps.add_sums(self.window, sums)
    self.learning_rate = learning_rate


def format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'


def log_progress(writer, progress: Progress, clock: RunClock, config: ml_collections.ConfigDict,
                 steps_an_epoch: int, epoch: int, step: int) -> None:
  """The progress line (and its scalars): epoch, step, loss, accuracy, lr, images/s, ETAs."""
  computed = steps.mean_of_sums(progress.window)
  total_steps = steps_an_epoch * config.num_epochs
  images_per_second = clock.images_per_second
  seconds_a_step = config.batch_size / max(images_per_second, 1e-9)
  epoch_left = (epoch + 1) * steps_an_epoch - step
  learning_rate = progress.learning_rate
  writer.write_scalars(step, {'train_loss': computed['loss'],
                              'train_accuracy': computed['accuracy'],
                              'learning_rate': learning_rate,
                              'images_per_second': images_per_second})
  logging.info('epoch %d/%d step %d/%d: loss %.4f acc %.2f%% lr %.4g, %.0f images/s, '
               'ETA epoch %s, run %s', epoch + 1, config.num_epochs, step, total_steps,
               computed['loss'], 100 * computed['accuracy'], learning_rate, images_per_second,
               format_seconds(epoch_left * seconds_a_step),
               format_seconds((total_steps - step) * seconds_a_step))
  if progress.large_on_cpu and not progress.last_log_time:
    logging.warning('measured on the first call, this run would take %s on this CPU; %s',
                    format_seconds((total_steps - step) * seconds_a_step), ELSEWHERE)
  progress.window, progress.last_log_step = {}, step
  progress.last_log_time = time.perf_counter()


def log_start(run) -> None:
  """What runs where, in two lines, and a warning where the machine is not what was expected.

  Args:
    run: the `runs.Run` about to train.
  """
  plan, splits, platform = run.plan, run.splits, run.platform
  logging.info('data: %s images; %s placement', splits.source, run.placement)
  logging.info('running on %d x %s (%s), %d process%s; %s, batch %d (%d a device), %d steps an '
               'epoch, up to %d a compiled call', platform.device_count, platform.device_kind,
               platform.name, platform.process_count,
               '' if platform.process_count == 1 else 'es', run.compute_dtype, plan.batch_size,
               plan.batch_size // plan.num_devices, plan.steps, plan.steps_per_call)
  warning = accelerators.accelerator_warning(platform.name)
  if warning:
    logging.warning('%s', warning)
  if is_large_on_cpu(run.parameters, platform):
    logging.warning('the model (%s parameters) is large for a CPU: an epoch may take hours; the '
                    'first call measures how long', f'{run.parameters:,}')


def is_large_on_cpu(parameters: int, platform: platforms.Platform) -> bool:
  """Whether a model of this size runs on a CPU here, where it would take hours."""
  return platform.is_cpu and parameters > LARGE_FOR_A_CPU


def log_compile(seconds: float, more: int) -> None:
  logging.info('compiled the first train call in %.1f s%s', seconds,
               f' ({more} more shapes compiling while it trains)' if more else '')


def log_epoch(config: ml_collections.ConfigDict, record: dict) -> None:
  train = (f"train loss {record['train_loss']:.4f} acc {100 * record['train_accuracy']:.2f}%"
           if 'train_loss' in record else 'no training metrics (a checkpoint without them)')
  val = (f", validation loss {record['val_loss']:.4f} acc {100 * record['val_accuracy']:.2f}%"
         if 'val_accuracy' in record else '')
  logging.info('epoch %d/%d: %s%s (%.1fs)', record['epoch'], config.num_epochs, train, val,
               record['epoch_seconds'])
