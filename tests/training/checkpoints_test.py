"""checkpoints: process 0 decides storage questions; preemption call ids keep rising."""

import io
import logging
import signal
import sys

import numpy as np
import pytest

from resnet_jax import errors
from resnet_jax.training import checkpoints


def test_preemption_call_ids_keep_rising_across_runs_of_one_process(monkeypatch):
  # On several processes JAX's sync point counts over the process's life (a sweep trains many
  # runs in one): ids restarting with each run would miss a SIGTERM or stop at a wrong call.
  seen = []
  monkeypatch.setattr(checkpoints.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(checkpoints.multihost_utils, 'reached_preemption_sync_point',
                      lambda call_id: seen.append(call_id) or False)
  for _ in range(2):  # two runs
    stop_signals = checkpoints.StopSignals()
    assert not any(stop_signals.should_stop() for _ in range(3))
    stop_signals.restore()
  assert len(seen) == 6 and seen == sorted(set(seen))


def test_on_several_processes_process_zeros_view_of_storage_decides(monkeypatch):
  monkeypatch.setattr(checkpoints.jax, 'process_count', lambda: 2)
  process_zero_sees = {'value': 7}
  monkeypatch.setattr(checkpoints.multihost_utils, 'broadcast_one_to_all',
                      lambda mine: np.asarray(process_zero_sees['value'], mine.dtype))
  assert checkpoints.process_zero_decides(None) == 7
  process_zero_sees['value'] = -1  # Process 0 found no checkpoint.
  assert checkpoints.process_zero_decides(5) is None
  process_zero_sees['value'] = 0
  assert checkpoints.process_zero_decides(1) == 0


def test_sigterm_and_ctrl_c_ask_for_a_stop_and_a_second_ctrl_c_ends_at_once(monkeypatch, capfd):
  exits = []
  monkeypatch.setattr(checkpoints.os, '_exit', exits.append)
  for first in (signal.SIGTERM, signal.SIGINT):
    stop_signals = checkpoints.StopSignals()
    try:
      assert not stop_signals.should_stop()
      signal.raise_signal(first)
      assert stop_signals.should_stop() and stop_signals.signal_name == first.name
      assert not exits
    finally:
      stop_signals.restore()
  assert 'Ctrl-C: stopping; the compiled call in flight' in capfd.readouterr().err
  stop_signals = checkpoints.StopSignals()
  try:
    signal.raise_signal(signal.SIGINT)
    signal.raise_signal(signal.SIGINT)
  finally:
    stop_signals.restore()
  assert exits == [130]
  assert 'Ctrl-C again: stopped at once, without saving' in capfd.readouterr().err
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class InterruptedConsole(io.FileIO):
  """A console file whose first write is interrupted by Ctrl-C: the signal handler then runs
  inside the buffered stream's write, holding its lock, as when a signal comes while the run
  writes a line."""

  def write(self, data):
    if not getattr(self, 'interrupted', False):
      self.interrupted = True
      signal.raise_signal(signal.SIGINT)
    return super().write(data)


def test_a_ctrl_c_during_a_console_write_is_not_lost(monkeypatch, tmp_path):
  # Before: the handler's message raised "reentrant call" inside the line being logged; logging
  # swallowed it, and the stop with it (the run trained to its end).
  console = io.TextIOWrapper(io.BufferedWriter(InterruptedConsole(tmp_path / 'console', 'w')),
                             line_buffering=True)
  monkeypatch.setattr(sys, 'stderr', console)
  logger = logging.getLogger('a console')
  handler = logging.StreamHandler(console)
  monkeypatch.setattr(logger, 'handlers', [handler])
  monkeypatch.setattr(logger, 'propagate', False)
  stop_signals = checkpoints.StopSignals()
  try:
    logger.warning('compiling the train call')
  finally:
    stop_signals.restore()
  console.flush()
  assert stop_signals.should_stop() and stop_signals.signal_name == 'SIGINT'
  lines = (tmp_path / 'console').read_text().splitlines()
  assert [lines[0][9:], lines[1]] == [  # The handler's line stamped `HH:MM:SS `.
      'Ctrl-C: stopping; the compiled call in flight (and the one queued behind it) must finish '
      'before a checkpoint is saved, which can take a minute on a CPU (Ctrl-C again stops at '
      'once, without saving)',
      'compiling the train call']


def test_a_failed_background_write_is_one_line_naming_the_folder(tmp_path):
  manager = checkpoints.checkpoint_manager(tmp_path / 'latest')
  # What orbax's save thread raised when the folder went away under it.
  with pytest.raises(errors.UserError, match=r'saving a checkpoint in .*/latest failed \(No '
                     r'ArrayMetadata found\): was the folder deleted.*new --workdir') as raised:
    with checkpoints.writes_to(manager):
      raise ValueError('No ArrayMetadata found\nfor process_index=0 ...')
  assert '\n' not in str(raised.value)
  with pytest.raises(errors.UserError, match='^kept as it is$'):
    with checkpoints.writes_to(manager):
      raise errors.UserError('kept as it is')
  checkpoints.close(manager)
