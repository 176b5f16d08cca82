"""One live run per workdir: a lock that training, evaluate and inspect hold while they write there.

A local workdir is locked with `fcntl.flock` on `<workdir>/.lock`: the kernel drops the lock when
the process ends, however it ends (even SIGKILL), so a dead run never leaves the workdir locked.
The file names the holder (host, pid, command, start time) for the refusal's message.

A bucket (gs://...) has no such lock: `hold` says so in one warning line and goes on; keeping one
run per bucket folder is then the user's job (a launcher starts one process group per workdir).
On several processes only process 0 locks: the others write where it tells them to.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket
from typing import Iterator, Optional

from absl import logging
import jax

from resnet_jax import files
from resnet_jax.errors import UserError

LOCK_FILE = files.LOCK_FILE


class InUse(UserError):
  """The workdir is held by another live process (a sweep skips such a point, not fails it)."""


def _holder(path: str) -> str:
  """Who holds the lock, as its file says (or that it does not say)."""
  try:
    with open(path, encoding='utf-8') as f:
      holder = json.load(f)
    command = f": {holder['command']}" if holder.get('command') else ''
    return (f"pid {holder['pid']} on {holder['host']} ({holder['purpose']} since "
            f"{holder['since']}{command})")
  except (OSError, ValueError, KeyError, TypeError):
    return 'another process'


@contextlib.contextmanager
def hold(workdir: str, purpose: str = 'training',
         command: Optional[str] = None) -> Iterator[None]:
  """Holds workdir's lock for the block; UserError if a live process holds it or it is unwritable.

  Args:
    workdir: a local folder (created if missing) or a URL.
    purpose: what the holder does there, for the message a second process gets.
    command: the holder's command line, for that message too (None: started from Python).
  """
  if files.is_url(workdir) or jax.process_index() != 0:
    if files.is_url(workdir):
      logging.warning('%s is a bucket: it is not locked against a second run writing there; '
                      'run one job per workdir', workdir)
    yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  try:
    os.makedirs(workdir, exist_ok=True)
    handle = open(path, 'a+', encoding='utf-8')  # pylint: disable=consider-using-with
  except OSError as e:
    raise UserError(f'--workdir={workdir} is not writable ({e.strerror or e}): choose a folder '
                    'you can write to, or fix its permissions') from e
  with handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      raise InUse(f'--workdir={workdir} is in use by {_holder(path)}: wait for it to finish, '
                  'stop it, or use another --workdir') from e
    handle.seek(0)
    handle.truncate()
    json.dump({'pid': os.getpid(), 'host': socket.gethostname(), 'purpose': purpose,
               'since': datetime.datetime.now().isoformat(timespec='seconds'),
               'command': command and command[:300]}, handle)
    handle.flush()
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)
