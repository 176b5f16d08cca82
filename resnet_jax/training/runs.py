"""A run set up from its config: checked config, data, mesh, epoch plan, model and optimizer, and
the results fields every report of it has (`run_results`).

`setup_run` is what every command does first (train, evaluate, inspect, benchmark); the `Run`
record it returns is what they pass on. It never touches the workdir.
"""

import dataclasses
import functools
import hashlib
from typing import Any

import jax
import ml_collections
import numpy as np

from resnet_jax import cli
from resnet_jax import files
from resnet_jax import models
from resnet_jax import platforms
from resnet_jax.data import augment
from resnet_jax.data import input_pipeline
from resnet_jax.errors import UserError
from resnet_jax.models import optim
from resnet_jax.reporting import report
from resnet_jax.training import checkpoints
from resnet_jax.training import feed
from resnet_jax.training import steps


@dataclasses.dataclass(frozen=True)
class Run:
  """What a command sets up before it trains or scores."""
  config: ml_collections.ConfigDict
  workdir: str
  ctx: steps.StepContext
  optimizer: Any  # optim.Optimizer
  splits: input_pipeline.Splits
  mesh: jax.sharding.Mesh
  plan: feed.EpochPlan
  resident: bool  # the training set on the devices (feed.resident_placement)
  parameters: int  # the model's trainable parameters
  platform: platforms.Platform  # the mesh's devices, which every platform decision reads

  @property
  def placement(self) -> str:
    return 'device' if self.resident else 'host'

  def abstract_state(self) -> steps.TrainState:
    return feed.abstract_train_state(self.ctx, self.config.data.image_size, self.mesh)

  @functools.cached_property
  def identity(self) -> dict:
    """What a checkpoint of this run must share with a run resuming it."""
    return checkpoints.run_identity(self.config, data_fingerprint(self.splits), self.plan.steps,
                                    self.compute_dtype)

  @property
  def compute_dtype(self) -> str:
    return models.compute_dtype(self.config.model, self.platform)


def data_fingerprint(splits: input_pipeline.Splits) -> str:
  """A hash of every split's images and labels (about 0.2 s for CIFAR-10)."""
  digest = hashlib.blake2b(digest_size=16)
  for array in (splits.train_images, splits.train_labels, splits.val_images, splits.val_labels,
                splits.test_images, splits.test_labels):
    array = np.ascontiguousarray(array)
    digest.update(f'{array.dtype}{array.shape}'.encode())
    digest.update(memoryview(array).cast('B'))
  return digest.hexdigest()


# config.batch_statistics: over the global batch, or within each device's shard.
BATCH_STATISTICS = ('global', 'per_device')


def validate_run_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError, naming the key, for the first loop setting out of range."""
  checks = [
      ('num_epochs', config.num_epochs >= 1, 'must be >= 1'),
      ('eval_batch_size', config.eval_batch_size >= 1, 'must be >= 1'),
      ('eval_every_epochs', config.eval_every_epochs >= 1, 'must be >= 1'),
      ('checkpoint_every_epochs', config.checkpoint_every_epochs >= 1, 'must be >= 1'),
      ('checkpoint_min_seconds', config.checkpoint_min_seconds >= 0, 'must be >= 0'),
      ('log_every_steps', config.log_every_steps >= 1, 'must be >= 1'),
      ('log_every_seconds', config.log_every_seconds > 0, 'must be > 0'),
      ('steps_per_call', config.steps_per_call >= 0, 'must be >= 0 (0 = auto)'),
      ('ema_decay', 0 <= config.ema_decay < 1, 'must be in [0, 1) (0 = no EMA)'),
      ('param_histograms_every_epochs', config.param_histograms_every_epochs >= 0,
       'must be >= 0 (0 = none)'),
      ('batch_statistics', config.batch_statistics in BATCH_STATISTICS,
       f'must be one of {", ".join(BATCH_STATISTICS)}'),
  ]
  for key, ok, rule in checks:
    if not ok:
      raise UserError(f'config.{key}={config[key]!r} is invalid: {rule}')


def check_config(config: ml_collections.ConfigDict) -> None:
  """UserError for the first setting of config no run could train, without loading data.

  The loop's settings, the model, augmentation, optimizer and schedule (the parameter budget
  aside): what a sweep checks of every point before its first trains.
  """
  validate_run_config(config)
  models.validate(config.model)
  augment.check_config(config.augment)
  optim.create_optimizer(config, 1)


def setup_run(config: ml_collections.ConfigDict, workdir: str,
              splits: input_pipeline.Splits = None, devices=None) -> Run:
  """Checks the config, loads the data and builds model and optimizer; UserError on mistakes.

  `splits` skips loading the data again, e.g. for several benchmarks. `devices`: the mesh's
  (default: every device of every process, `jax.devices()`), e.g. a TPU topology's to compile
  for; the platform decisions are theirs (`platforms.Platform`).
  """
  check_config(config)
  parameters = models.check_budget(config.model, config.data.image_size)
  if splits is None:
    splits = input_pipeline.load_splits(config.data, config.seed, config.model.num_classes)
  mesh = feed.create_mesh(jax.devices() if devices is None else devices)
  platform = platforms.Platform.of(list(mesh.devices.flat))
  plan = feed.epoch_plan(config, len(splits.train_labels), platform)
  optimizer = optim.create_optimizer(config, plan.steps)
  groups = platform.device_count if config.batch_statistics == 'per_device' else 1
  ctx = steps.StepContext(model=models.build_model(config.model, groups, platform),
                          tx=optimizer.tx, learning_rate=optimizer.learning_rate, config=config,
                          mean=tuple(float(m) for m in splits.mean),
                          std=tuple(float(s) for s in splits.std), platform=platform,
                          batch_groups=groups)
  resident = feed.resident_placement(config, splits.train_images, splits.val_images, platform)
  return Run(config=config, workdir=workdir, ctx=ctx, optimizer=optimizer, splits=splits,
             mesh=mesh, plan=plan, resident=resident, parameters=parameters, platform=platform)


def restore(run: Run, checkpoint: str = 'latest') -> tuple[steps.TrainState,
                                                          checkpoints.CheckpointMeta]:
  """The state and metadata of the run's latest or best checkpoint, checked to be this run's.

  What every command reading a run's checkpoint calls (evaluate, inspect, export).

  Raises:
    UserError: no such checkpoint, or one whose recorded run (config keys, data) differs from
      run's (`checkpoints.check_same_run`), e.g. after a hand-edited config.json.
  """
  state, meta = checkpoints.restore_named(run.workdir, checkpoint, run.abstract_state(),
                                          keeps_best=run.config.keep_best_checkpoint)
  check_recorded_run(run, meta, checkpoint)
  return state, meta


def check_recorded_run(run: Run, meta: checkpoints.CheckpointMeta,
                       checkpoint: str = 'latest') -> None:
  """UserError unless a checkpoint's meta records run's config and data (free keys aside)."""
  checkpoints.check_same_run(run.identity, meta,
                             files.as_path(run.workdir) / 'checkpoints' / checkpoint,
                             reading=True)


def run_results(run: Run, parameters: int, test: dict) -> dict:
  """The results fields every report has: the system, its test score, data and machine."""
  config, splits, platform = run.config, run.splits, run.platform
  return {
      'model': config.model.name,
      'parameters': parameters,
      'epochs': config.num_epochs,
      'final_test_accuracy': test['accuracy'],
      'final_test_loss': test['loss'],
      'device_kind': platform.device_kind,
      'platform': platform.name,
      'device_count': platform.device_count,
      'process_count': platform.process_count,
      'placement': run.placement,
      'compute_dtype': run.compute_dtype,
      'steps_per_call': run.plan.steps_per_call,
      'batch_statistics': config.batch_statistics,
      'data_source': splits.source,
      'train_examples': len(splits.train_labels),
      'val_examples': len(splits.val_labels),
      'test_examples': len(splits.test_labels),
      'class_names': [str(name) for name in splits.class_names],
      'seed': config.seed,
      'versions': report.versions(),
      # The figures a config names (no 0.0 for a figure it has not).
      'reference': {key: value for key, value in config.reference.to_dict().items() if value},
      'workdir': str(files.as_path(run.workdir)),
      'command': cli.command_line(),
      'preempted': False,
  }
