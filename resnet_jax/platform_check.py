r"""Says whether jax runs on the GPU or TPU this machine shows (`accelerators` decides).

    python -m resnet_jax.platform_check                # the warning, or which backend jax uses
    python -m resnet_jax.platform_check --expect=gpu   # exit 2 and `error: ...` without a GPU
"""

import logging
import os
import sys

from resnet_jax import accelerators


def main(argv: list[str]) -> int:
  """`--expect=gpu`: exit 2 with `error: ...` unless jax has a GPU; no flag: print the warning."""
  if argv[1:] not in ([], ['--expect=gpu']):
    print(f'usage: python -m resnet_jax.platform_check [--expect=gpu] (not {" ".join(argv[1:])})',
          file=sys.stderr)
    return 2
  if argv[1:]:
    problem = accelerators.gpu_refusal()
    if problem:
      print(f'error: {problem}', file=sys.stderr)
      return 2
    return 0
  warning = accelerators.accelerator_warning()
  print(warning or f'jax runs on {accelerators.default_backend()}; no accelerator is missing')
  return 0


if __name__ == '__main__':
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # A short check, not a run.
  logging.getLogger('jax').setLevel(logging.ERROR)  # Its CPU fallback notice: our line says it.
  sys.exit(main(sys.argv))
