"""run_config: the config a run was trained with, from its config.json, and a --config checked
against it."""

import json
import pathlib

import pytest

from resnet_jax import defaults
from resnet_jax.errors import UserError
from resnet_jax.training import run_config

from conftest import config_file, fake_bucket  # pylint: disable=g-bad-import-order

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted(path.stem for path in (REPO / 'configs').glob('*.py'))


def leaves(tree: dict, prefix: str = '') -> dict:
  """{dotted key: (type, repr)} of every value of a nested dict."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(leaves(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = (type(value), repr(value))
  return out


@pytest.mark.parametrize('name', CONFIG_FILES)
def test_every_config_file_round_trips_with_its_types(tmp_path, name):
  config = config_file(name)
  run_config.write_config(tmp_path, config)
  rebuilt = run_config.load_run_config(tmp_path)
  assert leaves(rebuilt.to_dict()) == leaves(config.to_dict())  # tuples stay tuples, floats floats
  assert isinstance(rebuilt.model.num_blocks, tuple) and rebuilt.is_locked
  with pytest.raises(AttributeError):
    rebuilt.model.num_layerz = 3  # still locked: a misspelt key fails


def test_a_given_config_may_differ_only_in_how_the_run_is_scored(tmp_path):
  run_config.write_config(tmp_path, config_file('smoke'))
  given = config_file('smoke')
  given.eval_batch_size, given.write_plots, given.data.data_dir = 7, False, '/elsewhere'
  given.reference.system = 'another label'
  assert run_config.load_run_config(tmp_path, given) is given


def test_a_given_config_of_another_run_is_refused_naming_the_keys(tmp_path):
  run_config.write_config(tmp_path, config_file('smoke'))
  given = config_file('smoke')
  given.num_epochs, given.model.channels = 9, (4, 8)
  with pytest.raises(UserError) as raised:
    run_config.load_run_config(tmp_path, given)
  assert str(raised.value) == (
      "--config differs from the run's config.json in config.model.channels ((8, 16) in the run, "
      "(4, 8) given), config.num_epochs (2 in the run, 9 given); drop --config to use the run's "
      'own, or add the overrides it was trained with')
  given = config_file('best')
  with pytest.raises(UserError, match=r' given\) and 8 more keys; drop --config'):
    run_config.load_run_config(tmp_path, given)


def test_without_config_json_a_given_config_is_used_and_none_is_an_error(tmp_path):
  given = defaults.base_config()
  assert run_config.load_run_config(tmp_path, given) is given  # e.g. a state_dict scored anew
  with pytest.raises(UserError, match=r'no .*config.json: check --workdir, or pass --config='):
    run_config.load_run_config(tmp_path)


@pytest.mark.parametrize('saved', ['{"seed": 0,', '[1, 2]', '{"model": 3}', '{"seed": "one"}'])
def test_unreadable_config_json_is_a_user_error(tmp_path, saved):
  (tmp_path / 'config.json').write_text(saved)
  with pytest.raises(UserError, match=r'config.json cannot be read \(.+\); pass --config='):
    run_config.load_run_config(tmp_path)


def test_a_key_this_version_lacks_is_named(tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps({'model': {'num_layerz': 3}}))
  with pytest.raises(UserError, match=r'config.model.num_layerz in config.json is no config key'):
    run_config.load_run_config(tmp_path)


def test_config_is_written_to_a_gs_workdir(tmp_path):
  config = defaults.base_config()
  with fake_bucket(tmp_path):
    run_config.write_config('gs://bucket/runs/a', config)
  assert json.loads((tmp_path / 'runs' / 'a' / 'config.json').read_text())['seed'] == config.seed
