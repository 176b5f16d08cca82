"""Optimizer chains and schedules against torch.optim, step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from resnet_jax import defaults
from resnet_jax import errors
from resnet_jax import models
from resnet_jax import platforms
from resnet_jax.bench import hlo
from resnet_jax.models import optim
from resnet_jax.pytorch import torch_train
from resnet_jax.training import steps

IN_FEATURES, HIDDEN, NUM_CLASSES, BATCH = 6, 8, 4, 8


def _config(num_epochs=12, **sections):
  """The base config with `optim={...}`, `schedule={...}` overrides."""
  config = defaults.base_config()
  config.num_epochs = num_epochs
  for section, values in sections.items():
    config[section].update(values)
  return config


# ---- A tiny MLP trained by both frameworks from the same weights and batches.

def _initial_params():
  rng = np.random.default_rng(0)
  shapes = {'w0': (HIDDEN, IN_FEATURES), 'b0': (HIDDEN,), 'w1': (NUM_CLASSES, HIDDEN),
            'b1': (NUM_CLASSES,)}
  return {name: rng.normal(0, 0.5, shape).astype(np.float32) for name, shape in shapes.items()}


def _batches(steps):
  rng = np.random.default_rng(1)
  return [(rng.normal(0, 2, (BATCH, IN_FEATURES)).astype(np.float32),
           rng.integers(0, NUM_CLASSES, BATCH)) for _ in range(steps)]


def _logits(p, x, tanh):
  return tanh(x @ p['w0'].T + p['b0']) @ p['w1'].T + p['b1']


def _jax_loss(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(_logits(params, x, jnp.tanh), y).mean()


def _train_both(config, steps, steps_per_epoch, make_torch_optimizer, make_scheduler=None,
                before_step=lambda params: None, penalty=lambda params: 0.0):
  """Trains the MLP in both frameworks; asserts every parameter agrees after every step.

  Args:
    config: the run config for create_optimizer.
    steps: steps to train.
    steps_per_epoch: the scheduler is stepped once this many steps.
    make_torch_optimizer: {name: tensor} -> the torch optimizer (or torch_train.Lookahead).
    make_scheduler: torch optimizer -> lr scheduler, stepped once an epoch.
    before_step: called with the torch parameters between backward() and step() (clipping).
    penalty: {name: tensor} -> a term added to the torch loss.

  Returns:
    The largest relative difference seen.
  """
  initial = _initial_params()
  torch_params = {k: torch.tensor(v, requires_grad=True) for k, v in initial.items()}
  torch_optimizer = make_torch_optimizer(torch_params)
  inner = getattr(torch_optimizer, 'optimizer', torch_optimizer)
  scheduler = make_scheduler(inner) if make_scheduler else None

  optimizer = optim.create_optimizer(config, steps_per_epoch)
  params = jax.tree.map(jnp.asarray, initial)
  opt_state = optimizer.tx.init(params)

  @jax.jit
  def train_step(params, opt_state, x, y):
    grads = jax.grad(_jax_loss)(params, x, y)
    updates, opt_state = optimizer.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  worst = 0.0
  for step, (x, y) in enumerate(_batches(steps)):
    torch_optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(
        _logits(torch_params, torch.from_numpy(x), torch.tanh), torch.from_numpy(y))
    (loss + penalty(torch_params)).backward()
    before_step(torch_params)
    torch_optimizer.step()
    if scheduler and (step + 1) % steps_per_epoch == 0:
      scheduler.step()
    params, opt_state = train_step(params, opt_state, x, y)
    for name, expected in torch_params.items():
      expected = expected.detach().numpy()
      diff = np.max(np.abs(np.asarray(params[name]) - expected)) / np.max(np.abs(expected))
      assert diff <= 1e-5, f'step {step + 1}, {name}: relative difference {diff:.2e}'
      worst = max(worst, diff)
  return worst


def test_seed000_recipe_matches_torch_at_every_step():
  """SGD + value clipping 0.1 + Lookahead(5, 0.5) + per-epoch cosine: seed 000's code."""
  steps_per_epoch, num_epochs = 5, 12
  config = _config(num_epochs=num_epochs)  # the defaults are seed 000's recipe
  assert (config.optim.clip_mode, config.optim.lookahead_k, config.schedule.name) == (
      'value', 5, 'cosine')
  clipped = []

  def clip_value(params):
    clipped.append(sum(int((p.grad.abs() > 0.1).sum()) for p in params.values()))
    torch.nn.utils.clip_grad_value_(list(params.values()), 0.1)

  _train_both(
      config, num_epochs * steps_per_epoch, steps_per_epoch,
      lambda p: torch_train.Lookahead(torch.optim.SGD(p.values(), lr=0.1, momentum=0.9,
                                               weight_decay=5e-4), k=5, alpha=0.5),
      lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=num_epochs),
      before_step=clip_value)
  assert sum(c > 0 for c in clipped) > len(clipped) // 2  # clipping was active


def test_lookahead_syncs_after_steps_1_then_every_k():
  """The inner optimizer moves the fast weights by +1 a step; syncs pull them back."""
  k, alpha = 3, 0.5
  tx = optim.lookahead(k, alpha)
  params = {'w': jnp.zeros(2)}
  state = tx.init(params)
  fast, slow, synced_after = 0.0, None, []
  for step in range(1, 12):
    updates, state = tx.update({'w': jnp.ones(2)}, state, params)
    params = optax.apply_updates(params, updates)
    fast += 1.0
    if (step - 1) % k == 0:  # the reference's counter is 0 after steps 1, 1 + k, ...
      slow = fast if slow is None else slow + alpha * (fast - slow)
      fast = slow
      synced_after.append(step)
    assert float(params['w'][0]) == fast, step
  assert synced_after == [1, 1 + k, 1 + 2 * k, 1 + 3 * k]
  assert float(state.slow['w'][0]) == slow


@pytest.mark.parametrize('case', ['adam', 'adamw', 'adam_decoupled', 'adagrad', 'adadelta', 'sgd_nesterov',
                                  'sgd_no_bn_bias', 'sgd_l1', 'sgd_global_norm'])
def test_optimizer_matches_torch_over_20_steps(case):
  sgd = dict(optimizer='sgd', learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
  overrides, make, before_step, penalty = {
      'adam': (dict(optimizer='adam', learning_rate=0.01, weight_decay=1e-2),
               lambda p: torch.optim.Adam(p.values(), lr=0.01, weight_decay=1e-2), None, None),
      'adamw': (dict(optimizer='adamw', learning_rate=0.01, weight_decay=1e-1),
                lambda p: torch.optim.AdamW(p.values(), lr=0.01, weight_decay=1e-1), None, None),
      'adam_decoupled': (dict(optimizer='adam', learning_rate=0.01, weight_decay=1e-1,
                              weight_decay_mode='decoupled'),
                         lambda p: torch.optim.AdamW(p.values(), lr=0.01, weight_decay=1e-1),
                         None, None),
      'adagrad': (dict(optimizer='adagrad', learning_rate=0.1, weight_decay=1e-3),
                  lambda p: torch.optim.Adagrad(p.values(), lr=0.1, weight_decay=1e-3, eps=1e-10),
                  None, None),
      'adadelta': (dict(optimizer='adadelta', learning_rate=1.0, weight_decay=1e-3),
                   lambda p: torch.optim.Adadelta(p.values(), lr=1.0, rho=0.9, eps=1e-6,
                                                  weight_decay=1e-3), None, None),
      'sgd_nesterov': (dict(sgd, nesterov=True),
                       lambda p: torch.optim.SGD(p.values(), lr=0.1, momentum=0.9, nesterov=True,
                                                 weight_decay=5e-4), None, None),
      'sgd_no_bn_bias': (dict(sgd, weight_decay=5e-2, weight_decay_mask='no_bn_bias'),
                         lambda p: torch.optim.SGD(
                             [{'params': [p['w0'], p['w1']], 'weight_decay': 5e-2},
                              {'params': [p['b0'], p['b1']], 'weight_decay': 0.0}],
                             lr=0.1, momentum=0.9), None, None),
      'sgd_l1': (dict(sgd, weight_decay=0.0, l1=1e-2),
                 lambda p: torch.optim.SGD(p.values(), lr=0.1, momentum=0.9), None,
                 lambda p: 1e-2 * sum(t.abs().sum() for t in p.values())),
      'sgd_global_norm': (dict(sgd, clip_mode='global_norm', clip=0.5),
                          lambda p: torch.optim.SGD(p.values(), lr=0.1, momentum=0.9,
                                                    weight_decay=5e-4),
                          lambda p: torch.nn.utils.clip_grad_norm_(list(p.values()), 0.5), None),
  }[case]
  config = _config(optim=dict(overrides, clip_mode=overrides.get('clip_mode', 'none'),
                              lookahead_k=0), schedule=dict(name='constant'))
  _train_both(config, 20, 4, make, before_step=before_step or (lambda p: None),
              penalty=penalty or (lambda p: 0.0))


def test_weight_decay_mask_excludes_one_dimensional_params():
  params = jax.tree.map(jnp.asarray, _initial_params())
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  for mask, decayed in [('all', {'w0', 'b0', 'w1', 'b1'}), ('no_bn_bias', {'w0', 'w1'})]:
    config = _config(optim=dict(momentum=0.0, weight_decay=0.1, l1=0.01, weight_decay_mask=mask,
                                clip_mode='none', lookahead_k=0, learning_rate=1.0),
                     schedule=dict(name='constant'))
    tx = optim.create_optimizer(config, 1).tx
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    for name, p in params.items():
      expected = -(0.1 * p + 0.01 * jnp.sign(p)) if name in decayed else jnp.zeros_like(p)
      np.testing.assert_allclose(updates[name], expected, rtol=1e-6, err_msg=f'{mask} {name}')


@pytest.mark.parametrize('max_norm', [0.5, 100.0])
def test_global_norm_clipping_matches_clip_grad_norm(max_norm):
  rng = np.random.default_rng(5)
  grads = {'a': rng.normal(0, 1, (3, 4)).astype(np.float32),
           'b': rng.normal(0, 1, (5,)).astype(np.float32)}
  tensors = [torch.zeros(g.shape, requires_grad=True) for g in grads.values()]
  for t, g in zip(tensors, grads.values()):
    t.grad = torch.tensor(g)
  torch.nn.utils.clip_grad_norm_(tensors, max_norm)
  config = _config(optim=dict(momentum=0.0, weight_decay=0.0, clip_mode='global_norm',
                              clip=max_norm, lookahead_k=0, learning_rate=1.0),
                   schedule=dict(name='constant'))
  tx = optim.create_optimizer(config, 1).tx
  params = jax.tree.map(jnp.zeros_like, grads)
  updates, _ = tx.update(jax.tree.map(jnp.asarray, grads), tx.init(params), params)
  for (name, _), t in zip(grads.items(), tensors):
    np.testing.assert_allclose(-updates[name], t.grad.numpy(), rtol=1e-6)


# ---- Schedules: the learning rate epoch by epoch (step by step for OneCycle).

BASE_LR, NUM_EPOCHS, STEPS_PER_EPOCH = 0.1, 12, 3
EPOCH = STEPS_PER_EPOCH  # an epoch, in steps (for the per-step torch schedulers)
torch_sched = torch.optim.lr_scheduler

EPOCH_SCHEDULES = {
    'constant': ({}, lambda o: torch_sched.LambdaLR(o, lambda e: 1.0)),
    'cosine': (dict(min_lr=1e-3),
               lambda o: torch_sched.CosineAnnealingLR(o, NUM_EPOCHS, eta_min=1e-3)),
    'cosine_short': (dict(name='cosine', t_max_epochs=5),
                     lambda o: torch_sched.CosineAnnealingLR(o, T_max=5)),
    'warmup_cosine': (dict(warmup_epochs=3, min_lr=1e-3), lambda o: torch_sched.SequentialLR(
        o, [torch_sched.LinearLR(o, optim.WARMUP_START_FACTOR, 1.0, total_iters=3),
            torch_sched.CosineAnnealingLR(o, T_max=NUM_EPOCHS - 3, eta_min=1e-3)],
        milestones=[3])),
    'exponential': (dict(gamma=0.8), lambda o: torch_sched.ExponentialLR(o, 0.8)),
    'step': (dict(step_size=4, gamma=0.5), lambda o: torch_sched.StepLR(o, 4, 0.5)),
    'multistep': (dict(milestones=(3, 7, 7), gamma=0.3),
                  lambda o: torch_sched.MultiStepLR(o, [3, 7, 7], 0.3)),
    'cosine_restarts': (dict(t_0=2, t_mult=2, min_lr=1e-3),
                        lambda o: torch_sched.CosineAnnealingWarmRestarts(o, 2, 2, eta_min=1e-3)),
    'cosine_restarts_mult1': (dict(name='cosine_restarts', t_0=3, t_mult=1),
                              lambda o: torch_sched.CosineAnnealingWarmRestarts(o, 3, 1)),
}

# unit='step': the same curves with lengths in steps, stepped every step.
STEP_SCHEDULES = {
    'cosine': (dict(min_lr=1e-3),
               lambda o: torch_sched.CosineAnnealingLR(o, NUM_EPOCHS * EPOCH, eta_min=1e-3)),
    'warmup_cosine': (dict(warmup_epochs=2), lambda o: torch_sched.SequentialLR(
        o, [torch_sched.LinearLR(o, optim.WARMUP_START_FACTOR, 1.0, total_iters=2 * EPOCH),
            torch_sched.CosineAnnealingLR(o, T_max=(NUM_EPOCHS - 2) * EPOCH)],
        milestones=[2 * EPOCH])),
    'exponential': (dict(gamma=0.8), lambda o: torch_sched.ExponentialLR(o, 0.8 ** (1 / EPOCH))),
    'step': (dict(step_size=4, gamma=0.5), lambda o: torch_sched.StepLR(o, 4 * EPOCH, 0.5)),
    'cosine_restarts': (dict(t_0=2, t_mult=2),
                        lambda o: torch_sched.CosineAnnealingWarmRestarts(o, 2 * EPOCH, 2)),
}

ONECYCLE = {
    'default': {},
    'linear': dict(anneal_strategy='linear'),
    'three_phase': dict(three_phase=True, pct_start=0.25),
    'max_lr': dict(max_lr=0.5, div_factor=10.0, final_div_factor=100.0, pct_start=0.4),
}


def _torch_rates(make_scheduler, steps, base_lr=BASE_LR):
  """The rate torch uses at each of `steps` scheduler steps."""
  param = torch.zeros(1, requires_grad=True)
  opt = torch.optim.SGD([param], lr=base_lr)
  scheduler = make_scheduler(opt)
  rates = []
  for _ in range(steps):
    rates.append(opt.param_groups[0]['lr'])
    opt.step()
    scheduler.step()
  return np.array(rates)


@pytest.mark.parametrize('case', sorted(EPOCH_SCHEDULES))
def test_epoch_schedule_matches_torch(case):
  overrides, make_scheduler = EPOCH_SCHEDULES[case]
  config = _config(num_epochs=NUM_EPOCHS, optim=dict(learning_rate=BASE_LR),
                   schedule=dict(dict(name=case), **overrides))
  learning_rate = optim.create_optimizer(config, STEPS_PER_EPOCH).learning_rate
  steps = np.arange(NUM_EPOCHS * STEPS_PER_EPOCH)
  ours = np.asarray(jax.jit(learning_rate)(steps, None)).reshape(NUM_EPOCHS, STEPS_PER_EPOCH)
  np.testing.assert_array_equal(ours, ours[:, :1].repeat(STEPS_PER_EPOCH, 1))  # once an epoch
  expected = _torch_rates(make_scheduler, NUM_EPOCHS)
  np.testing.assert_allclose(ours[:, 0], expected, rtol=1e-5, atol=1e-12)
  assert float(learning_rate(4, None)) == pytest.approx(expected[4 // STEPS_PER_EPOCH], rel=1e-5)


@pytest.mark.parametrize('case', sorted(STEP_SCHEDULES))
def test_step_schedule_matches_torch_stepped_per_step(case):
  overrides, make_scheduler = STEP_SCHEDULES[case]
  config = _config(num_epochs=NUM_EPOCHS, optim=dict(learning_rate=BASE_LR),
                   schedule=dict(dict(name=case, unit='step'), **overrides))
  learning_rate = optim.create_optimizer(config, STEPS_PER_EPOCH).learning_rate
  steps = NUM_EPOCHS * STEPS_PER_EPOCH
  np.testing.assert_allclose(jax.jit(learning_rate)(np.arange(steps), None),
                             _torch_rates(make_scheduler, steps), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize('case', sorted(ONECYCLE))
def test_onecycle_matches_torch_step_by_step(case):
  overrides = ONECYCLE[case]
  s = dict(dict(pct_start=0.3, div_factor=25.0, final_div_factor=1e4, anneal_strategy='cos',
                three_phase=False, max_lr=0.0), **overrides)
  config = _config(num_epochs=NUM_EPOCHS, optim=dict(learning_rate=BASE_LR),
                   schedule=dict(s, name='onecycle'))
  learning_rate = optim.create_optimizer(config, STEPS_PER_EPOCH).learning_rate
  total = NUM_EPOCHS * STEPS_PER_EPOCH
  expected = _torch_rates(lambda o: torch_sched.OneCycleLR(
      o, max_lr=s['max_lr'] or BASE_LR, total_steps=total, pct_start=s['pct_start'],
      anneal_strategy=s['anneal_strategy'], cycle_momentum=False, div_factor=s['div_factor'],
      final_div_factor=s['final_div_factor'], three_phase=s['three_phase']), total)
  np.testing.assert_allclose(jax.jit(learning_rate)(np.arange(total), None), expected, rtol=1e-5,
                             atol=1e-12)


@pytest.mark.parametrize('schedule, values', [
    (dict(name='onecycle', max_lr=0.3), {'schedule.max_lr': 0.23}),
    (dict(name='onecycle', three_phase=True, anneal_strategy='linear'),
     {'optim.learning_rate': 0.037}),
    (dict(name='warmup_cosine', warmup_epochs=2, min_lr=1e-3), {'optim.learning_rate': 0.037}),
    (dict(name='exponential', gamma=0.7), {'optim.learning_rate': 0.037})])
def test_traced_values_give_the_rates_of_a_config_holding_them(schedule, values):
  config = _config(num_epochs=NUM_EPOCHS, optim=dict(learning_rate=BASE_LR), schedule=schedule)
  holding = _config(num_epochs=NUM_EPOCHS, optim=dict(learning_rate=BASE_LR),
                    schedule={**schedule, 'max_lr': values.get('schedule.max_lr', 0.0)})
  holding.optim.learning_rate = values.get('optim.learning_rate', BASE_LR)
  steps = np.arange(NUM_EPOCHS * STEPS_PER_EPOCH)  # Traced, as a step's state.step is.
  traced = jax.jit(lambda steps, values: optim.create_optimizer(
      config, STEPS_PER_EPOCH, values).learning_rate(steps, None))(
          steps, {key: jnp.float32(value) for key, value in values.items()})
  expected = jax.jit(optim.create_optimizer(holding, STEPS_PER_EPOCH).learning_rate)(steps, None)
  np.testing.assert_array_equal(traced, expected)
  assert not np.array_equal(traced, optim.create_optimizer(config, STEPS_PER_EPOCH).learning_rate(
      steps, None))


def test_values_are_refused_for_plateau_and_unknown_keys():
  with pytest.raises(errors.UserError, match=r"config\.schedule\.name='plateau'"):
    optim.create_optimizer(_config(schedule=dict(name='plateau')), 10,
                           {'optim.learning_rate': 0.1})
  with pytest.raises(ValueError, match='optim.b1'):
    optim.create_optimizer(_config(), 10, {'optim.b1': 0.5})


@pytest.mark.parametrize('mode, metrics, min_lr', [
    ('min', [1.0, 0.9, 0.95, 0.91, 0.92, 0.85, 0.86, 0.86, 0.87, 0.84, 0.845, 0.9, 0.9, 0.9], 0.0),
    ('max', [0.5, 0.6, 0.6, 0.605, 0.59, 0.7, 0.69, 0.69, 0.69, 0.71, 0.7, 0.7, 0.7, 0.7], 0.03),
])
def test_plateau_matches_reduce_lr_on_plateau(mode, metrics, min_lr):
  config = _config(optim=dict(learning_rate=BASE_LR, momentum=0.0, weight_decay=0.0,
                              clip_mode='none', lookahead_k=0),
                   schedule=dict(name='plateau', plateau_mode=mode, gamma=0.5, patience=2,
                                 threshold=1e-2, min_lr=min_lr))
  optimizer = optim.create_optimizer(config, STEPS_PER_EPOCH)
  params = {'w': jnp.ones(3)}
  opt_state = optimizer.tx.init(params)
  param = torch.zeros(1, requires_grad=True)
  opt = torch.optim.SGD([param], lr=BASE_LR)
  scheduler = torch_sched.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=2, threshold=1e-2,
                                      threshold_mode='rel', min_lr=min_lr)
  rates = []
  for value in metrics:
    opt_state = optimizer.on_epoch_end(opt_state, {'loss': value, 'accuracy': value}
                                       if mode == 'min' else {'accuracy': value, 'loss': -1.0})
    scheduler.step(value)
    rate = float(optimizer.learning_rate(0, opt_state))
    assert rate == pytest.approx(opt.param_groups[0]['lr'], rel=1e-6)
    updates, _ = optimizer.tx.update({'w': jnp.ones(3)}, opt_state, params)
    np.testing.assert_allclose(updates['w'], -rate, rtol=1e-6)  # the rate the chain applies
    rates.append(rate)
  assert len(set(rates)) >= 3  # the rate was lowered at least twice


def test_only_plateau_reads_the_validation_between_epochs():
  # None: the trainer goes on to the next epoch without waiting for the evaluation's results.
  assert optim.create_optimizer(_config(), STEPS_PER_EPOCH).on_epoch_end is None
  plateau = _config(schedule={'name': 'plateau'})
  assert optim.create_optimizer(plateau, STEPS_PER_EPOCH).on_epoch_end is not None


@pytest.mark.parametrize('overrides, key', [
    (dict(optim=dict(optimizer='rmsprop')), 'config.optim.optimizer'),
    (dict(schedule=dict(name='linear')), 'config.schedule.name'),
    (dict(optim=dict(learning_rate=-0.1)), 'config.optim.learning_rate'),
    (dict(optim=dict(weight_decay=-1e-4)), 'config.optim.weight_decay'),
    (dict(optim=dict(lookahead_alpha=1.5)), 'config.optim.lookahead_alpha'),
    (dict(optim=dict(lookahead_alpha=0.0)), 'config.optim.lookahead_alpha'),
    (dict(optim=dict(lookahead_k=-1)), 'config.optim.lookahead_k'),
    (dict(optim=dict(clip_mode='norm')), 'config.optim.clip_mode'),
    (dict(optim=dict(nesterov=True, momentum=0.0)), 'config.optim.nesterov'),
    (dict(optim=dict(weight_decay_mask='bn')), 'config.optim.weight_decay_mask'),
    (dict(schedule=dict(name='multistep', milestones=())), 'config.schedule.milestones'),
    (dict(schedule=dict(name='cosine'), num_epochs=0), 'config.num_epochs'),
    (dict(schedule=dict(name='cosine', t_max_epochs=-1)), 'config.schedule.t_max_epochs'),
    (dict(schedule=dict(name='warmup_cosine', warmup_epochs=200)),
     'config.schedule.warmup_epochs'),
    (dict(schedule=dict(name='onecycle', pct_start=1.0)), 'config.schedule.pct_start'),
    (dict(schedule=dict(name='plateau', gamma=1.5)), 'config.schedule.gamma'),
    (dict(schedule=dict(name='cosine_restarts', t_0=0)), 'config.schedule.t_0'),
    (dict(schedule=dict(unit='batch')), 'config.schedule.unit'),
])
def test_bad_config_names_the_key(overrides, key):
  num_epochs = overrides.pop('num_epochs', 200)
  with pytest.raises(errors.UserError) as raised:
    optim.create_optimizer(_config(num_epochs=num_epochs, **overrides), 10)
  message = str(raised.value)
  assert message.startswith(key + '=') and '\n' not in message, message


def test_unknown_optimizer_lists_the_known_ones():
  with pytest.raises(errors.UserError, match='sgd, adam, adamw, adagrad, adadelta'):
    optim.create_optimizer(_config(optim=dict(optimizer='lamb')), 10)


def _parameter_sized_copies(lookahead_k: int) -> int:
  """Copies of parameter-shaped buffers in the compiled body of a scanned seed-000-style step."""
  config = defaults.base_config()
  config.model = defaults.model_config(num_blocks=(1, 1), channels=(8, 16), kernel_sizes=(3, 3),
                                       shortcut_kernel_sizes=(1, 1), stem_channels=8)
  config.optim.lookahead_k = lookahead_k
  optimizer = optim.create_optimizer(config, 10)
  ctx = steps.StepContext(model=models.build_model(config.model), tx=optimizer.tx,
                          learning_rate=optimizer.learning_rate, config=config,
                          mean=(0.5,) * 3, std=(0.25,) * 3,
                          platform=platforms.Platform.of(jax.devices()))
  state = jax.eval_shape(lambda: steps.create_train_state(ctx, 32))
  images, labels = jnp.zeros((8, 32, 32, 3), jnp.uint8), jnp.zeros((8,), jnp.int32)

  def call(state):  # lax.scan itself: steps.scan unrolls on a CPU
    return jax.lax.scan(lambda s, _: (steps.train_step(s, images, labels, ctx)[0], None),
                        state, None, length=4)[0]

  text = jax.jit(call, donate_argnums=0).lower(state).compile().as_text()
  kernels = [leaf.shape for leaf in jax.tree.leaves(state.params) if leaf.ndim > 1]
  return hlo.summarize(text, parameter_shapes=kernels)['parameter_sized_copies']


def test_lookahead_adds_no_parameter_sized_copies_to_the_step():
  # The CPU backend copies some weights for its convolutions with or without Lookahead; what
  # Lookahead adds must be nothing (it once added a copy of every parameter, twice, each step).
  assert _parameter_sized_copies(lookahead_k=5) == _parameter_sized_copies(lookahead_k=0)
