"""console_logs: libraries' INFO lines stay off the console unless --verbose; ours stay on it."""

import collections
import logging
import os
import pathlib
import subprocess
import sys

from absl import logging as absl_logging

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


def record(level: int, pathname: str) -> logging.LogRecord:
  return logging.LogRecord('absl', level, pathname, 1, 'a line', None, None)


def test_only_resnet_jax_info_lines_and_everyones_warnings_are_kept():
  ours = os.path.join(console_logs.PACKAGE_DIR, 'train.py')
  orbax = '/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert console_logs.keep_record(record(logging.INFO, ours))
  assert not console_logs.keep_record(record(logging.INFO, orbax))
  assert console_logs.keep_record(record(logging.WARNING, orbax))


def test_verbose_removes_the_filter_and_quiet_adds_it_once():
  handler = absl_logging.get_absl_handler()
  try:
    console_logs.quiet_library_logs()
    console_logs.quiet_library_logs()
    assert handler.filters.count(console_logs.keep_record) == 1
    console_logs.quiet_library_logs(verbose=True)
    assert console_logs.keep_record not in handler.filters
  finally:
    handler.removeFilter(console_logs.keep_record)


def test_a_smoke_runs_console_has_no_library_info_and_each_progress_line_once(tmp_path):
  # JAX_PLATFORMS unset: jax then tries every backend, and says so at INFO on a machine without one.
  env = {key: value for key, value in os.environ.items() if key != 'JAX_PLATFORMS'}
  result = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.main', f'--workdir={tmp_path}', *SMOKE_RUN], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  console = result.stdout + result.stderr
  assert result.returncode == 0, console[-3000:]
  assert 'Unable to initialize backend' not in console
  assert not [line for line in console.splitlines() if 'orbax' in line and line.startswith('I')]
  assert 'logging_writer.py' not in console  # clu's copy of every progress line
  progress = [line.split('] ', 1)[-1] for line in console.splitlines() if 'step ' in line]
  assert len(progress) == 2  # 64 images at batch 32, a line every step
  assert all(count == 1 for count in collections.Counter(progress).values())
