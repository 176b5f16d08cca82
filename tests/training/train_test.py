"""Training on real CIFAR-10 images (a subset, on the CPU): it learns, resumes bitwise, scales."""

import json
import logging
import os
import pickle
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import errors
from resnet_jax.reporting import report
from resnet_jax.reporting import writers
from resnet_jax.training import checkpoints
from resnet_jax.training import evaluator
from resnet_jax.training import feed
from resnet_jax.training import precompile
from resnet_jax.training import steps
from resnet_jax.training import train

from conftest import (assert_trees_equal, host_devices_env, restore_params, short_config,  # pylint: disable=g-bad-import-order
                      synthetic_config, tiny_config)

REPO = pathlib.Path(__file__).resolve().parents[2]

# Measured with the learning config below (3,000 real training images, 3 epochs, seeds 0, 1, 2):
# validation accuracy 24.7%, 27.2%, 25.5% (chance: 10%). The threshold leaves about 6 points.
LEARNED_ACCURACY = 0.19
# The short run: 1,000 images at batch 96 = 10 full steps + a partial batch of 40, 2 epochs.
SHORT_STEPS_AN_EPOCH = 11


def step_losses(workdir):
  """(step, train loss) of every logged call (epoch summaries excluded)."""
  records = writers.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  return [(r['step'], r['train_loss']) for r in records if 'train_loss' in r and 'epoch' not in r]


class LogLines(logging.Handler):
  """The messages absl logs while it is attached."""

  def __init__(self):
    super().__init__()
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


@pytest.fixture(scope='module')
def learned_run(cifar_batches_dir, tmp_path_factory):
  """30 steps an epoch, one a call (the CPU's), a progress line every 1,000 steps or 30 s."""
  workdir = tmp_path_factory.mktemp('learned')
  config = tiny_config(cifar_batches_dir, batch_size=100, num_epochs=3,
                       **{'data.train_subset': 3000})
  logged, absl_logger = LogLines(), logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.addHandler(logged)
  absl_logger.setLevel(logging.INFO)  # As the commands run it (absl.app), not pytest's default.
  try:
    results = train.train_and_evaluate(config, str(workdir))
  finally:
    absl_logger.removeHandler(logged)
    absl_logger.setLevel(level)
  return results, workdir, logged.lines


SHORT_COMMAND = 'python -m resnet_jax.main --config=short.py --workdir=short'


@pytest.fixture(scope='module')
def short_run(cifar_batches_dir, tmp_path_factory):
  """The uninterrupted short run every other test compares with (and its evaluations)."""
  workdir = tmp_path_factory.mktemp('short')
  config = short_config(cifar_batches_dir)
  evaluations = []
  read = evaluator.read

  def counted(scoring, **kwargs):
    evaluations.append((scoring.size, kwargs.get('with_predictions', True)))
    return read(scoring, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(evaluator, 'read', counted)
    results = train.train_and_evaluate(config, str(workdir), resume_command=SHORT_COMMAND)
  return results, workdir, restore_params(workdir, config), evaluations


def writer_sending_sigterm(at_step):
  """writers.create_writer, raising SIGTERM once the scalars of global step at_step are written."""
  # As a TPU preemption would, between two calls.
  return writer_calling(at_step, lambda: signal.raise_signal(signal.SIGTERM))


def writer_calling(at_step, action):
  """writers.create_writer, calling action() once the scalars of global step at_step are written."""
  create_writer = writers.create_writer

  def create(workdir, **kwargs):
    writer = create_writer(workdir, **kwargs)
    write_scalars = writer.write_scalars

    def write(step, scalars):
      write_scalars(step, scalars)
      if step == at_step and 'epoch' not in scalars:
        action()
    writer.write_scalars = write
    return writer

  return create


def loss_non_finite_from(step):
  """steps.train_step, its loss made infinite from global step `step` on."""
  train_step = steps.train_step

  def patched(state, images_u8, labels, ctx):
    new_state, metrics = train_step(state, images_u8, labels, ctx)
    total = jnp.where(state.step >= step, jnp.inf, metrics.loss.total)
    return new_state, metrics.replace(loss=metrics.loss.replace(total=total))

  return patched


def params_non_finite_at(step):
  """steps.train_step, its updated parameters made NaN at global step `step` (loss still finite)."""
  train_step = steps.train_step

  def patched(state, images_u8, labels, ctx):
    new_state, metrics = train_step(state, images_u8, labels, ctx)
    poison = jnp.where(state.step == step, jnp.nan, 0.0)
    return new_state.replace(params=jax.tree.map(lambda p: p + poison, new_state.params)), metrics

  return patched


def test_learns_on_real_images(learned_run):
  results, workdir, _ = learned_run
  assert results['data_source'].startswith('cifar_batches')
  assert results['train_examples'] == 3000 and results['val_examples'] == 1000
  assert results['final_val_accuracy'] > LEARNED_ACCURACY
  assert results['best_val_accuracy'] >= results['final_val_accuracy']
  written = json.loads((workdir / 'results.json').read_text())
  assert written['epochs'] == 3 and written['steps'] == 3 * 30
  assert (workdir / 'config.json').is_file() and (workdir / 'report.md').is_file()


def test_short_run_counts_steps_and_partial_batch(short_run):
  results, _, (_, meta, latest_step), _ = short_run
  assert results['steps'] == latest_step == 2 * SHORT_STEPS_AN_EPOCH
  assert [r['epoch'] for r in meta.history] == [1, 2]
  assert results['placement'] == 'device'
  assert results['command'] == SHORT_COMMAND  # What it was given, not the process's command line.
  # The identity a resume must match: every key but the resumable ones, the data, the plan.
  assert (meta.run['config.batch_size'], meta.run['config.num_epochs'], meta.run['config.seed'],
          meta.run['config.optim.learning_rate']) == (96, 2, 0, 0.05)
  assert meta.run['steps an epoch'] == SHORT_STEPS_AN_EPOCH
  assert len(meta.run['data (a fingerprint of its images and labels)']) == 32
  assert 'config.log_every_steps' not in meta.run and 'config.reference.system' not in meta.run


def test_a_run_says_where_it_runs_and_reports_after_its_first_call(learned_run):
  _, workdir, lines = learned_run
  assert [line for line in lines if line.startswith('running on ')] == [
      'running on 1 x cpu (cpu), 1 process; float32, batch 100 (100 a device), 30 steps an '
      'epoch, up to 1 a compiled call']
  compiled = [i for i, line in enumerate(lines) if line.startswith('compiled the first train call')]
  first_progress = next(i for i, line in enumerate(lines) if line.startswith('epoch 1/3 step'))
  assert len(compiled) == 1 and compiled[0] < first_progress
  # The step within its epoch; no speed or ETA from the first call (it pays for the compile's
  # leftovers), but from the calls after it.
  assert lines[first_progress].startswith('epoch 1/3 step 1/30: ')
  assert lines[first_progress].endswith('images/s and ETA from the next line (the first call is '
                                        'not timed)')
  assert 'ETA epoch' in next(line for line in lines[first_progress + 1:] if ' step ' in line)
  # The first progress line follows the first call, not the 1,000th step; then by time (30 s)
  # or at the end of each epoch.
  logged = [step for step, _ in step_losses(workdir)]
  assert logged[0] == 1 and {30, 60, 90} <= set(logged)


def test_validation_on_the_test_set_is_evaluated_once_an_epoch(short_run):
  results, _, _, evaluations = short_run
  # Validation is the test set (500 images): no separate final or best test evaluation, and
  # predictions are gathered only in the last epoch's (for the confusion matrix).
  assert evaluations == [(500, False), (500, True)]
  assert results['final_test_accuracy'] == results['final_val_accuracy']
  assert results['best_test_accuracy'] == results['best_val_accuracy']


def test_logged_learning_rate_is_the_last_step_of_each_call(short_run):
  _, workdir, _, _ = short_run
  records = writers.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  logged = [(r['step'], r['learning_rate']) for r in records
            if 'learning_rate' in r and 'epoch' not in r]
  assert [step for step, _ in logged] == [2, 4, 6, 8, 10, 11, 13, 15, 17, 19, 21, 22]
  # Per-epoch cosine over 2 epochs from 0.05: 0.05 in epoch 1, 0.025 in epoch 2. Step 11 (the
  # partial batch) is epoch 1's last: a rate read one step late would be epoch 2's.
  for step, rate in logged:
    epoch = (step - 1) // SHORT_STEPS_AN_EPOCH
    assert rate == pytest.approx(0.05 * (1 + np.cos(np.pi * epoch / 2)) / 2, rel=1e-6), step
  epochs = [r for r in records if 'epoch' in r]
  assert [r['learning_rate'] for r in epochs] == pytest.approx([0.05, 0.025], rel=1e-6)


def test_results_say_when_the_reference_accuracy_was_reached(short_run):
  results, _, (_, meta, _), _ = short_run
  history = meta.history
  # short_config's reference is 1%: the first evaluation reaches it.
  assert results['reference_reached'] == {'epoch': 1,
                                          'elapsed_seconds': history[0]['elapsed_seconds']}
  assert 0 < history[0]['elapsed_seconds'] < history[1]['elapsed_seconds']
  assert history[1]['elapsed_seconds'] <= results['elapsed_seconds']


def test_same_seed_gives_identical_parameters(short_run, cifar_batches_dir, tmp_path):
  _, _, (params, _, _), _ = short_run
  config = short_config(cifar_batches_dir)
  train.train_and_evaluate(config, str(tmp_path))
  assert_trees_equal(restore_params(tmp_path, config)[0], params)


def test_sigterm_then_resume_is_bitwise_equal(short_run, cifar_batches_dir, tmp_path,
                                              monkeypatch, caplog):
  _, _, (params, short_meta, _), _ = short_run
  config = short_config(cifar_batches_dir)
  caplog.set_level(logging.INFO)
  # Each SIGTERM is seen with the next call in flight; that call is finished (and its loss
  # checked) before the checkpoint. The first stop falls after the epoch's last call, so the
  # epoch is closed (evaluated, recorded) first; the second mid-way through the second epoch.
  saved_elapsed = 0.0
  for sigterm_at, saved_at in ((10, SHORT_STEPS_AN_EPOCH), (15, 17)):
    monkeypatch.setattr(writers, 'create_writer', writer_sending_sigterm(sigterm_at))
    stopped = train.train_and_evaluate(config, str(tmp_path))
    assert stopped['preempted'] and stopped['step'] == saved_at
    # Started from Python, without a command line to give back.
    assert 'resume by training the same config in the same workdir again' in caplog.text
    caplog.clear()
    _, meta, step = restore_params(tmp_path, config)
    assert step == saved_at
    epoch, step_in_epoch = divmod(saved_at, SHORT_STEPS_AN_EPOCH)
    assert (meta.epoch, meta.step_in_epoch, len(meta.history)) == (
        epoch, step_in_epoch, epoch)
    # The epoch's metric sums so far (10 full batches of 96 and one of 40 an epoch).
    assert meta.train_sums.get('loss', [0, 0])[1] == 96 * step_in_epoch
    assert meta.elapsed_seconds > saved_elapsed  # The run's time goes on across processes.
    saved_elapsed = meta.elapsed_seconds
    assert signal.getsignal(signal.SIGTERM) is not None  # The handler was put back.

  monkeypatch.undo()
  resumed = train.train_and_evaluate(config, str(tmp_path))
  assert not resumed['preempted'] and resumed['steps'] == 2 * SHORT_STEPS_AN_EPOCH
  assert resumed['elapsed_seconds'] >= saved_elapsed + resumed['wall_seconds']
  resumed_params, resumed_meta, _ = restore_params(tmp_path, config)
  assert_trees_equal(resumed_params, params)
  # The resumed epochs' train metrics cover the whole epoch: the same as the uninterrupted run's.
  timings = ('epoch_seconds', 'elapsed_seconds', 'compile_seconds')
  without_time = lambda history: [{k: v for k, v in r.items() if k not in timings}
                                  for r in history]
  assert without_time(resumed_meta.history) == without_time(short_meta.history)
  records = writers.read_jsonl(tmp_path / 'metrics.jsonl')
  assert all(np.isfinite(v) for r in records for v in r.values())
  assert [r['epoch'] for r in records if 'epoch' in r] == [1, 2]


@pytest.mark.parametrize('key,value', [('batch_size', 64), ('num_epochs', 3)])
def test_resuming_with_a_changed_run_is_a_user_error(short_run, cifar_batches_dir, tmp_path, key,
                                                     value):
  _, workdir, _, _ = short_run
  shutil.copytree(workdir / 'checkpoints', tmp_path / 'checkpoints')
  with pytest.raises(errors.UserError, match=rf'trained with config\.{key} = \d+, the config '
                     rf'gives {value}; resume with the original config, or use a new --workdir'):
    train.train_and_evaluate(short_config(cifar_batches_dir, **{key: value}), str(tmp_path))


@pytest.mark.parametrize('key,value', [('optim.learning_rate', 0.2), ('augment.hflip', 0.0),
                                       ('data.normalization', 'computed'),
                                       ('model.stem_channels', 12)])  # a shape: named, not orbax's
def test_resuming_with_changed_settings_is_refused_and_config_json_kept(
    short_run, cifar_batches_dir, tmp_path, key, value):
  _, workdir, _, _ = short_run
  shutil.copytree(workdir, tmp_path / 'run')
  with pytest.raises(errors.UserError, match=rf'trained with config\.{key} = .*, the config gives '
                     rf'{value}; resume with the original config'):
    train.train_and_evaluate(short_config(cifar_batches_dir, **{key: value}), str(tmp_path / 'run'))
  assert (tmp_path / 'run' / 'config.json').read_text() == (workdir / 'config.json').read_text()


def test_resuming_on_other_data_of_the_same_size_is_refused(short_run, cifar_batches_dir,
                                                             tmp_path):
  _, workdir, _, _ = short_run
  shutil.copytree(workdir / 'checkpoints', tmp_path / 'run' / 'checkpoints')
  shutil.copytree(cifar_batches_dir, tmp_path / 'data')
  batch_file = tmp_path / 'data' / 'cifar-10-batches-py' / 'data_batch_1'
  with open(batch_file, 'rb') as f:
    batch = pickle.load(f, encoding='bytes')
  data_key = b'data' if b'data' in batch else 'data'
  batch[data_key][0, 0] ^= 0xFF  # One pixel of the first training image.
  with open(batch_file, 'wb') as f:
    pickle.dump(batch, f)
  with pytest.raises(errors.UserError, match=r'trained with data \(a fingerprint of its images'):
    train.train_and_evaluate(short_config(tmp_path / 'data'), str(tmp_path / 'run'))


def test_a_resume_may_change_how_the_run_is_logged_and_scored(short_run, cifar_batches_dir,
                                                              tmp_path):
  _, workdir, _, _ = short_run
  shutil.copytree(workdir, tmp_path / 'run')
  written = json.loads((workdir / 'results.json').read_text())
  config = short_config(cifar_batches_dir, log_every_steps=5, eval_batch_size=250,
                        **{'reference.system': 'renamed'})
  assert train.train_and_evaluate(config, str(tmp_path / 'run')) == written


def delete_folder(path: pathlib.Path) -> None:
  """rm -rf, again until it stays deleted for half a second: a background save still writing
  into the folder makes it again (on a loaded machine, after the first rm)."""
  gone_since = None
  for _ in range(1000):
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
      gone_since = None
    elif gone_since is None:
      gone_since = time.monotonic()
    elif time.monotonic() - gone_since > 0.5:
      return
    time.sleep(0.01)
  raise AssertionError(f'{path} could not be deleted')


def test_a_checkpoint_folder_deleted_under_the_run_stops_it(cifar_batches_dir, tmp_path,
                                                            monkeypatch):
  latest = tmp_path / 'checkpoints' / 'latest'
  monkeypatch.setattr(writers, 'create_writer', writer_calling(13, lambda: delete_folder(latest)))
  # Deleted between saves, the next save sees it gone; deleted while orbax still writes the last
  # one, that write fails. Either way one line names the folder.
  with pytest.raises(errors.UserError, match=r'checkpoints/latest (was deleted while this run was '
                     r'writing to it|failed \().*new --workdir') as raised:
    train.train_and_evaluate(short_config(cifar_batches_dir), str(tmp_path))
  assert '\n' not in str(raised.value)


def test_host_path_trains_like_the_device_path(short_run, cifar_batches_dir, tmp_path):
  results, workdir, (params, _, _), _ = short_run
  config = short_config(cifar_batches_dir, **{'data.placement': 'host',
                                              'data.host_backend': 'numpy'})
  host_results = train.train_and_evaluate(config, str(tmp_path))
  assert host_results['placement'] == 'host'
  # The same batches and the same step; only XLA's fusion of the gather may differ.
  host_params = restore_params(tmp_path, config)[0]
  for x, y in zip(jax.tree.leaves(host_params), jax.tree.leaves(params)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose([l for _, l in step_losses(tmp_path)],
                             [l for _, l in step_losses(workdir)], rtol=1e-5)
  assert host_results['final_test_accuracy'] == pytest.approx(results['final_test_accuracy'],
                                                              abs=0.002)


def test_eight_devices_follow_the_one_device_loss_curve(short_run, cifar_batches_dir, tmp_path):
  _, workdir, _, _ = short_run
  script = (
      'import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]; import jax\n'
      'assert jax.device_count() == 8, jax.devices()\n'
      'import conftest\n'
      'from resnet_jax.training import train\n'
      'train.train_and_evaluate(conftest.short_config(sys.argv[2], num_epochs=1), '
      'sys.argv[3])\n')
  subprocess.run([sys.executable, '-c', script, str(REPO), str(cifar_batches_dir), str(tmp_path)],
                 check=True, env=host_devices_env(8), capture_output=True, cwd=REPO)
  # One epoch on 8 devices against the first epoch of the 2-epoch run: its cosine schedule is
  # still at the base rate then, so both take the same steps.
  one, eight = step_losses(workdir)[:6], step_losses(tmp_path)
  assert [s for s, _ in one] == [s for s, _ in eight] == [2, 4, 6, 8, 10, 11]
  # The batches, the augmentation and dropout draws are identical (threefry keys are the same
  # however the batch is sharded); only the order of float32 sums differs: BatchNorm statistics
  # and gradients are summed per device, then across devices. Those rounding differences (about
  # 1e-7 relative) grow with every SGD step; measured over 22 steps: at most 1.5e-4 relative
  # (at step 15; 3e-5 within the first epoch). 2e-3 is over 10x that, and still 10x below what
  # one step changes the loss here (0.02 to 0.1).
  np.testing.assert_allclose([l for _, l in eight], [l for _, l in one], rtol=2e-3)


def test_non_finite_loss_stops_and_names_the_checkpoint_on_disk(cifar_batches_dir, tmp_path,
                                                                monkeypatch):
  # Checkpoints every 2 epochs: after epoch 3 the last one on disk is still epoch 2's.
  config = short_config(cifar_batches_dir, num_epochs=4, checkpoint_every_epochs=2)
  monkeypatch.setattr(steps, 'train_step', loss_non_finite_from(3 * SHORT_STEPS_AN_EPOCH + 3))
  with pytest.raises(errors.UserError, match=r'non-finite training loss at epoch 4, step 4 of '
                     r'it; the last good checkpoint \(after epoch 2\) is kept in .*checkpoints/'
                     r'latest; .*config\.optim\.learning_rate') as raised:
    train.train_and_evaluate(config, str(tmp_path))
  assert '\n' not in str(raised.value)
  _, meta, step = restore_params(tmp_path, config)
  assert (step, meta.epoch) == (2 * SHORT_STEPS_AN_EPOCH, 2)


def test_non_finite_parameters_from_a_calls_last_step_stop_before_any_save(
    cifar_batches_dir, tmp_path, monkeypatch):
  # The run's very last step: its loss is finite, only the update it makes is not.
  config = short_config(cifar_batches_dir)
  monkeypatch.setattr(steps, 'train_step', params_non_finite_at(2 * SHORT_STEPS_AN_EPOCH - 1))
  with pytest.raises(errors.UserError, match='non-finite training loss at epoch 2'):
    train.train_and_evaluate(config, str(tmp_path))
  _, meta, step = restore_params(tmp_path, config)
  assert (step, meta.epoch) == (SHORT_STEPS_AN_EPOCH, 1)
  assert not (tmp_path / 'results.json').exists()


def test_a_finished_run_returns_its_results_without_retraining(short_run, cifar_batches_dir,
                                                                monkeypatch):
  _, workdir, _, _ = short_run
  written = json.loads((workdir / 'results.json').read_text())
  monkeypatch.setattr(evaluator, 'dispatch',
                      lambda *args, **kwargs: pytest.fail('evaluated again'))
  assert train.train_and_evaluate(short_config(cifar_batches_dir), str(workdir)) == written


def test_a_finished_run_rewrites_a_torn_results_json_from_its_checkpoint(
    short_run, cifar_batches_dir, tmp_path, monkeypatch):
  results, workdir, (_, meta, _), _ = short_run
  shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
  (tmp_path / 'results.json').write_text((workdir / 'results.json').read_text()[:200])
  (tmp_path / 'report.md').unlink()
  monkeypatch.setattr(feed, 'jit_train_steps', lambda *args, **kwargs: pytest.fail('trained'))
  # Was a JSONDecodeError traceback.
  rebuilt = train.train_and_evaluate(short_config(cifar_batches_dir), str(tmp_path))
  for key in ('final_test_accuracy', 'best_test_accuracy', 'final_val_accuracy',
              'best_val_accuracy', 'best_epoch', 'steps', 'parameters', 'reference_reached'):
    assert rebuilt[key] == results[key], key
  # The run's time is its checkpoint's; the speed figures of the processes that trained it are
  # in no checkpoint, and this one's would be false.
  assert rebuilt['elapsed_seconds'] == meta.elapsed_seconds
  assert rebuilt['images_per_second'] is None and rebuilt['compile_seconds'] is None
  written = report.read_results(tmp_path)
  assert written['final_test_accuracy'] == results['final_test_accuracy']
  assert (tmp_path / 'report.md').is_file()


class Killed(BaseException):
  """A crash mid-run, as SIGKILL or a lost machine: no stop, no checkpoint of where it was."""


def _raise_killed():
  raise Killed


def test_a_rerun_after_a_crash_records_each_step_once(short_run, cifar_batches_dir, tmp_path,
                                                      monkeypatch):
  _, workdir, _, _ = short_run
  config = short_config(cifar_batches_dir)
  # Killed at step 15 of 22; the last checkpoint is the first epoch's end (step 11).
  monkeypatch.setattr(writers, 'create_writer', writer_calling(15, _raise_killed))
  with pytest.raises(Killed):
    train.train_and_evaluate(config, str(tmp_path))
  monkeypatch.undo()
  train.train_and_evaluate(config, str(tmp_path))
  records = lambda run: [(r['step'], 'epoch' in r)
                         for r in writers.read_jsonl(run / 'metrics.jsonl')]
  assert records(tmp_path) == records(workdir)  # Was steps 13 and 15 twice.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top,line-too-long

  def events(run):
    acc = event_accumulator.EventAccumulator(str(run / 'tensorboard'), purge_orphaned_data=False,
                                             size_guidance={'scalars': 0})
    acc.Reload()
    # images/s is left out of a process's first call (compile time), so the resumed run has none
    # at its first step; every other scalar is recorded at the same steps, once.
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']
            if tag != 'images_per_second'}

  assert events(tmp_path) == events(workdir)


# orbax's abandoned reads of the mismatched arrays are reported when collected; harmless.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_incompatible_checkpoint_is_a_user_error(short_run, cifar_batches_dir, tmp_path):
  _, workdir, _, _ = short_run
  shutil.copytree(workdir / 'checkpoints', tmp_path / 'checkpoints')
  config = short_config(cifar_batches_dir, **{'model.channels': (8, 32)})
  with pytest.raises(errors.UserError, match=r'was trained with config.model.channels = \(8, 16\), '
                     r'the config gives \(8, 32\)'):
    train.train_and_evaluate(config, str(tmp_path))


def test_damaged_checkpoint_is_a_user_error(short_run, cifar_batches_dir, tmp_path):
  _, workdir, _, _ = short_run
  shutil.copytree(workdir / 'checkpoints', tmp_path / 'checkpoints')
  for path in (tmp_path / 'checkpoints' / 'latest').rglob('*'):
    if path.is_file() and 'state' in path.parts:
      path.write_bytes(b'\xcf not a checkpoint')
  with pytest.raises(errors.UserError, match='cannot be restored.*damaged') as raised:
    train.train_and_evaluate(short_config(cifar_batches_dir), str(tmp_path))
  assert '\n' not in str(raised.value)

def test_the_next_epoch_is_dispatched_before_its_predecessor_is_read_or_saved(tmp_path,
                                                                              monkeypatch):
  # The device must not wait for the host at an epoch's end: the next epoch's first call is
  # queued before the validation is read and before a checkpoint's blocking part (the copy to
  # the host) runs; the best model is saved with the latest, never alone.
  events = []
  compiler_call, read = precompile.Compiler.__call__, evaluator.read
  save = checkpoints.save_checkpoint

  def dispatched(self, name, *args):
    events.append(f'dispatch {name}')
    return compiler_call(self, name, *args)

  def read_scores(scoring, **kwargs):
    events.append('read validation')
    return read(scoring, **kwargs)

  def saved(manager, state, meta):
    events.append(f'save {manager.directory.name} epoch {meta.epoch}')
    return save(manager, state, meta)

  monkeypatch.setattr(precompile.Compiler, '__call__', dispatched)
  monkeypatch.setattr(evaluator, 'read', read_scores)
  monkeypatch.setattr(checkpoints, 'save_checkpoint', saved)
  config = synthetic_config(num_epochs=3, steps_per_call=2)  # 4 steps: 2 calls an epoch
  train.train_and_evaluate(config, str(tmp_path))
  trains = [i for i, event in enumerate(events) if event == 'dispatch train']
  reads = [i for i, event in enumerate(events) if event == 'read validation']
  assert len(trains) == 6 and len(reads) == 3
  for epoch in (1, 2):
    next_call = trains[2 * epoch]
    assert next_call < reads[epoch - 1] < events.index(f'save latest epoch {epoch}')
  # The last epoch has no next call: it is read and saved at the end.
  assert reads[2] > trains[-1]
  saves = [event for event in events if event.startswith('save')]
  assert saves[:2] == ['save best epoch 1', 'save latest epoch 1']


def test_the_latest_checkpoint_waits_for_checkpoint_min_seconds(tmp_path, monkeypatch):
  saves = []
  save = checkpoints.save_checkpoint
  monkeypatch.setattr(checkpoints, 'save_checkpoint', lambda manager, state, meta: (
      saves.append((manager.directory.name, meta.epoch)), save(manager, state, meta)))
  config = synthetic_config(num_epochs=3, checkpoint_min_seconds=3600.0)
  train.train_and_evaluate(config, str(tmp_path))
  # Every epoch is due by checkpoint_every_epochs=1, but only the last is saved within the hour;
  # the best model (improved at some epoch) goes out with it.
  assert [s for s in saves if s[0] == 'latest'] == [('latest', 3)]
  assert len([s for s in saves if s[0] == 'best']) == 1
