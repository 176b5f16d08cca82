"""cli: every failure of a config file or its kind is one readable line."""

import pytest

from resnet_jax import cli
from resnet_jax import defaults
from resnet_jax import sweep
from resnet_jax.errors import UserError

ARGV = ['prog', '--config', 'my_config.py', '--workdir=runs/x']


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


def test_an_unknown_key_is_readable():
  config = defaults.base_config()
  error = raised(lambda: setattr(config.data, 'data_dirr', 'x'))
  message = cli.flag_error_message(ARGV, error)
  assert message == ('--config=my_config.py sets data_dirr, which is not a config key (a '
                     'misspelling?); every key and its default is in resnet_jax/defaults.py')
  override = cli.flag_error_message([*ARGV, '--config.data.data_dirr=x'], error)
  assert override.startswith('config.data.data_dirr is not a config key')


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
  assert message.startswith('config.model.num_layerz is not a config key')
