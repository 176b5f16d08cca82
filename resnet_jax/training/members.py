"""What a population's members may differ in: the seed and the scalar settings of MEMBER_SCALARS.

A population trains K runs of one network in one compiled program, one member per group of devices
(`training.population`). The program is one trace of the single run's step, so the members' configs
must agree on everything that shapes it or the data it reads (`program_key`). A member's values of
MEMBER_SCALARS reach the step as traced scalars (`member_context`); whether each is zero stays
the config's, as a zero weight decay, momentum, label smoothing or mixup alpha removes a transform
or a branch from the program: members may differ in such a value only where it is zero in none of
them or in all.

A member's step is bitwise the single run's of its values: each value meets the program only in
steps XLA compiles alike for a number and a traced scalar (sums, products, selects, a root,
1 / value), never in a division by a constant, a logarithm or a division by a root, which XLA
rewrites or folds for one of the two and not the other.
"""

import dataclasses
import json
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from resnet_jax import defaults
from resnet_jax.models import optim
from resnet_jax.training import run_config
from resnet_jax.training import steps

# The dotted config keys whose values may differ between the members of one program.
MEMBER_SCALARS = optim.VALUE_KEYS + ('label_smoothing', 'augment.mixup_alpha')
# Keys a resumed run may change that still shape the compiled program or the data it reads: the
# steps a call fuses, the data's place, feed and copy, and the evaluation's batches.
_PROGRAM_KEYS = ('steps_per_call', 'data.placement', 'data.host_backend', 'data.data_dir',
                 'eval_batch_size')
# Keys that change neither the program nor the data: how a run is watched, logged, checkpointed
# and labelled (with the `reference` section). Members may differ in them.
HOST_KEYS = tuple(key for key in run_config.RESUMABLE_KEYS if key not in _PROGRAM_KEYS)


def member_values(config: ml_collections.ConfigDict) -> dict[str, float]:
  """{key of MEMBER_SCALARS: its value in config}."""
  flat = defaults.flat_json(config)
  return {key: float(flat[key]) for key in MEMBER_SCALARS}


def _shared(flat: dict[str, Any]) -> dict[str, Any]:
  """What the members of one program share, of a `defaults.flat_json` dict: every key but the
  seed, the population's and HOST_KEYS (and the `reference` section), MEMBER_SCALARS only as
  whether they are nonzero."""
  return {key: bool(value) if key in MEMBER_SCALARS else value for key, value in flat.items()
          if key != 'seed' and not key.startswith('population.')
          and not run_config.is_free(key, HOST_KEYS)}


def program_key(config: ml_collections.ConfigDict) -> str:
  """A string equal for two configs iff their runs can be members of one program.

  It holds every key of the config but the seed, `population.*`, HOST_KEYS and the `reference`
  section; of MEMBER_SCALARS only whether each is nonzero. Keys that shape the program or its
  data count even where a resumed run may change them (steps_per_call, data.placement,
  data.host_backend, data.data_dir, eval_batch_size), as do those of the evaluation
  (eval_flip_tta): the members' evaluation is compiled together too.
  """
  return json.dumps(_shared(defaults.flat_json(config)), sort_keys=True)


def why_apart(configs: Sequence[ml_collections.ConfigDict]) -> Optional[str]:
  """None where every config's run can be a member of one program, else one sentence naming the
  first key (in sorted order) in which a config differs from the first."""
  flats = [defaults.flat_json(config) for config in configs]
  if not flats:
    return None
  first = _shared(flats[0])
  for number, flat in enumerate(flats[1:], start=2):
    shared = _shared(flat)
    for key in sorted(first.keys() | shared.keys()):
      if first.get(key) == shared.get(key):
        continue
      differs = run_config.describe_changes({key: (flats[0].get(key), flat.get(key))},
                                            'in the first member', f'in member {number}')
      if key in MEMBER_SCALARS:
        return (f'{differs}: members of one population may differ in it only where it is zero '
                'in none of them or in all (a zero removes its step from the compiled program)')
      return (f'{differs}: members of one population may differ only in the seed and '
              f'{", ".join(MEMBER_SCALARS)}')
  return None


def member_context(ctx: steps.StepContext, values: Mapping[str, jax.Array],
                   steps_per_epoch: int) -> steps.StepContext:
  """ctx with its optimizer, label smoothing and mixup alpha reading `values` for the config's.

  Args:
    ctx: the single run's context (its config decides which transforms and branches exist).
    values: {key of MEMBER_SCALARS: value}, e.g. the member's traced scalars inside the body of
      a population's program (shape () or (1,), a shard_map body's slice of a per-member array);
      a missing key reads the config's. A value must be zero where the config's is and only
      there (`program_key`).
    steps_per_epoch: optimizer steps an epoch, as ctx's optimizer was made with.

  Returns:
    A StepContext for `steps.train_step` and its scans. With the config's own values it gives
    bitwise the same steps as ctx.

  Raises:
    ValueError: a key not in MEMBER_SCALARS.
    errors.UserError: the config's schedule is reduce-on-plateau (stepped on the host).
  """
  unknown = sorted(set(values) - set(MEMBER_SCALARS))
  if unknown:
    raise ValueError(f'{unknown}: no member scalar; use keys of {MEMBER_SCALARS}')
  # Scalars, so that no value broadcasts a shape into the state.
  values = {key: jnp.reshape(value, ()) for key, value in values.items()}
  optimizer = optim.create_optimizer(
      ctx.config, steps_per_epoch,
      {key: value for key, value in values.items() if key in optim.VALUE_KEYS})
  return dataclasses.replace(ctx, tx=optimizer.tx, learning_rate=optimizer.learning_rate,
                             values={**ctx.values, **values})
