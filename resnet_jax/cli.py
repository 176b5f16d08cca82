"""The flags every command shares (--config, --workdir) and the parser that checks them.

Each command (`main`, `evaluate`, `benchmark`, `sweep`, `inspect`) runs `parse_flags` before its
work. It sets what reaches the console (`--verbose` brings back libraries' INFO lines), turns on
the persistent compilation cache (`compile_cache`), and makes
every mistake in the flags or the config file (a missing file, a syntax error or failing import
in it, no `get_config`, an unknown key, a bad value, a sweep config given to a training command
or the reverse) one line `error: ...` on stderr and exit status 2.

The commands that read a finished run (evaluate, inspect, export) share `--checkpoint` and, for
the first two, `--output_dir`: `checkpoint_flag()` and `output_dir_flag()` define each once, for
the commands that call them, so no command lists a flag it ignores.

The flags live here, not in main.py, because main.py runs as `__main__` and sweep configs import
`resnet_jax.sweep`, which imports this module: flags defined in `__main__` would be defined twice.
"""

import functools
import re
import sys
import traceback

from absl import flags
from ml_collections import config_dict
from ml_collections import config_flags

from resnet_jax import compile_cache
from resnet_jax import console_logs
from resnet_jax import files
from resnet_jax.errors import UserError, last_line, one_line

CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Configuration file (configs/*.py; configs/sweeps/*.py for sweep).',
    lock_config=True)
WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and reports.')
VERBOSE = flags.DEFINE_bool(
    'verbose', False, "Also print libraries' INFO lines (orbax, jax, clu), dropped by default.")

# What a config file is for: `parse_flags(kind=...)`.
RUN = 'run'
SWEEP = 'sweep'
_KEY_HINT = 'every key and its default is in resnet_jax/defaults.py'


@functools.cache
def checkpoint_flag(choices: tuple[str, ...]) -> flags.FlagHolder:
  """--checkpoint: which checkpoint of the workdir a reading command uses (choices[0] by default)."""
  return flags.DEFINE_enum('checkpoint', choices[0], choices,
                           'Which checkpoint of the workdir to use.')


@functools.cache
def output_dir_flag() -> flags.FlagHolder:
  """--output_dir: where evaluate and inspect write (by default a folder inside the workdir)."""
  return flags.DEFINE_string(
      'output_dir', None,
      'Where the outputs go; default <workdir>/evaluate_<which> (evaluate), <workdir>/inspect.')


def check_output_writable(workdir: str, output_dir: str | None) -> None:
  """UserError unless a reading command's outputs can be written: to output_dir, else workdir."""
  if output_dir:
    files.check_writable(output_dir, '--output_dir')
  else:
    files.check_writable(workdir, '--workdir')


def parse_flags(argv: list[str], require_workdir: bool = True, require_config: bool = True,
                kind: str = RUN) -> list[str]:
  """absl flag parsing, with every mistake (unknown key, bad value, bad file) one line, exit 2.

  Args:
    argv: the command line.
    require_workdir: --workdir must be given.
    require_config: --config must be given.
    kind: RUN (a training config, configs/*.py) or SWEEP (configs/sweeps/*.py).

  Returns:
    The arguments that are not flags.
  """
  try:
    remaining = flags.FLAGS(argv)
    console_logs.quiet_library_logs(verbose=VERBOSE.value)
    compile_cache.enable()
    if flags.FLAGS['config'].present:
      check_config_kind(CONFIG.value, config_path(argv), kind)
    elif require_config:
      raise UserError('--config is required, e.g. --config=configs/best.py')
    if require_workdir and not WORKDIR.value:
      raise UserError('--workdir is required, e.g. --workdir=runs/best')
  except Exception as e:  # pylint: disable=broad-except  # The config file runs users' code.
    print(f'error: {flag_error_message(argv, e)}', file=sys.stderr, flush=True)
    sys.exit(2)
  return remaining


def config_path(argv: list[str]) -> str:
  """The --config argument of a command line ('' where there is none)."""
  for i, argument in enumerate(argv):
    if argument.startswith(('--config=', '-config=')):
      return argument.split('=', 1)[1]
    if argument in ('--config', '-config') and i + 1 < len(argv):
      return argv[i + 1]
  return ''


def check_config_kind(config, path: str, kind: str) -> None:
  """UserError unless `config` (what get_config() returned) is a config of this kind."""
  if not isinstance(config, config_dict.ConfigDict):
    # A file that failed to load gives an object that raises its load error on any access.
    getattr(config, 'keys', None)
    raise UserError(f'--config={path}: get_config() returned {type(config).__name__}, not a '
                    'ConfigDict; return one, e.g. defaults.base_config() (see configs/)')
  is_sweep = 'base' in config and 'grid' in config
  if kind == RUN and is_sweep:
    raise UserError(f'--config={path} is a sweep config; run it with python -m resnet_jax.sweep, '
                    'or give a training config (configs/*.py)')
  if kind == SWEEP and not is_sweep:
    raise UserError(f'--config={path} is a training config, not a sweep; train it with python -m '
                    'resnet_jax.main, or give a sweep config (configs/sweeps/*.py)')


def flag_error_message(argv: list[str], error: BaseException) -> str:
  """One line for any failure while parsing the flags or loading the config file."""
  path = config_path(argv)
  if isinstance(error, UserError):
    return one_line(error)
  if isinstance(error, SyntaxError):
    return (f'--config={path} has a syntax error: {error.msg} ({error.filename}, line '
            f'{error.lineno}); fix the file')
  if isinstance(error, OSError):  # config_flags: the file is missing or cannot be read.
    return f'--config cannot be loaded: {last_line(error)}'
  if isinstance(error, flags.Error):
    if 'Error whilst parsing config file' in str(error):  # Its message ends with the cause.
      return f'--config={path} cannot be loaded: {last_line(error)}'
    return one_line(error)
  text = one_line(error)
  if 'get_config' in text and isinstance(error, AttributeError):
    return (f'--config={path} defines no get_config(); a config file defines get_config() '
            'returning a ConfigDict (see configs/)')
  key = _locked_key(text)
  if key is not None:
    return unknown_key_message(argv, key, path)
  return f'--config={path} cannot be loaded: {type(error).__name__}: {text}{_where(error)}'


def _locked_key(text: str) -> str | None:
  """The key of a locked ConfigDict's 'Key "x" does not exist' error, or of a bare KeyError."""
  match = (re.search(r'Key "([^"]+)" does not exist', text)
           or re.fullmatch(r'"?\'([^\']+)\'"?', text))
  return match.group(1) if match else None


def unknown_key_message(argv: list[str], key: str, path: str) -> str:
  """One line naming the `--config.x.y` override, or the config file, that sets key `key`."""
  for argument in argv:
    name = argument.lstrip('-').split('=', 1)[0]
    if name.startswith('config.') and key in name.split('.'):
      return f'{name} is not a config key (a misspelling?); {_KEY_HINT}'
  return f'--config={path} sets {key}, which is not a config key (a misspelling?); {_KEY_HINT}'


def _where(error: BaseException) -> str:
  """' (file, line n)' of the innermost frame that raised error, outside Python's import code."""
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if not f.filename.startswith('<frozen')]
  return f' ({frames[-1].filename}, line {frames[-1].lineno})' if frames else ''
