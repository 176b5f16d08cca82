"""steps: metric sums on the host, and a scanned call (GPU/TPU) against the CPU's unrolled one."""

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.training import feed
from resnet_jax.training import runs
from resnet_jax.training import steps

from conftest import REPO, host_devices_env, short_config  # pylint: disable=g-bad-import-order


def test_metric_sums_add_up_on_the_host():
  summed = steps.Metrics.single_from_model_output(
      loss=jnp.array([2.0, 2.0, 2.0]), logits=jnp.eye(3), labels=jnp.array([0, 1, 0]))
  sums = steps.metric_sums(jax.device_get(summed))
  assert sums == {'loss': [6.0, 3.0], 'accuracy': [2.0, 3.0]}
  both = steps.add_sums(sums, {'loss': [1.0, 1.0]})
  assert both == {'loss': [7.0, 4.0], 'accuracy': [2.0, 3.0]}
  assert steps.mean_of_sums(both) == {'loss': 1.75, 'accuracy': pytest.approx(2 / 3)}
  assert steps.mean_of_sums({'loss': [0.0, 0.0]}) == {}  # Nothing counted: no NaN.


def test_lax_scan_call_trains_like_the_unrolled_one(cifar_batches_dir):
  """The GPU/TPU path (lax.scan over a call's steps) against the CPU's unrolled loop."""
  config = short_config(cifar_batches_dir, **{'model.dtype': 'float32'})
  run = runs.setup_run(config, '')
  train_set = feed.put_train_set(run.splits.train_images, run.splits.train_labels, run.mesh)
  batches = np.stack(run.plan.epoch_batches(epoch=0)[:2]).astype(np.int32)
  indices = feed.put_global(batches, feed.batch_sharded(run.mesh))

  def two_steps(backend):
    # The run's devices decide: a GPU's scan, or the CPU's unroll (float32 either way).
    ctx = dataclasses.replace(run.ctx, platform=dataclasses.replace(run.platform, name=backend))
    state = feed.initial_state(ctx, 32, run.mesh)
    run_steps = feed.jit_train_steps(ctx, run.mesh, resident=True)
    return jax.device_get(run_steps(state, indices, *train_set))

  (scanned, scanned_result), (unrolled, unrolled_result) = two_steps('gpu'), two_steps('cpu')
  assert int(scanned.step) == int(unrolled.step) == 2
  assert int(scanned_result.first_bad_step) == int(unrolled_result.first_bad_step) == -1
  assert float(scanned_result.learning_rate) == float(unrolled_result.learning_rate)
  assert float(scanned_result.learning_rate) == pytest.approx(0.05)
  scanned_sums = steps.metric_sums(scanned_result.metrics)
  unrolled_sums = steps.metric_sums(unrolled_result.metrics)
  assert scanned_sums['accuracy'][1] == unrolled_sums['accuracy'][1] == 2 * 96
  assert abs(scanned_sums['accuracy'][0] - unrolled_sums['accuracy'][0]) <= 2
  assert scanned_sums['loss'] == pytest.approx(unrolled_sums['loss'], rel=1e-4)
  # The two programs sum in different orders, and early training amplifies that: measured, the
  # parameters are 2e-5 of what they moved apart after 1 step, 1.2e-3 after 4 (two steps here,
  # since compiling the unrolled loop costs a copy of the step each). A skipped, repeated or
  # reordered step would put them a large fraction of it apart.
  initial = jax.device_get(feed.initial_state(run.ctx, 32, run.mesh).params)
  norm = lambda tree: float(np.sqrt(sum(np.sum(np.square(leaf, dtype=np.float64))
                                        for leaf in jax.tree.leaves(tree))))
  moved = norm(jax.tree.map(np.subtract, unrolled.params, initial))
  apart = norm(jax.tree.map(np.subtract, scanned.params, unrolled.params))
  assert moved > 0.1 and apart < 2e-2 * moved, (apart, moved)


_COUNT_COLLECTIVES = '''
import sys, tempfile
sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']
from conftest import synthetic_config
from resnet_jax.bench import hlo
from resnet_jax.training import feed, runs
for statistics in ('global', 'per_device'):
  config = synthetic_config(**{'batch_statistics': statistics, 'steps_per_call': 1,
                               'augment.mixup_alpha': 0.2})
  run = runs.setup_run(config, tempfile.mkdtemp())
  train_feed = feed.create_feed(config, run.plan, run.mesh, run.splits.train_images,
                                run.splits.train_labels, resident=True)
  counts = hlo.summarize(feed.jit_train_steps(run.ctx, run.mesh, resident=True).lower(
      run.abstract_state(), *train_feed.batch_specs(1, config.batch_size)).compile().as_text())
  print(statistics, counts['all-reduce'],
        sum(counts[name] for name in hlo.COLLECTIVES if name != 'all-reduce'))
'''


def test_per_device_statistics_leave_one_all_reduce_a_step():
  # Global statistics: an all-reduce for every BatchNorm, one after another, and mixup's
  # permutation gathers across devices. Per device: the gradients' (and metrics') all-reduce only.
  out = subprocess.run([sys.executable, '-c', _COUNT_COLLECTIVES, str(REPO)], cwd=REPO,
                       env=host_devices_env(2), capture_output=True, text=True, timeout=300,
                       check=True).stdout
  counts = {name: (int(reduces), int(others))
            for name, reduces, others in (line.split() for line in out.splitlines())}
  assert counts['per_device'] == (1, 0)
  assert counts['global'][0] >= 5 + 1 and counts['global'][1] > 0  # 5 BatchNorms + gradients
