"""population: K members on K groups of devices train as K single runs, stop and resume bitwise.

The runs happen in one subprocess with 8 host devices (`_worker`); the tests compare what it
returns. XLA:CPU at LLVM's optimisation level 0 (the tests' setting, conftest) compiles a member's
step in the population's program to the same arithmetic as the single run's: the losses are
bitwise equal. With LLVM's optimisations on, its code generation of the fused kernels may differ
between the two programs (vector widths, fused multiply-adds) and the losses agree to about
3e-6 relative after 16 steps, differences of the last bit compounding.
"""

import json
import os
import pathlib
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest

from resnet_jax import errors
from resnet_jax.training import population

from conftest import assert_trees_equal, config_file, host_devices_env, with_overrides  # pylint: disable=g-bad-import-order

REPO = pathlib.Path(__file__).resolve().parents[2]
# 288 images at batch 64: 4 full steps and a partial batch of 32, two steps a call.
OVERRIDES = {'data.source': 'synthetic', 'data.train_subset': 288, 'data.test_subset': 128,
             'eval_batch_size': 64, 'steps_per_call': 2, 'log_every_steps': 1,
             'checkpoint_min_seconds': 0.0, 'write_plots': False}
STEPS_AN_EPOCH = 5
# The members of the runs compared: each its seed, and scalars that differ among them.
MEMBERS = [{'seed': 0, 'optim.learning_rate': 0.05, 'optim.weight_decay': 5e-4,
            'label_smoothing': 0.1},
           {'seed': 1, 'optim.learning_rate': 0.05, 'optim.weight_decay': 1e-3,
            'label_smoothing': 0.2},
           {'seed': 2, 'optim.learning_rate': 0.1, 'optim.weight_decay': 5e-4,
            'label_smoothing': 0.1},
           {'seed': 3, 'optim.learning_rate': 0.2, 'optim.weight_decay': 2e-4,
            'label_smoothing': 0.05}]
SEEDS = tuple(member['seed'] for member in MEMBERS)


def smoke_config(seed=0, **overrides):
  return with_overrides(config_file('smoke'), {**OVERRIDES, 'seed': seed, **overrides})


def test_seed_configs_are_single_runs_in_seed_folders():
  config = smoke_config(**{'population.seeds': (3, 5)})
  members = population.seed_configs(config)
  assert [m.seed for m in members] == [3, 5]
  assert [m.population.seeds for m in members] == [(), ()]
  assert [population.member_label(m) for m in members] == ['seed_3', 'seed_5']


def test_members_a_round_split_the_devices_evenly_and_the_batch():
  config = smoke_config()  # batch 64
  assert population.group_sizes(8, 64) == [1, 2, 4, 8]
  assert population.group_sizes(6, 64) == [3, 6]  # 2 devices a member: 32 each; 1: not 64/6
  devices = [object()] * 8
  assert population.members_per_round(config, 8, devices) == 8
  assert population.members_per_round(config, 6, devices) == 4  # then a round of 2
  assert population.members_per_round(config, 1, devices) == 1


def test_finished_members_read_their_results_alone_and_the_rest_train_together(tmp_path):
  configs = [smoke_config(seed) for seed in range(7)]
  workdirs = [tmp_path / f'seed_{seed}' for seed in range(7)]
  for finished in (1, 4):
    workdirs[finished].mkdir()
    (workdirs[finished] / 'results.json').write_text(json.dumps({'final_test_accuracy': 0.5}))
  rounds = population.training_rounds(configs, [str(w) for w in workdirs], [object()] * 4)
  assert rounds == [[1], [4], [0, 2, 3, 5], [6]]


@pytest.mark.parametrize('change, says', [
    ({'data.placement': 'host'}, "config.data.placement='host' streams each batch"),
    ({'schedule.name': 'plateau'}, "config.schedule.name='plateau' sets each run's rate"),
    ({'data.validation': '0.1'}, "holds out a different part of the training set for each"),
])
def test_what_cannot_train_together_is_refused_in_one_line(change, says, tmp_path):
  configs = [smoke_config(seed, **change) for seed in (0, 1)]
  assert says in population.why_not_together(configs)
  with pytest.raises(errors.UserError, match='cannot train as one population') as refused:
    population.train_population(configs, [str(tmp_path / 'a'), str(tmp_path / 'b')],
                                str(tmp_path))
  assert '\n' not in str(refused.value)


def test_the_command_trains_a_population_with_one_console_and_a_summary(tmp_path):
  workdir = tmp_path / 'p'
  overrides = [f'--config.{key}={value}' for key, value in OVERRIDES.items()
               if key != 'log_every_steps']
  done = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.main', f"--config={REPO / 'configs' / 'smoke.py'}",
       f'--workdir={workdir}', '--config.population.seeds=(4,7)', *overrides],
      env=host_devices_env(2), cwd=REPO, capture_output=True, text=True, timeout=600,
      check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stderr.splitlines()
  assert any('population: 2 members of 2 (seed_4, seed_7) on 2 devices, one program, 1 a member'
             in line for line in lines)
  # One progress line a logged step for the population, not one a member.
  progress_lines = [line for line in lines if ' step 5/5: ' in line]
  assert len(progress_lines) == 2 and 'member-images/s (2 members)' in progress_lines[-1]
  assert 'final test accuracy' in lines[-1] and 'mean over 2 runs' in lines[-1]
  summary = json.loads((workdir / 'population.json').read_text())
  for seed in (4, 7):
    results = json.loads((workdir / f'seed_{seed}' / 'results.json').read_text())
    assert results['seed'] == seed and results['population']['members'] == 2
  assert (workdir / 'population.md').is_file() and summary
  # A command given the population's folder as one run says where the runs are.
  done = subprocess.run([sys.executable, '-m', 'resnet_jax.evaluate', f'--workdir={workdir}'],
                        env=host_devices_env(1), cwd=REPO, capture_output=True, text=True,
                        timeout=300, check=False)
  assert done.returncode == 2
  assert done.stderr.splitlines()[-1] == (
      f'error: {workdir} holds 2 runs (seed_4, seed_7) but is not one itself: give one as '
      '--workdir, e.g. '
      f'--workdir={workdir / "seed_4"}')


def _worker(out_path: str, workdir: str) -> None:
  """The runs the tests compare, on 8 host devices: a population of 4 members (`MEMBERS`: their
  seeds and scalar hyperparameters differ); each member's single run on 2 devices; the
  population stopped by SIGTERM and resumed; the population crashed in the middle of its members'
  saves and resumed."""
  import jax  # pylint: disable=g-import-not-at-top
  from resnet_jax.reporting import writers  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import checkpoints, progress, runs, train  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  configs = [smoke_config(**member) for member in MEMBERS]
  out = {}

  def train_population(name):
    folders = [str(workdir / name / f'seed_{seed}') for seed in SEEDS]
    results = population.train_population(configs, folders, str(workdir / name))
    return results, folders

  def read(folders):
    """Per folder: every logged call's (step, loss), the final test accuracy, the parameters."""
    found = []
    for folder, config in zip(folders, configs):
      records = writers.read_jsonl(os.path.join(folder, 'metrics.jsonl'))
      losses = [(r['step'], r['train_loss']) for r in records if 'epoch' not in r]
      results = json.loads(pathlib.Path(folder, 'results.json').read_text())
      state, _ = runs.restore(runs.setup_run(config, folder, devices=jax.devices()[:1]))
      found.append((losses, results['final_test_accuracy'],
                    jax.tree.map(np.asarray, jax.device_get(state.params))))
    return found

  results, folders = train_population('population')
  out['population'] = read(folders)
  out['population_results'] = results
  singles = []
  for index, config in enumerate(configs):
    folder = str(workdir / 'single' / f'seed_{config.seed}')
    devices = jax.devices()[2 * index:2 * index + 2]
    train.train_members(train.Solo(runs.setup_run(config, folder, devices=devices)),
                        progress.RunClock(), None, folder)
    singles.append(folder)
  out['single'] = read(singles)

  # SIGTERM after the call ending at global step 7 (mid-epoch 2), then a resume.
  should_stop = checkpoints.StopSignals.should_stop
  calls = iter(range(100))
  checkpoints.StopSignals.should_stop = lambda self: (next(calls) == 3
                                                      and not signal.raise_signal(signal.SIGTERM)
                                                      or should_stop(self))
  out['stopped'] = train_population('stopped')[0]
  checkpoints.StopSignals.should_stop = should_stop
  out['stopped_steps'] = [checkpoints.checkpoint_manager(
      workdir / 'stopped' / f'seed_{seed}' / 'checkpoints' / 'latest', read_only=True).all_steps()
                          for seed in SEEDS]
  out['resumed'] = read(train_population('stopped')[1])

  # A crash (SIGKILL, power) in the middle of the members' saves at the end of epoch 2: two
  # members hold step 10, two only step 5.
  save = checkpoints.save_checkpoint
  saves = iter(range(100))

  def crashing_save(manager, state, meta):
    if 'latest' in str(manager.directory) and next(saves) == 6:
      raise KeyboardInterrupt('killed')
    save(manager, state, meta)

  checkpoints.save_checkpoint = crashing_save
  try:
    train_population('crashed')
  except KeyboardInterrupt:
    pass
  checkpoints.save_checkpoint = save
  out['crashed_steps'] = [checkpoints.checkpoint_manager(
      workdir / 'crashed' / f'seed_{seed}' / 'checkpoints' / 'latest', read_only=True).all_steps()
                          for seed in SEEDS]
  out['recovered'] = read(train_population('crashed')[1])
  pathlib.Path(out_path).write_bytes(pickle.dumps(out))


@pytest.fixture(scope='module')
def runs_on_8_devices(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp('population')
  env = dict(host_devices_env(8), PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / 'tests')]))
  done = subprocess.run([sys.executable, __file__, str(tmp_path / 'out.pkl'), str(tmp_path)],
                        env=env, cwd=REPO, capture_output=True, text=True, timeout=900,
                        check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
  return pickle.loads((tmp_path / 'out.pkl').read_bytes())


def assert_same_runs(found, expected):
  for (losses, accuracy, params), (want_losses, want_accuracy, want_params) in zip(
      found, expected, strict=True):
    assert losses == want_losses
    assert accuracy == want_accuracy
    assert_trees_equal(params, want_params)


def test_members_train_bitwise_as_their_single_runs(runs_on_8_devices):
  found = runs_on_8_devices
  population_runs = found['population']
  # Every call's loss (2 epochs of 3 calls), each member its own (their seeds differ).
  assert [len(losses) for losses, _, _ in population_runs] == [6] * 4
  assert len({losses[0][1] for losses, _, _ in population_runs}) == 4
  assert_same_runs(population_runs, found['single'])
  assert [r['population']['members'] for r in found['population_results']] == [4] * 4


def test_a_stopped_population_resumes_bitwise(runs_on_8_devices):
  found = runs_on_8_devices
  assert all(r['preempted'] and r['step'] == 7 for r in found['stopped'])
  assert found['stopped_steps'] == [[5, 7]] * 4  # A population's members keep two.
  assert_same_runs(found['resumed'], found['population'])


def test_a_crash_during_the_saves_resumes_every_member_from_the_step_all_hold(runs_on_8_devices):
  found = runs_on_8_devices
  # Saves of epoch 1 (step 5) for all; of epoch 2 (step 10) for two members, then the crash.
  assert found['crashed_steps'] == [[5, 10], [5, 10], [5], [5]]
  assert_same_runs(found['recovered'], found['population'])


if __name__ == '__main__':
  sys.modules['tensorflow'] = None  # as on the GPU machines; and it starts faster
  _worker(*sys.argv[1:])
