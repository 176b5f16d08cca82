"""The flags every command shares (--config, --workdir, --verbose, --output) and how it runs.

Every command runs through `run`: its --help lists its own flags and the shared ones it uses;
`parse_flags` sets what reaches the console (`console_logs`: `--verbose` brings back the
libraries' lines), turns on the persistent compilation cache (`compile_cache`), and makes every
mistake in the flags or the config file (a missing file, a syntax error or failing import in
it, no `get_config`, an unknown key, a bad value, a sweep config given to a training command or
the reverse, a run's config.json) one line `error: ...` on stderr, the last printed, and exit
status 2; a UserError in the work ends the same way.

The commands that read a finished run (evaluate, inspect, export) share `--checkpoint`; every
command that writes something other than a workdir names it with `--output` (`output_flag`: a
folder for evaluate and inspect, a file for export and benchmark; `--output_dir` and `--to` are
its old spellings). Each is defined once, for the commands that call it, so no command lists a
flag it ignores.

The flags live here, not in main.py, because main.py runs as `__main__` and sweep configs import
`resnet_jax.sweep`, which imports this module: flags defined in `__main__` would be defined twice.
"""

import functools
import os
import re
import runpy
import shlex
import sys
import traceback
from typing import Callable

from absl import app
from absl import flags
from absl import logging
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
    'verbose', False, "Print libraries' lines (orbax, jax, TensorFlow, clu) on the console too, "
    "not only in the command's log file (its first line names it).")
# absl's help flags (and -h, read as --help): their output, then exit status 0.
HELP_FLAGS = ('help', '?', 'helpshort', 'helpfull', 'helpxml')

# What a config file is for: `parse_flags(kind=...)`.
RUN = 'run'
SWEEP = 'sweep'
_KEY_HINT = 'every key and its default is in resnet_jax/defaults.py'


def _defined_once(name: str, define: Callable[[], flags.FlagHolder]) -> flags.FlagHolder:
  """The flag `name`: define() makes it, unless a command this process imported already did
  (the tests import several commands; absl refuses a flag defined twice)."""
  if name in flags.FLAGS:
    return flags.FlagHolder(flags.FLAGS, flags.FLAGS[name])
  return define()


def checkpoint_flag(choices: tuple[str, ...]) -> flags.FlagHolder:
  """--checkpoint: which checkpoint of the workdir a reading command uses (choices[0] by default)."""
  return _defined_once('checkpoint', lambda: flags.DEFINE_enum(
      'checkpoint', choices[0], choices, 'Which checkpoint of the workdir to use.'))


def output_flag(default: str | None, what: str) -> flags.FlagHolder:
  """--output: where a command writes what it makes (one spelling for every command).

  A process that imports several commands (the tests) has the first one's.

  Args:
    default: its default.
    what: its help text: what goes there, and where by default.
  """
  def define():
    holder = flags.DEFINE_string('output', default, what)
    for old in ('output_dir', 'to'):  # The spellings of earlier versions.
      flags.DEFINE_alias(old, 'output')
    return holder

  return _defined_once('output', define)


def output_dir_flag(default: str) -> flags.FlagHolder:
  """--output of evaluate and inspect: a folder, by default `default` (inside the workdir)."""
  return output_flag(None, f'Folder the outputs go to; default {default}.')


def check_output_writable(workdir: str, output_dir: str | None) -> None:
  """UserError unless a reading command's outputs can be written: to output_dir, else workdir."""
  if output_dir:
    files.check_writable(output_dir, '--output')
  else:
    files.check_writable(workdir, '--workdir')


def run(main: Callable[[list[str]], None], command: str, *, uses_config: bool = True,
        **parse_options) -> None:
  """Runs a command's main as every command runs: its flags parsed (--help, -h: its help, exit
  status 0), its console set, one line for a user error (`console_logs`), never silent while it
  works (`console_logs.watch_command`).

  Args:
    main: the command's main(argv).
    command: its name (`main`, `evaluate`, ...): its log file is `<workdir>/<command>.log`.
    uses_config: it takes --config and (where it requires one) --workdir, which its --help
      lists with its own flags.
    **parse_options: `parse_flags`'s options.
  """
  own = ['verbose', 'checkpoint', 'output'] + ['config'] * uses_config + ['workdir'] * (
      uses_config and parse_options.get('require_workdir', True))
  for name in own:  # absl's --help lists the main module's key flags only.
    if name in flags.FLAGS:
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  def watched_main(argv: list[str]) -> None:
    console_logs.watch_command(f'{command} running')
    try:
      main(argv)
    finally:
      console_logs.watch_command(None)

  app.run(functools.partial(console_logs.exit_on_user_error, watched_main),
          flags_parser=functools.partial(parse_flags, command=command, **parse_options))


def say_outputs(where: str) -> None:
  """A command's first line: where its outputs go, and its log file."""
  log = console_logs.log_path()
  logging.info('outputs: %s%s', where, f"; libraries' messages: {log}" if log else '')


def command_line() -> str:
  """The command as the user typed it: `python -m resnet_jax.<command> <arguments>`."""
  program = sys.argv[0]
  if program.endswith('.py'):  # python -m resnet_jax.x gives the module's file.
    module = os.path.splitext(os.path.relpath(program, os.path.dirname(console_logs.PACKAGE_DIR)))[0]
    if not module.startswith('..'):
      program = 'python -m ' + module.replace(os.sep, '.').removesuffix('.__main__')
  else:
    program = os.path.basename(program)
  return ' '.join([program, *map(shlex.quote, sys.argv[1:])])


def parse_flags(argv: list[str], require_workdir: bool = True, require_config: bool = True,
                kind: str = RUN, command: str = 'resnet_jax') -> list[str]:
  """absl flag parsing, with every mistake (unknown key, bad value, bad file) one line, exit 2.

  Then the console is set (`console_logs.setup`): the command's log goes into the workdir (or,
  without one, beside --output where that folder exists).

  Args:
    argv: the command line.
    require_workdir: --workdir must be given.
    require_config: --config must be given.
    kind: RUN (a training config, configs/*.py) or SWEEP (configs/sweeps/*.py).
    command: the command's name, its log file's.

  Returns:
    argv[:1]: the program (no command takes other arguments).
  """
  argv = ['--help' if argument == '-h' else argument for argument in argv]
  try:
    check_config_argument(argv)
    remaining = _parse_or_help(argv)
    check_no_arguments(remaining)
    output = flags.FLAGS['output'].value if 'output' in flags.FLAGS else None
    beside_output = os.path.dirname(os.path.abspath(output)) if output else None
    if beside_output and not os.path.isdir(beside_output):
      beside_output = None  # The command refuses it in its own line; the log is not to make it.
    console_logs.setup(command, WORKDIR.value or beside_output, verbose=VERBOSE.value)
    compile_cache.enable()
    if flags.FLAGS['config'].present:
      check_config_kind(CONFIG.value, config_path(argv), kind)
    elif require_config:
      raise UserError('--config is required, e.g. --config=configs/best.py')
    if require_workdir and not WORKDIR.value:
      raise UserError('--workdir is required, e.g. --workdir=runs/best')
  except Exception as e:  # pylint: disable=broad-except  # The config file runs users' code.
    console_logs.end_with(f'error: {flag_error_message(argv, e)}', 2)
  return remaining


def check_no_arguments(remaining: list[str]) -> None:
  """UserError for words on the command line that are not flags: no command takes any."""
  if len(remaining) > 1:
    words = ' '.join(map(shlex.quote, remaining[1:]))
    raise UserError(f'unexpected argument{"s" * (len(remaining) > 2)} {words}: every option '
                    'is a flag, --name=value (a flag missing its --, or a value its =?)')


def _parse_or_help(argv: list[str]) -> list[str]:
  """absl's parse of argv; a help flag prints its help and exits 0 (absl's own exit is 1)."""
  try:
    return flags.FLAGS(argv)
  except SystemExit as e:
    asked_help = any(a.lstrip('-').split('=', 1)[0] in HELP_FLAGS for a in argv[1:]
                     if a.startswith('-'))
    sys.exit(0 if asked_help and e.code == 1 else e.code)


def check_config_argument(argv: list[str]) -> None:
  """UserError for what config_flags would misread: a run's config.json as --config, or
  `--config.x=...` overrides without a --config to apply them to."""
  path = config_path(argv)
  if path.split(':', 1)[0].endswith('.json'):
    folder = os.path.dirname(path) or '.'
    raise UserError(f"--config={path} is a run's saved config, not a config file: give the "
                    f'configs/*.py it was trained with (overrides included), or --workdir={folder} '
                    'alone to evaluate, inspect or export it (they read its config.json)')
  override = next((a for a in argv[1:] if a.lstrip('-').startswith('config.')), None)
  if override and not path:
    name = override.split('=', 1)[0]
    raise UserError(f'{name} needs --config: give the config file the run was trained with, e.g. '
                    f'--config=configs/best.py {override} (evaluate checks it against the '
                    "workdir's config.json)")


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
  text = str(error).replace('\\n', '\n')
  if 'get_config' in text and isinstance(error, AttributeError):
    return (f'--config={path} defines no get_config(); a config file defines get_config() '
            'returning a ConfigDict (see configs/)')
  key = _locked_key(text)
  if key is not None:
    return unknown_key_message(argv, key, path, text)
  return (f'--config={path} cannot be loaded: {type(error).__name__}: {one_line(error)}'
          f'{_where(error)}')


def _locked_key(text: str) -> str | None:
  """The key of a locked ConfigDict's 'Key "x" does not exist' error, or of a bare KeyError."""
  match = (re.search(r'Key "([^"]+)" does not exist', text)
           or re.search(r'instead of "([^"]+)"', text)
           or re.fullmatch(r'"?\'([^\']+)\'"?', text))
  return match.group(1) if match else None


def unknown_key_message(argv: list[str], key: str, path: str, text: str = '') -> str:
  """`unknown key x, did you mean y`, naming the `--config.x` override or the file that sets it.

  Args:
    argv: the command line.
    key: the unknown key.
    path: the --config file.
    text: the ConfigDict's error, whose 'Did you mean "y"' gives the suggestion.
  """
  suggestion = re.search(r'Did you mean "([^"]+)"', text)
  unknown = f'unknown key {key}' + (f', did you mean {suggestion.group(1)}?' if suggestion else '')
  for argument in argv:
    name = argument.lstrip('-').split('=', 1)[0]
    if name.startswith('config.') and key in name.split('.'):
      return f'--{name}: {unknown} ({_KEY_HINT})'
  return f'--config={path}: {unknown} ({_KEY_HINT})'


def _where(error: BaseException) -> str:
  """' (file, line n)' of the innermost frame that raised error, outside Python's import code."""
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if not f.filename.startswith('<frozen')]
  return f' ({frames[-1].filename}, line {frames[-1].lineno})' if frames else ''


COMMANDS = ('main', 'evaluate', 'inspect', 'export', 'compare', 'sweep', 'benchmark',
            'platform_check', 'compile_check', 'models')


def console_main() -> None:
  """`resnet-jax <command> [flags]` (pyproject's console script): python -m resnet_jax.<command>."""
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    asked = sys.argv[1:2] in (['-h'], ['--help'])
    print(f'usage: resnet-jax {{{",".join(COMMANDS)}}} [flags]  (each takes --help)',
          file=sys.stdout if asked else sys.stderr)
    sys.exit(0 if asked else 2)
  console_logs.watch_start()
  command = sys.argv.pop(1)
  runpy.run_module(f'resnet_jax.{command}', run_name='__main__', alter_sys=True)
