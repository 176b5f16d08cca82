"""Shared fixtures: the real CIFAR-10 images (JPEG copy in ../shared), skipped where absent."""

import contextlib
import fcntl
import importlib
import os
import pathlib
import subprocess
import sys
import tempfile
from unittest import mock

from etils import epath
import jax
import numpy as np
import pytest

from resnet_jax import defaults
from resnet_jax.errors import UserError
from resnet_jax.training import run_config
from resnet_jax.training import runs

# Compiling, not running, is most of a test's time here. Two settings cut it, for every test and
# (through the environment) the subprocesses they start:
# - JAX's persistent compilation cache: the small runs share shapes, so most compile once (a short
#   CPU run: 30 s -> 8 s). jax reads the environment when it is imported, so this process sets
#   its config too.
# - LLVM's optimisation level 0 for XLA:CPU: a cold short run 38 s -> 21 s (its steps run about a
#   third slower). It changes how fast the code runs, not what it computes.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
TEST_XLA_FLAGS = '--xla_backend_optimization_level=0'
if TEST_XLA_FLAGS not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='resnet_jax_jit_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')
jax.config.update('jax_platforms', os.environ['JAX_PLATFORMS'])
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)

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
  # One copy for every xdist worker (each has its own basetemp below a shared one): the first to
  # take the lock writes it, about 12 s.
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    shared = shared.parent
  out, done = shared / 'cifar_subset', shared / 'cifar_subset.done'
  with open(shared / 'cifar_subset.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      subprocess.run([sys.executable, str(shared_data_dir / 'to_cifar_batches.py'), str(out),
                      '--subset', str(SUBSET)], check=True, capture_output=True)
      done.touch()
  return out


def host_devices_env(count: int) -> dict:
  """The environment of a subprocess whose CPU is split into `count` JAX devices."""
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS=f'{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={count}')


def with_overrides(config, overrides: dict):
  """config with {'dotted.key': value} set (as --config.dotted.key=value would)."""
  for key, value in overrides.items():
    run_config.set_key(config, key, value, 'a test override')
  return config


@contextlib.contextmanager
def fake_bucket(root):
  """gs://bucket/... reads and writes the local folder root instead (epath's backends mocked)."""

  def redirect(original, path, *args, **kwargs):
    return original(os.fspath(path).replace('gs://bucket', os.fspath(root), 1), *args, **kwargs)

  names = ('open', 'exists', 'isdir', 'listdir', 'makedirs', 'mkdir', 'remove', 'stat', 'glob',
           'walk', 'rmtree')
  # epath sends URLs to TensorFlow's file system wherever TensorFlow is installed.
  with mock.patch.object(epath.gpath, '_is_tf_installed', lambda: False), \
      epath.testing.mock_epath(**{name: redirect for name in names}):
    yield


def histogram_events(logdir) -> dict:
  """tag -> [(step, number of values)] of the histograms in a TensorBoard folder.

  Reads both encodings: `HistogramProto` (the TensorFlow-free writer) and TensorFlow's
  (k, 3) tensor of (left edge, right edge, count) rows.
  """
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.util import tensor_util
  found = {}
  for path in sorted(pathlib.Path(logdir).glob('events.out.tfevents.*')):
    for event in event_file_loader.EventFileLoader(str(path)).Load():
      for value in event.summary.value:
        if value.HasField('histo'):
          count = value.histo.num
        elif value.metadata.plugin_data.plugin_name == 'histograms':
          count = tensor_util.make_ndarray(value.tensor)[:, 2].sum()
        else:
          continue
        found.setdefault(value.tag, []).append((event.step, int(count)))
  return found


def config_file(name: str, *args):
  """configs/<name>.py's get_config(*args) (`--config=configs/<name>.py:arg` passes one arg)."""
  with pytest.MonkeyPatch.context() as patch:
    patch.syspath_prepend(str(REPO))
    return importlib.import_module(f'configs.{name}').get_config(*args)


def tiny_config(data_dir, **overrides):
  """A two-layer ResNet (8 and 16 channels, 5,266 parameters) on the real-image subset."""
  config = defaults.base_config()
  config.model = defaults.model_config(
      name='tiny', num_blocks=(1, 1), channels=(8, 16), kernel_sizes=(3, 3),
      shortcut_kernel_sizes=(1, 1), stem_channels=8, se='none')
  config.data.source = 'cifar_batches'
  config.data.data_dir = str(data_dir)
  config.optim.learning_rate = 0.05
  config.eval_batch_size = 500
  config.log_every_steps = 1000
  config.write_plots = False
  config.checkpoint_min_seconds = 0.0  # a checkpoint every epoch, as the tests expect
  return with_overrides(config, overrides)


def synthetic_config(**overrides):
  """tiny_config's model on 256 synthetic training and 100 test images, batch 64 (4 steps)."""
  return tiny_config('', **{'data.source': 'synthetic', 'data.train_subset': 256,
                            'data.test_subset': 100, 'batch_size': 64, 'eval_batch_size': 50,
                            **overrides})


def short_config(data_dir, **overrides):
  """2 epochs of 1,000 images, 2 steps a call, every call's loss logged."""
  return tiny_config(data_dir, **{'data.train_subset': 1000, 'data.test_subset': 500,
                                  'batch_size': 96, 'num_epochs': 2, 'steps_per_call': 2,
                                  'log_every_steps': 1, 'reference.pytorch_final': 1.0,
                                  **overrides})


def restore_state(workdir, config, checkpoint='latest'):
  """The state and meta of a workdir's latest (or best) checkpoint."""
  return runs.restore(runs.setup_run(config, str(workdir)), checkpoint)


def restore_params(workdir, config):
  """The parameters of a workdir's latest checkpoint (as numpy), its meta and its step."""
  state, meta = restore_state(workdir, config)
  return jax.tree.map(np.asarray, jax.device_get(state.params)), meta, int(state.step)


def assert_trees_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def relative_error(actual, expected) -> float:
  """max |actual - expected| / max |expected|."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def assert_whole_epoch_ticks(ax):
  """ax's x axis is labelled epoch and ticked on whole numbers only (not 1.2, 1.4, ...)."""
  ticks = ax.get_xticks()
  assert ax.get_xlabel() == 'epoch'
  assert len(ticks) and np.all(ticks == np.round(ticks)), ticks


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
  return with_overrides(config, {'data.source': 'synthetic', 'data.train_subset': 256,
                                 'data.test_subset': 128, 'eval_batch_size': 128,
                                 'write_plots': False, 'checkpoint_min_seconds': 0.0,
                                 **overrides})


@pytest.fixture(scope='session')
def smoke_run(tmp_path_factory):
  """(config, workdir, results) of a finished smoke_config() run."""
  from resnet_jax.training import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('smoke_run')
  config = smoke_config()
  return config, workdir, train.train_and_evaluate(config, str(workdir))


def data_config(**overrides):
  """config.data of the defaults, with overrides."""
  cfg = defaults.base_config().data
  cfg.update(overrides)
  return cfg


def assert_user_error(fn, *fragments):
  """fn raises a one-line UserError whose message holds every fragment."""
  with pytest.raises(UserError) as info:
    fn()
  message = str(info.value)
  assert '\n' not in message
  for fragment in fragments:
    assert fragment in message


def image_keys(images):
  return {image.tobytes() for image in images}
