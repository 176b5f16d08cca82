"""The command line: every user mistake ends with one clear line on stderr and a non-zero status;
a finished run ends with its accuracy and its time to the reference's."""

import concurrent.futures
import logging
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from resnet_jax import defaults
from resnet_jax import main
from resnet_jax.training import distributed
from resnet_jax.training import train

REPO = pathlib.Path(__file__).resolve().parent.parent
SMOKE = f"--config={REPO / 'configs' / 'smoke.py'}"
SYNTHETIC = '--config.data.source=synthetic'
# Broken config files the fixture writes into {configs}.
CONFIG_FILES = {
    'syntax.py': 'def get_config(:\n',
}

# (name, arguments besides --workdir, what the last line of stderr must contain)
MISTAKES = [
    ('over_budget', [SMOKE, SYNTHETIC, '--config.model.param_budget=1000'],
     'over config.model.param_budget=1000'),
    ('unknown_key', [SMOKE, SYNTHETIC, '--config.model.num_layerz=3'], 'config.model.num_layerz'),
    ('lengths_disagree', [SMOKE, SYNTHETIC, "--config.model.channels=(8,16,32)"],
     'config.model.channels has 3 entries but config.model.num_blocks has 2'),
    ('unknown_optimizer', [SMOKE, SYNTHETIC, '--config.optim.optimizer=rmsprop'],
     'config.optim.optimizer'),
    ('missing_dataset', [SMOKE, '--config.data.source=cifar_batches',
                         '--config.data.data_dir=/nonexistent/cifar'], '/nonexistent/cifar'),
    ('missing_config_file', ['--config=configs/no_such_config.py'],
     "--config cannot be loaded: [Errno 2] No such file or directory: "
     "'configs/no_such_config.py'"),
    ('no_config', [SYNTHETIC], 'needs --config'),
    ('no_config_at_all', [], '--config is required, e.g. --config=configs/best.py'),
    ('syntax_error', ['--config={configs}/syntax.py'],
     '--config={configs}/syntax.py has a syntax error: invalid syntax ({configs}/syntax.py, '
     'line 1)'),
    ('sweep_config', ['--config=configs/sweeps/tiny.py'],
     'is a sweep config; run it with python -m resnet_jax.sweep'),
    ('unwritable_workdir', [SMOKE, SYNTHETIC, '--workdir={configs}/syntax.py/run'],
     'syntax.py is a file, not a folder'),
    # The `auto` source (TFDS probed where TensorFlow is installed) and a workdir to make.
    ('batch_size_zero', [SMOKE, '--config.batch_size=0', '--workdir={configs}/first_run'],
     'config.batch_size=0 is invalid: must be >= 1'),
]


def run_main(workdir, arguments):
  return subprocess.run(
      [sys.executable, '-m', 'resnet_jax.main', f'--workdir={workdir}', *arguments],
      capture_output=True, text=True, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      timeout=300)


@pytest.fixture(scope='module')
def configs(tmp_path_factory):
  """A folder of CONFIG_FILES."""
  folder = tmp_path_factory.mktemp('configs')
  for name, text in CONFIG_FILES.items():
    (folder / name).write_text(text)
  return folder


@pytest.fixture(scope='module')
def outcomes(tmp_path_factory, configs):
  """Every mistake's process, run side by side."""
  with concurrent.futures.ThreadPoolExecutor(len(MISTAKES)) as pool:
    futures = {name: pool.submit(run_main, tmp_path_factory.mktemp(name),
                                 [a.format(configs=configs) for a in arguments])
               for name, arguments, _ in MISTAKES}
    return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize('name,expected', [(name, expected) for name, _, expected in MISTAKES])
def test_mistake_is_one_clear_line(outcomes, configs, name, expected):
  expected = expected.format(configs=configs)
  outcome = outcomes[name]
  assert outcome.returncode == 2, outcome.stderr[-2000:]
  assert 'Traceback' not in outcome.stderr
  last_line = outcome.stderr.strip().splitlines()[-1]
  assert last_line.startswith('error: '), last_line
  assert expected in last_line, last_line
  assert '\\' not in last_line, last_line  # Readable: no escaped quotes.


def test_a_failed_first_run_leaves_no_workdir(outcomes, configs):
  assert outcomes['batch_size_zero'].returncode == 2
  assert 'library messages' not in outcomes['batch_size_zero'].stderr
  assert not (configs / 'first_run').exists()


def test_ctrl_c_during_compilation_saves_and_exits_130(cifar_batches_dir, tmp_path):
  # Before: a traceback, or "Fatal Python error: Segmentation fault" during compilation.
  process = subprocess.Popen(
      [sys.executable, '-m', 'resnet_jax.main', f'--workdir={tmp_path}', SMOKE,
       '--config.data.source=cifar_batches', f'--config.data.data_dir={cifar_batches_dir}',
       '--config.num_epochs=20'],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  seen = []
  for line in process.stderr:
    seen.append(line)
    if 'compiling the train call' in line:
      process.send_signal(signal.SIGINT)
      break
  _, err = process.communicate(timeout=300)
  err = ''.join(seen) + err
  assert process.returncode == 130, err[-2000:]
  assert 'Traceback' not in err and 'Fatal Python error' not in err
  assert 'Ctrl-C: stopping; the compiled call in flight' in err
  assert 'Ctrl-C: saved a checkpoint at epoch 1' in err
  assert any((tmp_path / 'checkpoints' / 'latest').iterdir())


def test_ctrl_c_with_the_console_piped_to_tee_still_saves_and_exits_130(tmp_path):
  # `main ... 2>&1 | tee log`: the shell's SIGINT ends tee too. Before: the next console write
  # raised BrokenPipeError and the run died without its stop checkpoint.
  process = subprocess.Popen(
      [sys.executable, '-m', 'resnet_jax.main', f'--workdir={tmp_path}', SMOKE, SYNTHETIC,
       '--config.num_epochs=20'],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  for line in process.stdout:
    if b'compiling the train call' in line:
      break
  process.stdout.close()  # tee ended
  process.send_signal(signal.SIGINT)
  assert process.wait(timeout=300) == 130
  log = (tmp_path / 'main.log').read_text()
  assert 'Ctrl-C: saved a checkpoint at epoch 1' in log, log[-3000:]
  assert 'Traceback' not in log and 'lost sys' not in log
  assert any((tmp_path / 'checkpoints' / 'latest').iterdir())


@pytest.mark.parametrize('reached,expected', [
    ({'epoch': 30, 'elapsed_seconds': 41.0},
     "time to accuracy: Reached the PyTorch reference's 92.38% at epoch 30 of 32 after 41 s "
     '(compile and evaluation included; the reference: ~15 min).'),
    (None, "time to accuracy: Did not reach the PyTorch reference's 92.38%: best 92.10% at epoch "
           '31 of 32 vs 92.38%.'),
])
def test_the_last_lines_give_accuracy_then_time_to_accuracy(monkeypatch, caplog, tmp_path,
                                                              reached, expected):
  results = {'final_test_accuracy': 0.9205, 'epochs': 32, 'best_val_accuracy': 0.921,
             'best_epoch': 31, 'reference': defaults.seed000_reference().to_dict(),
             'reference_reached': reached}
  monkeypatch.setattr(train, 'train_and_evaluate', lambda config, workdir, **_: results)
  monkeypatch.setattr(distributed, 'initialize_from_env', lambda: None)
  caplog.set_level(logging.INFO)
  main.run(defaults.base_config(), str(tmp_path))
  assert [r.getMessage() for r in caplog.records][-2:] == [
      f'final test accuracy 92.05%; report in {tmp_path}/report.md', expected]
