"""What reaches the console: resnet-jax's own lines and every warning, not libraries' INFO noise.

Left alone, a run's console holds several orbax INFO lines per checkpoint and, on every machine
without a TPU, jax's "Unable to initialize backend 'tpu'" line. Every command (`main`, `sweep`,
`evaluate`, `inspect`, `benchmark`) calls `quiet_library_logs` once its flags are parsed
(`main.parse_flags`), so their consoles keep only resnet-jax's own log lines and warnings or
worse from anyone; `--verbose` keeps everything.
"""

import logging
import os

from absl import logging as absl_logging

PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__))


def from_this_package(record: logging.LogRecord) -> bool:
  """Whether a log record was made by code of resnet_jax (not by a library it calls)."""
  return os.path.realpath(record.pathname).startswith(PACKAGE_DIR + os.sep)


def keep_record(record: logging.LogRecord) -> bool:
  """The console filter: warnings and worse from anyone, INFO and below from resnet_jax only."""
  return record.levelno >= logging.WARNING or from_this_package(record)


def quiet_library_logs(verbose: bool = False) -> None:
  """Filters libraries' INFO lines (orbax, jax, clu, ...) from absl's console handler.

  Python logging's records (jax's, orbax's) reach the console through the same handler, so one
  filter covers both. Calling it again replaces the choice.

  Args:
    verbose: True keeps every line (the filter is removed).
  """
  handler = absl_logging.get_absl_handler()
  if verbose:
    handler.removeFilter(keep_record)
  else:
    handler.addFilter(keep_record)  # Added once however often it is called.
