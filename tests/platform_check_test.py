"""The platform_check command: one line and exit 2 where jax has no GPU (the GPU launchers' check)."""

import pytest

from resnet_jax import accelerators
from resnet_jax import platform_check
from resnet_jax.errors import UserError


def test_the_gpu_check_fails_in_one_line_without_a_gpu():
  # The tests run jax on the CPU (conftest), so the check must refuse.
  with pytest.raises(UserError) as refused:
    platform_check.check('gpu')
  assert str(refused.value) == accelerators.gpu_refusal('cpu')


def test_without_expect_it_says_which_backend_jax_uses():
  assert 'cpu' in platform_check.check(None)
