"""Scoring a run's checkpoints, or the same network as a PyTorch state_dict, on the test set."""

import json

import jax
import pytest

from resnet_jax import errors
from resnet_jax import evaluate
from resnet_jax.pytorch import torch_import
from resnet_jax.training import run_config
from resnet_jax.training import train
from conftest import restore_state, short_config

torch = pytest.importorskip('torch')


@pytest.fixture(scope='module')
def trained(cifar_batches_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('trained')
  config = short_config(cifar_batches_dir, write_plots=True)
  return config, workdir, train.train_and_evaluate(config, str(workdir))


def torch_state_dict(variables) -> dict:
  """The PyTorch state_dict of Flax variables, as export writes it."""
  return {key: torch.from_numpy(value)
          for key, value in torch_import.state_dict_from_variables(variables).items()}


def test_run_results_have_every_field(trained):
  _, workdir, results = trained
  written = json.loads((workdir / 'results.json').read_text())
  for key in ('model', 'parameters', 'epochs', 'final_val_accuracy', 'best_val_accuracy',
              'final_test_accuracy', 'best_test_accuracy', 'wall_seconds', 'compile_seconds',
              'images_per_second', 'device_kind', 'device_count', 'versions', 'reference'):
    assert written[key] is not None, key
  assert written['parameters'] == 5_266 and written['device_count'] == jax.device_count()
  assert set(written['versions']) >= {'jax', 'flax', 'optax', 'python'}
  assert written['final_test_accuracy'] == results['final_test_accuracy']
  assert len(written['confusion_matrix']) == 10
  assert sum(map(sum, written['confusion_matrix'])) == written['test_examples'] == 500


@pytest.mark.parametrize('checkpoint,reported', [('latest', 'final_test_accuracy'),
                                                 ('best', 'best_test_accuracy')])
def test_checkpoint_reproduces_the_reported_accuracy(trained, checkpoint, reported):
  config, workdir, results = trained
  scored = evaluate.evaluate_run(config, str(workdir), checkpoint=checkpoint)
  assert scored['test_accuracy'] == scored[reported] == results[reported]
  out = workdir / f'evaluate_{checkpoint}'
  written = json.loads((out / 'results.json').read_text())
  assert written['test_accuracy'] == written[reported] == results[reported]
  assert (out / 'confusion.png').is_file() and (out / 'curves.png').is_file()
  # The report's row puts the score in its own column (the best column was empty for 'best').
  row = next(line for line in (out / 'report.md').read_text().splitlines()
             if line.startswith('| this run |'))
  final, best = (f'{100 * results[reported]:.2f}%', '-')[::1 if checkpoint == 'latest' else -1]
  assert row == f'| this run | {final} | {best} |'


def test_the_runs_config_json_scores_the_same_without_training_figures(trained, tmp_path):
  _, workdir, results = trained
  scored = evaluate.evaluate_run(run_config.load_run_config(str(workdir)), str(workdir),
                                 output_dir=str(tmp_path))
  assert scored['final_test_accuracy'] == results['final_test_accuracy']
  markdown = (tmp_path / 'report.md').read_text()
  assert 'training images/s' not in markdown and 'compile ' not in markdown
  assert f"Scored {workdir / 'checkpoints' / 'latest'} in " in markdown


def test_torch_state_dict_of_the_same_network_scores_the_same(trained, tmp_path):
  config, workdir, results = trained
  state, _ = restore_state(workdir, config)
  path = tmp_path / 'model.pt'
  torch.save(torch_state_dict(state.eval_variables()), path)
  scored = evaluate.evaluate_run(config, str(tmp_path / 'torch_run'), torch_state_dict=str(path))
  assert scored['final_test_accuracy'] == results['final_test_accuracy']
  assert (tmp_path / 'torch_run' / 'evaluate_torch' / 'report.md').is_file()


def test_missing_checkpoint_is_a_user_error(trained, tmp_path):
  config, _, _ = trained
  with pytest.raises(errors.UserError, match='no checkpoint in .*checkpoints/latest'):
    evaluate.evaluate_run(config, str(tmp_path))
