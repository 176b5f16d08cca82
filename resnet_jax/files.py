"""A run's files, wherever its workdir lies: a local folder or a URL (gs://... on Cloud TPU VMs,
where checkpoints must outlive the VM). Every file of a run goes through `etils.epath`.
"""

import os
import pathlib
import tempfile

from etils import epath

from resnet_jax.errors import UserError

LOCK_FILE = '.lock'  # a live command's lock in its workdir (training.workdir_lock)


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
  if is_file and not folder.is_dir():
    raise UserError(f'{flag}={path}: the folder {folder} does not exist; create it first, or '
                    'write elsewhere')
  existing = next(p for p in (folder, *folder.parents) if p.exists())
  if not existing.is_dir():
    raise UserError(f'{flag}={path}: {existing} is a file, not a folder; pick another path')
  try:
    with tempfile.NamedTemporaryFile(dir=existing, prefix='.resnet_jax_write_test_'):
      pass
  except OSError as e:
    raise UserError(f'{flag}={path} cannot be written ({existing}: {e.strerror or e}); fix its '
                    'permissions, or pick a writable path') from None
