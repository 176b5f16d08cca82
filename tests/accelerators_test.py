"""accelerators: the warning on a CPU where a GPU or TPU shows, and the GPU launchers' check.

The hardware is simulated: a fake `nvidia-smi` on PATH, a TPU runtime variable, a given backend.
"""

import os
import pathlib
import re
import tomllib

import pytest

from resnet_jax import accelerators

EXTRAS = tomllib.loads((pathlib.Path(__file__).resolve().parent.parent / 'pyproject.toml')
                       .read_text())['project']['optional-dependencies']


def real_accelerator_visible() -> bool:
  return accelerators.expected_accelerator({'PATH': os.environ.get('PATH', '')}) is not None


@pytest.fixture
def nvidia_path(tmp_path) -> str:
  """A PATH whose only directory holds a fake nvidia-smi."""
  fake = tmp_path / 'nvidia-smi'
  fake.write_text('#!/bin/sh\n')
  fake.chmod(0o755)
  return str(tmp_path)


def named_extras(line: str) -> set[str]:
  return set(re.findall(r"'\.\[([\w,]+)\]'", line))


def test_a_visible_nvidia_driver_and_a_cpu_jax_is_warned_with_the_extra(nvidia_path):
  warning = accelerators.accelerator_warning('cpu', {'PATH': nvidia_path})
  assert warning.startswith('running on the CPU while a GPU was expected (an NVIDIA driver is '
                            'visible): install a CUDA jax with pip install -e'), warning
  assert '\n' not in warning and named_extras(warning) == {'cuda13', 'cuda12'}
  assert named_extras(warning) <= set(EXTRAS)


def test_a_tpu_vm_with_a_cpu_jax_is_warned_with_the_extra(tmp_path):
  environ = {'PATH': str(tmp_path), 'TPU_ACCELERATOR_TYPE': 'v5litepod-8'}
  if accelerators.nvidia_driver_visible(environ):
    pytest.skip('this machine shows an NVIDIA driver')
  warning = accelerators.accelerator_warning('cpu', environ)
  assert warning.startswith('running on the CPU while a TPU was expected (this is a TPU VM)')
  assert named_extras(warning) == {'tpu,gcs'} and {'tpu', 'gcs'} <= set(EXTRAS)


def test_no_warning_on_an_accelerator_or_on_the_cpu_by_choice(nvidia_path):
  assert accelerators.accelerator_warning('gpu', {'PATH': nvidia_path}) is None
  assert accelerators.accelerator_warning(
      'cpu', {'PATH': nvidia_path, 'JAX_PLATFORMS': 'cpu'}) is None


def test_no_warning_where_no_accelerator_shows(tmp_path):
  if real_accelerator_visible():
    pytest.skip('this machine shows a GPU or TPU')
  assert accelerators.expected_accelerator({'PATH': str(tmp_path)}) is None
  assert accelerators.accelerator_warning('cpu', {'PATH': str(tmp_path)}) is None


def test_gpu_refusal_names_the_backend_and_the_extras():
  assert accelerators.gpu_refusal('gpu') is None
  refusal = accelerators.gpu_refusal('cpu')
  assert refusal.startswith('jax finds no GPU (its default backend is cpu): install a CUDA jax')
  assert named_extras(refusal) == {'cuda13', 'cuda12'}
