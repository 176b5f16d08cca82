"""What a population's members may differ in: their seed only, for now."""

from typing import Optional, Sequence

from resnet_jax import defaults

MEMBER_SCALARS = ()


def member_values(config) -> dict:
  return {key: config[key] for key in MEMBER_SCALARS}


def why_apart(configs: Sequence) -> Optional[str]:
  """None where configs differ in their seed at most, else the first key that differs."""
  first = defaults.flat_json(configs[0])
  for config in configs[1:]:
    for key, value in defaults.flat_json(config).items():
      if key not in ('seed', 'population.seeds') and first.get(key) != value:
        return f'config.{key} differs ({first.get(key)!r} vs {value!r})'
  return None


def member_context(ctx, values, steps_per_epoch):
  del values, steps_per_epoch
  return ctx
