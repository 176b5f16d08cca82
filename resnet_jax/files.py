"""A run's files, wherever its workdir lies: a local folder or a URL (gs://... on Cloud TPU VMs,
where checkpoints must outlive the VM). Every file of a run goes through `etils.epath`.

Every file a run, a sweep or a reading command writes goes through `write_atomic`: a crash, a kill
or a full disk mid-write leaves the old version or the new one, never a mix (orbax writes
checkpoints the same way, to a temporary folder renamed when complete).
"""

import contextlib
import os
import pathlib
import tempfile
from typing import Union

from etils import epath

from resnet_jax.errors import UserError

LOCK_FILE = '.lock'  # a live command's lock in its workdir (training.workdir_lock)
CONFIG_FILE = 'config.json'  # the resolved config a run was started with (training.run_config)


def is_url(path: epath.PathLike) -> bool:
  """Whether path names a remote store (gs://bucket/...) rather than a local file."""
  return '://' in os.fspath(path)


def as_path(path: epath.PathLike) -> epath.Path:
  """path as an epath.Path: a local path made absolute, a URL kept as it is."""
  path = os.fspath(path)
  return epath.Path(path if is_url(path) else os.path.abspath(path))


def check_writable(path: epath.PathLike, flag: str, *, is_file: bool = False) -> None:
  """Stops with one line unless a command can write at path; run it before any work starts.

  A folder that does not exist yet is fine where its nearest existing parent is writable (the
  command creates it); a file's folder must exist. A test file is written and removed, since
  permission bits miss read-only mounts and root. URLs are left to their store.

  Args:
    path: the folder (or, with is_file, the file) the command writes.
    flag: the flag that named it, e.g. '--workdir', for the message.
    is_file: path is a file to write, not a folder.

  Raises:
    UserError: path cannot be written, naming it and why.
  """
  if is_url(path):
    return
  target = pathlib.Path(os.path.abspath(path))
  folder = target.parent if is_file else target
  if is_file and target.is_dir():
    raise UserError(f'{flag}={path} is a folder; give a file name, e.g. {target / "out.json"}')
  existing = next(p for p in (folder, *folder.parents) if p.exists())
  if not existing.is_dir():
    raise UserError(f'{flag}={path}: {existing} is a file, not a folder; pick another path')
  if is_file and existing != folder:
    raise UserError(f'{flag}={path}: the folder {folder} does not exist; create it first, or '
                    'write elsewhere')
  try:
    with tempfile.NamedTemporaryFile(dir=existing, prefix='.resnet_jax_write_test_'):
      pass
  except OSError as e:
    raise UserError(f'{flag}={path} cannot be written ({existing}: {e.strerror or e}); fix its '
                    'permissions, or pick a writable path') from None


def write_atomic(path: epath.PathLike, data: Union[str, bytes]) -> None:
  """Writes data (text as UTF-8) to path whole: a crash mid-write leaves the old file or the new.

  Locally: a temporary file beside path, flushed and fsynced, then renamed over it (`os.replace`
  is atomic on POSIX), and the folder fsynced so that the rename itself survives a power cut.
  A URL (gs://...) is written as one object, which its store replaces whole.

  Raises:
    OSError: the file cannot be written (the temporary file is removed).
  """
  data = data.encode('utf-8') if isinstance(data, str) else data
  if is_url(path):
    epath.Path(path).write_bytes(data)
    return
  target = os.path.abspath(os.fspath(path))
  folder = os.path.dirname(target)
  handle, partial = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(target)}.',
                                     suffix='.partial')
  try:
    with os.fdopen(handle, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(partial, 0o666 & ~_umask())
    os.replace(partial, target)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(partial)
    raise
  with contextlib.suppress(OSError):  # Some file systems cannot open a folder.
    folder_handle = os.open(folder, os.O_RDONLY)
    try:
      os.fsync(folder_handle)
    finally:
      os.close(folder_handle)


def _umask() -> int:
  """The process's umask (mkstemp makes files 0600; a written file gets the usual mode).

  Read from /proc, not by setting it (os.umask), which would race other threads' file creation.
  """
  try:
    with open('/proc/self/status', encoding='ascii') as f:
      return next(int(line.split()[1], 8) for line in f if line.startswith('Umask:'))
  except (OSError, StopIteration, ValueError, IndexError):
    return 0o022
