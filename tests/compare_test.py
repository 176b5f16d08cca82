"""compare: a finished JAX run beside the PyTorch trainer's run of the same config."""

import json
import shutil
import sys

import pytest

from conftest import assert_user_error, assert_whole_epoch_ticks, smoke_config, with_overrides
from resnet_jax import compare
from resnet_jax.reporting import writers
from resnet_jax.training import checkpoints
from resnet_jax.training import population
from resnet_jax.training import run_config

pytest.importorskip('torch')
from resnet_jax.pytorch import torch_train  # pylint: disable=g-import-not-at-top,wrong-import-position


def _results(seed, final, best):
  return {'seed': seed, 'final_val_accuracy': final, 'best_val_accuracy': best,
          'wall_seconds': 10.0, 'images_per_second': 100.0, 'parameters': 5}


def test_summary_gives_the_gap_and_the_seed_spread():
  summary = compare.summarise({'jax': [_results(0, 0.50, 0.52), _results(1, 0.54, 0.56)],
                               'torch': [_results(0, 0.51, 0.51), _results(1, 0.51, 0.53)]})
  assert summary['jax']['final'][0] == pytest.approx(52.0)
  assert summary['gap']['final'] == pytest.approx(1.0)
  assert summary['gap']['best'] == pytest.approx(2.0)
  assert summary['seed_std'] == pytest.approx(summary['jax']['final'][1])
  assert summary['seed_std'] > 2


def test_the_figure_ticks_whole_epochs(tmp_path):
  history = [{'epoch': 1, 'val_accuracy': 0.3}, {'epoch': 2, 'val_accuracy': 0.4}]
  fig = compare.plot({framework: [{'seed': 0, 'history': history}]
                      for framework in compare.FRAMEWORKS}, str(tmp_path / 'compare.png'))
  assert_whole_epoch_ticks(fig.axes[0])


def test_compare_with_an_existing_jax_run_writes_the_side_by_side(smoke_run, tmp_path):
  config, workdir, results = smoke_run
  summary = compare.compare(config, str(tmp_path), jax_workdir=str(workdir), torch_threads=1)
  assert summary['jax']['final'][0] == pytest.approx(100 * results['final_val_accuracy'])
  assert len(summary['runs']['jax'][0]['history']) == config.num_epochs
  text = (tmp_path / compare.MARKDOWN_FILE).read_text()
  assert '| jax |' in text and '| torch |' in text and 'Gap (JAX - PyTorch)' in text
  assert 'torch 2.' in text and 'jax 0.' in text
  assert (tmp_path / compare.FIGURE_FILE).stat().st_size > 0
  assert json.loads((tmp_path / compare.JSON_FILE).read_text())['torch']['seeds'] == [0]


def test_a_jax_workdir_that_is_no_finished_run_is_refused_not_trained(smoke_run, tmp_path):
  config, workdir, _ = smoke_run
  typo = tmp_path / 'runs' / 'smoke_rn'
  assert_user_error(lambda: compare.compare(config, str(tmp_path / 'cmp'), jax_workdir=str(typo)),
                    f'--jax_workdir={typo} holds no finished run')
  assert not typo.exists() and not (tmp_path / 'cmp').exists()
  a_file = tmp_path / 'results.json'
  a_file.write_text('{}')
  assert_user_error(lambda: compare.compare(config, str(tmp_path / 'cmp'),
                                            jax_workdir=str(a_file)),
                    f'--jax_workdir={a_file} is a file')


def test_a_jax_workdir_with_a_torn_results_json_is_read_from_its_checkpoint(smoke_run, tmp_path):
  config, workdir, results = smoke_run
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  (copy / 'results.json').write_text((workdir / 'results.json').read_text()[:100])
  finished = compare.finished_jax_run(config, str(copy))  # Was: rerun main (which failed too).
  assert finished['final_val_accuracy'] == results['final_val_accuracy']
  assert finished['elapsed_seconds'] == checkpoints.read_meta(str(copy)).elapsed_seconds
  assert json.loads((copy / 'results.json').read_text())['final_test_accuracy'] == (
      results['final_test_accuracy'])
  # The speed figures no checkpoint holds are left out of the table, not made up.
  row = compare.summarise({'jax': [finished], 'torch': [finished]})['jax']
  assert row['images_per_second'] is None and row['wall_seconds'] == finished['elapsed_seconds']


def test_a_jax_run_of_another_config_is_refused(smoke_run, tmp_path):
  config, workdir, _ = smoke_run
  other = with_overrides(config.copy_and_resolve_references(), {'model.activation': 'swish'})
  assert_user_error(lambda: compare.compare(other, str(tmp_path), jax_workdir=str(workdir)),
                    f'--jax_workdir={workdir} is not a run of this --config',
                    'config.model.activation')
  # A config.json edited to match is caught by the checkpoint's own record.
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  (copy / run_config.CONFIG_FILE).write_text(other.to_json(indent=2))
  assert_user_error(lambda: compare.compare(other, str(tmp_path), jax_workdir=str(copy)),
                    'was trained with config.model.activation = relu')
  assert not (tmp_path / 'torch').exists()


def test_without_torch_compare_stops_before_any_work(smoke_run, tmp_path, monkeypatch):
  config, workdir, _ = smoke_run
  monkeypatch.setitem(sys.modules, 'torch', None)
  assert_user_error(lambda: compare.compare(config, str(tmp_path / 'cmp')),
                    "compare needs PyTorch", "pip install -e '.[torch]'")
  assert not (tmp_path / 'cmp').exists()


def test_a_torn_metrics_line_is_skipped(smoke_run, tmp_path):
  _, workdir, _ = smoke_run
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  with open(copy / writers.METRICS_FILE, 'a', encoding='utf-8') as f:
    f.write('{"epoch": 3, "val_acc')  # What a crash mid-write of the old writer left.
  results = compare.with_history(json.loads((copy / 'results.json').read_text()), str(copy))
  assert [r['epoch'] for r in results['history']] == [1, 2]


def test_the_jax_seeds_train_as_one_population_where_the_devices_hold_them(tmp_path,
                                                                          monkeypatch):
  calls = []

  def finished(config, workdir):
    """results of a finished run of config in workdir, its metrics.jsonl written."""
    (tmp_path / workdir).mkdir(parents=True, exist_ok=True)
    (tmp_path / workdir / writers.METRICS_FILE).write_text(
        json.dumps({'epoch': 1, 'epoch_seconds': 1.0, 'val_accuracy': 0.5}) + '\n')
    return dict(_results(config.seed, 0.5 + config.seed / 100, 0.6), history=[])

  def train_population(configs, workdirs, workdir, *, resume_command=None):
    calls.append((configs, workdirs, workdir))
    return [finished(config, run_dir) for config, run_dir in zip(configs, workdirs)]

  monkeypatch.setattr(population, 'members_per_round', lambda config, num, devices=None: num)
  monkeypatch.setattr(population, 'train_population', train_population)
  monkeypatch.setattr(torch_train, 'train_and_evaluate',
                      lambda config, workdir, **kwargs: finished(config, workdir))
  summary = compare.compare(smoke_config(), str(tmp_path), seeds=[0, 1])
  (configs, workdirs, workdir), = calls
  assert [config.seed for config in configs] == [0, 1]
  assert workdirs == [str(tmp_path / 'jax' / f'seed{seed}') for seed in (0, 1)]
  assert workdir == str(tmp_path / 'jax')
  assert summary['jax']['final_per_seed'] == pytest.approx([50.0, 51.0])
  assert json.loads((tmp_path / compare.JSON_FILE).read_text())['jax']['seeds'] == [0, 1]
