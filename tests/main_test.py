"""The command line: every user mistake ends with one clear line on stderr and a non-zero status."""

import concurrent.futures
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SMOKE = f"--config={REPO / 'configs' / 'smoke.py'}"
SYNTHETIC = '--config.data.source=synthetic'

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
    ('no_config', [SYNTHETIC], 'Unknown command line flag'),
    ('no_config_at_all', [], '--config is required, e.g. --config=configs/best.py'),
]


def run_main(workdir, arguments):
  return subprocess.run(
      [sys.executable, '-m', 'resnet_jax.main', f'--workdir={workdir}', *arguments],
      capture_output=True, text=True, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      timeout=300)


@pytest.fixture(scope='module')
def outcomes(tmp_path_factory):
  """Every mistake's process, run side by side."""
  with concurrent.futures.ThreadPoolExecutor(len(MISTAKES)) as pool:
    futures = {name: pool.submit(run_main, tmp_path_factory.mktemp(name), arguments)
               for name, arguments, _ in MISTAKES}
    return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize('name,expected', [(name, expected) for name, _, expected in MISTAKES])
def test_mistake_is_one_clear_line(outcomes, name, expected):
  outcome = outcomes[name]
  assert outcome.returncode == 2, outcome.stderr[-2000:]
  assert 'Traceback' not in outcome.stderr
  last_line = outcome.stderr.strip().splitlines()[-1]
  assert last_line.startswith('error: '), last_line
  assert expected in last_line, last_line
