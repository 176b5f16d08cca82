r"""Says whether jax runs on the GPU or TPU this machine shows (`accelerators` decides).

    python -m resnet_jax.platform_check                # the warning, or which backend jax uses
    python -m resnet_jax.platform_check --expect=gpu   # exit 2 and `error: ...` without a GPU
"""

import os

from absl import flags
from absl import logging

from resnet_jax import accelerators
from resnet_jax import cli
from resnet_jax.errors import UserError

EXPECT = flags.DEFINE_enum('expect', None, ['gpu'],
                           'Exit 2 with one line `error: ...` unless jax runs on a GPU (what the '
                           'GPU launchers check before they start).')


def check(expect: str | None) -> str:
  """The line to print: the accelerator warning, or which backend jax uses ('' for --expect).

  Raises:
    UserError: expect='gpu' and jax has no GPU.
  """
  if expect:
    problem = accelerators.gpu_refusal()
    if problem:
      raise UserError(problem)
    return ''
  warning = accelerators.accelerator_warning()
  return warning or f'jax runs on {accelerators.default_backend()}; no accelerator is missing'


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses positional arguments.
  line = check(EXPECT.value)
  if line:
    logging.info('%s', line)


if __name__ == '__main__':
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # A short check, not a run.
  cli.run(main, 'platform_check', uses_config=False, require_workdir=False, require_config=False)
