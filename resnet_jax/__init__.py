"""resnet-jax: compact CIFAR-10 ResNets in JAX/Flax."""

import sys as _sys

__version__ = "0.1.0"

if _sys.argv[:1] == ['-m']:
  # `python -m resnet_jax.<command>`: Python says '-m' while it finds the module, before the
  # command imports jax. From here on the console is never silent for long.
  from resnet_jax import console_logs as _console_logs  # pylint: disable=g-import-not-at-top
  _console_logs.watch_start()
