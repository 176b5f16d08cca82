"""runs: loop settings are checked before any data is loaded; a reader's checkpoint is its run's."""

import json
import pathlib
import re
import pickle
import shutil

import pytest

from conftest import assert_user_error, short_config, smoke_config
from resnet_jax import defaults
from resnet_jax import errors
from resnet_jax.training import run_config
from resnet_jax.training import runs


@pytest.mark.parametrize('key,value', [
    ('num_epochs', 0), ('eval_batch_size', 0), ('eval_every_epochs', 0),
    ('checkpoint_every_epochs', -1), ('log_every_steps', 0), ('steps_per_call', -1),
    ('ema_decay', 1.0), ('ema_decay', -0.1), ('param_histograms_every_epochs', -1)])
def test_out_of_range_loop_setting_is_a_user_error(key, value):
  config = defaults.base_config()
  config[key] = value
  with pytest.raises(errors.UserError, match=rf'^config\.{key}={value} is invalid: must be'):
    runs.validate_run_config(config)


@pytest.mark.parametrize('key,value,message', [
    ('eval_every_epochs', 0, 'config.eval_every_epochs=0 is invalid'),
    ('batch_size', 0, 'config.batch_size=0 is invalid: must be >= 1'),
    ('data.placement', 'gpu', "config.data.placement='gpu' is unknown; use one of auto, device"),
    ('data.normalization', 'z', "config.data.normalization='z' is unknown; use one of constants"),
    ('data.host_backend', 'jax', "config.data.host_backend='jax' is unknown; use one of auto"),
])
def test_setup_run_checks_every_config_only_setting_before_loading_data(tmp_path, key, value,
                                                                         message):
  # The data folder does not exist: a check made after loading would never be reached.
  config = defaults.base_config()
  config.data.source, config.data.data_dir = 'cifar_batches', str(tmp_path / 'none')
  run_config.set_key(config, key, value, 'a test')
  with pytest.raises(errors.UserError, match=f'^{re.escape(message)}'):
    runs.setup_run(config, str(tmp_path))


def _copy_of(smoke_run, tmp_path):
  """(config, a copy of the finished smoke run's folder) that a test may damage."""
  config, workdir, _ = smoke_run
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy)
  return config, str(copy)


def test_a_hand_edited_config_json_is_refused_not_scored(smoke_run, tmp_path):
  _, workdir = _copy_of(smoke_run, tmp_path)
  path = pathlib.Path(workdir) / run_config.CONFIG_FILE
  saved = json.loads(path.read_text())
  assert saved['model']['activation'] == 'relu'
  saved['model']['activation'] = 'swish'
  path.write_text(json.dumps(saved))
  edited = run_config.load_run_config(workdir)
  assert_user_error(lambda: runs.restore(runs.setup_run(edited, workdir)),
                    "was trained with config.model.activation = relu, but the config this "
                    'command builds the model from gives swish', 'config.json edited')


def test_an_edit_of_config_json_that_changes_a_shape_names_the_key(smoke_run, tmp_path):
  # Before: orbax's text of the mismatched shapes, and "damaged or written by another config".
  _, workdir = _copy_of(smoke_run, tmp_path)
  path = pathlib.Path(workdir) / run_config.CONFIG_FILE
  saved = json.loads(path.read_text())
  channels = saved['model']['channels']
  saved['model']['channels'] = [2 * c for c in channels]
  path.write_text(json.dumps(saved))
  edited = run_config.load_run_config(workdir)
  assert_user_error(lambda: runs.restore(runs.setup_run(edited, workdir)),
                    f'was trained with config.model.channels = {tuple(channels)}, but the config '
                    f'this command builds the model from gives {tuple(2 * c for c in channels)}',
                    'config.json edited')


def test_without_config_json_another_config_is_refused(smoke_run, tmp_path):
  _, workdir = _copy_of(smoke_run, tmp_path)
  (pathlib.Path(workdir) / run_config.CONFIG_FILE).unlink()
  given = run_config.load_run_config(workdir, smoke_config(**{'optim.learning_rate': 0.5}))
  assert_user_error(lambda: runs.restore(runs.setup_run(given, workdir)),
                    'config.optim.learning_rate')


def test_how_a_reader_scores_may_differ_from_the_run(smoke_run):
  config, workdir, _ = smoke_run
  given = smoke_config(**{'eval_flip_tta': True, 'eval_batch_size': 64,
                          'keep_best_checkpoint': False})
  state, meta = runs.restore(runs.setup_run(given, str(workdir)))
  assert int(state.step) > 0 and meta.epoch == config.num_epochs


def test_best_of_a_run_that_keeps_none_says_so(smoke_run, tmp_path):
  _, workdir = _copy_of(smoke_run, tmp_path)
  shutil.rmtree(pathlib.Path(workdir) / 'checkpoints' / 'best')
  config = smoke_config(keep_best_checkpoint=False)
  assert_user_error(lambda: runs.restore(runs.setup_run(config, workdir), 'best'),
                    'keeps no best checkpoint (config.keep_best_checkpoint=False); use '
                    '--checkpoint=latest')


def test_a_run_is_read_with_the_data_it_trained_on(cifar_batches_dir, tmp_path, monkeypatch):
  from resnet_jax.training import train  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv('RESNET_JAX_DATA', raising=False)
  then, now, workdir = tmp_path / 'then', tmp_path / 'now', str(tmp_path / 'run')
  then.mkdir()
  (then / 'data').symlink_to(cifar_batches_dir, target_is_directory=True)
  config = short_config(cifar_batches_dir, num_epochs=1,
                        **{'data.source': 'auto', 'data.data_dir': ''})
  monkeypatch.chdir(then)  # `auto` finds ./data.
  trained = train.train_and_evaluate(config, workdir)
  # Later, ./data (from where the command runs now) holds another copy, in another order.
  batches = now / 'data' / 'cifar-10-batches-py'
  shutil.copytree(cifar_batches_dir / 'cifar-10-batches-py', batches)
  with open(batches / 'test_batch', 'rb') as f:
    test_batch = pickle.load(f, encoding='bytes')
  for key in (b'data', b'labels'):
    test_batch[key] = test_batch[key][::-1]
  with open(batches / 'test_batch', 'wb') as f:
    pickle.dump(test_batch, f)
  monkeypatch.chdir(now)
  run = runs.setup_run(config, workdir)
  # Was the copy `auto` finds now, refused as another config's data.
  assert run.splits.source.startswith(f'cifar_batches {then / "data"}')
  assert run.splits.source.endswith(trained['data_source'].split(': ')[1])
  runs.restore(run)
  (then / 'data').unlink()
  assert_user_error(lambda: runs.setup_run(config, workdir),
                    f'the run in {workdir} trained on cifar_batches data in {then / "data"}',
                    'which cannot be read now')
