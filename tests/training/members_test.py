"""Members: which configs share a program, and a member's step reading traced values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import smoke
from resnet_jax.training import feed
from resnet_jax.training import members
from resnet_jax.training import runs
from resnet_jax.training import steps


def _config(**overrides):
  """configs/smoke.py on synthetic data, with label smoothing and mixup on."""
  config = smoke.get_config()
  config.data.source = 'synthetic'
  config.label_smoothing = 0.1
  config.augment.mixup_alpha = 0.4
  for key, value in overrides.items():
    *sections, name = key.split('.')
    section = config
    for part in sections:
      section = section[part]
    section[name] = value
  return config


def test_member_values_are_the_configs():
  values = members.member_values(_config(**{'optim.weight_decay': 1e-3}))
  assert set(values) == set(members.MEMBER_SCALARS)
  assert values['optim.learning_rate'] == 0.05 and values['optim.weight_decay'] == 1e-3
  assert values['label_smoothing'] == 0.1 and values['augment.mixup_alpha'] == 0.4
  assert values['optim.momentum'] == 0.9 and values['optim.clip'] == 0.1
  assert values['schedule.max_lr'] == 0.0


@pytest.mark.parametrize('overrides', [
    {'seed': 7}, {'population.seeds': (1, 2)}, {'optim.learning_rate': 0.2},
    {'optim.weight_decay': 1e-3, 'optim.momentum': 0.5, 'optim.clip': 1.0},
    {'label_smoothing': 0.3, 'augment.mixup_alpha': 2.0, 'schedule.max_lr': 0.0},
    {'log_every_steps': 7, 'checkpoint_every_epochs': 3, 'write_plots': False,
     'reference.system': 'other', 'model.param_budget': 10**6}])
def test_members_share_a_program_across_seeds_scalars_and_host_keys(overrides):
  base, other = _config(), _config(**overrides)
  assert members.program_key(base) == members.program_key(other)
  assert members.why_apart([base, other, base]) is None and members.why_apart([]) is None


@pytest.mark.parametrize('key, value', [
    ('batch_size', 128), ('steps_per_call', 2), ('data.placement', 'host'),
    ('eval_batch_size', 128), ('eval_flip_tta', True), ('ema_decay', 0.9),
    ('model.channels', (8, 32)), ('optim.optimizer', 'adam')])
def test_members_of_different_programs_are_told_apart(key, value):
  assert members.program_key(_config()) != members.program_key(_config(**{key: value}))


def test_why_apart_names_the_first_differing_key():
  reason = members.why_apart([_config(), _config(seed=3), _config(batch_size=128, num_epochs=5)])
  assert reason == ('config.batch_size (64 in the first member, 128 in member 3): members of '
                    'one population may differ only in the seed and ' +
                    ', '.join(members.MEMBER_SCALARS))
  assert 'optim.learning_rate' in members.MEMBER_SCALARS


@pytest.mark.parametrize('key', ['optim.weight_decay', 'optim.momentum', 'label_smoothing',
                                 'augment.mixup_alpha'])
def test_a_zero_scalar_is_the_programs_structure(key):
  assert members.program_key(_config()) != members.program_key(_config(**{key: 0.0}))
  reason = members.why_apart([_config(), _config(**{key: 0.0})])
  assert reason.startswith(f'config.{key} (')
  assert 'only where it is zero in none of them or in all' in reason


@pytest.fixture(scope='module')
def base_run():
  """The base config's run, its state after a step, a batch, and its member step jitted once."""
  config = _config()
  run = runs.setup_run(config, '', devices=jax.devices()[:1])
  state = feed.initial_state(run.ctx, config.data.image_size, run.mesh)
  batch = (jnp.asarray(run.splits.train_images[:64]), jnp.asarray(run.splits.train_labels[:64]))

  @jax.jit
  def member_step(state, images, labels, values):
    ctx = members.member_context(run.ctx, values, run.plan.steps)
    return steps.train_step(state, images, labels, ctx), ctx.learning_rate(state.step + 9, None)

  # After a step, so that momentum has a trace to act on.
  (state, _), _ = member_step(state, *batch, _traced(members.member_values(config)))
  return run, state, batch, member_step


def _traced(values):
  """Per-member values as a shard_map body sees its member's slice, shape (1,)."""
  return {key: jnp.full((1,), value, jnp.float32) for key, value in values.items()}


def _assert_bitwise(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize('key, value', [
    (None, None), ('optim.learning_rate', 0.02), ('optim.weight_decay', 3e-3),
    ('optim.momentum', 0.5), ('optim.clip', 0.001), ('label_smoothing', 0.25),
    ('augment.mixup_alpha', 1.5)])
def test_member_step_is_the_step_of_a_config_with_its_values(base_run, key, value):
  run, state, batch, member_step = base_run
  config = run.config if key is None else _config(**{key: value})
  reference = run if key is None else runs.setup_run(config, '', devices=jax.devices()[:1])
  expected = jax.jit(lambda state, images, labels: (
      steps.train_step(state, images, labels, reference.ctx),
      reference.ctx.learning_rate(state.step + 9, None)))(state, *batch)
  got = member_step(state, *batch, _traced(members.member_values(config)))
  _assert_bitwise(got, expected)
  if key is not None:  # The value was read: the base config's step differs.
    base = member_step(state, *batch, _traced(members.member_values(run.config)))
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(base[0][0].params),
                                                         jax.tree.leaves(got[0][0].params)))


def test_member_context_refuses_an_unknown_key(base_run):
  run = base_run[0]
  with pytest.raises(ValueError, match='seed'):
    members.member_context(run.ctx, {'seed': 1}, run.plan.steps)
