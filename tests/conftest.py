"""Shared fixtures: the real CIFAR-10 images (JPEG copy in ../shared), skipped where absent."""

import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# JAX's persistent compilation cache, shared by every test and the subprocesses they start: the
# small runs here share shapes, so most compile once (a short CPU run: about 15 s -> 4 s).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='resnet_jax_jit_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = pathlib.Path(
    os.environ.get('RESNET_JAX_SHARED_DATA', REPO.parent / 'shared' / 'data' / 'cifar10_jpeg'))
NO_SHARED_DATA = (f'real CIFAR-10 images not found at {SHARED_DATA} '
                  '(the JPEG copy in ../shared/data/cifar10_jpeg; set RESNET_JAX_SHARED_DATA)')

# Training images written by the subset fixture; the script keeps SUBSET // 5 test images.
SUBSET = 5000


def shared_data_available() -> bool:
  return (SHARED_DATA / 'train.npz').is_file() and (SHARED_DATA / 'to_cifar_batches.py').is_file()


@pytest.fixture(scope='session')
def shared_data_dir() -> pathlib.Path:
  """The folder holding train.npz and test.npz (the `jpeg_npz` source reads it directly)."""
  if not shared_data_available():
    pytest.skip(NO_SHARED_DATA)
  return SHARED_DATA


@pytest.fixture(scope='session')
def cifar_batches_dir(tmp_path_factory, shared_data_dir) -> pathlib.Path:
  """A `cifar-10-batches-py` folder of SUBSET real training and SUBSET // 5 test images.

  Returns the folder that contains `cifar-10-batches-py/` (what `data.data_dir` points at).
  """
  out = tmp_path_factory.mktemp('cifar_subset')
  subprocess.run([sys.executable, str(shared_data_dir / 'to_cifar_batches.py'), str(out),
                  '--subset', str(SUBSET)], check=True, capture_output=True)
  return out
