"""feed: the epoch plan (steps, the partial batch, calls)."""

import pytest

from resnet_jax import defaults
from resnet_jax import errors
from resnet_jax.training import feed


def test_epoch_plan_groups_calls_from_the_epoch_start():
  config = defaults.base_config()
  config.batch_size, config.steps_per_call = 96, 4
  plan = feed.epoch_plan(config, 1000, num_devices=8)
  assert (plan.steps, plan.partial) == (11, 40)
  assert plan.calls(0) == [(0, 4, 96), (4, 4, 96), (8, 2, 96), (10, 1, 40)]
  assert plan.calls(6) == [(6, 2, 96), (8, 2, 96), (10, 1, 40)]
  config.drop_remainder = True
  assert feed.epoch_plan(config, 1000, num_devices=8).calls(0)[-1] == (8, 2, 96)
  config.batch_size = 100
  with pytest.raises(errors.UserError, match='config.batch_size=100 must be a positive multiple'):
    feed.epoch_plan(config, 1000, num_devices=8)
