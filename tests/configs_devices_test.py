"""Every shipped config sets up and compiles its calls on 1, 2, 4 and 8 devices (simulated CPUs).

The TPU launcher's default slice (v5litepod-8) and every 8-GPU node have 8 devices. Each device
count runs in its own process; each config there is set up on CIFAR-10's 50,000 training images
(synthetic; 1,000 test images, an evaluation batch) and its train calls and evaluation are lowered
for the mesh, which checks the batch split, the partial batch and every sharding without training.
"""

import subprocess
import sys

import pytest

from conftest import REPO, host_devices_env  # pylint: disable=g-bad-import-order

SHIPPED = ('best', 'fast', 'fast:long', 'resnet18', 'seed001_resnet10', 'seed002_improved',
           'seed003_resnet10_onecycle', 'seed004_resnet24', 'smoke')

_SET_UP_AND_LOWER = '''
import sys, tempfile
sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']
import jax
from conftest import config_file, with_overrides
from resnet_jax.data import input_pipeline
from resnet_jax.training import evaluator, feed, runs
assert jax.device_count() == int(sys.argv[2]), jax.devices()
splits = None
for name in sys.argv[3:]:
  config = with_overrides(config_file(*name.split(':')), {
      'data.source': 'synthetic', 'data.train_subset': 50_000, 'data.test_subset': 1_000,
      'model.param_budget': 20_000_000})
  if splits is None:
    splits = input_pipeline.load_splits(config.data, config.seed, config.model.num_classes)
  run = runs.setup_run(config, tempfile.mkdtemp(), splits=splits)
  state = run.abstract_state()
  train_feed = feed.create_feed(config, run.plan, run.mesh, splits.train_images,
                                splits.train_labels, resident=run.resident)
  for _, count, batch_size in {call[1:]: call for call in run.plan.calls(0)}.values():
    feed.jit_train_steps(run.ctx, run.mesh, resident=run.resident).lower(
        state, *train_feed.batch_specs(count, batch_size))
  scorer = evaluator.Evaluator(run.ctx, run.mesh, config.eval_batch_size)
  test_set = scorer.eval_set(splits.test_images, splits.test_labels)
  scorer.evaluate_fn.lower(jax.eval_shape(state.eval_variables), *test_set.arrays())
  print(name, run.plan.steps, run.plan.calls(0)[0][1], flush=True)
'''


@pytest.mark.parametrize('devices', [1, 2, 4, 8])
def test_every_shipped_config_runs_on(devices):
  result = subprocess.run(
      [sys.executable, '-c', _SET_UP_AND_LOWER, str(REPO), str(devices), *SHIPPED],
      env=host_devices_env(devices), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert [line.split()[0] for line in result.stdout.splitlines()] == list(SHIPPED)
