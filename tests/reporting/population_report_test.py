"""population.md, population.json and curves.png from member runs' own files (no training)."""

import json

import numpy as np
import pytest

from resnet_jax import defaults
from resnet_jax.reporting import population_report
from resnet_jax.reporting import report
from resnet_jax.reporting import writers
from resnet_jax.training import run_config
from conftest import assert_whole_epoch_ticks

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
REFERENCE = {'system': 'seed 000 best model', 'paper_accuracy': 96.04, 'pytorch_final': 92.38,
             'pytorch_best': 92.43}
COMMAND = "python -m resnet_jax.main --workdir runs/p --config.population.seeds='(0,1,2,3)'"


def _member(workdir, seed: int, val_accuracy, final_test=None, learning_rate=0.1):
  """A member's workdir as the trainer leaves it: config.json, metrics.jsonl (an epoch a value
  of val_accuracy) and, where final_test is given, results.json and report.md."""
  config = defaults.base_config()
  config.seed, config.num_epochs, config.optim.learning_rate = seed, 3, learning_rate
  config.model.name = 'smoke'
  run_config.write_config(workdir, config)
  writer = writers.JsonLinesWriter(workdir / writers.METRICS_FILE)
  for epoch, accuracy in enumerate(val_accuracy, start=1):
    writer.write_scalars(10 * epoch, {'epoch': epoch, 'val_loss': 1.0, 'val_accuracy': accuracy,
                                      'elapsed_seconds': 5.0 * epoch})
  writer.close()
  if final_test is not None:
    best = max(val_accuracy)
    results = {
        'model': 'smoke', 'parameters': 5266, 'epochs': 3, 'seed': seed,
        'final_test_accuracy': final_test, 'final_val_accuracy': val_accuracy[-1],
        'best_val_accuracy': best, 'best_epoch': val_accuracy.index(best) + 1,
        'wall_seconds': 14.0, 'elapsed_seconds': 15.0 + seed, 'validates_on_test': True,
        'device_kind': 'cpu', 'platform': 'cpu', 'device_count': 1, 'process_count': 1,
        'reference': REFERENCE, 'versions': {'jax': '0.0', 'python': '3'},
        'command': 'the member command', 'preempted': False}
    report.write_report(workdir, results, [], np.eye(2, dtype=np.int64), write_plots=False)
  return workdir


@pytest.fixture(name='population')
def _population(tmp_path):
  """Three finished seeds (final test 50, 54 and 58%; best validation 52, 56 and 60%) and one
  that stopped after its first epoch."""
  members = {}
  for seed in range(3):
    members[f'seed_{seed}'] = _member(
        tmp_path / f'seed_{seed}', seed, [0.40 + 0.04 * seed, 0.52 + 0.04 * seed, 0.50],
        final_test=0.50 + 0.04 * seed)
  members['seed_3'] = _member(tmp_path / 'seed_3', 3, [0.90])
  return tmp_path, members


def test_the_means_and_deviations_leave_out_the_unfinished_member(population):
  workdir, members = population
  summary = population_report.write_population_report(workdir, members, COMMAND)
  written = json.loads((workdir / population_report.JSON_FILE).read_text())
  assert written == json.loads(json.dumps(summary))
  assert written['final_test_accuracy'] == pytest.approx(
      {'mean_percent': 54.0, 'std_percent': 4.0, 'n': 3})  # sample deviation: sqrt(32 / 2)
  assert written['best_val_accuracy'] == pytest.approx(
      {'mean_percent': 56.0, 'std_percent': 4.0, 'n': 3})
  assert (written['count'], written['finished']) == (4, 3)
  assert [m['status'] for m in written['members']] == ['finished'] * 3 + ['not finished']
  assert [m['seed'] for m in written['members']] == [0, 1, 2, 3]
  assert written['varied_keys'] == []  # Seeds only: the seed has its own column.
  assert written['members'][3]['epochs_recorded'] == 1
  # The mean curve is the finished members' only (the unfinished one scored 90% at epoch 1).
  assert written['mean_curve']['epochs'] == [1, 2, 3]
  assert written['mean_curve']['val_accuracy'] == pytest.approx([0.44, 0.56, 0.50])
  assert written['command'] == COMMAND and written['reference'] == REFERENCE

  text = (workdir / population_report.MARKDOWN_FILE).read_text()
  assert text.startswith('# Population: 4 members of smoke (5,266 parameters)')
  assert '3 of 4 finished; not finished, and left out of the means: seed_3.' in text
  assert '| final test accuracy | 54.00 ± 4.00 | 3 |' in text
  assert '| best test-set validation accuracy | 56.00 ± 4.00 | 3 |' in text
  assert '| seed_1 | 1 | 54.00% | 56.00% | 2 | 3 | 16 | finished |' in text
  assert '| seed_3 | 3 | - | - | - | 1 of 3 recorded | - | not finished |' in text
  assert ('the PyTorch reference on the same data, 92.38% final and 92.43% best; the seed paper, '
          '96.04%') in text
  assert 'Machine: 1 x cpu (cpu), 1 process. Versions: jax 0.0, python 3.' in text
  assert f'    {COMMAND}' in text


def test_the_figure_draws_every_member_and_the_mean(population):
  workdir, members = population
  population_report.write_population_report(workdir, members)
  data = (workdir / population_report.CURVES_FILE).read_bytes()
  assert data.startswith(PNG_MAGIC) and len(data) > 10_000
  fig = population_report.plot(population_report.summarise(members), workdir / 'again.png')
  ax = fig.axes[0]
  assert [line.get_label() for line in ax.lines] == [*members, 'mean']
  np.testing.assert_allclose(ax.lines[-1].get_ydata(), [44.0, 56.0, 50.0])
  assert ax.get_ylabel() == 'test-set validation accuracy (%)'
  assert_whole_epoch_ticks(ax)


def test_hyperparameters_that_differ_get_a_column(tmp_path):
  members = {
      name: _member(tmp_path / name, 0, [0.5, 0.6], final_test=test, learning_rate=rate)
      for name, rate, test in (('lr_0.1', 0.1, 0.61), ('lr_0.4', 0.4, 0.55))}
  summary = population_report.write_population_report(tmp_path / 'population', members)
  assert summary['varied_keys'] == ['optim.learning_rate']
  assert [m['hyperparameters'] for m in summary['members']] == [
      {'optim.learning_rate': 0.1}, {'optim.learning_rate': 0.4}]
  assert summary['final_test_accuracy']['mean_percent'] == pytest.approx(58.0)
  text = (tmp_path / 'population' / population_report.MARKDOWN_FILE).read_text()
  assert '| member | seed | optim.learning_rate | final test |' in text
  assert '| lr_0.4 | 0 | 0.4 | 55.00% |' in text
  assert '    the member command' in text  # No command given: the members' own.


def test_no_finished_member_gives_no_means(tmp_path):
  members = {'seed_0': _member(tmp_path / 'seed_0', 0, [0.3])}
  summary = population_report.write_population_report(tmp_path, members, write_plots=False)
  assert summary['final_test_accuracy'] == {'mean_percent': None, 'std_percent': None, 'n': 0}
  assert summary['model'] == 'smoke' and summary['validates_on_test']
  text = (tmp_path / population_report.MARKDOWN_FILE).read_text()
  assert '| final test accuracy | - | 0 |' in text
  assert 'not recorded (started from Python)' in text
  assert not (tmp_path / population_report.CURVES_FILE).exists()
