"""Sweeps: a tiny 2 x 2 grid trains, tabulates and plots; finished points are never retrained."""

import csv
import functools
import importlib
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from resnet_jax import models
from resnet_jax import sweep
from resnet_jax.errors import UserError
from resnet_jax.reporting import report
from resnet_jax.reporting import sweep_report
from resnet_jax.training import population
from resnet_jax.training import run_config
from resnet_jax.training import train
from resnet_jax.training import workdir_lock

from conftest import assert_whole_epoch_ticks  # pylint: disable=g-bad-import-order

REPO = pathlib.Path(__file__).resolve().parent.parent
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
TINY_POINTS = ('channels=4x8,learning_rate=0.05', 'channels=4x8,learning_rate=0.2',
               'channels=8x16,learning_rate=0.05', 'channels=8x16,learning_rate=0.2')


def _sweep_config(name: str):
  """configs/sweeps/<name>.py's config (they import configs/ as the command line does)."""
  with pytest.MonkeyPatch.context() as patch:
    patch.syspath_prepend(str(REPO))
    return importlib.import_module(f'configs.sweeps.{name}').get_config()


def _tiny_config():
  config = _sweep_config('tiny')
  config.base.data.source = 'synthetic'
  return config


def _read_csv(path) -> list[dict]:
  with open(path, encoding='utf-8') as f:
    return list(csv.DictReader(f))


def _mtimes(workdir) -> dict:
  return {name: os.stat(workdir / name / 'results.json').st_mtime_ns for name in TINY_POINTS}


@pytest.fixture(scope='module')
def tiny_sweep(tmp_path_factory):
  """configs/sweeps/tiny.py run once (4 smoke-sized runs on synthetic images)."""
  workdir = tmp_path_factory.mktemp('sweep')
  rows = sweep.run_sweep(_tiny_config(), str(workdir))
  return workdir, rows, _read_csv(workdir / 'sweep.csv'), (workdir / 'sweep.md').read_text()


def _forbid_training(monkeypatch):
  def fail(config, workdir, **kwargs):
    raise AssertionError(f'{workdir} was trained again')
  monkeypatch.setattr(train, 'train_and_evaluate', fail)


def test_tiny_sweep_writes_table_and_plots(tiny_sweep):
  workdir, rows, table, text = tiny_sweep
  assert [row['point'] for row in rows] == list(TINY_POINTS)
  assert [row['status'] for row in rows] == ['done'] * 4
  assert [row['point'] for row in table] == list(TINY_POINTS)
  assert [(row['optim.learning_rate'], row['model.channels']) for row in table] == [
      ('0.05', '4x8'), ('0.2', '4x8'), ('0.05', '8x16'), ('0.2', '8x16')]
  for row in table:
    results = json.loads((workdir / row['point'] / 'results.json').read_text())
    assert int(row['parameters']) == results['parameters']
    assert float(row['best_val_accuracy']) == results['best_val_accuracy']
    assert float(row['final_test_accuracy']) == results['final_test_accuracy']
    assert float(row['wall_seconds']) == results['elapsed_seconds']
    epochs, accuracy = report.validation_curve(workdir / row['point'])
    assert epochs == [1, 2] and max(accuracy) == results['best_val_accuracy']
  assert {row['parameters'] for row in table} == {'1754', '5266'}  # smoke model, 2 widths
  table_lines = [line for line in text.splitlines() if line.startswith('| 4x8') or
                 line.startswith('| 8x16')]
  assert len(table_lines) == 4 and all(line.endswith('| done |') for line in table_lines)
  for plot in ('curves.png', 'accuracy_vs_learning_rate.png', 'accuracy_vs_channels.png'):
    assert (workdir / plot).read_bytes()[:8] == PNG_MAGIC
    assert f']({plot})' in text


def _table(text: str) -> list[list[str]]:
  """sweep.md's table: its header's cells, then each row's."""
  lines = [line for line in text.splitlines() if line.startswith('| ')]
  return [line.strip('| ').split(' | ') for line in lines]


def test_validation_on_the_test_set_gives_two_accuracy_columns_not_four(tiny_sweep):
  _, rows, _, text = tiny_sweep  # configs/sweeps/tiny.py validates on the test set.
  header, *cells = _table(text)
  assert header == ['model.channels', 'optim.learning_rate', 'parameters', 'final test',
                    'best test', 'wall (s)', 'status']
  for row, row_cells in zip(rows, cells):
    assert row_cells[3:5] == [f"{100 * row['final_test_accuracy']:.2f}%",
                              f"{100 * row['best_val_accuracy']:.2f}%"]


def test_a_held_out_validation_split_gives_its_own_columns(tiny_sweep, tmp_path):
  _, rows, _, _ = tiny_sweep
  config = _tiny_config()
  config.base.data.validation = '0.2'
  points = sweep.sweep_points(config)
  sweep_report.write_summary(points, rows, str(tmp_path), list(points[0].values), trained=4)
  header, *_ = _table((tmp_path / 'sweep.md').read_text())
  assert header[3:7] == ['final val', 'best val', 'final test', 'best test']


def test_the_curves_tick_whole_epochs(tiny_sweep, tmp_path):
  fig = sweep_report.plot_curves(sweep.sweep_points(_tiny_config()), str(tiny_sweep[0]),
                                 str(tmp_path / 'curves.png'))
  assert len(fig.axes[0].lines) == 4
  assert_whole_epoch_ticks(fig.axes[0])


def test_second_invocation_skips_finished_points(tiny_sweep, monkeypatch):
  workdir = tiny_sweep[0]
  before = _mtimes(workdir)
  _forbid_training(monkeypatch)
  rows = sweep.run_sweep(_tiny_config(), str(workdir))
  assert [row['status'] for row in rows] == ['skipped (done)'] * 4
  assert [row['status'] for row in _read_csv(workdir / 'sweep.csv')] == ['skipped (done)'] * 4
  assert _mtimes(workdir) == before


def test_a_process_runs_its_share_of_the_points(tiny_sweep, monkeypatch, caplog):
  workdir = tiny_sweep[0]
  _forbid_training(monkeypatch)
  caplog.set_level(logging.INFO)
  rows = sweep.run_sweep(_tiny_config(), str(workdir), process_index=1, process_count=2)
  # Its share is points 1 and 3; the others are read from their folders.
  assert [row['status'] for row in rows] == ['done', 'skipped (done)', 'done', 'skipped (done)']
  said = [record.getMessage() for record in caplog.records]
  assert f'[1/2] {TINY_POINTS[1]}: skipped (done)' in said
  assert not [line for line in said if TINY_POINTS[0] in line]
  with pytest.raises(UserError, match='--process_index=2'):
    sweep.run_sweep(_tiny_config(), str(workdir), process_index=2, process_count=2)


def test_a_changed_config_is_refused_not_reported_done(tiny_sweep, monkeypatch):
  workdir = tiny_sweep[0]
  before = _mtimes(workdir)
  _forbid_training(monkeypatch)
  config = _tiny_config()
  config.base.num_epochs = 3
  config.base.augment.hflip = 0.0
  with pytest.raises(UserError, match=(
      rf'sweep point {TINY_POINTS[0]}: .+ holds a run of another config \(config.augment.hflip, '
      r'config.num_epochs differ\); use a new --workdir, or delete .+')):
    sweep.run_sweep(config, str(workdir))
  assert _mtimes(workdir) == before


def test_another_process_stale_point_is_not_reported_done(tiny_sweep, tmp_path, monkeypatch):
  workdir = tmp_path / 'sweep'
  shutil.copytree(tiny_sweep[0], workdir)
  recorded = workdir / TINY_POINTS[0] / run_config.CONFIG_FILE
  recorded.write_text(recorded.read_text().replace('"num_epochs": 2', '"num_epochs": 1'))
  _forbid_training(monkeypatch)
  rows = sweep.run_sweep(_tiny_config(), str(workdir), process_index=1, process_count=2)
  assert rows[0]['status'] == 'stale: another config (num_epochs)'
  assert rows[0]['best_val_accuracy'] is None
  assert [row['status'] for row in rows[1:]] == ['skipped (done)', 'done', 'skipped (done)']


def test_command_line_reports_over_budget_points_skipped(tiny_sweep):
  workdir = tiny_sweep[0]
  before = _mtimes(workdir)
  command = [sys.executable, '-m', 'resnet_jax.sweep', '--config=configs/sweeps/tiny.py',
             f'--workdir={workdir}', '--config.base.data.source=synthetic',
             '--config.base.model.param_budget=100000',
             "--config.grid.model.channels=((4,8),(8,16),(64,128))"]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr[-3000:]
  table = _read_csv(workdir / 'sweep.csv')
  assert len(table) == 6
  over = [row for row in table if row['model.channels'] == '64x128']
  assert [row['status'] for row in over] == ['skipped (over budget)'] * 2
  assert all(int(row['parameters']) > 100_000 for row in over)
  assert not any((workdir / row['point']).exists() for row in over)
  assert [row['status'] for row in table if row not in over] == ['skipped (done)'] * 4
  assert _mtimes(workdir) == before
  assert '| 64x128 | 0.05 |' in result.stderr  # the Markdown table is printed
  assert result.stderr.splitlines()[0].split(' ', 1)[1].startswith(
      f'outputs: {workdir} (sweep.md; a run folder for each point)')


def test_failed_points_are_reported_and_the_sweep_goes_on(tmp_path, monkeypatch):
  config = _tiny_config()
  config.grid.model.channels = ((4, 8),)

  def diverges(config, workdir, **kwargs):
    raise UserError(f'non-finite training loss at lr {config.optim.learning_rate}')

  monkeypatch.setattr(train, 'train_and_evaluate', diverges)
  rows = sweep.run_sweep(config, str(tmp_path))
  assert len(rows) == 2
  for row in rows:
    assert row['status'].startswith('failed: non-finite training loss at lr ')
    assert row['best_val_accuracy'] is None
    error = (tmp_path / row['point'] / sweep.ERROR_FILE).read_text()
    assert row['status'] == f'failed: {error.strip()}'


def test_every_points_config_is_checked_before_the_first_trains(tmp_path, monkeypatch):
  config = _tiny_config()
  config.grid.optim.optimizer = ('sgd', 'nadam')  # The second point's was found when reached.
  _forbid_training(monkeypatch)
  with pytest.raises(UserError, match=r'sweep point [^ ]*optimizer=nadam: config\.optim\.optimizer'
                                      r'.*no point was trained'):
    sweep.run_sweep(config, str(tmp_path))
  assert list(tmp_path.iterdir()) == []


def test_a_string_is_one_value_to_sweep_not_its_letters():
  base = _tiny_config().base
  with pytest.raises(UserError, match=r"config\.grid\.model\.activation='relu' must be a "
                                      r"non-empty tuple .*e\.g\. \('relu',\)"):
    sweep.sweep_points(sweep.sweep_config(base, grid={'model.activation': 'relu'}))
  config = _tiny_config()
  config.grid.model.activation = 'elu'  # As --config.grid.model.activation=elu would.
  with pytest.raises(UserError, match=r"config\.grid\.model\.activation='elu'"):
    sweep.sweep_points(config)


def _copy_without_results(tiny_sweep, tmp_path, point):
  """A copy of the tiny sweep whose point has no results.json (kept aside, returned)."""
  workdir = tmp_path / 'sweep'
  shutil.copytree(tiny_sweep[0], workdir)
  results = workdir / point / 'results.json'
  kept = results.read_text()
  results.unlink()
  return workdir, results, kept


def test_a_point_whose_results_json_is_torn_is_rewritten_not_trusted(tiny_sweep, tmp_path):
  _, rows, _, _ = tiny_sweep
  workdir, results, kept = _copy_without_results(tiny_sweep, tmp_path, TINY_POINTS[0])
  results.write_text(kept[:len(kept) // 2])
  # Was 'skipped (done)' for every point, then a JSONDecodeError traceback.
  again = sweep.run_sweep(_tiny_config(), str(workdir))
  assert [row['status'] for row in again] == ['done'] + ['skipped (done)'] * 3
  for name in sweep_report.ACCURACIES:
    assert again[0][name] == rows[0][name], name
  assert json.loads(results.read_text())['final_test_accuracy'] == rows[0]['final_test_accuracy']


def test_the_figures_name_validation_on_the_test_set(tiny_sweep):
  workdir, _, _, text = tiny_sweep
  points = sweep.sweep_points(_tiny_config())
  fig = sweep_report.plot_curves(points, str(workdir), str(workdir / 'curves.png'))
  assert fig.axes[0].get_ylabel() == 'test-set validation accuracy (%)'  # Was 'validation ...'.
  assert '![test-set validation curves](curves.png)' in text


def test_a_point_another_process_trains_is_left_to_it(tiny_sweep, tmp_path):
  workdir, _, _ = _copy_without_results(tiny_sweep, tmp_path, TINY_POINTS[0])
  with workdir_lock.hold(str(workdir / TINY_POINTS[0]), 'training'):
    rows = sweep.run_sweep(_tiny_config(), str(workdir))
  # Was 'failed: ... in use by pid ...', with that failure written into the point's folder.
  assert rows[0]['status'] == sweep.IN_USE
  assert not (workdir / TINY_POINTS[0] / sweep.ERROR_FILE).exists()
  assert [row['status'] for row in rows[1:]] == ['skipped (done)'] * 3


def test_the_table_shows_a_point_finished_meanwhile_as_done(tiny_sweep, tmp_path, monkeypatch):
  workdir, results, kept = _copy_without_results(tiny_sweep, tmp_path, TINY_POINTS[0])

  def finished_by_another_process(config, point_dir, **kwargs):
    results.write_text(kept)
    raise workdir_lock.InUse(f'--workdir={point_dir} is in use by pid 1')

  monkeypatch.setattr(train, 'train_and_evaluate', finished_by_another_process)
  rows = sweep.run_sweep(_tiny_config(), str(workdir))
  assert rows[0]['status'] == 'done' and rows[0]['best_val_accuracy'] is not None
  assert '| done |' in (workdir / 'sweep.md').read_text().splitlines()[6]


def test_ctrl_c_stops_the_sweep_with_130_and_its_own_resume_command(tmp_path, monkeypatch,
                                                                   caplog):
  told = []

  def interrupted(config, workdir, resume_command=None):
    told.append(resume_command)
    return {'preempted': True, 'signal': 'SIGINT'}

  monkeypatch.setattr(train, 'train_and_evaluate', interrupted)
  caplog.set_level(logging.INFO)
  monkeypatch.setattr(sys, 'argv', ['sweep.py', '--config=configs/sweeps/tiny.py',
                                    f'--workdir={tmp_path}'])
  with pytest.raises(SystemExit) as info:
    sweep.sweep_command(_tiny_config(), str(tmp_path))
  assert info.value.code == 130  # Was 0.
  command = f'python -m resnet_jax.sweep --config=configs/sweeps/tiny.py --workdir={tmp_path}'
  assert told == [command]  # What the point's own stop line says, not `main`'s command.
  last = caplog.records[-1].getMessage()
  assert last.startswith('Ctrl-C (SIGINT): the sweep stopped') and last.endswith(command)


def test_unknown_keys_and_bad_values_are_one_line_user_errors():
  base = _tiny_config().base
  with pytest.raises(UserError, match=r'config\.grid\.optim\.learnig_rate'):
    sweep.sweep_points(sweep.sweep_config(base, grid={'optim.learnig_rate': (0.1,)}))
  with pytest.raises(UserError, match=r'config\.grid\.num_epochs.*ten'):
    sweep.sweep_points(sweep.sweep_config(base, grid={'num_epochs': ('ten',)}))
  with pytest.raises(UserError, match=r'config\.grid\.schedule.*section'):
    sweep.sweep_points(sweep.sweep_config(base, grid={'schedule': ('cosine',)}))
  with pytest.raises(UserError, match=r"config\.random\.params\.seed: unknown distribution"):
    sweep.sweep_points(sweep.sweep_config(base, random={'seed': ('normal', 0, 1)},
                                          num_samples=2))
  with pytest.raises(UserError, match='no points'):
    sweep.sweep_points(sweep.sweep_config(base))


def test_random_search_is_reproducible_and_in_range():
  base = _tiny_config().base
  specs = {'optim.learning_rate': ('log_uniform', 1e-3, 1e-1), 'seed': ('int', 0, 3),
           'model.activation': ('choice', 'relu', 'elu')}

  def draw(seed):
    config = sweep.sweep_config(base, grid={'num_epochs': (1, 2)}, random=specs,
                                num_samples=5, seed=seed)
    return sweep.sweep_points(config)

  points = draw(seed=1)
  assert len(points) == 10
  assert [p.name.split(',')[:2] for p in points] == [
      [f'sample={i}', f'num_epochs={epochs}'] for epochs in (1, 2) for i in range(5)]
  drawn = lambda point: {k: v for k, v in point.values.items() if k != 'num_epochs'}
  assert [drawn(p) for p in points[:5]] == [drawn(p) for p in points[5:]]
  for point in points:
    rate, seed, activation = (point.values[key] for key in specs)
    assert 1e-3 <= rate <= 1e-1 and seed in range(4) and activation in ('relu', 'elu')
    assert (point.config.optim.learning_rate, point.config.seed,
            point.config.model.activation) == (rate, seed, activation)
  assert len({p.values['optim.learning_rate'] for p in points[:5]}) == 5
  assert [p.values for p in draw(seed=1)] == [p.values for p in points]
  assert [p.values for p in draw(seed=2)] != [p.values for p in points]


def test_section_values_change_their_keys_together():
  base = _tiny_config().base
  config = sweep.sweep_config(base, grid={
      'schedule': (dict(name='step', step_size=3), dict(name='exponential', gamma=0.5)),
      'model': (models.preset('s003_resnet12'),),
  })
  step, exponential = sweep.sweep_points(config)
  assert step.name == 'model=s003_resnet12,schedule=step'
  assert (step.config.schedule.name, step.config.schedule.step_size) == ('step', 3)
  assert (exponential.config.schedule.name, exponential.config.schedule.gamma,
          exponential.config.schedule.step_size) == ('exponential', 0.5, 30)
  assert step.config.model.to_dict() == models.preset('s003_resnet12').to_dict()
  assert base.model.name == 'smoke'  # the base is copied, not changed


def test_block_order_sweep_varies_the_residual_block():
  points = sweep.sweep_points(_sweep_config('s004_block_order'))
  assert [p.config.model.block_order for p in points] == ['original', 'preact', 'bn_after_add']
  counts = sweep.parameter_counts(points)
  original, preact, bn_after_add = (counts[p.name][0] for p in points)
  assert original == bn_after_add == 4_935_242  # seed 004's ResNet24 (docs/reference.md)
  assert preact != original  # its BNs sit on the blocks' inputs, and one more before the pool


@pytest.mark.parametrize('name,num_points,over_budget', [
    ('s003_table4', 45, 0), ('s000_layers_blocks', 7, 1), ('s000_channels', 4, 0),
    ('s000_conv_kernels', 4, 1), ('s000_skip_kernels', 10, 2), ('s000_schedulers', 7, 0),
    ('s004_optimizers', 16, 0), ('s004_schedulers', 4, 0), ('s004_activations', 5, 0),
    ('s004_regularisation', 9, 0), ('tiny', 4, 0)])
def test_seed_study_sweeps_build_every_point(name, num_points, over_budget):
  points = sweep.sweep_points(_sweep_config(name))
  counts = sweep.parameter_counts(points)
  assert len(points) == num_points
  assert sum(not within for _, within in counts.values()) == over_budget


# Populations: the tiny sweep's points that differ only in the learning rate train together.
def _on_devices(count):
  """population.members_per_round on `count` devices."""
  return functools.partial(population.members_per_round, devices=[None] * count)


def _groups(config, population_size=0, devices=2):
  """The names of group_points' groups of config's points, on `devices` devices."""
  points = sweep.sweep_points(config)
  groups = sweep.group_points(points, sweep.parameter_counts(points), population_size,
                              members_per_round=_on_devices(devices))
  return [[point.name for point in group] for group in groups]


def test_points_differing_in_scalars_form_populations_the_devices_hold():
  assert _groups(_tiny_config()) == [list(TINY_POINTS[:2]), list(TINY_POINTS[2:])]
  assert _groups(_tiny_config(), devices=1) == [[name] for name in TINY_POINTS]
  config = _tiny_config()
  config.grid.optim.learning_rate = (0.05, 0.1, 0.2)
  names = [point.name for point in sweep.sweep_points(config)]
  assert _groups(config) == [names[0:2], names[2:3], names[3:5], names[5:6]]
  # 8 devices split into 2 groups of 4 or 4 of 2, not 3: 2 at once, then the third alone.
  assert _groups(config, devices=8) == [names[0:2], names[2:3], names[3:5], names[5:6]]
  config.grid.optim.learning_rate = (0.05, 0.1, 0.2, 0.4)
  names = [point.name for point in sweep.sweep_points(config)]
  assert _groups(config, devices=8) == [names[0:4], names[4:8]]
  # --population_size caps a population, and sets it where given, beyond what the devices hold
  # (those train in rounds).
  assert _groups(config, population_size=3, devices=8) == [names[0:3], names[3:4], names[4:7],
                                                           names[7:8]]
  assert _groups(config, population_size=4, devices=1) == [names[0:4], names[4:8]]


def test_population_size_one_and_points_over_budget_train_alone():
  def never(*args, **kwargs):
    raise AssertionError('population consulted for --population_size=1')

  points = sweep.sweep_points(_tiny_config())
  counts = sweep.parameter_counts(points)
  assert sweep.group_points(points, counts, 1, why_not_together=never,
                            members_per_round=never) == [[point] for point in points]
  config = _tiny_config()
  config.base.model.param_budget = 2000  # The 8x16 points (5,266 parameters) are over it.
  assert _groups(config) == [list(TINY_POINTS[:2]), [TINY_POINTS[2]], [TINY_POINTS[3]]]
  with pytest.raises(UserError, match=r'--population_size=-1 must be >= 0'):
    _groups(config, population_size=-1)


@pytest.fixture
def recorded_populations(monkeypatch):
  """population.train_population's calls (configs, workdirs, workdir, resume_command) recorded,
  each member returned as finished; the devices hold 2 runs; single runs forbidden."""
  calls = []

  def train_population(configs, workdirs, workdir, *, resume_command=None):
    calls.append((configs, workdirs, workdir, resume_command))
    return [{'final_val_accuracy': 0.5} for _ in configs]

  monkeypatch.setattr(population, 'train_population', train_population)
  monkeypatch.setattr(population, 'members_per_round', _on_devices(2))
  _forbid_training(monkeypatch)
  return calls


def test_a_sweep_trains_its_populations_into_the_points_folders(recorded_populations, tmp_path,
                                                                monkeypatch):
  monkeypatch.setattr(sys, 'argv', ['sweep.py', f'--workdir={tmp_path}'])
  rows = sweep.run_sweep(_tiny_config(), str(tmp_path), process_index=1, process_count=2)
  # The second process's share is the second population (8x16), not points 1 and 3.
  (configs, workdirs, workdir, command), = recorded_populations
  assert [(c.model.channels, c.optim.learning_rate) for c in configs] == [((8, 16), 0.05),
                                                                         ((8, 16), 0.2)]
  assert workdirs == [str(tmp_path / name) for name in TINY_POINTS[2:]]
  assert workdir == str(tmp_path / sweep.POPULATIONS_DIR / TINY_POINTS[2])
  assert command == f'python -m resnet_jax.sweep --workdir={tmp_path}'
  assert [row['status'] for row in rows] == ['pending', 'pending', 'done', 'done']


def test_a_failed_population_trains_its_points_one_at_a_time(recorded_populations, tmp_path,
                                                              monkeypatch):
  def diverges(configs, workdirs, workdir, **kwargs):
    raise UserError('non-finite training loss')

  trained = []

  def train_alone(config, workdir, **kwargs):
    trained.append(workdir)
    if config.optim.learning_rate == 0.2:
      raise UserError('non-finite training loss at lr 0.2')
    return {'final_val_accuracy': 0.5}

  monkeypatch.setattr(population, 'train_population', diverges)
  monkeypatch.setattr(train, 'train_and_evaluate', train_alone)
  config = _tiny_config()
  config.grid.model.channels = ((4, 8),)
  rows = sweep.run_sweep(config, str(tmp_path))
  assert trained == [str(tmp_path / name) for name in TINY_POINTS[:2]]
  assert [row['status'] for row in rows] == ['done', 'failed: non-finite training loss at lr 0.2']
