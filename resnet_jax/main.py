r"""Trains a system from configs/: `python -m resnet_jax.main --config configs/best.py --workdir W`.

Any config key can be overridden on the command line, e.g. `--config.num_epochs=30` or
`--config.model.num_blocks='(2,2,2)'`. A run found in the workdir resumes where it stopped;
SIGTERM saves a checkpoint and exits with status 0.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from resnet_jax import console_logs
from resnet_jax import distributed
from resnet_jax import errors
from resnet_jax import models
from resnet_jax import train

CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file (configs/*.py).', lock_config=True)
WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and reports.')
VERBOSE = flags.DEFINE_bool(
    'verbose', False, "Also print libraries' INFO lines (orbax, jax, clu), dropped by default.")


def parse_flags(argv: list[str], require_workdir: bool = True,
                require_config: bool = True) -> list[str]:
  """absl flag parsing, with every mistake (unknown key, bad value, bad file) one line, exit 2.

  Every command parses its flags here; it also sets what reaches the console (--verbose).
  """
  try:
    remaining = flags.FLAGS(argv)
    console_logs.quiet_library_logs(verbose=VERBOSE.value)
    if CONFIG.value is not None:
      CONFIG.value.get('seed')  # config_flags defers a config file's load error to first use.
    elif require_config:
      raise errors.UserError('--config is required, e.g. --config=configs/best.py')
    if require_workdir and not WORKDIR.value:
      raise errors.UserError('--workdir is required, e.g. --workdir=runs/best')
  except (AttributeError, KeyError) as e:  # config_flags: an override of a key that is not there
    print(f'error: {unknown_key_message(argv, e)}', file=sys.stderr, flush=True)
    sys.exit(2)
  except OSError as e:  # config_flags: the config file is missing or failed to load
    reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
    print(f'error: --config cannot be loaded: {reason}', file=sys.stderr, flush=True)
    sys.exit(2)
  except (flags.Error, errors.UserError) as e:
    print(f'error: {one_line(e)}', file=sys.stderr, flush=True)
    sys.exit(2)
  return remaining


def unknown_key_message(argv: list[str], error: BaseException) -> str:
  """One line naming the `--config.x.y` override whose key does not exist."""
  key = one_line(error).strip('"\'')
  for argument in argv:
    name = argument.lstrip('-').split('=', 1)[0]
    if name.startswith('config.') and key in name.split('.'):
      return (f'{name} is not a config key (a misspelling?); every key and its default is in '
              'resnet_jax/defaults.py')
  return f'unknown config key {key!r}; every key and its default is in resnet_jax/defaults.py'


def one_line(error: BaseException) -> str:
  """The first non-empty line of an exception's message, at most 300 characters."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return (lines[0] if lines else type(error).__name__)[:300]


def run(config, workdir: str) -> None:
  distributed.initialize_from_env()
  print(models.summary_table(config.model), flush=True)
  results = train.train_and_evaluate(config, workdir)
  if not results.get('preempted'):
    logging.info('final test accuracy %.2f%%; report in %s/report.md',
                 100 * results['final_test_accuracy'], workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  errors.exit_on_user_error(run, CONFIG.value, WORKDIR.value)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
