"""workdir_lock: one live process per workdir; a dead one leaves it free; unwritable is one line."""

import os
import signal
import subprocess
import sys

import pytest

from resnet_jax.errors import UserError
from resnet_jax.training import train
from resnet_jax.training import workdir_lock

from conftest import REPO, short_config  # pylint: disable=g-bad-import-order

HOLD_AND_WAIT = ('import sys, time; sys.path.insert(0, sys.argv[1]); '
                 'from resnet_jax.training import workdir_lock\n'
                 'with workdir_lock.hold(sys.argv[2]):\n'
                 '  print("held", flush=True); time.sleep(600)\n')


def test_a_second_holder_is_refused_with_who_holds_it(tmp_path):
  with workdir_lock.hold(str(tmp_path), 'training', 'python -m resnet_jax.main --workdir=w'):
    with pytest.raises(UserError, match=rf'--workdir={tmp_path} is in use by pid {os.getpid()} '
                       r'on .* \(training since .*: python -m resnet_jax.main --workdir=w\): '
                       'wait for it to finish, stop it, or use another --workdir'):
      with workdir_lock.hold(str(tmp_path), 'evaluate'):
        pass
  with workdir_lock.hold(str(tmp_path)):  # Released when the holder is done.
    with pytest.raises(UserError, match=r'\(training since [\d:T-]+\): wait'):  # From Python.
      with workdir_lock.hold(str(tmp_path), 'evaluate'):
        pass


def test_training_is_refused_on_a_workdir_in_use(tmp_path):
  # Refused before any data is read: the data folder does not even exist.
  with workdir_lock.hold(str(tmp_path), 'evaluate'):
    with pytest.raises(UserError, match='is in use by pid'):
      train.train_and_evaluate(short_config(tmp_path / 'no_data'), str(tmp_path))


def test_a_killed_holder_leaves_the_workdir_free(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', HOLD_AND_WAIT, str(REPO), str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(UserError, match=f'in use by pid {holder.pid}'):
      with workdir_lock.hold(str(tmp_path)):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
  with workdir_lock.hold(str(tmp_path)):
    pass


def test_an_unwritable_workdir_is_one_line(tmp_path):
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(UserError, match=r'--workdir=.*a_file/run is not writable'):
    with workdir_lock.hold(str(tmp_path / 'a_file' / 'run')):
      pass


def test_a_bucket_is_not_locked_and_says_so(caplog):
  with workdir_lock.hold('gs://bucket/run'):
    pass
  assert 'is not locked against a second run' in caplog.text
