"""Checkpoints of a run: save and restore, what a resume must share, and when to stop (SIGTERM).

A run's workdir holds `checkpoints/latest` (every epoch, and at a SIGTERM) and
`checkpoints/best` (the best by validation accuracy), orbax managers keeping one step each. A
checkpoint is the `steps.TrainState` and a `CheckpointMeta`: the position in the epoch, the
epoch's running metric sums, the history and the run's identity, so a resumed run continues
bitwise. On several processes, process 0's view of storage decides every question about it.
"""

import contextlib
import dataclasses
import itertools
import os
import signal
import threading
from typing import Optional

from etils import epath
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from resnet_jax import console_logs
from resnet_jax import defaults
from resnet_jax import files
from resnet_jax.errors import UserError, one_line
from resnet_jax.training import run_config
from resnet_jax.training import steps

CHECKPOINTS = ('latest', 'best')


@dataclasses.dataclass(frozen=True)
class CheckpointMeta:
  """What a checkpoint holds besides the state (saved as JSON).

  Attributes:
    epoch: epochs finished.
    step_in_epoch: steps of the next epoch already trained (a mid-epoch stop).
    train_sums: that epoch's running metric sums (`steps.metric_sums` dicts).
    best_val_accuracy: the best validation accuracy so far (-1: none yet).
    best_epoch: the epoch that scored it.
    history: one record per finished epoch.
    run: the run's identity (`run_identity`), checked on resume.
    elapsed_seconds: the run's wall time so far, summed over the processes that trained it.
    data: the source the run reads ({'source', 'data_dir'}, `auto` resolved), so that a command
      reading the run later reads the same, whatever `auto` would find then.
  """
  epoch: int = 0
  step_in_epoch: int = 0
  train_sums: dict = dataclasses.field(default_factory=dict)
  best_val_accuracy: float = -1.0
  best_epoch: int = 0
  history: list = dataclasses.field(default_factory=list)
  run: dict = dataclasses.field(default_factory=dict)
  elapsed_seconds: float = 0.0
  data: dict = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, saved: dict) -> 'CheckpointMeta':
    """The meta of a saved dict; fields that older checkpoints lack take their defaults."""
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{name: value for name, value in saved.items() if name in names})


def checkpoint_manager(directory: epath.PathLike, *, read_only: bool = False,
                       keep: int = 1) -> ocp.CheckpointManager:
  """A manager of a run's checkpoints in directory, keeping the `keep` latest."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                         read_only=read_only)
  return ocp.CheckpointManager(files.as_path(directory), options=options,
                               item_names=('state', 'meta'))


def process_zero_decides(value: Optional[int]) -> Optional[int]:
  """Process 0's value (an int >= 0, or None) on every process.

  What each process reads of shared storage (a bucket's listing) may differ for a moment; a
  decision that sent processes down different paths would leave some waiting in a collective.
  """
  if jax.process_count() == 1:
    return value
  agreed = int(multihost_utils.broadcast_one_to_all(
      np.asarray(-1 if value is None else value, np.int32)))
  return None if agreed < 0 else agreed


@contextlib.contextmanager
def writes_to(manager: ocp.CheckpointManager):
  """Turns a failed write into one UserError naming the folder.

  Orbax saves in a background thread: a folder deleted, filled or made read-only under it
  surfaces at the next save, wait or close, as whatever that thread raised (often a ValueError).
  """
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'saving a checkpoint in {manager.directory} failed ({one_line(e)}): was '
                    'the folder deleted, its disk filled or made read-only while this run wrote '
                    'to it? Checkpoints already saved are kept; fix it and rerun the same command '
                    'to resume, or start again in a new --workdir') from e


def save_checkpoint(manager: ocp.CheckpointManager, state: steps.TrainState,
                    meta: CheckpointMeta) -> None:
  """Saves state and meta at the state's step, unless a checkpoint of that step exists.

  One exists when a run that died without a clean stop (no SIGTERM) is resumed and replays steps
  it had saved, e.g. a best checkpoint written after the latest one. The existing checkpoint is
  kept rather than deleted and rewritten, so there is never a moment without one.
  """
  step = int(jax.device_get(state.step))
  if not process_zero_decides(int(manager.directory.exists())):
    # Orbax would quietly make the folder again, and the run would go on without the checkpoints
    # a resume (or the best model) needs.
    raise UserError(f'{manager.directory} was deleted while this run was writing to it, with the '
                    'checkpoints it held; start the run again in a new --workdir (or put the '
                    'folder back and rerun the same command to resume from it)')
  if process_zero_decides(int(step in manager.all_steps())):
    return
  with writes_to(manager):
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta.to_json())), force=True)


def wait_for_saves(manager: ocp.CheckpointManager) -> None:
  """Returns once the manager's saves are on disk; UserError if one failed."""
  with writes_to(manager):
    manager.wait_until_finished()


def close(manager: ocp.CheckpointManager) -> None:
  """Waits for the manager's saves, then closes it; UserError if a save failed."""
  with writes_to(manager):
    manager.wait_until_finished()
    manager.close()


def restore_checkpoint(manager: ocp.CheckpointManager, abstract_state: steps.TrainState,
                       step: Optional[int] = None, *, identity: Optional[dict] = None,
                       reading: bool = False) -> tuple[steps.TrainState, CheckpointMeta]:
  """The state and metadata saved at `step` (default: the latest); UserError if unusable.

  With `identity`, the checkpoint's recorded run is checked against it (`check_same_run`, with
  `reading`) before the state is restored: a config whose change alters a shape is refused
  naming the key, not with what orbax says of the shapes.
  """
  step = manager.latest_step() if step is None else step
  meta = _restore_meta(manager, step)
  if identity is not None:
    check_same_run(identity, meta, manager.directory, reading=reading)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'checkpoint {manager.directory}/{step} cannot be restored into this config '
                    f'({one_line(e)}): it is damaged or was written by another config; use the '
                    'config it was trained with, or move the checkpoint aside or use a new '
                    '--workdir to start over') from e
  return restored.state, meta


def _restore_meta(manager: ocp.CheckpointManager, step: int) -> CheckpointMeta:
  """The metadata saved at `step`, without the state; UserError if unreadable."""
  try:
    restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'checkpoint {manager.directory}/{step} cannot be read ({one_line(e)}): '
                    'it is damaged; move it aside, or train the run again') from e
  return CheckpointMeta.from_json(restored.meta)


@contextlib.contextmanager
def _named_manager(workdir: str, checkpoint: str, keeps_best: bool):
  """A read-only manager of a run's latest or best checkpoint; UserError if there is none."""
  if checkpoint not in CHECKPOINTS:
    raise UserError(f'--checkpoint={checkpoint} is not one of {", ".join(CHECKPOINTS)}')
  directory = files.as_path(workdir) / 'checkpoints' / checkpoint
  manager = checkpoint_manager(directory, read_only=True) if _has_steps(directory) else None
  try:
    if manager is None or manager.latest_step() is None:
      raise UserError(missing_checkpoint(workdir, checkpoint, keeps_best))
    yield manager
  finally:
    if manager is not None:
      manager.close()


def restore_named(workdir: str, checkpoint: str, abstract_state: steps.TrainState, *,
                  keeps_best: bool = True,
                  identity: Optional[dict] = None) -> tuple[steps.TrainState, CheckpointMeta]:
  """A run's latest or best checkpoint, checked against identity as a reader's; UserError if
  there is none, or it is another run's.

  keeps_best: the run's config.keep_best_checkpoint (without one, 'best' is refused as such).
  """
  with _named_manager(workdir, checkpoint, keeps_best) as manager:
    return restore_checkpoint(manager, abstract_state, identity=identity, reading=True)


def read_meta(workdir: str, checkpoint: str = 'latest') -> CheckpointMeta:
  """The meta of a run's latest or best checkpoint, without its state; UserError if none."""
  with _named_manager(workdir, checkpoint, keeps_best=True) as manager:
    return _restore_meta(manager, manager.latest_step())


def _has_steps(directory) -> bool:
  """Whether an orbax checkpoint folder holds a step (a folder named by its number)."""
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def missing_checkpoint(workdir: str, checkpoint: str, keeps_best: bool = True) -> str:
  """The line for a checkpoint the workdir lacks, offering the latest where it has one."""
  directory = files.as_path(workdir) / 'checkpoints' / checkpoint
  if checkpoint == 'best' and not keeps_best:
    return (f'the run in {workdir} keeps no best checkpoint (config.keep_best_checkpoint=False); '
            'use --checkpoint=latest')
  if checkpoint != 'latest' and _has_steps(directory.parent / 'latest'):
    return (f'no {checkpoint} checkpoint in {directory} (no epoch was validated yet, or '
            'config.keep_best_checkpoint is off), but the run has a latest one: use '
            '--checkpoint latest')
  return (f'no checkpoint in {directory}: train first (python -m resnet_jax.main --config ... '
          f'--workdir={workdir}), or check --workdir')


def run_identity(config: ml_collections.ConfigDict, data_fingerprint: str,
                 steps_an_epoch: int, compute_dtype: str) -> dict:
  """What a checkpoint's run must share with a run resuming it (saved in its meta, flat JSON).

  Every config key but `run_config.RESUMABLE_KEYS`, the data the run trains and validates on
  (a fingerprint of its images and labels: the same size is not the same data), the steps an
  epoch, and the compute dtype (`models.compute_dtype`: model.dtype='auto' is bfloat16 on a
  GPU, float32 on a CPU).
  """
  identity = {f'config.{key}': value for key, value in defaults.flat_json(config).items()
              if not run_config.is_free(key, run_config.RESUMABLE_KEYS)}
  return identity | {DATA_KEY: data_fingerprint, STEPS_KEY: steps_an_epoch,
                     DTYPE_KEY: compute_dtype}


DATA_KEY = 'data (a fingerprint of its images and labels)'
STEPS_KEY = 'steps an epoch'
DTYPE_KEY = 'compute dtype (model.dtype on this platform)'
# What a command reading a checkpoint (evaluate, inspect, export, compare) may set otherwise than
# the run that saved it: how it scores, where the data lies, and the device count and platform
# (the steps an epoch and the compute dtype of model.dtype='auto' follow them).
READER_FREE_KEYS = tuple(f'config.{key}' for key in run_config.FREE_KEYS) + (STEPS_KEY, DTYPE_KEY)


def check_same_run(identity: dict, meta: CheckpointMeta, directory, *,
                   reading: bool = False) -> None:
  """UserError naming the settings in which identity's run differs from the checkpoint's.

  The one check of a checkpoint against the config that uses it: a resume (which may change only
  `run_config.RESUMABLE_KEYS`), and, with `reading`, every command that reads a run (which may
  change only READER_FREE_KEYS besides). Only what both record is compared: a checkpoint of an
  older version records less.
  """
  changes = run_config.changed(meta.run, identity, READER_FREE_KEYS if reading else (),
                               both=True)
  if not changes:
    return
  (name, (saved, now)), *others = changes.items()
  also = f'also differ: {", ".join(key for key, _ in others[:6])}; ' if others else ''
  saved, now = (tuple(v) if isinstance(v, list) else v for v in (saved, now))
  if reading:
    raise UserError(f'the checkpoint in {directory} was trained with {name} = {saved}, but the '
                    f'config this command builds the model from gives {now} ({also}was '
                    f'{run_config.CONFIG_FILE} edited, or --config another run\'s?); pass '
                    '--config=<the config file the run was trained with> and its overrides, '
                    f'or put back the run\'s own {run_config.CONFIG_FILE}')
  raise UserError(f'the checkpoint in {directory} was trained with {name} = {saved}, the '
                  f'config gives {now}; resume with the original config, or use a new '
                  f'--workdir ({also}a resume may change only '
                  f'{", ".join(run_config.RESUMABLE_KEYS)} and config.reference)')


# JAX's preemption sync point counts calls over the whole process, which may train several runs
# (a sweep): the ids given to it must keep rising from one run to the next.
_PREEMPTION_CALL_IDS = itertools.count(1)


class StopSignals:
  """Whether SIGTERM (a preemption) or Ctrl-C (SIGINT) asked the run to stop; read once a call.

  Every process answers alike for the same call. One process: a handler sets a flag. Several:
  JAX's preemption service (started by jax.distributed.initialize, which hears SIGTERM itself)
  agrees on the call at which all stop, through the coordinator, without a device collective
  that would wait for the call in flight; Ctrl-C there becomes a SIGTERM to this process. A
  second Ctrl-C ends the process at once, saving nothing.
  """

  def __init__(self):
    self.signal_name = None  # 'SIGTERM' or 'SIGINT' once one came
    self._requested = False  # a plain flag: the handler takes no lock (it may run inside one)
    self._previous = {}
    self._several = jax.process_count() > 1
    if threading.current_thread() is not threading.main_thread():
      return  # Signals reach only the main thread's handlers.
    signals = (signal.SIGINT,) if self._several else (signal.SIGTERM, signal.SIGINT)
    self._previous = {sig: signal.signal(sig, self._handle) for sig in signals}

  def _handle(self, signum, frame) -> None:
    """Records the stop first, then says so: the handler runs wherever the main thread was,
    perhaps inside a write to the console, so it writes past the console stream's lock and
    nothing it does can raise there (`console_logs.say_at_once`)."""
    del frame
    if signum == signal.SIGINT and self.signal_name == 'SIGINT':
      console_logs.say_at_once('Ctrl-C again: stopped at once, without saving (the last '
                               'checkpoint is kept)')
      os._exit(130)  # pylint: disable=protected-access  # No traceback, no waiting on compiles.
    self.signal_name = signal.Signals(signum).name
    self._requested = True  # Read on one process; several agree through JAX (`should_stop`).
    if signum == signal.SIGINT:
      console_logs.say_at_once(
          'Ctrl-C: stopping; the compiled call in flight (and the one queued behind it) must '
          'finish before a checkpoint is saved, which can take a minute on a CPU (Ctrl-C again '
          'stops at once, without saving)')
      if self._several:
        os.kill(os.getpid(), signal.SIGTERM)

  def should_stop(self) -> bool:
    """Stop after the call just made? Call it once per call, on every process alike."""
    if self._several:
      stop = multihost_utils.reached_preemption_sync_point(next(_PREEMPTION_CALL_IDS))
      if stop and self.signal_name is None:
        self.signal_name = 'SIGTERM'
      return stop
    return self._requested

  def restore(self) -> None:
    """Puts back the handlers this replaced."""
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}
