"""A run set up from its config: checked config, data, mesh, epoch plan, model and optimizer, and
the results fields every report of it has (`run_results`).

`setup_run` is what every command does first (train, evaluate, inspect, benchmark); the `Run`
record it returns is what they pass on. It never writes to the workdir.
"""

import dataclasses
import functools
import hashlib
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from resnet_jax import defaults
from resnet_jax import files
from resnet_jax import models
from resnet_jax import platforms
from resnet_jax.data import augment
from resnet_jax.data import input_pipeline
from resnet_jax.data import sources
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
  data: dict = dataclasses.field(default_factory=dict)  # {'source', 'data_dir'} read ({}: given)

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
      ('batch_size', config.batch_size >= 1, 'must be >= 1'),
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

  The loop's settings, the data's, the model, augmentation, optimizer and schedule (the
  parameter budget aside): what a sweep checks of every point before its first trains.
  """
  validate_run_config(config)
  input_pipeline.check_config(config.data)
  models.validate(config.model)
  augment.check_config(config.augment)
  optim.create_optimizer(config, 1)


def recorded_data(config: ml_collections.ConfigDict, workdir: str) -> Optional[
    ml_collections.ConfigDict]:
  """config.data as the run in workdir read it, where config.data.source is 'auto' and the run's
  checkpoint records what `auto` found then; else None (config.data is read as it is).

  So a run is read with its own data even where `auto` would now find another copy (one
  converted since, in another order). A config.data.data_dir given now says where it lies now.
  """
  if config.data.source != 'auto' or not workdir:
    return None
  try:
    recorded = checkpoints.read_meta(workdir).data
  except UserError:  # No checkpoint: a new run (or a damaged one, which its restore reports).
    return None
  if not recorded:  # A checkpoint of an older version.
    return None
  data_cfg = config.data.copy_and_resolve_references()
  data_cfg.source = recorded['source']
  data_cfg.data_dir = config.data.data_dir or recorded['data_dir']
  return data_cfg


def load_data(config: ml_collections.ConfigDict, workdir: str) -> tuple[
    input_pipeline.Splits, dict]:
  """The splits a command on workdir reads, and their source ({'source', 'data_dir'}).

  Raises:
    UserError: the data is missing or unreadable; for a run whose checkpoint records the source
      `auto` found, a line saying the run cannot be read with its own data.
  """
  data_cfg = recorded_data(config, workdir)
  if data_cfg is None:
    data_cfg = sources.resolve_source(config.data)
    splits = input_pipeline.load_splits(data_cfg, config.seed, config.model.num_classes)
  else:
    try:
      splits = input_pipeline.load_splits(data_cfg, config.seed, config.model.num_classes)
    except UserError as e:
      raise UserError(f'the run in {workdir} trained on {data_cfg.source} data in '
                      f"{data_cfg.data_dir or 'its default place'} (what config.data.source="
                      f"'auto' found then), which cannot be read now ({e}); put it back, or give "
                      'its new place as --config.data.data_dir') from e
  data_dir = data_cfg.data_dir  # Recorded whole: a later command may run from elsewhere.
  if data_dir and not files.is_url(data_dir):
    data_dir = os.path.abspath(data_dir)
  return splits, {'source': data_cfg.source, 'data_dir': data_dir}


def setup_run(config: ml_collections.ConfigDict, workdir: str,
              splits: input_pipeline.Splits = None, devices=None) -> Run:
  """Checks the config, loads the data and builds model and optimizer; UserError on mistakes.

  The data is `load_data`'s: a run in workdir is read with the data it trained on. `splits`
  skips loading the data again, e.g. for several benchmarks. Nothing in workdir is written.
  `devices`: the mesh's (default: every device of every process, `jax.devices()`), e.g. a TPU
  topology's to compile for; the platform decisions are theirs (`platforms.Platform`).
  """
  check_config(config)
  parameters = models.check_budget(config.model, config.data.image_size)
  mesh = feed.create_mesh(jax.devices() if devices is None else devices)
  platform = platforms.Platform.of(list(mesh.devices.flat))
  feed.check_batch_size(config.batch_size, platform.device_count)  # Before the data loads.
  data = {}
  if splits is None:
    splits, data = load_data(config, workdir)
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
             mesh=mesh, plan=plan, resident=resident, parameters=parameters, platform=platform,
             data=data)


def restore(run: Run, checkpoint: str = 'latest') -> tuple[steps.TrainState,
                                                          checkpoints.CheckpointMeta]:
  """The state and metadata of the run's latest or best checkpoint, checked to be this run's.

  What every command reading a run's checkpoint calls (evaluate, inspect, export).

  Raises:
    UserError: no such checkpoint, or one whose recorded run (config keys, data) differs from
      run's (`checkpoints.check_same_run`), e.g. after a hand-edited config.json.
  """
  return checkpoints.restore_named(run.workdir, checkpoint, run.abstract_state(),
                                  keeps_best=run.config.keep_best_checkpoint,
                                  identity=run.identity)


def check_recorded_run(run: Run, meta: checkpoints.CheckpointMeta,
                       checkpoint: str = 'latest') -> None:
  """UserError unless a checkpoint's meta records run's config and data (free keys aside)."""
  checkpoints.check_same_run(run.identity, meta,
                             files.as_path(run.workdir) / 'checkpoints' / checkpoint,
                             reading=True)


def run_results(run: Run, parameters: int, test: dict, command: Optional[str]) -> dict:
  """The results fields every report has: the system, its test score, data and machine, and
  the command line that made them (None: started from Python)."""
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
      'validates_on_test': defaults.validates_on_test(config.data.validation),
      'train_examples': len(splits.train_labels),
      'val_examples': len(splits.val_labels),
      'test_examples': len(splits.test_labels),
      'class_names': [str(name) for name in splits.class_names],
      'seed': config.seed,
      'versions': report.versions(),
      # The figures a config names (no 0.0 for a figure it has not).
      'reference': {key: value for key, value in config.reference.to_dict().items() if value},
      'workdir': str(files.as_path(run.workdir)),
      'command': command,
      'preempted': False,
  }
