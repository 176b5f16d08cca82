"""console_logs: the console holds resnet-jax's own short lines; the libraries' go to the log file."""

import logging
import os
import pathlib
import re
import subprocess
import sys
import textwrap

from resnet_jax import console_logs

REPO = pathlib.Path(__file__).resolve().parent.parent
# configs/smoke.py cut to what compiles fastest (about 25 s of CPU): 2 steps, a line each.
SMOKE_RUN = [f'--config={REPO / "configs" / "smoke.py"}', '--config.data.source=synthetic',
             '--config.data.train_subset=64', '--config.data.test_subset=32',
             '--config.batch_size=32', '--config.eval_batch_size=32', '--config.num_epochs=1',
             '--config.log_every_steps=1', "--config.model.num_blocks=(1,)",
             "--config.model.channels=(4,)", "--config.model.kernel_sizes=(3,)",
             "--config.model.shortcut_kernel_sizes=(1,)", '--config.model.stem_channels=4',
             '--config.augment.crop_padding=0', '--config.augment.hflip=0',
             '--config.optim.lookahead_k=0', '--config.optim.clip_mode=none',
             '--config.write_plots=False']
# What an earlier version's console showed, none of which a console may show now.
NOISE = ('absl::InitializeLog', 'oneDNN', 'dataset_info.json', 'Unable to initialize backend',
         'orbax', 'logging_writer.py', 'Exception ignored')
GLOG_PREFIX = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ ')
TIMESTAMPED = re.compile(r'^\d\d:\d\d:\d\d ')


def record(level: int, pathname: str, name: str = 'absl') -> logging.LogRecord:
  return logging.LogRecord(name, level, pathname, 1, 'a line', None, None)


def test_the_console_keeps_resnet_jax_records_only():
  ours = os.path.join(console_logs.PACKAGE_DIR, 'training', 'train.py')
  orbax = '/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert console_logs.keep_record(record(logging.INFO, ours))
  assert not console_logs.keep_record(record(logging.INFO, orbax))
  assert not console_logs.keep_record(record(logging.WARNING, orbax))
  assert not console_logs.keep_record(record(logging.ERROR, ours, name='resnet_jax.library'))


def test_lines_are_short_and_timestamped():
  line = console_logs.ShortFormatter().format(record(logging.WARNING, 'x.py'))
  assert TIMESTAMPED.match(line) and line.endswith(' warning: a line')
  assert console_logs.ShortFormatter().format(record(logging.INFO, 'x.py'))[8:] == ' a line'


def test_a_smoke_runs_console_is_short_and_quiet_and_the_rest_is_in_its_log(tmp_path):
  # JAX_PLATFORMS unset: jax then tries every backend, and says so at INFO on a machine without one.
  env = {key: value for key, value in os.environ.items() if key != 'JAX_PLATFORMS'}
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.main', f'--workdir={tmp_path}', *SMOKE_RUN], cwd=REPO,
      env=env, capture_output=True, text=True, timeout=300)
  console = result.stdout + result.stderr
  assert result.returncode == 0, console[-3000:]
  lines = console.splitlines()
  assert len(lines) <= 25, console
  assert not [line for line in lines if any(noise in line for noise in NOISE)], console
  assert not [line for line in lines if GLOG_PREFIX.match(line)], console
  logged = [line for line in result.stderr.splitlines() if TIMESTAMPED.match(line)]
  assert logged and logged[0].split(' ', 1)[1].startswith(f'outputs: {tmp_path}')
  assert len([line for line in lines if 'step ' in line and 'ETA' in line]) == 2
  log = (tmp_path / 'main.log').read_text()
  assert 'Unable to initialize backend' in log  # jax's line, kept where it belongs


def run_python(code: str, tmp_path) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=REPO, env=os.environ,
                        capture_output=True, text=True, timeout=120)


def test_a_user_errors_line_is_the_last_printed_and_names_the_log_of_library_errors(tmp_path):
  workdir = tmp_path / 'run'
  result = run_python(f'''
      import asyncio, atexit, logging, os, sys
      from resnet_jax import console_logs
      console_logs.setup('main', {str(workdir)!r})
      logging.getLogger('orbax').error('a library error record')
      async def read(): raise ValueError('torn')
      read()  # never awaited: Python reports it as "Exception ignored" or a RuntimeWarning
      atexit.register(lambda: print('printed at exit', file=sys.stderr))
      os.write(2, b'native noise\\n')
      def fail(): raise console_logs.UserError('the checkpoint is damaged')
      console_logs.exit_on_user_error(fail)
      ''', tmp_path)
  assert result.returncode == 2
  assert result.stdout == ''
  log = workdir / 'main.log'
  assert result.stderr.splitlines() == [
      f'error: the checkpoint is damaged (library messages in {log})']
  text = log.read_text()
  assert 'a library error record' in text and 'native noise' in text
  assert 'printed at exit' in text


def test_a_failed_first_command_leaves_no_workdir(tmp_path):
  workdir = tmp_path / 'new'
  result = run_python(f'''
      import os
      from resnet_jax import console_logs
      console_logs.setup('main', {str(workdir)!r})
      open(os.path.join({str(workdir)!r}, '.lock'), 'w').close()
      def fail(): raise console_logs.UserError('no data')
      console_logs.exit_on_user_error(fail)
      ''', tmp_path)
  assert result.returncode == 2 and result.stderr == 'error: no data\n'
  assert not workdir.exists()


def test_a_phase_says_how_long_it_has_run():
  lines = []
  handler = logging.Handler()
  handler.emit = lambda r: lines.append(r.getMessage())
  logger = logging.getLogger('absl')
  level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  try:
    with console_logs.phase('compiling', every_seconds=0.05):
      import time  # pylint: disable=g-import-not-at-top
      time.sleep(0.3)
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  assert len([line for line in lines if re.fullmatch(r'compiling: \d+ s so far', line)]) >= 2
