"""The PyTorch baseline: the same model's step timed in each mode; a failing mode is its row's."""

import pytest

from resnet_jax.pytorch import torch_baseline

from conftest import synthetic_config


@pytest.fixture
def torch():
  module = pytest.importorskip('torch')
  if torch_baseline.unavailable():
    pytest.skip(f'{torch_baseline.unavailable()} (it comes with the PyTorch model, branch i16)')
  return module


def test_eager_step_is_timed_on_this_device(torch):
  del torch
  results = torch_baseline.torch_baseline(synthetic_config(), 16, 'bfloat16', steps=2, warmup=1,
                                          modes=(torch_baseline.EAGER,))
  (result,) = results
  assert (result.mode, result.batch_size, result.dtype, result.error) == ('eager', 16,
                                                                          'bfloat16', None)
  assert result.images_per_second > 0 and result.compile_seconds > 0
  assert result.device == 'cpu' and result.memory_gib is None


def test_a_mode_that_fails_is_reported_not_raised(torch, monkeypatch):
  def broken(net):
    raise RuntimeError('no C++ compiler\nmore detail')

  monkeypatch.setattr(torch, 'compile', broken)
  (result,) = torch_baseline.torch_baseline(synthetic_config(), 8, 'float32', steps=1,
                                            modes=(torch_baseline.COMPILED,))
  assert result.error == 'RuntimeError: no C++ compiler'
  assert result.images_per_second is None


def test_version_is_read_without_importing_torch():
  assert torch_baseline.version() is None or torch_baseline.version()[0].isdigit()
