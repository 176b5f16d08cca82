"""Optimizer and learning-rate schedule from the config, as one optax chain.

The chain runs in the order of seed 000's PyTorch code, so it matches `torch.optim` step for step:

  clip (none | value | global_norm)
  -> coupled weight decay (wd * p) and L1 (l1 * sign(p)), added to the gradient as PyTorch's SGD,
     Adam, Adagrad and Adadelta add `weight_decay`
  -> the optimizer's direction (SGD momentum/Nesterov with dampening 0, Adam, Adagrad, Adadelta)
  -> decoupled weight decay (`weight_decay_mode='decoupled'`, and always for `adamw`): wd * p
     added to the direction, so the step is lr * (direction + wd * p) as in torch.optim.AdamW
  -> the learning rate (the schedule, or reduce-on-plateau's rate kept in the optimizer state)
  -> Lookahead.

Lookahead follows seed 000's PyTorch Lookahead, not `optax.lookahead`: the slow weights are first
taken after step 1, then after steps 1 + k, 1 + 2k, ... they move `slow += alpha * (fast - slow)`
and the fast weights are set to them (`optax.lookahead` syncs after steps k, 2k, ...). The model's
parameters are the FAST weights, and they are what the trainer evaluates and checkpoints: the
reference evaluates its model, whose parameters are the fast weights, so accuracies compare like
for like. The slow weights ride in the optimizer state (`LookaheadState.slow`), which is
checkpointed with the parameters, so a resumed run continues exactly where it stopped.

Schedules are PyTorch's `torch.optim.lr_scheduler` curves. With `schedule.unit='epoch'` the rate
changes once an epoch, as `scheduler.step()` once an epoch does (the rate at step s is f(s // steps
an epoch)); with `'step'` the same curve is evaluated at fractional epochs, every step. OneCycle is
always stepped per step, over `num_epochs * steps_per_epoch` steps; its momentum is not cycled
(PyTorch's `cycle_momentum=False`). Reduce-on-plateau is PyTorch's `ReduceLROnPlateau` (relative
threshold, no cooldown, floor `schedule.min_lr`), stepped by `Optimizer.on_epoch_end` with the
validation metrics once an epoch, on the host.
"""

from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from resnet_jax import errors

OPTIMIZERS = ('sgd', 'adam', 'adamw', 'adagrad', 'adadelta')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'onecycle', 'exponential', 'step',
             'multistep', 'cosine_restarts', 'plateau')
# warmup_cosine's linear warm-up starts from this fraction of the rate (PyTorch LinearLR's
# start_factor, which must be > 0).
WARMUP_START_FACTOR = 1e-3
# ReduceLROnPlateau's `eps`: a smaller reduction than this is skipped.
_PLATEAU_EPS = 1e-8
# clip_grad_norm_ divides by (norm + 1e-6).
_CLIP_NORM_EPS = 1e-6
# The settings `create_optimizer` reads from its `values` where given, which may be traced scalars
# (a population's members differ in them); which transforms exist is still the config's decision.
VALUE_KEYS = ('optim.learning_rate', 'schedule.max_lr', 'optim.weight_decay', 'optim.momentum',
              'optim.clip')


class Optimizer(NamedTuple):
  """What the trainer needs from the optimizer.

  Attributes:
    tx: the optax chain; its `update` needs the parameters (weight decay, Lookahead).
    learning_rate: (step, opt_state) -> the rate used at that step (a scalar array; works on host
      ints and inside jit), for logging.
    on_epoch_end: (opt_state, validation metrics {'loss', 'accuracy'}) -> opt_state; runs on the
      host once an epoch, before the next epoch's first step. None (the trainer then never
      waits for the validation before going on) except for reduce-on-plateau.
  """
  tx: optax.GradientTransformation
  learning_rate: Callable[[Any, optax.OptState], jax.Array]
  on_epoch_end: Optional[Callable[[optax.OptState, dict[str, float]], optax.OptState]]


class LookaheadState(NamedTuple):
  slow: optax.Params  # the slow weights; zeros until the first step sets them
  count: jax.Array    # steps taken


class PlateauState(NamedTuple):
  learning_rate: jax.Array
  best: jax.Array            # the best metric so far (+inf / -inf before the first)
  num_bad_epochs: jax.Array


class AdagradState(NamedTuple):
  sum_of_squares: optax.Updates


def _fail(key: str, value: Any, problem: str) -> None:
  raise errors.UserError(f'config.{key}={value!r}: {problem}')


def _optimizer_checks(o: ml_collections.ConfigDict) -> list:
  """(key, ok, problem) of every optimizer setting."""
  checks = [
      ('optim.learning_rate', o.learning_rate >= 0, 'must be >= 0'),
      ('optim.weight_decay', o.weight_decay >= 0, 'must be >= 0'),
      ('optim.l1', o.l1 >= 0, 'must be >= 0'),
      ('optim.weight_decay_mode', o.weight_decay_mode in ('coupled', 'decoupled'),
       "use 'coupled' or 'decoupled'"),
      ('optim.weight_decay_mask', o.weight_decay_mask in ('all', 'no_bn_bias'),
       "use 'all' or 'no_bn_bias'"),
      ('optim.clip_mode', o.clip_mode in ('none', 'value', 'global_norm'),
       "use 'none', 'value' or 'global_norm'"),
      ('optim.clip', o.clip_mode == 'none' or o.clip > 0, 'must be > 0 when clipping'),
      ('optim.lookahead_k', isinstance(o.lookahead_k, int) and o.lookahead_k >= 0,
       'must be an integer >= 0 (0 = no Lookahead)'),
      ('optim.lookahead_alpha', o.lookahead_k == 0 or 0 < o.lookahead_alpha <= 1,
       'must be in (0, 1]'),
  ]
  if o.optimizer == 'sgd':
    checks += [('optim.momentum', 0 <= o.momentum < 1, 'must be in [0, 1)'),
               ('optim.nesterov', not o.nesterov or o.momentum > 0,
                'Nesterov needs optim.momentum > 0')]
  if o.optimizer in ('adam', 'adamw'):
    checks += [('optim.b1', 0 <= o.b1 < 1, 'must be in [0, 1)'),
               ('optim.b2', 0 <= o.b2 < 1, 'must be in [0, 1)'),
               ('optim.eps', o.eps > 0, 'must be > 0')]
  if o.optimizer == 'adagrad':
    checks += [('optim.adagrad_eps', o.adagrad_eps > 0, 'must be > 0')]
  if o.optimizer == 'adadelta':
    checks += [('optim.rho', 0 <= o.rho <= 1, 'must be in [0, 1]'),
               ('optim.adadelta_eps', o.adadelta_eps > 0, 'must be > 0')]
  return checks


def _schedule_checks(config: ml_collections.ConfigDict) -> list:
  """(key, ok, problem) of every schedule setting."""
  s = config.schedule
  checks = [('schedule.unit', s.unit in ('epoch', 'step'), "use 'epoch' or 'step'"),
            ('schedule.min_lr', s.min_lr >= 0, 'must be >= 0')]
  if s.name not in ('constant', 'plateau'):
    checks += [('num_epochs', config.num_epochs > 0, f'schedule {s.name!r} needs num_epochs > 0')]
  if s.name in ('cosine', 'warmup_cosine'):
    checks += [('schedule.t_max_epochs', s.t_max_epochs >= 0, 'must be >= 0 (0 = num_epochs)')]
  if s.name == 'warmup_cosine':
    checks += [('schedule.warmup_epochs', 0 <= s.warmup_epochs < _cosine_epochs(config),
                'must be >= 0 and shorter than the cosine (t_max_epochs or num_epochs)')]
  if s.name in ('exponential', 'step', 'multistep'):
    checks += [('schedule.gamma', s.gamma > 0, 'must be > 0')]
  if s.name == 'step':
    checks += [('schedule.step_size', s.step_size > 0, 'must be > 0 (epochs between decays)')]
  if s.name == 'multistep':
    checks += [('schedule.milestones', len(s.milestones) > 0 and min(s.milestones) >= 0,
                'multistep needs epochs to decay at, e.g. (100, 150)')]
  if s.name == 'cosine_restarts':
    checks += [('schedule.t_0', isinstance(s.t_0, int) and s.t_0 >= 1, 'must be an integer >= 1'),
               ('schedule.t_mult', isinstance(s.t_mult, int) and s.t_mult >= 1,
                'must be an integer >= 1')]
  if s.name == 'plateau':
    checks += [('schedule.gamma', 0 < s.gamma < 1, 'the plateau factor must be in (0, 1)'),
               ('schedule.patience', s.patience >= 0, 'must be >= 0'),
               ('schedule.threshold', s.threshold >= 0, 'must be >= 0'),
               ('schedule.plateau_mode', s.plateau_mode in ('min', 'max'),
                "use 'min' (validation loss) or 'max' (accuracy)")]
  if s.name == 'onecycle':
    checks += [('schedule.max_lr', s.max_lr >= 0, 'must be >= 0 (0 = optim.learning_rate)'),
               ('schedule.pct_start', 0 < s.pct_start < (0.5 if s.three_phase else 1),
                'must be in (0, 1), and below 0.5 with three_phase'),
               ('schedule.div_factor', s.div_factor > 0, 'must be > 0'),
               ('schedule.final_div_factor', s.final_div_factor > 0, 'must be > 0'),
               ('schedule.anneal_strategy', s.anneal_strategy in ('cos', 'linear'),
                "use 'cos' or 'linear'")]
  return checks


def _validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError, naming the key, for the first bad optimizer or schedule value."""
  o, s = config.optim, config.schedule
  if o.optimizer not in OPTIMIZERS:
    _fail('optim.optimizer', o.optimizer, f'unknown optimizer; use one of {", ".join(OPTIMIZERS)}')
  if s.name not in SCHEDULES:
    _fail('schedule.name', s.name, f'unknown schedule; use one of {", ".join(SCHEDULES)}')
  # The optimizer's checks come first, as a user fixes them first.
  checks = _optimizer_checks(o) + _schedule_checks(config)
  key = {'optim': o, 'schedule': s, '': config}
  for name, ok, problem in checks:
    if not ok:
      section, _, field = name.rpartition('.')
      _fail(name, key[section][field], problem)


def _cosine_epochs(config: ml_collections.ConfigDict) -> float:
  return config.schedule.t_max_epochs or config.num_epochs


def _cosine_anneal(start, end, remaining):
  """end + (start - end) * (1 + cos(pi * (1 - remaining))) / 2, `remaining` from 1 down to 0.

  Written as sin^2 of the remaining fraction so that float32 keeps the small rates at the end of
  the curve to full relative precision (1 + cos(x) near x = pi loses them). The rates are float32
  before they meet, so that a rate traced in (a population's member) rounds as a number does.
  """
  start, end = jnp.asarray(start, jnp.float32), jnp.asarray(end, jnp.float32)
  return end + (start - end) * jnp.square(jnp.sin(jnp.pi / 2 * remaining))


def _cosine(epoch, length, base_lr, min_lr):
  """CosineAnnealingLR's closed form (periodic past `length`, as PyTorch's recursion is)."""
  return _cosine_anneal(base_lr, min_lr, (length - epoch) / length)


def _restart_starts(t_0: int, t_mult: int, num_epochs: int) -> tuple[jax.Array, jax.Array]:
  """Start epoch and length of every CosineAnnealingWarmRestarts cycle beginning by num_epochs."""
  starts, lengths = [0], [t_0]
  while starts[-1] + lengths[-1] <= num_epochs:
    starts.append(starts[-1] + lengths[-1])
    lengths.append(lengths[-1] * t_mult)
  return jnp.asarray(starts, jnp.float32), jnp.asarray(lengths, jnp.float32)


def _epoch_curve(config: ml_collections.ConfigDict, base_lr: Any) -> Callable[[jax.Array], Any]:
  """The schedule as a function of the (possibly fractional) epoch, PyTorch's formulas."""
  s = config.schedule
  min_lr, gamma = float(s.min_lr), float(s.gamma)
  if s.name == 'constant':
    return lambda epoch: jnp.full(jnp.shape(epoch), base_lr, jnp.float32)
  if s.name == 'cosine':
    length = float(_cosine_epochs(config))
    return lambda epoch: _cosine(epoch, length, base_lr, min_lr)
  if s.name == 'warmup_cosine':
    # SequentialLR([LinearLR(WARMUP_START_FACTOR, 1, warmup), CosineAnnealingLR(T - warmup)]).
    warmup = float(s.warmup_epochs)
    length = float(_cosine_epochs(config)) - warmup
    def warmup_cosine(epoch):
      ramp = base_lr * (WARMUP_START_FACTOR + (1 - WARMUP_START_FACTOR) * epoch / (warmup or 1.0))
      return jnp.where(epoch < warmup, ramp, _cosine(epoch - warmup, length, base_lr, min_lr))
    return warmup_cosine
  if s.name == 'exponential':
    return lambda epoch: base_lr * jnp.power(gamma, epoch)
  if s.name == 'step':
    step_size = float(s.step_size)
    return lambda epoch: base_lr * jnp.power(gamma, jnp.floor(epoch / step_size))
  if s.name == 'multistep':
    milestones = jnp.asarray(sorted(s.milestones), jnp.float32)
    return lambda epoch: base_lr * jnp.power(
        gamma, jnp.sum(jnp.asarray(epoch)[..., None] >= milestones, axis=-1))
  if s.name == 'cosine_restarts':
    starts, lengths = _restart_starts(s.t_0, s.t_mult, config.num_epochs)
    def cosine_restarts(epoch):
      cycle = jnp.searchsorted(starts, epoch, side='right') - 1
      return _cosine(epoch - starts[cycle], lengths[cycle], base_lr, min_lr)
    return cosine_restarts
  raise AssertionError(s.name)


def _onecycle(config: ml_collections.ConfigDict, max_lr: Any,
              total_steps: int) -> optax.Schedule:
  """OneCycleLR's rate at each step (held at its last value after total_steps)."""
  s = config.schedule
  rise_end = float(s.pct_start * total_steps) - 1
  anneal = _cosine_anneal if s.anneal_strategy == 'cos' else (
      lambda start, end, remaining: start * remaining + end * (1 - remaining))

  def schedule(step):
    # The rates from the peak in float32, which may be traced (a population's member), each
    # one product: XLA turns a traced rate's division by a constant into one, and merges two.
    peak = jnp.asarray(max_lr, jnp.float32)
    initial_lr = peak * (1 / s.div_factor)
    final_lr = peak * (1 / (s.div_factor * s.final_div_factor))
    if s.three_phase:
      phases = [(rise_end, initial_lr, peak), (2 * rise_end, peak, initial_lr),
                (total_steps - 1, initial_lr, final_lr)]
    else:
      phases = [(rise_end, initial_lr, peak), (total_steps - 1, peak, final_lr)]
    step = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps - 1)
    # PyTorch takes the first phase whose end is >= step (the last one otherwise).
    phase_starts = [0.0] + [end for end, _, _ in phases[:-1]]
    lr = None
    for start_step, (end_step, start, end) in reversed(list(zip(phase_starts, phases))):
      value = anneal(start, end, (end_step - step) / (end_step - start_step))
      lr = value if lr is None else jnp.where(step <= end_step, value, lr)
    return lr

  return schedule


def _schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
              values: Mapping[str, Any]) -> optax.Schedule:
  if config.schedule.name == 'onecycle':
    # A zero max_lr (in every member, `training.members.program_key`) means the learning rate.
    peak_key = 'schedule.max_lr' if config.schedule.max_lr else 'optim.learning_rate'
    return _onecycle(config, values[peak_key], config.num_epochs * steps_per_epoch)
  curve = _epoch_curve(config, values['optim.learning_rate'])
  if config.schedule.unit == 'epoch':
    return lambda step: curve((jnp.asarray(step) // steps_per_epoch).astype(jnp.float32))
  return lambda step: curve(jnp.asarray(step, jnp.float32) / steps_per_epoch)


def _find_plateau_state(opt_state: optax.OptState) -> PlateauState:
  is_plateau = lambda x: isinstance(x, PlateauState)
  (state,) = [x for x in jax.tree.leaves(opt_state, is_leaf=is_plateau) if is_plateau(x)]
  return state


def _scale_by_plateau_rate(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Multiplies updates by -rate, the rate held in a PlateauState that on_epoch_end lowers."""
  base_lr = float(config.optim.learning_rate)
  worst = np.inf if config.schedule.plateau_mode == 'min' else -np.inf

  def init_fn(params):
    del params
    return PlateauState(learning_rate=jnp.asarray(base_lr, jnp.float32),
                        best=jnp.asarray(worst, jnp.float32),
                        num_bad_epochs=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: -state.learning_rate * u, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def _plateau_on_epoch_end(
    config: ml_collections.ConfigDict) -> Callable[[optax.OptState, dict], optax.OptState]:
  """ReduceLROnPlateau.step(metric): threshold_mode 'rel', cooldown 0, min_lr schedule.min_lr."""
  minimize = config.schedule.plateau_mode == 'min'
  metric = 'loss' if minimize else 'accuracy'
  factor, patience = float(config.schedule.gamma), int(config.schedule.patience)
  threshold, min_lr = float(config.schedule.threshold), float(config.schedule.min_lr)

  def on_epoch_end(opt_state, metrics):
    state = _find_plateau_state(opt_state)
    current, best = float(metrics[metric]), float(state.best)
    learning_rate, bad_epochs = float(state.learning_rate), int(state.num_bad_epochs)
    if minimize:
      improved = current < best * (1 - threshold)
    else:
      improved = current > best * (1 + threshold)
    if improved:
      best, bad_epochs = current, 0
    else:
      bad_epochs += 1
    if bad_epochs > patience:
      lowered = max(learning_rate * factor, min_lr)
      if learning_rate - lowered > _PLATEAU_EPS:
        learning_rate = lowered
      bad_epochs = 0
    # Each new value goes where the old one lived (the mesh's replicated sharding in training).
    like = lambda value, old: jax.device_put(np.asarray(value, old.dtype),
                                             getattr(old, 'sharding', None))
    new_state = PlateauState(like(learning_rate, state.learning_rate), like(best, state.best),
                             like(bad_epochs, state.num_bad_epochs))
    return jax.tree.map(lambda x: new_state if isinstance(x, PlateauState) else x, opt_state,
                        is_leaf=lambda x: isinstance(x, PlateauState))

  return on_epoch_end


def _clip_by_global_norm(max_norm: Any) -> optax.GradientTransformation:
  """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6))."""
  def clip(updates, params):
    del params
    scale = jnp.minimum(1.0, max_norm / (optax.tree.norm(updates) + _CLIP_NORM_EPS))
    return jax.tree.map(lambda u: u * scale.astype(u.dtype), updates)
  return optax.stateless(clip)


def _add_l1(l1: float) -> optax.GradientTransformation:
  """Adds the gradient of l1 * sum(|p|), l1 * sign(p), as PyTorch autograd computes it."""
  def add(updates, params):
    return jax.tree.map(lambda u, p: u + l1 * jnp.sign(p).astype(u.dtype), updates, params)
  return optax.stateless(add)


def _scale_by_adagrad(eps: float) -> optax.GradientTransformation:
  """torch.optim.Adagrad's direction: g / (sqrt(sum of g^2) + eps), accumulator from 0.

  optax.scale_by_rss divides by sqrt(sum + eps) instead, which differs for small sums.
  """
  def init_fn(params):
    return AdagradState(sum_of_squares=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    sums = jax.tree.map(lambda g, s: s + g * g, updates, state.sum_of_squares)
    updates = jax.tree.map(lambda g, s: g / (jnp.sqrt(s) + eps), updates, sums)
    return updates, AdagradState(sum_of_squares=sums)

  return optax.GradientTransformation(init_fn, update_fn)


def lookahead(k: int, alpha: float) -> optax.GradientTransformation:
  """Seed 000's Lookahead around the preceding chain: syncs after steps 1, 1 + k, 1 + 2k, ...

  At a sync the slow weights (set to the fast ones at the first) move
  `slow += alpha * (fast - slow)` and the fast weights (the parameters) are set to them.

  Args:
    k: steps between syncs.
    alpha: the slow weights' step towards the fast ones.

  Returns:
    A transformation whose `update` needs `params` (the fast weights before this step).
  """
  def init_fn(params):
    return LookaheadState(slow=optax.tree.zeros_like(params), count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('lookahead needs the parameters: call tx.update(grads, state, params)')
    sync = state.count % k == 0
    fast = jax.tree.map(lambda p, u: p + u, params, updates)
    slow = optax.tree.where(state.count == 0, fast, state.slow)
    synced = jax.tree.map(lambda s, f: s + alpha * (f - s), slow, fast)
    slow = optax.tree.where(sync, synced, state.slow)
    # The synced parameters are read from the NEW slow weights (equal to `synced` at a sync), so
    # that the old slow weights are dead once the new ones are written: XLA then updates both in
    # place instead of copying every parameter-sized buffer each step. After
    # optax.apply_updates they equal the slow weights up to one rounding.
    updates = optax.tree.where(sync, jax.tree.map(jnp.subtract, slow, params), updates)
    return updates, LookaheadState(slow=slow, count=state.count + 1)

  return optax.GradientTransformation(init_fn, update_fn)


def _direction(o: ml_collections.ConfigDict,
               momentum: Any) -> Optional[optax.GradientTransformation]:
  """The optimizer's update direction before the learning rate; None for plain SGD."""
  if o.optimizer == 'sgd':
    # torch.optim.SGD with dampening 0: buf = momentum * buf + g (buf = g at the first step).
    return optax.trace(decay=momentum, nesterov=o.nesterov) if o.momentum else None
  if o.optimizer in ('adam', 'adamw'):
    return optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps)
  if o.optimizer == 'adagrad':
    return _scale_by_adagrad(o.adagrad_eps)
  return optax.scale_by_adadelta(rho=o.rho, eps=o.adadelta_eps)


def _decay_mask(name: str):
  if name == 'all':
    return None
  return lambda params: jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _setting(config: ml_collections.ConfigDict, key: str) -> Any:
  section, name = key.split('.')
  return config[section][name]


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     values: Optional[Mapping[str, Any]] = None) -> Optimizer:
  """The optax chain, its learning rate and its end-of-epoch hook for a config.

  Args:
    config: the run config (`optim`, `schedule`, `num_epochs` are read).
    steps_per_epoch: optimizer steps an epoch (the last partial batch counts).
    values: {key of VALUE_KEYS: value} read instead of the config's, e.g. traced scalars of a
      population's member; a value must be zero where the config's is and only there (the
      config decides which transforms the chain has).

  Returns:
    An Optimizer.

  Raises:
    errors.UserError: a bad optimizer or schedule setting, naming its config key, or values
      given for reduce-on-plateau (whose rate the host lowers).
  """
  if steps_per_epoch < 1:
    raise ValueError(f'steps_per_epoch must be >= 1, got {steps_per_epoch}')
  _validate(config)
  o = config.optim
  unknown = set(values or ()) - set(VALUE_KEYS)
  if unknown:
    raise ValueError(f'no value of create_optimizer: {sorted(unknown)}; use keys of {VALUE_KEYS}')
  if values and config.schedule.name == 'plateau':
    raise errors.UserError("config.schedule.name='plateau': its rate is lowered on the host, "
                           'once a run; runs trained together need another schedule')
  values = {**{key: _setting(config, key) for key in VALUE_KEYS}, **(values or {})}
  mask = _decay_mask(o.weight_decay_mask)
  decoupled = o.weight_decay_mode == 'decoupled' or o.optimizer == 'adamw'
  decay = (optax.add_decayed_weights(values['optim.weight_decay'], mask) if o.weight_decay
           else None)
  clip = {'none': None, 'value': optax.clip(values['optim.clip']),
          'global_norm': _clip_by_global_norm(values['optim.clip'])}[o.clip_mode]
  l1 = None
  if o.l1:
    l1 = _add_l1(o.l1) if mask is None else optax.masked(_add_l1(o.l1), mask)

  if config.schedule.name == 'plateau':
    scale_by_rate = _scale_by_plateau_rate(config)
    learning_rate = lambda step, opt_state: _find_plateau_state(opt_state).learning_rate
    on_epoch_end = _plateau_on_epoch_end(config)
  else:
    schedule = _schedule(config, steps_per_epoch, values)
    scale_by_rate = optax.scale_by_learning_rate(schedule)
    learning_rate = lambda step, opt_state: schedule(step)
    on_epoch_end = None

  chain = [clip, None if decoupled else decay, l1, _direction(o, values['optim.momentum']),
           decay if decoupled else None, scale_by_rate,
           lookahead(o.lookahead_k, o.lookahead_alpha) if o.lookahead_k else None]
  tx = optax.chain(*[t for t in chain if t is not None])
  return Optimizer(tx=tx, learning_rate=learning_rate, on_epoch_end=on_epoch_end)
