"""The platform_check command: one line and exit 2 where jax has no GPU (the GPU launchers' check)."""

from resnet_jax import accelerators
from resnet_jax import platform_check


def test_command_line_check_fails_in_one_line_without_a_gpu(capsys):
  # The tests run jax on the CPU (conftest), so the check must refuse.
  assert platform_check.main(['platform_check', '--expect=gpu']) == 2
  assert capsys.readouterr().err == f"error: {accelerators.gpu_refusal('cpu')}\n"
  assert platform_check.main(['platform_check', '--bogus']) == 2
