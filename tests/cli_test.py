"""cli: every failure of a config file or its kind is one readable line."""

import pathlib
import re
import subprocess
import sys

import pytest

from resnet_jax import cli
from resnet_jax import defaults
from resnet_jax import sweep
from resnet_jax.errors import UserError

ARGV = ['prog', '--config', 'my_config.py', '--workdir=runs/x']
REPO = pathlib.Path(__file__).resolve().parent.parent
_RUN = {'config', 'workdir', 'verbose'}
_READ = _RUN | {'checkpoint', 'output'}
COMMAND_FLAGS = {
    'main': _RUN,
    'evaluate': _READ | {'torch_state_dict', 'model'},
    'inspect': _READ | {'gradcam_layers', 'num_images'},
    'export': _READ,
    'compare': _RUN | {'seeds', 'jax_workdir', 'torch_threads'},
    'sweep': _RUN | {'process_index', 'process_count', 'population_size'},
    'benchmark': {'config', 'verbose', 'output', 'batch_sizes', 'dtypes', 'steps_per_call',
                  'calls', 'variants', 'only_variants', 'check_numerics', 'torch_steps',
                  'torch_compile', 'extras', 'end_to_end_epochs', 'population_members'},
    'platform_check': {'expect', 'verbose'},
    'models': {'name', 'verbose'},
    'compile_check': {'config', 'verbose', 'output', 'topology', 'gpu', 'gpus'},
}


def raised(fn) -> BaseException:
  with pytest.raises(Exception) as info:
    fn()
  return info.value


def test_config_path_is_read_from_either_form():
  assert cli.config_path(ARGV) == 'my_config.py'
  assert cli.config_path(['prog', '--config=a.py:arg']) == 'a.py:arg'
  assert cli.config_path(['prog']) == ''


def test_a_syntax_error_names_the_file_and_line():
  error = raised(lambda: compile('x = 1\ndef get_config(:\n', 'my_config.py', 'exec'))
  message = cli.flag_error_message(ARGV, error)
  assert message.startswith('--config=my_config.py has a syntax error: ')
  assert '(my_config.py, line 2)' in message


def test_a_failing_import_or_get_config_names_the_error_and_where():
  error = raised(lambda: exec(compile('import no_such_module_i14', 'my_config.py', 'exec'), {}))
  message = cli.flag_error_message(ARGV, error)
  assert message.startswith('--config=my_config.py cannot be loaded: ModuleNotFoundError: ')
  assert "no_such_module_i14" in message and '(my_config.py, line 1)' in message


def test_a_file_without_get_config_says_so():
  error = AttributeError("module 'config_config' has no attribute 'get_config'")
  assert cli.flag_error_message(ARGV, error) == (
      '--config=my_config.py defines no get_config(); a config file defines get_config() '
      'returning a ConfigDict (see configs/)')


def test_an_unknown_key_is_named_with_the_key_it_resembles():
  config = defaults.base_config()
  error = raised(lambda: setattr(config.data, 'data_dirr', 'x'))
  message = cli.flag_error_message(ARGV, error)
  assert message == ('--config=my_config.py: unknown key data_dirr, did you mean data_dir? (every '
                     'key and its default is in resnet_jax/defaults.py)')
  read = raised(lambda: config.num_epoch)  # What config_flags raises for an override.
  override = cli.flag_error_message([*ARGV, '--config.num_epoch=3'], read)
  assert override.startswith('--config.num_epoch: unknown key num_epoch, did you mean num_epochs?')


def test_a_config_of_the_other_kind_is_refused():
  run_config = defaults.base_config()
  sweep_config = sweep.sweep_config(run_config, grid={'seed': (0, 1)})
  cli.check_config_kind(run_config, 'run.py', cli.RUN)
  cli.check_config_kind(sweep_config, 'sweep.py', cli.SWEEP)
  with pytest.raises(UserError, match=r'--config=sweep.py is a sweep config; run it with python '
                     r'-m resnet_jax.sweep'):
    cli.check_config_kind(sweep_config, 'sweep.py', cli.RUN)
  with pytest.raises(UserError, match=r'--config=run.py is a training config, not a sweep'):
    cli.check_config_kind(run_config, 'run.py', cli.SWEEP)
  with pytest.raises(UserError, match=r'get_config\(\) returned NoneType, not a ConfigDict'):
    cli.check_config_kind(None, 'none.py', cli.RUN)


def test_a_missing_override_key_is_readable():
  message = cli.flag_error_message([*ARGV, '--config.model.num_layerz=3'],
                                   AttributeError("'num_layerz'"))
  assert message.startswith('--config.model.num_layerz: unknown key num_layerz (')


def test_a_runs_config_json_and_overrides_without_a_config_are_refused_in_one_line():
  with pytest.raises(UserError, match=r"^--config=runs/x/config.json is a run's saved config, not "
                     r'a config file: .* or --workdir=runs/x alone to evaluate'):
    cli.check_config_argument(['evaluate', '--config=runs/x/config.json'])
  with pytest.raises(UserError, match=r'^--config.eval_flip_tta needs --config: .*'
                     r'--config=configs/best.py --config.eval_flip_tta=true'):
    cli.check_config_argument(['evaluate', '--workdir=runs/x', '--config.eval_flip_tta=true'])
  cli.check_config_argument(['evaluate', '--config=configs/best.py', '--config.seed=1'])


def test_the_command_line_is_what_was_typed(monkeypatch):
  monkeypatch.setattr(sys, 'argv', [str(REPO / 'resnet_jax' / 'main.py'), '--config',
                                    'configs/smoke.py', '--config.model.name=a b'])
  assert cli.command_line() == ("python -m resnet_jax.main --config configs/smoke.py "
                                "'--config.model.name=a b'")
  monkeypatch.setattr(sys, 'argv', ['/usr/bin/resnet-jax', 'evaluate', '--workdir=w'])
  assert cli.command_line() == 'resnet-jax evaluate --workdir=w'


@pytest.fixture(scope='module')
def helps() -> dict[str, tuple[int, str]]:
  """Every command's --help (-h for one): its exit status and output, run side by side."""
  processes = {command: subprocess.Popen(
      [sys.executable, '-m', f'resnet_jax.{command}', '-h' if command == 'models' else '--help'],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for command in COMMAND_FLAGS}
  outputs = {command: process.communicate(timeout=240)[0]
             for command, process in processes.items()}
  return {command: (processes[command].returncode, outputs[command]) for command in outputs}


@pytest.mark.parametrize('command', COMMAND_FLAGS)
def test_every_commands_help_lists_its_own_flags_and_exits_0(helps, command):
  status, text = helps[command]
  listed = set(re.findall(r'^  --(?:\[no\])?(\w+)', text, re.M))
  assert status == 0 and listed == COMMAND_FLAGS[command], text
  assert 'usage: __main__' not in text and 'Internal' not in text
  if command in ('platform_check', 'models'):  # No workdir: the log goes elsewhere.
    assert 'workdir' not in text, text


def test_each_reading_command_gives_its_own_default_output(helps):
  assert 'default <workdir>/inspect.' in helps['inspect'][1]
  assert 'evaluate' not in helps['inspect'][1]
  assert 'default <workdir>/evaluate_<latest|best|torch>.' in helps['evaluate'][1]


@pytest.mark.parametrize('argv, status', [(['--help'], 0), (['-h'], 0), ([], 2), (['train'], 2)])
def test_the_console_script_says_its_commands(monkeypatch, capsys, argv, status):
  monkeypatch.setattr(sys, 'argv', ['resnet-jax', *argv])
  with pytest.raises(SystemExit) as info:
    cli.console_main()
  out, err = capsys.readouterr()
  assert info.value.code == status
  assert (out if status == 0 else err).startswith('usage: resnet-jax {main,evaluate,')


@pytest.mark.parametrize('command', ['main', 'platform_check'])  # Every command parses in cli.run.
def test_a_stray_argument_is_one_line_exit_2_and_leaves_no_workdir(tmp_path, command):
  workdir = tmp_path / 'run'
  arguments = (['--config=configs/smoke.py', f'--workdir={workdir}'] if command == 'main' else [])
  arguments.append('extra')
  result = subprocess.run([sys.executable, '-m', f'resnet_jax.{command}', *arguments], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
  assert result.returncode == 2
  lines = (result.stdout + result.stderr).splitlines()
  assert lines[-1] == ('error: unexpected argument extra: every option is a flag, --name=value '
                       '(a flag missing its --, or a value its =?)')
  assert all(line.endswith('s so far') for line in lines[:-1]), lines  # a slow start says so
  assert not workdir.exists()
