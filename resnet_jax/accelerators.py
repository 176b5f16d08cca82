r"""Which accelerator this machine has, and whether jax uses it.

`pip install jax` alone is CPU-only: on a GPU or TPU machine jax then trains on the CPU, slowly
and without an error. This module is the one place that notices:

- `accelerator_warning()`: one line for a run's start when jax runs on the CPU while the machine
  shows an NVIDIA driver (`nvidia-smi` on PATH, /proc/driver/nvidia) or a Cloud TPU (/dev/accel*,
  /dev/vfio/<n>, $TPU_ACCELERATOR_TYPE); None otherwise, and None when JAX_PLATFORMS asks for
  the CPU on purpose.
- `gpu_refusal()`: why jax cannot train on a GPU here, naming the extra to install; None when
  it can. The GPU launchers run it (`python -m resnet_jax.platform_check --expect=gpu`) before
  they start anything.

jax is imported only when asked for its backend, so that `XLA_PYTHON_CLIENT_PREALLOCATE` can
still be set for the check's own short process.
"""

import glob
import os
import shutil
from typing import Mapping, Optional

INSTALL_GPU = ("pip install -e '.[cuda13]' (or '.[cuda12]' for an NVIDIA driver older than "
               "CUDA 13's)")
INSTALL_TPU = "pip install -e '.[tpu,gcs]'"
NVIDIA_PROC = '/proc/driver/nvidia'
TPU_DEVICE_PATTERNS = ('/dev/accel[0-9]*', '/dev/vfio/[0-9]*')
TPU_ENV_VARS = ('TPU_ACCELERATOR_TYPE', 'TPU_WORKER_HOSTNAMES')


def nvidia_driver_visible(environ: Optional[Mapping[str, str]] = None) -> bool:
  """Whether an NVIDIA driver shows: `nvidia-smi` on environ's PATH, or /proc/driver/nvidia."""
  environ = os.environ if environ is None else environ
  return (shutil.which('nvidia-smi', path=environ.get('PATH', os.defpath)) is not None
          or os.path.exists(NVIDIA_PROC))


def tpu_vm_detected(environ: Optional[Mapping[str, str]] = None) -> bool:
  """Whether this looks like a Cloud TPU VM: TPU device files, or the TPU runtime's variables."""
  environ = os.environ if environ is None else environ
  return (any(environ.get(name) for name in TPU_ENV_VARS)
          or any(glob.glob(pattern) for pattern in TPU_DEVICE_PATTERNS))


def expected_accelerator(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """'GPU' or 'TPU' where the machine shows one (see the module docstring), else None."""
  if nvidia_driver_visible(environ):
    return 'GPU'
  if tpu_vm_detected(environ):
    return 'TPU'
  return None


def default_backend() -> str:
  """jax's default backend: 'cpu', 'gpu' or 'tpu' (initialises jax's backends)."""
  import jax  # pylint: disable=g-import-not-at-top  # See the module docstring.
  return jax.default_backend()


def cpu_on_purpose(environ: Optional[Mapping[str, str]] = None) -> bool:
  """Whether JAX_PLATFORMS names the CPU alone: a run that asked for it is not warned."""
  environ = os.environ if environ is None else environ
  return environ.get('JAX_PLATFORMS', '').strip().lower() == 'cpu'


def accelerator_warning(backend: Optional[str] = None,
                        environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """The one-line warning for a run on the CPU where a GPU or TPU was expected, else None.

  Args:
    backend: jax's default backend; default: ask jax.
    environ: the environment (PATH, TPU and JAX variables); default os.environ.

  Returns:
    'running on the CPU while a GPU/TPU was expected (...): install ...', or None where jax uses
    an accelerator, none shows, or JAX_PLATFORMS=cpu chose the CPU.
  """
  expected = expected_accelerator(environ)
  if expected is None or cpu_on_purpose(environ):
    return None
  if (backend or default_backend()) != 'cpu':
    return None
  if expected == 'GPU':
    seen, install = 'an NVIDIA driver is visible', f'a CUDA jax with {INSTALL_GPU}'
  else:
    seen, install = 'this is a TPU VM', f'the TPU jax with {INSTALL_TPU}'
  return f'running on the CPU while a {expected} was expected ({seen}): install {install}'


def gpu_refusal(backend: Optional[str] = None) -> Optional[str]:
  """Why jax cannot train on a GPU here (one line naming the extra to install), or None."""
  backend = backend or default_backend()
  if backend == 'gpu':
    return None
  return (f'jax finds no GPU (its default backend is {backend}): install a CUDA jax with '
          f'{INSTALL_GPU}')
