"""feed: the epoch plan (steps, the partial batch, calls)."""

import jax
import numpy as np
import pytest

from resnet_jax import defaults
from resnet_jax import errors
from resnet_jax import platforms
from resnet_jax.training import feed


def _platform(name: str, device_count: int = 1, memory_bytes=None) -> platforms.Platform:
  return platforms.Platform(name=name, device_kind=f'a {name}', device_count=device_count,
                            process_count=1, memory_bytes=memory_bytes)


def test_epoch_plan_groups_calls_from_the_epoch_start():
  config = defaults.base_config()
  config.batch_size, config.steps_per_call = 96, 4
  plan = feed.epoch_plan(config, 1000, _platform('gpu', 8))
  assert (plan.steps, plan.partial) == (11, 40)
  assert plan.calls(0) == [(0, 4, 96), (4, 4, 96), (8, 2, 96), (10, 1, 40)]
  assert plan.calls(6) == [(6, 2, 96), (8, 2, 96), (10, 1, 40)]
  config.drop_remainder = True
  assert feed.epoch_plan(config, 1000, _platform('gpu', 8)).calls(0)[-1] == (8, 2, 96)
  config.batch_size = 100
  with pytest.raises(errors.UserError, match='config.batch_size=100 must be a positive multiple'):
    feed.epoch_plan(config, 1000, _platform('gpu', 8))


@pytest.mark.parametrize('batch_size,steps_per_call,shapes', [
    (128, 30, {(30, 128), (1, 80)}),   # 390 full steps: 13 calls of 30, and the partial batch
    (512, 97, {(97, 512), (1, 336)}),  # 97 full steps (a prime): one call (was 32, 32, 32, 1)
    (500, 25, {(25, 500)}),            # 100 full steps, no partial batch: one shape
])
def test_an_accelerator_compiles_one_full_call_shape_an_epoch(batch_size, steps_per_call, shapes):
  config = defaults.base_config()
  config.batch_size = batch_size
  num_full = 50_000 // batch_size
  assert feed.default_steps_per_call(num_full, _platform('gpu')) == steps_per_call
  assert feed.default_steps_per_call(num_full, _platform('cpu')) == 1
  config.steps_per_call = steps_per_call
  plan = feed.epoch_plan(config, 50_000, _platform('gpu'))
  assert {(count, size) for _, count, size in plan.calls(0)} == shapes
  assert sum(count for _, count, _ in plan.calls(0)) == plan.steps


def test_a_long_prime_epoch_falls_back_to_two_shapes():
  assert feed.default_steps_per_call(1009, _platform('tpu')) == feed.AUTO_STEPS_PER_CALL
  assert feed.default_steps_per_call(40, _platform('gpu')) == 20  # near 32 first
  assert feed.default_steps_per_call(2 * 53, _platform('gpu')) == 53  # else a larger divisor


def test_the_resident_set_is_lane_dense_and_counted_as_the_device_holds_it():
  # CIFAR-10 as [N, 32, 32, 3]: a minor dimension of 3 pads to 128 lanes on a TPU (~43x).
  assert feed.device_bytes((50_000, 32, 32, 3), np.uint8) == 50_000 * 32 * 32 * 128
  train, test = np.zeros((50_000, 32, 32, 3), np.uint8), np.zeros((10_000, 32, 32, 3), np.uint8)
  rows = feed.device_bytes((50_016, 3072), np.uint8) + feed.device_bytes((10_016, 3072), np.uint8)
  labels = feed.device_bytes((50_000,), np.int32) + feed.device_bytes((10_000,), np.int32)
  assert feed.resident_bytes(train, test) == rows + labels < 200 << 20
  config = defaults.base_config()
  assert feed.resident_placement(config, train, test, _platform('cpu'))
  # Judged by the device's memory: a quarter of it must hold both sets.
  assert feed.resident_placement(config, train, test, _platform('tpu', memory_bytes=16 << 30))
  assert not feed.resident_placement(config, train, test, _platform('gpu', memory_bytes=4 * rows))
  mesh = feed.create_mesh(jax.devices())
  images, labels = feed.put_train_set(train[:64], np.zeros(64, np.int64), mesh)
  assert images.shape == (64, 3072) and images.dtype == np.uint8 and labels.dtype == np.int32
