"""inspect: a trained run's summary, Grad-CAM grid, parameter histograms and confusion matrix."""

import concurrent.futures
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from resnet_jax import defaults
from resnet_jax import inspect
from resnet_jax import models
from resnet_jax.errors import UserError
from resnet_jax.reporting import writers
from resnet_jax.training import run_config
from resnet_jax.training import train

from conftest import histogram_events  # pylint: disable=g-bad-import-order

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  """configs/smoke.py trained one epoch on 128 synthetic images."""
  with pytest.MonkeyPatch.context() as patch:
    patch.syspath_prepend(str(REPO))
    from configs import smoke  # pylint: disable=g-import-not-at-top
    config = smoke.get_config()
  config.data.source = 'synthetic'
  config.data.train_subset = 128
  config.data.test_subset = 64
  config.eval_batch_size = 64
  config.num_epochs = 1
  workdir = tmp_path_factory.mktemp('run')
  results = train.train_and_evaluate(config, str(workdir))
  return config, workdir, results


def test_config_is_read_back_from_the_workdir(trained_run):
  config, workdir, _ = trained_run
  assert run_config.load_run_config(str(workdir)).to_dict() == config.to_dict()


def test_inspect_writes_summary_gradcam_histograms_and_confusion(trained_run, tmp_path):
  _, workdir, results = trained_run
  config = run_config.load_run_config(str(workdir))
  inspected = inspect.inspect_run(config, str(workdir), gradcam_layers=['conv1', 'layer2'],
                                  num_images=3, output_dir=str(tmp_path))
  # The restored checkpoint is the trained state: same step, same test accuracy.
  assert inspected['step'] == results['steps']
  assert inspected['test_accuracy'] == results['final_test_accuracy']
  assert inspected['layers'] == ['conv1', 'layer2_0']
  summary = (tmp_path / inspect.SUMMARY_FILE).read_text()
  assert summary.strip() == models.summary_table(config.model).strip()
  assert f"{results['parameters']:,}" in summary.splitlines()[-1]

  histograms = histogram_events(tmp_path / 'tensorboard')
  params = models.variable_shapes(models.build_model(config.model))['params']
  assert len(histograms) == len(jax.tree_util.tree_leaves(params))
  assert histograms['params/linear/kernel'] == [(results['steps'], 16 * 10)]

  grid = np.asarray(Image.open(tmp_path / inspect.GRADCAM_FILE))
  one_column_layout = grid.shape[0] / grid.shape[1]
  assert 0.8 < one_column_layout < 1.4  # 3 rows (images) x 3 columns (image + 2 layers)
  assert grid.std() > 10  # not a blank figure
  assert (tmp_path / 'confusion.png').read_bytes()[:4] == b'\x89PNG'


def run_inspect(*arguments):
  return subprocess.run(
      [sys.executable, '-m', 'resnet_jax.inspect', *arguments], cwd=REPO, capture_output=True,
      text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_command_line_rejects_an_unknown_layer_in_one_line(trained_run):
  _, workdir, _ = trained_run
  result = run_inspect(f'--workdir={workdir}', '--gradcam_layers=layer9')
  assert result.returncode == 2, result.stderr[-2000:]
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith("error: --gradcam_layers: no layer 'layer9'")
  assert 'layer2' in last_line and 'conv1' in last_line


def test_command_line_mistakes_are_one_line(tmp_path, trained_run):
  corrupt = tmp_path / 'corrupt'
  corrupt.mkdir()
  (corrupt / 'config.json').write_text('{"seed": 0,')
  (tmp_path / 'empty').mkdir()
  empty = f"--workdir={tmp_path / 'empty'}"
  smoke = str(REPO / 'configs' / 'smoke.py')
  trained = f'--workdir={trained_run[1]}'
  mistakes = [  # (arguments, what the one line on stderr says)
      ([trained, f'--config={smoke}', '--config.data.source=synthetic'],
       "--config differs from the run's config.json in config.data.test_subset (64 in the run, "
       '256 given), config.data.train_subset (128 in the run, 512 given)'),
      ([empty, '--config=/nonexistent.py'], '--config cannot be loaded: [Errno 2] No such file'),
      ([empty, f'--config={smoke}', '--config.bogus=1'], '--config.bogus: unknown key bogus'),
      ([empty, '--config.bogus=1'], '--config.bogus needs --config'),
      ([], '--workdir is required'),
      ([f'--workdir={corrupt}'], 'config.json cannot be read (Expecting'),
      ([empty], 'config.json: check --workdir'),
      # A folder of runs (a population's, a sweep's) given as one.
      ([f'--workdir={tmp_path}'], f'{tmp_path} holds 1 run (corrupt) but is not one itself: give '
                                  f"one as --workdir, e.g. --workdir={corrupt}"),
  ]
  with concurrent.futures.ThreadPoolExecutor(len(mistakes)) as pool:
    results = list(pool.map(lambda mistake: run_inspect(*mistake[0]), mistakes))
  for (arguments, message), result in zip(mistakes, results):
    assert result.returncode == 2, (arguments, result.stderr[-2000:])
    assert 'Traceback' not in result.stderr, arguments
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith('error: ') and message in last_line, (arguments, last_line)


def test_only_the_first_process_writes_histograms(trained_run, monkeypatch):
  config, workdir, _ = trained_run
  chosen = []

  class Stop(Exception):
    """Ends inspect_run at its writer: the rest is not under test."""

  def record_and_stop(directory, *, is_main):
    del directory
    chosen.append(is_main)
    raise Stop

  monkeypatch.setattr(writers, 'create_writer', record_and_stop)
  for index in (1, 0):
    monkeypatch.setattr(jax, 'process_index', lambda index=index: index)
    with pytest.raises(Stop):
      inspect.inspect_run(config, str(workdir), num_images=1)
  assert chosen == [False, True]


def test_missing_run_files_are_user_errors(tmp_path, trained_run):
  config, _, _ = trained_run
  with pytest.raises(UserError, match='no checkpoint in'):
    inspect.inspect_run(config, str(tmp_path))
  with pytest.raises(UserError, match='--num_images'):
    inspect.inspect_run(config, str(tmp_path), num_images=0)


def test_sample_takes_one_image_of_each_class_in_turn():
  labels = np.array([1, 1, 0, 2, 0, 1])
  np.testing.assert_array_equal(inspect.sample_indices(labels, 5), [2, 0, 3, 4, 1])
  np.testing.assert_array_equal(inspect.sample_indices(labels, 99), [2, 0, 3, 4, 1, 5])


@pytest.mark.parametrize('num_images', [0, 10**6])
def test_num_images_is_bounded_before_any_work(tmp_path, num_images):
  config = defaults.base_config()
  config.data.source = 'synthetic'
  with pytest.raises(UserError, match=rf'--num_images={num_images} must be in \[1, 64\]'):
    inspect.inspect_run(config, str(tmp_path), num_images=num_images)
  assert list(tmp_path.iterdir()) == []
