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
  ours = os.path.join(console_logs.PACKAGE_DIR, 'evaluate.py')
  line = console_logs.ShortFormatter().format(record(logging.WARNING, ours))
  assert TIMESTAMPED.match(line) and line.endswith(' warning: a line')
  assert console_logs.ShortFormatter().format(record(logging.INFO, ours))[8:] == ' a line'
  # A table: stamped once, its further lines under its first.
  table = console_logs.stamped('| a | b |\n|---|---|\n| 1 | 2 |').splitlines()
  assert TIMESTAMPED.match(table[0]) and table[0][9:] == '| a | b |'
  assert table[1:] == [' ' * 9 + '|---|---|', ' ' * 9 + '| 1 | 2 |']


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


def test_each_process_of_a_run_writes_its_own_log(tmp_path):
  workdir = tmp_path / 'run'
  result = run_python(f'''
      import logging, os
      from resnet_jax import console_logs
      console_logs.setup('main', {str(workdir)!r})
      logging.getLogger('jax').warning('before the processes joined')
      console_logs.name_log_for_process(2)
      logging.getLogger('orbax').warning('a record of process 2')
      os.write(2, b'native output of process 2\\n')
      print(console_logs.log_path())
      ''', tmp_path)
  assert result.returncode == 0, result.stderr
  own = workdir / 'main.process2.log'
  assert result.stdout.strip() == str(own)
  assert 'a record of process 2' in own.read_text()
  assert 'native output of process 2' in own.read_text()
  assert 'process 2' not in (workdir / 'main.log').read_text()


def test_a_closed_console_never_fails_a_write_and_what_it_is_given_goes_to_the_log(tmp_path):
  # `main ... 2>&1 | tee log`, then Ctrl-C: the shell's SIGINT ends tee, and the console is a pipe
  # whose reader is gone. Before: the next write raised BrokenPipeError.
  workdir = tmp_path / 'run'
  result = run_python(f'''
      import os, sys
      from absl import logging
      from resnet_jax import console_logs
      read, write = os.pipe()
      os.close(read)
      os.dup2(write, 1)
      os.dup2(write, 2)
      console_logs.setup('main', {str(workdir)!r})
      logging.set_verbosity(logging.INFO)
      logging.info('a line of ours')
      print('a printed line', flush=True)
      console_logs.say_at_once('a line from a signal handler')
      print('printed after', flush=True)
      open({str(tmp_path / 'done')!r}, 'w').close()
      ''', tmp_path)
  assert result.returncode == 0, result.stderr
  assert (tmp_path / 'done').exists()
  log = (workdir / 'main.log').read_text()
  assert 'a line of ours' in log and 'a printed line' in log and 'printed after' in log
  assert 'Error' not in log and 'lost sys' not in log, log


def test_library_warnings_leave_a_failed_first_commands_workdir_to_be_removed(tmp_path):
  # TFDS warns of a folder without dataset_info.json whenever the `auto` source probes it.
  workdir = tmp_path / 'new'
  result = run_python(f'''
      import logging
      from resnet_jax import console_logs
      console_logs.setup('main', {str(workdir)!r})
      logging.getLogger('tensorflow_datasets').warning('has no dataset_info.json')
      def fail(): raise console_logs.UserError('config.batch_size=0 is invalid')
      console_logs.exit_on_user_error(fail)
      ''', tmp_path)
  assert result.returncode == 2
  assert result.stderr == 'error: config.batch_size=0 is invalid\n'
  assert not workdir.exists()


def test_a_phase_speaks_after_a_silence_only_naming_the_innermost_and_a_quiet_one_its_own(
    tmp_path):
  result = run_python(f'''
      import time
      from absl import logging
      from resnet_jax import cli, console_logs
      logging.use_absl_handler()  # as absl.app does
      logging.set_verbosity(logging.INFO)
      console_logs.setup('main', {str(tmp_path)!r})
      with console_logs.phase('outer', every_seconds=0.5):
        with console_logs.phase('compiling', every_seconds=0.5):
          for _ in range(15):  # a line every 0.1 s: never silent, nothing to say
            cli.say_outputs('busy')
            time.sleep(0.1)
          time.sleep(1.4)  # silent: said at 2 s and 2.5 s, perhaps 3
      with console_logs.phase('end to end', every_seconds=0.5, quiet=True):
        cli.say_outputs('a training line')  # to the log file only
        time.sleep(0.8)
      ''', tmp_path)
  assert result.returncode == 0, result.stderr
  said = [line.split(' ', 1)[1] for line in result.stderr.splitlines()
          if TIMESTAMPED.match(line) and 'busy' not in line]
  assert said[:2] == ['compiling: 2 s so far', 'compiling: 2 s so far'], result.stderr
  assert set(said[2:-1]) <= {'compiling: 3 s so far'}
  assert re.fullmatch(r'end to end: [01] s so far', said[-1]), result.stderr
  assert 'a training line' in (tmp_path / 'main.log').read_text()


def test_a_slow_start_says_so_and_the_error_is_still_the_last_line(tmp_path):
  config = tmp_path / 'slow_config.py'
  config.write_text(textwrap.dedent('''
      import time
      from resnet_jax import console_logs
      console_logs.SILENCE_SECONDS = 0.5  # instead of a 10 s import of jax on a loaded machine
      time.sleep(2.5)
      def get_config():
        return {'seed': 0}
      '''))
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.main', f'--config={config}',
                           f'--workdir={tmp_path / "run"}'], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  lines = result.stderr.splitlines()
  assert result.returncode == 2, result.stderr
  assert lines[-1].startswith(f'error: --config={config}: get_config() returned dict')
  said = {re.sub(r'\d+ s', 'n s', line[9:]) for line in lines[:-1]}
  assert said == {f'{console_logs.STARTING}: n s so far'} and TIMESTAMPED.match(lines[0])
