"""Training: `train_and_evaluate` sets a run up, then runs its epoch loop in four phases.

- resume (or start fresh) from the workdir's latest checkpoint;
- train an epoch: the compiled calls of `feed.EpochPlan`, one in flight (a call is dispatched
  before the previous one's results are read, so the devices never wait for the host);
- close the epoch: evaluate, record, checkpoint;
- finish: score the test set, write results and the report.

The loop trains the members of a layout: one run (`Solo`), or a population of runs trained at
once in one program (`population.Population`); what it keeps of each run (checkpoints, metrics,
best model, report) is a `Member`'s. The step itself is `steps.train_step`; devices and batches
are `feed`; checkpoints, the same-run check and SIGTERM are `checkpoints`; the compiles ahead
are `precompile`.
"""

import contextlib
import dataclasses
import functools
import os
import time
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import console_logs
from resnet_jax import files
from resnet_jax import models
from resnet_jax.data import input_pipeline
from resnet_jax.errors import UserError, one_line
from resnet_jax.reporting import gradcam
from resnet_jax.reporting import report
from resnet_jax.reporting import writers
from resnet_jax.training import checkpoints
from resnet_jax.training import distributed
from resnet_jax.training import evaluator
from resnet_jax.training import feed
from resnet_jax.training import precompile
from resnet_jax.training import progress
from resnet_jax.training import run_config
from resnet_jax.training import runs
from resnet_jax.training import steps
from resnet_jax.training import workdir_lock


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       resume_command: Optional[str] = None,
                       splits: Optional[input_pipeline.Splits] = None) -> dict:
  """Trains config's system, evaluating every epoch, checkpointing and resuming in workdir.

  Args:
    config: a config from configs/ (see resnet_jax/defaults.py for every key).
    workdir: where checkpoints, metrics, plots and the report go (a local folder or a URL such
      as gs://bucket/run); a run found there resumes.
    resume_command: the command line that started the run and resumes it: recorded in
      results.json and the workdir's lock, and said at a stop (a command passes the command as
      typed, `cli.command_line()`); None for a run started from Python.
    splits: the data, where the caller has loaded it already (the benchmark); default: loaded
      from config.data.

  Returns:
    The results (what results.json holds), or {'preempted': True, ...} if SIGTERM stopped it.

  Raises:
    UserError: a bad config, missing data, an unusable or changed checkpoint, a workdir another
      process is using or that cannot be written, or a non-finite loss.
  """
  clock = progress.RunClock()
  with workdir_lock.hold(workdir, 'training', resume_command):
    run = runs.setup_run(config, workdir, splits=splits)
    progress.log_start(run)
    return train_members(Solo(run), clock, resume_command, workdir)[0]


def train_members(layout, clock: progress.RunClock, resume_command: Optional[str],
                  workdir: str) -> list[dict]:
  """Trains a layout's members (`Solo` or `population.Population`); each member's results."""
  try:
    with contextlib.ExitStack() as stack:
      return TrainLoop(layout, clock, stack, resume_command).train()
  except OSError as e:  # The workdir (or its disk) failed under the run.
    raise UserError(f'writing to --workdir={workdir} failed ({one_line(e)}): was it '
                    'deleted, filled or made read-only? Checkpoints already saved there are '
                    'kept; fix it and rerun the same command to resume') from e


class Solo:
  """One run on its mesh, as the loop asks of its devices: the state as it is, the plain jitted
  calls (`population.Population` is the same for several runs)."""

  def __init__(self, run: runs.Run):
    self.members = [run]
    self.mesh = run.mesh
    self.platform = run.platform

  def initial_state(self) -> steps.TrainState:
    run = self.members[0]
    return feed.initial_state(run.ctx, run.config.data.image_size, run.mesh)

  def abstract_state(self) -> steps.TrainState:
    """The state's shapes and shardings, for compiling without the devices."""
    return self.members[0].abstract_state()

  def batch_specs(self, count: int, batch_size: int) -> tuple:
    """The train call's (abstract) arguments after the state (`feed.batch_specs`)."""
    run = self.members[0]
    return feed.batch_specs(count, batch_size, run.mesh, resident=run.resident,
                            train_size=run.plan.size, image_size=run.config.data.image_size)

  def stack(self, states):
    """The loop's state of its members' states."""
    return states[0]

  def member_state(self, state, index: int):
    """Member index's part of the loop's state (or of a copy of it)."""
    del index
    return state

  def member_result(self, value, index: int):
    """Member index's part of what a call returned."""
    del index
    return value

  def jit_train_steps(self):
    run = self.members[0]
    return feed.jit_train_steps(run.ctx, run.mesh, resident=run.resident)

  def create_feed(self) -> feed.Feed:
    run = self.members[0]
    return feed.create_feed(run.config, run.plan, run.mesh, run.splits.train_images,
                            run.splits.train_labels, resident=run.resident)

  def evaluate_fn(self):
    run = self.members[0]
    return evaluator.compile_evaluate(run.ctx, run.mesh)

  def state_sharding(self):
    return feed.replicated(self.mesh)


class Member:
  """What the loop keeps of one run: its checkpoints, writer, metadata and best model.

  Attributes:
    run: the member's run (its config and workdir).
    latest, best: its checkpoint managers.
    writer: its metrics writer, made once the step it starts from is known.
    meta: what its next checkpoint records.
    epoch_sums: its training metric sums of the epoch so far.
    window: its sums since the last progress line.
    best_unsaved: (state, meta) of a better model not in checkpoints/best yet.
    best_state: its best model's state on the devices, once this process saw it.
    final_test: (metrics, predictions) of the test set, once scored.
  """

  def __init__(self, run: runs.Run, stack: contextlib.ExitStack, keep: int):
    self.run = run
    checkpoint_dir = files.as_path(run.workdir) / 'checkpoints'
    self.latest = checkpoints.checkpoint_manager(checkpoint_dir / 'latest', keep=keep)
    self.best = checkpoints.checkpoint_manager(checkpoint_dir / 'best')
    for manager in (self.best, self.latest):
      stack.callback(checkpoints.close, manager)
    self.writer = None
    self.meta = checkpoints.CheckpointMeta(run=run.identity, data=run.data)
    self.epoch_sums, self.window = {}, {}
    self.best_unsaved = None
    self.best_state = None
    self.final_test = None


@dataclasses.dataclass(frozen=True)
class InFlight:
  """A dispatched train call whose results have not been read yet."""
  epoch: int
  first: int       # its first step in the epoch
  count: int       # steps
  batch_size: int
  result: steps.CallResult  # on the device


@dataclasses.dataclass(frozen=True)
class EpochEnd:
  """An epoch whose calls are all dispatched: what its end dispatched, not read yet.

  Attributes:
    epoch: the epoch (0-based).
    scoring: its validation, running on the devices (None: not due this epoch).
    with_predictions: read the predictions too (the last epoch's validation is the test).
    snapshot: a device copy of the state at the epoch's end, for its checkpoints and histograms
      (None where none is due and the best model is not kept).
    save_latest: the latest checkpoint is due (`checkpoint_every_epochs` and
      `checkpoint_min_seconds`, the last epoch, a stop).
    histograms: the parameters' histograms are due (`param_histograms_every_epochs`).
  """
  epoch: int
  scoring: Optional[evaluator.Scoring]
  with_predictions: bool
  snapshot: Optional[steps.TrainState]
  save_latest: bool
  histograms: bool


class TrainLoop:
  """One run of the epoch loop over a layout's members: its resources (closed by `stack`), the
  state and each member's bookkeeping.

  The devices are never left waiting for the host. A train call is dispatched before the one
  before it is read, and an epoch's end (its validation, and a device copy of the state where a
  checkpoint or the best model needs one) is dispatched, not read, before the next epoch's first
  call: `pending` holds what was dispatched, in order, and `read_pending` reads it once the next
  call is queued. Only reduce-on-plateau, which sets the next epoch's rate from the validation,
  reads an epoch's end before going on.
  """

  def __init__(self, layout, clock: progress.RunClock, stack: contextlib.ExitStack,
               resume_command: Optional[str] = None):
    self.layout, self.clock = layout, clock
    # What the members share (all but the seed and scalar hyperparameters): the first's.
    self.run = layout.members[0]
    self.resume_command = resume_command
    self.stack = stack
    # A population's members keep two latest checkpoints: one step all of them hold survives a
    # crash in the middle of their saves (`save_checkpoints`).
    keep = 1 if len(layout.members) == 1 else 2
    self.members = [Member(run, stack, keep) for run in layout.members]
    self.stop_signals = checkpoints.StopSignals()
    stack.callback(self.stop_signals.restore)
    # How long a stop of several processes may wait for the others (None: one process).
    self.stop_timeout = (distributed.stop_timeout_seconds(os.environ)
                         if jax.process_count() > 1 else None)
    self.compiler = precompile.Compiler()
    clock.compiler = self.compiler
    stack.callback(self.compiler.close)
    self.stop_after_epoch = False
    self.compiles_ahead = None  # compiles started after the first call's, until it is made
    self.pending = []  # InFlight calls and EpochEnds dispatched and not read, in order
    self.last_save = time.time()  # of the latest checkpoint
    self.last_epoch_read = time.perf_counter()
    self.compile_read = 0.0  # the clock's compile_seconds then
    self.snapshot = jax.jit(lambda state: jax.tree.map(jnp.copy, state),
                            out_shardings=layout.state_sharding())

  @property
  def meta(self) -> checkpoints.CheckpointMeta:
    """Where the loop is (the members move together): the first member's meta."""
    return self.members[0].meta

  def train(self) -> list[dict]:
    """The phases in order; each member's results, or the stop's if a SIGTERM stopped the run."""
    num_epochs = self.run.config.num_epochs
    with console_logs.phase('setting up (checkpoints, the data feed, the compiles)'):
      finished = self.resume()
      if finished is not None:
        return finished
      if self.meta.epoch >= num_epochs:  # Finished, its results.json missing or torn.
        self.prepare_scoring()
        return self.finish(rebuilt=True)
      self.prepare()
    # The loop logs its progress every log_every_seconds; a wait for the devices says so sooner.
    with console_logs.phase('training', every_seconds=self.run.config.log_every_seconds
                            + console_logs.SILENCE_SECONDS):
      for epoch in range(self.meta.epoch, num_epochs):
        stopped = self.train_epoch(epoch)
        if stopped is not None:
          return stopped
        self.end_epoch(epoch)
        if self.stop_after_epoch or self.run.optimizer.on_epoch_end is not None:
          self.read_pending()
        if self.stop_after_epoch and epoch + 1 < num_epochs:
          return self.stopped(epoch + 1, 0, (epoch + 1) * self.run.plan.steps)
      self.read_pending()
    return self.finish()

  def elapsed(self, member: Member) -> float:
    """A member's wall time so far, summed over the processes that trained it (resumes too)."""
    return member.elapsed_before + time.time() - self.clock.start

  # -------------------------------------------------------------------------------------------
  # Resume, and what the loop needs on the devices.

  def resume(self) -> Optional[list[dict]]:
    """Restores the members' latest checkpoints, or starts fresh; finished runs' results."""
    num_epochs = self.run.config.num_epochs
    saved = [checkpoints.process_zero_decides(member.latest.latest_step())
             for member in self.members]
    if all(step is None for step in saved):
      self.state = self.layout.initial_state()
    else:
      step = self.common_step(saved)
      restored = []
      for member in self.members:
        state, meta = checkpoints.restore_checkpoint(member.latest, member.run.abstract_state(),
                                                     step, identity=member.run.identity)
        restored.append(state)
        member.meta = dataclasses.replace(meta, run=member.run.identity, data=member.run.data)
        member.epoch_sums = meta.train_sums
      meta = self.meta
      if meta.epoch >= num_epochs:
        results = [report.read_results(member.run.workdir) for member in self.members]
        if checkpoints.process_zero_decides(int(all(r is not None for r in results))):
          for member in self.members:
            logging.info('%s has finished already; its results: %s', member.run.workdir,
                         files.as_path(member.run.workdir) / report.RESULTS_FILE)
          return [r or report.read_results(m.run.workdir) or {}
                  for r, m in zip(results, self.members)]
        logging.warning('%s has finished, but its %s is missing or torn: writing its results '
                        'and report again from its final checkpoint', self.workdirs(),
                        report.RESULTS_FILE)
      else:
        logging.info('resuming from %s: epoch %d, step %d of it (global step %d)',
                     self.checkpoint_dirs(), meta.epoch + 1, meta.step_in_epoch, step)
      self.state = self.layout.stack(restored)
    for member in self.members:
      member.elapsed_before = member.meta.elapsed_seconds
      # Written once the run is accepted: a refused resume leaves the run's own config.json.
      if jax.process_index() == 0:
        run_config.write_config(member.run.workdir, member.run.config)
      # What an earlier attempt recorded past this step is trained again: the writer drops it.
      member.writer = writers.create_writer(member.run.workdir,
                                            is_main=jax.process_index() == 0,
                                            after_step=self.meta.epoch * self.run.plan.steps
                                            + self.meta.step_in_epoch)
      self.stack.callback(member.writer.close)
    return None

  def common_step(self, saved: list[Optional[int]]) -> int:
    """The latest step every member holds a checkpoint of; UserError if there is none."""
    if len(saved) == 1:
      return saved[0]
    held = [set(member.latest.all_steps()) if step is not None else set()
            for member, step in zip(self.members, saved)]
    common = set.intersection(*held)
    if not common:
      where = ', '.join(f'{member.run.workdir}: ' + (f'step {step}' if step is not None else
                                                     'none')
                        for member, step in zip(self.members, saved))
      raise UserError(f'the population\'s members hold no checkpoint of one step ({where}): '
                      'they were not trained together; move the members\' folders aside to '
                      'start over, or resume each as a single run')
    return max(common)

  def workdirs(self) -> str:
    return ', '.join(str(member.run.workdir) for member in self.members)

  def checkpoint_dirs(self) -> str:
    return ', '.join(str(member.latest.directory) for member in self.members)

  def prepare_scoring(self) -> None:
    """The evaluator and the validation set."""
    run, layout = self.run, self.layout
    self.evaluator = evaluator.Evaluator(run.ctx, layout.mesh, run.config.eval_batch_size,
                                         call=functools.partial(self.compiler, 'eval'),
                                         evaluate_fn=layout.evaluate_fn())
    self.val_set = self.evaluator.eval_set(run.splits.val_images, run.splits.val_labels)
    # Validation on the test set (seed 000's protocol): the last epoch's evaluation is the test's.
    self.val_is_test = run.splits.val_labels is run.splits.test_labels

  def prepare(self) -> None:
    """The feed, the evaluation set, and every compile the run needs, started ahead."""
    run, compiler, state = self.run, self.compiler, self.state
    self.train_steps = self.layout.jit_train_steps()
    self.feed = self.layout.create_feed()
    self.prepare_scoring()
    # The first call's shape compiles alone; every other shape the run needs, after it, while
    # the devices train.
    calls = run.plan.calls(self.meta.step_in_epoch) + run.plan.calls(0)
    first = compiler.prepare('train', self.train_steps, state,
                             *self.feed.batch_specs(*calls[0][1:]))
    for _, count, batch_size in calls[1:]:
      compiler.prepare('train', self.train_steps, state,
                       *self.feed.batch_specs(count, batch_size), after=first)
    compiler.prepare('eval', self.evaluator.evaluate_fn, state.eval_variables(),
                     *self.val_set.arrays(), after=first)
    self.compiles_ahead = compiler.num_prepared - 1
    logging.info('compiling the train call (%s of batch %d) and %s more after it',
                 report.counted(calls[0][1], 'step'), calls[0][2],
                 report.counted(self.compiles_ahead, 'shape'))
    self.progress = progress.Progress(
        last_log_step=self.meta.epoch * run.plan.steps + self.meta.step_in_epoch,
        large_on_cpu=progress.is_large_on_cpu(run.parameters, run.platform))
    self.last_epoch_read = time.perf_counter()

  # -------------------------------------------------------------------------------------------
  # An epoch.

  def train_epoch(self, epoch: int) -> Optional[list[dict]]:
    """Dispatches the epoch's calls from the meta's position; the stop's result after a SIGTERM."""
    plan = self.run.plan
    self.progress.mark, self.progress.compile_mark = time.perf_counter(), self.clock.compile_seconds
    call_batches = self.feed.epoch(epoch, self.meta.step_in_epoch)
    for first, count, batch_size in plan.calls(self.meta.step_in_epoch):
      self.state, result = self.compiler('train', self.train_steps, self.state,
                                         *call_batches(first, count, batch_size))
      self.read_pending()  # What came before this call, now queued behind it.
      self.pending.append(InFlight(epoch, first, count, batch_size, result))
      if self.compiles_ahead is not None:  # The run's first call: its compile is done.
        progress.log_compile(self.clock.compile_seconds, self.compiles_ahead)
        self.compiles_ahead = None
      if not self.stop_after_epoch and self.stop_signals.should_stop():
        self.bound_the_stop()
        # The call in flight is checked (its loss finite) before anything is saved.
        step = self.read_pending()
        if first + count == plan.steps:  # The epoch's last call: end the epoch, then stop.
          self.stop_after_epoch = True
          continue
        for member in self.members:
          member.meta = dataclasses.replace(
              member.meta, epoch=epoch, step_in_epoch=first + count,
              train_sums=member.epoch_sums, elapsed_seconds=self.elapsed(member))
        self.save_checkpoints(self.state)
        return self.stopped(epoch, first + count, step)
    return None

  def bound_the_stop(self) -> None:
    """Ends this process with one line and status 1 if the stop outlasts `stop_timeout`: on
    several processes it waits for the others, which may be gone or stuck in a collective."""
    if self.stop_timeout is None:
      return
    self.stack.enter_context(distributed.deadline(self.stop_timeout, (
        f'{self.stop_name()}: the {jax.process_count()} processes did not finish the stop within '
        f'{self.stop_timeout} s (one is gone, or waits in a collective the others never '
        f'entered); stopped without saving (the checkpoints already in {self.checkpoint_dirs()} '
        f'are kept); {self.how_to_resume()} ({distributed.STOP_TIMEOUT} sets the limit in '
        'seconds)')))

  def stop_name(self) -> str:
    """The stop's signal as the console names it: Ctrl-C, SIGTERM."""
    signal_name = self.stop_signals.signal_name
    return 'Ctrl-C' if signal_name == 'SIGINT' else signal_name

  def how_to_resume(self) -> str:
    return (f'resume with the same command: {self.resume_command}' if self.resume_command else
            'resume by training the same config in the same workdir again')

  def read_pending(self) -> Optional[int]:
    """Reads what was dispatched and not read, in order; the last call's global step."""
    step = None
    for item in self.pending:
      with console_logs.phase(self.waiting_for(item)):
        if isinstance(item, InFlight):
          step = self.finish_call(item)
        else:
          self.close_epoch(item)
    self.pending = []
    return step

  def waiting_for(self, item) -> str:
    """What reading a pending item waits for, in words."""
    epoch = f'epoch {item.epoch + 1}/{self.run.config.num_epochs}'
    if isinstance(item, InFlight):
      return (f'training {epoch}, steps {item.first + 1}-{item.first + item.count} of '
              f'{self.run.plan.steps} (a compiled call)')
    return f'ending {epoch} (validation, checkpoints)'

  def finish_call(self, call: InFlight) -> int:
    """Reads a finished call's results: checks each member's loss, adds them up, logs; its last
    global step."""
    plan, config = self.run.plan, self.run.config
    result = jax.device_get(call.result)
    learning_rates = []
    for index, member in enumerate(self.members):
      member_result = self.layout.member_result(result, index)
      if member_result.first_bad_step >= 0:
        raise non_finite_error(member.run.config, plan.steps, int(member_result.first_bad_step),
                               member.latest)
      member_sums = steps.metric_sums(member_result.metrics)
      member.epoch_sums = steps.add_sums(member.epoch_sums, member_sums)
      member.window = steps.add_sums(member.window, member_sums)
      learning_rates.append(float(member_result.learning_rate))
    self.progress.add_call(self.clock, call.count * call.batch_size * len(self.members),
                           learning_rates)
    step = call.epoch * plan.steps + call.first + call.count
    if self.progress.due(config, step, call.first + call.count == plan.steps):
      progress.log_progress(self.members, self.progress, config, plan.steps, call.epoch, step)
    return step

  def end_epoch(self, epoch: int) -> None:
    """Dispatches the epoch's end: its validation (when due) and the state copy its checkpoints
    need, then moves the meta to the next epoch. Nothing here waits for the devices.

    The meta is then the epoch boundary's until `close_epoch` reads this end, which comes before
    anything else changes it (the next epoch's first call is read after it)."""
    config = self.run.config
    done = epoch + 1
    is_last = done == config.num_epochs
    evaluate = done % config.eval_every_epochs == 0 or is_last
    save_latest = is_last or self.stop_after_epoch or (
        done % config.checkpoint_every_epochs == 0
        and time.time() - self.last_save >= config.checkpoint_min_seconds)
    histograms = bool(config.param_histograms_every_epochs
                      and done % config.param_histograms_every_epochs == 0)
    needs_copy = save_latest or histograms or (evaluate and config.keep_best_checkpoint)
    snapshot = self.snapshot(self.state) if needs_copy else None
    scoring = None
    if evaluate:
      scored = self.state if snapshot is None else snapshot
      scoring = self.evaluator.dispatch(scored.eval_variables(), self.val_set)
    self.pending.append(EpochEnd(epoch, scoring, is_last and self.val_is_test, snapshot,
                                 save_latest, histograms))
    for member in self.members:
      member.meta = dataclasses.replace(member.meta, epoch=done, step_in_epoch=0, train_sums={})

  def member_scoring(self, scoring: evaluator.Scoring, index: int) -> evaluator.Scoring:
    """A member's part of a dispatched evaluation of the loop's state."""
    return evaluator.Scoring(self.layout.member_result(scoring.summed, index),
                             self.layout.member_result(scoring.predictions, index),
                             scoring.size)

  def close_epoch(self, end: EpochEnd) -> None:
    """Reads an epoch's end (after its last call): records it for each member, keeps the best,
    saves when due."""
    config, plan = self.run.config, self.run.plan
    now = time.perf_counter()
    common = {'epoch': end.epoch + 1, 'step': (end.epoch + 1) * plan.steps,
              'epoch_seconds': now - self.last_epoch_read,
              # What of it the host waited for compiles (a process's first epoch, mostly).
              'compile_seconds': self.clock.compile_seconds - self.compile_read}
    vals = [None] * len(self.members)
    if end.scoring is not None:
      for index, member in enumerate(self.members):
        vals[index], predictions = evaluator.read(self.member_scoring(end.scoring, index),
                                                  with_predictions=end.with_predictions)
        if end.with_predictions:
          member.final_test = vals[index], predictions
      waited = time.perf_counter() - now  # The host waited for the validation, not training.
      self.clock.eval_seconds += waited
      self.progress.mark += waited
      on_epoch_end = self.run.optimizer.on_epoch_end
      if on_epoch_end is not None:  # One run (a population refuses it); see `train`.
        opt_state = on_epoch_end(self.state.opt_state, vals[0])
        # Back on the devices: a host-side hook may return host arrays.
        self.state = jax.device_put(self.state.replace(opt_state=opt_state),
                                    self.layout.state_sharding())
        end = dataclasses.replace(end, snapshot=self.state if end.snapshot is not None else None)
    records = []
    for index, member in enumerate(self.members):
      record = {**common, **{f'train_{k}': v
                             for k, v in steps.mean_of_sums(member.epoch_sums).items()},
                'learning_rate': self.progress.learning_rates[index]}
      if vals[index] is not None:
        record.update(val_loss=vals[index]['loss'], val_accuracy=vals[index]['accuracy'])
      record['elapsed_seconds'] = self.elapsed(member)
      member.epoch_sums = {}
      state = (None if end.snapshot is None
               else self.layout.member_state(end.snapshot, index))
      member.writer.write_scalars(record['step'],
                                  {k: v for k, v in record.items() if k != 'step'})
      if end.histograms:
        gradcam.write_param_histograms(member.writer, record['step'], state.params)
      member.writer.flush()
      meta = dataclasses.replace(member.meta, history=member.meta.history + [record],
                                 elapsed_seconds=record['elapsed_seconds'])
      if record.get('val_accuracy', -1.0) > meta.best_val_accuracy:
        meta = dataclasses.replace(meta, best_val_accuracy=record['val_accuracy'],
                                   best_epoch=end.epoch + 1)
        if config.keep_best_checkpoint:
          member.best_state = state
          member.best_unsaved = state, meta
      member.meta = meta
      records.append(record)
    progress.log_epoch(config, records)
    if end.save_latest:
      self.save_checkpoints(end.snapshot)
    self.last_epoch_read = time.perf_counter()
    self.compile_read = self.clock.compile_seconds

  def save_checkpoints(self, state) -> None:
    """Saves each member's better model not saved yet to checkpoints/best, then its part of
    state as the latest (orbax's asynchronous saves: what blocks is the copy to the host).

    A population's members first finish their earlier saves: a member then never starts saving
    a step before every member holds the step before it, which they keep beside it
    (`common_step` resumes from it after a crash in the middle of the saves).
    """
    if len(self.members) > 1:
      for member in self.members:
        checkpoints.wait_for_saves(member.latest)
    for index, member in enumerate(self.members):
      if member.best_unsaved is not None:
        checkpoints.save_checkpoint(member.best, *member.best_unsaved)
        member.best_unsaved = None
      checkpoints.save_checkpoint(member.latest, self.layout.member_state(state, index),
                                  member.meta)
    self.last_save = time.time()

  def score(self, eval_set: evaluator.EvalSet, variables: Optional[dict] = None, *,
            with_predictions: bool = True) -> list[tuple[dict, Optional[np.ndarray]]]:
    """Each member's score of variables (default: the state's) on eval_set, timed."""
    start = time.perf_counter()
    variables = self.state.eval_variables() if variables is None else variables
    scoring = self.evaluator.dispatch(variables, eval_set)
    scored = [evaluator.read(self.member_scoring(scoring, index),
                             with_predictions=with_predictions)
              for index in range(len(self.members))]
    self.clock.eval_seconds += time.perf_counter() - start
    return scored

  # -------------------------------------------------------------------------------------------
  # The end: finished or stopped.

  def best_test_accuracies(self, test_set) -> list[Optional[float]]:
    """Each member's best checkpoint's test accuracy (None without one)."""
    config = self.run.config
    if not config.keep_best_checkpoint or any(member.best.latest_step() is None
                                              for member in self.members):
      return [None] * len(self.members)
    if self.val_is_test:  # The best checkpoint's validation score is its test score.
      return [member.meta.best_val_accuracy for member in self.members]
    best_states = []
    for member in self.members:
      if member.best_state is None:  # Found better before this process resumed the run.
        checkpoints.wait_for_saves(member.best)
        member.best_state, _ = checkpoints.restore_checkpoint(member.best,
                                                              member.run.abstract_state())
      best_states.append(member.best_state)
    scored = self.score(test_set, self.layout.stack(best_states).eval_variables(),
                        with_predictions=False)
    return [metrics['accuracy'] for metrics, _ in scored]

  def finish(self, rebuilt: bool = False) -> list[dict]:
    """Scores the test set (and the best checkpoints), writes the reports; the results.

    rebuilt: the run had finished (its results.json missing or torn): what is written comes from
    its final checkpoint, and the speed figures of the processes that trained it, which no
    checkpoint holds, are left empty (None) rather than this process's.
    """
    run, splits = self.run, self.run.splits
    config = run.config
    test_set = None
    if self.members[0].final_test is None:
      test_set = self.evaluator.eval_set(splits.test_images, splits.test_labels)
      for member, scored in zip(self.members, self.score(test_set)):
        member.final_test = scored
    best_tests = self.best_test_accuracies(test_set)
    clock = self.clock
    all_results = []
    for index, member in enumerate(self.members):
      meta, history = member.meta, member.meta.history
      test, predictions = member.final_test
      final_val = next((r for r in reversed(history) if 'val_accuracy' in r), {})
      params = self.layout.member_state(self.state, index).params
      results = runs.run_results(member.run, models.count_params(params), test,
                                 self.resume_command) | {
          'steps': int(meta.epoch * run.plan.steps),
          'final_val_accuracy': final_val.get('val_accuracy'),
          'final_val_loss': final_val.get('val_loss'),
          'best_val_accuracy': meta.best_val_accuracy if meta.best_val_accuracy >= 0 else None,
          'best_epoch': meta.best_epoch,
          'best_test_accuracy': best_tests[index],
          'wall_seconds': time.time() - clock.start,
          'elapsed_seconds': self.elapsed(member),
          'compile_seconds': clock.compile_seconds,
          'train_seconds': clock.train_seconds,
          'eval_seconds': clock.eval_seconds,
          # A member's own images; a population trains len(members) times as many at once.
          'images_per_second': clock.images_per_second / len(self.members),
      }
      if len(self.members) > 1:
        results['population'] = {'members': len(self.members),
                                 'member_images_per_second': clock.images_per_second}
      if rebuilt:
        results.update(elapsed_seconds=meta.elapsed_seconds, **dict.fromkeys(
            ('wall_seconds', 'compile_seconds', 'train_seconds', 'eval_seconds',
             'images_per_second')))
      if self.val_is_test and config.reference.pytorch_final:
        # When validation (the test set) first scored the PyTorch reference's final accuracy.
        results['reference_reached'] = report.first_reaching(
            history, config.reference.pytorch_final / 100)
      if jax.process_index() == 0:
        report.write_report(files.as_path(member.run.workdir), results, history,
                            report.confusion_matrix(splits.test_labels, predictions,
                                                    config.model.num_classes),
                            write_plots=config.write_plots)
      all_results.append(results)
    return all_results

  def stopped(self, epoch: int, step_in_epoch: int, step: int) -> list[dict]:
    """After SIGTERM or Ctrl-C: waits for the checkpoints, says how to resume; the results."""
    for member in self.members:
      checkpoints.wait_for_saves(member.best)
      checkpoints.wait_for_saves(member.latest)
    saved = ('a checkpoint' if len(self.members) == 1 else
             f"the {len(self.members)} members' checkpoints")
    logging.info('%s: saved %s at epoch %d, step %d of it (global step %d); %s',
                 self.stop_name(), saved, epoch + 1, step_in_epoch, step, self.how_to_resume())
    return [{'preempted': True, 'epoch': epoch, 'step': step,
             'signal': self.stop_signals.signal_name}] * len(self.members)


def non_finite_error(config: ml_collections.ConfigDict, steps_an_epoch: int, bad_step: int,
                     latest_manager) -> UserError:
  """The error for a non-finite loss at global step bad_step, naming the checkpoint on disk."""
  saved = latest_manager.latest_step()
  if saved is None:
    kept = 'no checkpoint had been saved yet'
  else:
    epochs, rest = divmod(saved, steps_an_epoch)
    where = f'after epoch {epochs}' if not rest else f'epoch {epochs + 1}, step {rest} of it'
    kept = f'the last good checkpoint ({where}) is kept in {latest_manager.directory}'
  return UserError(
      f'non-finite training loss at epoch {bad_step // steps_an_epoch + 1}, step '
      f'{bad_step % steps_an_epoch + 1} of it; {kept}; try a lower config.optim.learning_rate '
      f"(now {config.optim.learning_rate}), config.optim.clip_mode='global_norm' or "
      "config.model.dtype='float32'")
