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


def relative_error(actual, expected) -> float:
  """max |actual - expected| / max |expected|."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  actual, expected = np.asarray(actual), np.asarray(expected)
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def randomise_batchnorm(net, seed: int):
  """Gives every BatchNorm2d of a PyTorch net random affine parameters and running statistics."""
  import torch  # pylint: disable=g-import-not-at-top  # Only the PyTorch tests call this.
  torch.manual_seed(seed)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
        module.running_mean.normal_(0.0, 0.2)
        module.running_var.uniform_(0.5, 1.5)
  return net


def smoke_config(**overrides):
  """configs/smoke.py on 256 synthetic images, 2 epochs, no plots: a few seconds on a CPU."""
  sys.path.insert(0, str(REPO))
  from configs import smoke  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  settings = {'data.source': 'synthetic', 'data.train_subset': 256, 'data.test_subset': 128,
              'eval_batch_size': 128, 'write_plots': False, **overrides}
  for key, value in settings.items():
    section, _, field = key.rpartition('.')
    (config[section] if section else config)[field] = value
  return config


@pytest.fixture(scope='session')
def smoke_run(tmp_path_factory):
  """(config, workdir, results) of a finished smoke_config() run."""
  from resnet_jax import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('smoke_run')
  config = smoke_config()
  return config, workdir, train.train_and_evaluate(config, str(workdir))
