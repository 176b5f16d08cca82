"""Training and evaluation: the train state, the compiled steps and the epoch loop.

Data parallel over every device: one `jax.jit` over a 1-D mesh (axis 'data'), the batch sharded on
its leading axis, the state replicated, so XLA computes BatchNorm statistics over the global batch
and N devices train like one. Several steps run in one compiled call (`lax.scan`) with the metrics
summed on the device; the loop keeps one call in flight, reading a call's metrics (and checking
its loss is finite) while the next one runs.

Two ways to feed a call, running the same `train_step`:
- resident (the fast path): the whole uint8 training set is replicated on every device and a call
  receives only the batch indices (the host's `input_pipeline.epoch_permutation`);
- streamed: `input_pipeline.HostBatcher` produces each process's share of every batch.
"""

import concurrent.futures
import dataclasses
import functools
import itertools
import json
import platform
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional

from absl import logging
from etils import epath
import flax
from flax import struct
import jax
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from resnet_jax import augment
from resnet_jax import gradcam
from resnet_jax import input_pipeline
from resnet_jax import losses
from resnet_jax import models
from resnet_jax import optim
from resnet_jax import report
from resnet_jax import writers  # Before clu.metrics: makes clu importable without TensorFlow.
from resnet_jax.errors import UserError
from clu import metrics  # pylint: disable=g-bad-import-order

# A training set larger than this stays on the host under data.placement='auto'.
MAX_RESIDENT_BYTES = 4 << 30
# Steps fused in one compiled call when config.steps_per_call is 0 (on a CPU: 1).
AUTO_STEPS_PER_CALL = 32
# The resolved config a run was started with, in its workdir.
CONFIG_FILE = 'config.json'


@struct.dataclass
class Metrics(metrics.Collection):
  """Loss and accuracy, summed on the device over the steps of a call or the batches of a split."""
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Accuracy


def metric_sums(summed: Metrics) -> dict[str, list[float]]:
  """{name: [total, count]} of fetched metrics, as host floats (JSON-ready, for checkpoints)."""
  return {'loss': [float(summed.loss.total), float(summed.loss.count)],
          'accuracy': [float(summed.accuracy.total), float(summed.accuracy.count)]}


def add_sums(a: dict, b: dict) -> dict:
  """The sums of metric_sums' dicts a and b (either may lack a name)."""
  return {name: [a.get(name, [0.0, 0.0])[i] + b.get(name, [0.0, 0.0])[i] for i in (0, 1)]
          for name in {**a, **b}}


def mean_of_sums(sums: dict) -> dict[str, float]:
  """{name: total / count}, leaving out names with nothing counted (never NaN)."""
  return {name: total / count for name, (total, count) in sums.items() if count}


@struct.dataclass
class TrainState:
  """Everything a run needs to continue bitwise where it stopped.

  Attributes:
    step: optimizer steps taken (global, across epochs).
    params: the model parameters (the fast weights under Lookahead).
    batch_stats: BatchNorm running statistics.
    opt_state: the optax state (Lookahead's slow weights live here).
    ema_params: exponential moving average of params, or None without config.ema_decay.
    rng: raw key data; step s draws its randomness from fold_in(rng, s).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array

  def eval_variables(self) -> dict:
    params = self.params if self.ema_params is None else self.ema_params
    return {'params': params, 'batch_stats': self.batch_stats}


@dataclasses.dataclass(frozen=True)
class StepContext:
  """The static (trace-time) inputs of the compiled steps."""
  model: Any
  tx: optax.GradientTransformation
  learning_rate: Callable[[Any, optax.OptState], jax.Array]  # optim.Optimizer.learning_rate
  config: ml_collections.ConfigDict
  mean: tuple
  std: tuple

  @property
  def dtype(self):
    return models.DTYPES[self.config.model.dtype]


# ---------------------------------------------------------------------------------------------
# State and steps.


def create_train_state(ctx: StepContext, image_size: int) -> TrainState:
  """A fresh state: initialised model, optimizer state, EMA copy and step key from config.seed."""
  init_key, train_key = jax.random.split(jax.random.key(ctx.config.seed))
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = ctx.model.init({'params': init_key, 'dropout': init_key}, images, train=False)
  params = variables['params']
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get('batch_stats', {}),
      opt_state=ctx.tx.init(params),
      ema_params=params if ctx.config.ema_decay > 0 else None,
      rng=jax.random.key_data(train_key))


def train_step(state: TrainState, images_u8: jax.Array, labels: jax.Array,
               ctx: StepContext) -> tuple[TrainState, Metrics]:
  """One optimizer step on a global batch: augment, forward, backward, update.

  Args:
    state: the current state.
    images_u8: the batch, uint8 NHWC.
    labels: int labels of the batch.
    ctx: model, optimizer and config.

  Returns:
    The new state and the batch's metrics (sums, merged across steps by the caller).
  """
  config = ctx.config
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  augment_key, dropout_key = jax.random.split(step_key)
  x, soft_targets = augment.train_preprocess(
      augment_key, images_u8, labels, config.augment, ctx.mean, ctx.std,
      config.model.num_classes, ctx.dtype)

  def loss_fn(params):
    logits, new_model_state = ctx.model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
        mutable=['batch_stats'], rngs={'dropout': dropout_key})
    logits = logits.astype(jnp.float32)
    loss = losses.cross_entropy(logits, soft_targets, config.label_smoothing)
    return loss, (logits, new_model_state['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = ctx.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = state.ema_params
  if ema_params is not None:
    decay = config.ema_decay
    ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, ema_params=ema_params)
  # The batch mean once per example, so that averages over steps weight every example alike.
  step_metrics = Metrics.single_from_model_output(
      loss=jnp.full(labels.shape, loss), logits=logits, labels=labels)
  return new_state, step_metrics


def eval_step(variables: dict, images_u8: jax.Array, labels: jax.Array, mask: jax.Array,
              ctx: StepContext) -> tuple[Metrics, jax.Array]:
  """Metrics and predicted classes of one padded evaluation batch (mask marks real examples)."""
  config = ctx.config
  x = augment.eval_preprocess(images_u8, ctx.mean, ctx.std, ctx.dtype)
  logits = ctx.model.apply(variables, x, train=False).astype(jnp.float32)
  if config.eval_flip_tta:
    flipped = ctx.model.apply(variables, x[:, :, ::-1, :], train=False).astype(jnp.float32)
    logits = (logits + flipped) / 2
  targets = jax.nn.one_hot(labels, config.model.num_classes)
  loss = losses.cross_entropy(logits, targets, 0.0, weights=mask)
  batch_metrics = Metrics.single_from_model_output(
      loss=jnp.full(labels.shape, loss), logits=logits, labels=labels, mask=mask)
  return batch_metrics, jnp.argmax(logits, axis=-1)


@struct.dataclass
class CallResult:
  """What a compiled train call reports besides the new state, all on the device.

  Attributes:
    metrics: Metrics summed over the call's steps.
    first_bad_step: the global step of the first non-finite loss (or parameters), else -1.
    learning_rate: the rate of the call's last step (read for log lines without waiting for a
      later call, which owns the donated state by then).
  """
  metrics: Metrics
  first_bad_step: jax.Array
  learning_rate: jax.Array


def _scan_train_steps(state, batches, batch_fn, ctx) -> tuple[TrainState, CallResult]:
  """Runs train_step over the leading axis of `batches`; also finds the first non-finite loss."""

  def body(carry, batch):
    state, summed, first_bad_step = carry
    images_u8, labels = batch_fn(batch)
    new_state, step_metrics = train_step(state, images_u8, labels, ctx)
    bad = ~jnp.isfinite(step_metrics.loss.total)
    first_bad_step = jnp.where(bad & (first_bad_step < 0), state.step, first_bad_step)
    return (new_state, summed.merge(step_metrics), first_bad_step), None

  init = (state, Metrics.empty(), jnp.asarray(-1, jnp.int32))
  (state, summed, first_bad_step), _ = _scan(body, init, batches)
  # A step's loss is computed before its update: an update that overflows shows only in the
  # parameters, so they are checked once a call (before anything can save them).
  params_finite = jnp.isfinite(optax.global_norm(state.params))
  first_bad_step = jnp.where((first_bad_step < 0) & ~params_finite, state.step - 1,
                             first_bad_step)
  learning_rate = jnp.asarray(ctx.learning_rate(state.step - 1, state.opt_state), jnp.float32)
  return state, CallResult(summed, first_bad_step, learning_rate)


def _scan(body, init, xs):
  """lax.scan; unrolled in Python on a CPU, where XLA runs a while loop's convolutions ~20x slower."""
  if jax.default_backend() != 'cpu':
    return lax.scan(body, init, xs)
  carry, outputs = init, []
  for i in range(jax.tree.leaves(xs)[0].shape[0]):
    carry, output = body(carry, jax.tree.map(lambda x, i=i: x[i], xs))
    outputs.append(output)
  return carry, jax.tree.map(lambda *ys: jnp.stack(ys), *outputs)


def train_steps_resident(state, indices, images_u8, labels, ctx):
  """len(indices) steps; batch i is images_u8[indices[i]] (the whole set is on every device)."""
  return _scan_train_steps(state, indices, lambda idx: (images_u8[idx], labels[idx]), ctx)


def train_steps_streamed(state, images_u8, labels, ctx):
  """len(images_u8) steps on stacked batches [steps, batch, H, W, C] sent from the host."""
  return _scan_train_steps(state, (images_u8, labels), lambda batch: batch, ctx)


def evaluate_batches(variables, images_u8, labels, mask, ctx):
  """Summed metrics and predictions over stacked padded batches [num_batches, batch, ...]."""

  def body(summed, batch):
    batch_metrics, predictions = eval_step(variables, *batch, ctx)
    return summed.merge(batch_metrics), predictions

  return _scan(body, Metrics.empty(), (images_u8, labels, mask))


# ---------------------------------------------------------------------------------------------
# Devices and data placement.


def initial_state(ctx: StepContext, image_size: int, mesh: jax.sharding.Mesh) -> TrainState:
  """A fresh TrainState, replicated on every device."""
  return jax.jit(functools.partial(create_train_state, ctx, image_size),
                 out_shardings=NamedSharding(mesh, P()))()


def jit_train_steps(ctx: StepContext, mesh: jax.sharding.Mesh, *, resident: bool) -> Callable:
  """The jitted multi-step train call: state donated, batches sharded on the data axis.

  Resident: (state, indices [steps, batch], images_u8, labels) with the whole set replicated.
  Streamed: (state, images_u8 [steps, batch, ...], labels [steps, batch]).
  """
  replicated = NamedSharding(mesh, P())
  batches = NamedSharding(mesh, P(None, 'data'))
  if resident:
    return jax.jit(functools.partial(train_steps_resident, ctx=ctx),
                   in_shardings=(replicated, batches, replicated, replicated),
                   out_shardings=replicated, donate_argnums=0)
  return jax.jit(functools.partial(train_steps_streamed, ctx=ctx),
                 in_shardings=(replicated, batches, batches),
                 out_shardings=replicated, donate_argnums=0)


def put_train_set(splits, mesh: jax.sharding.Mesh) -> tuple[jax.Array, jax.Array]:
  """The training images (uint8) and labels (int32), whole on every device."""
  replicated = NamedSharding(mesh, P())
  return (put_global(splits.train_images, replicated),
          put_global(splits.train_labels.astype(np.int32), replicated))


def epoch_batches(run: 'Run', epoch: int) -> list[np.ndarray]:
  """The global example indices of each of the epoch's steps, as the run trains them."""
  return input_pipeline.epoch_batch_indices(
      run.plan.size, run.plan.batch_size, seed=run.config.seed, epoch=epoch,
      drop_remainder=run.config.drop_remainder, multiple_of=run.plan.num_devices)


def create_mesh() -> jax.sharding.Mesh:
  return jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))


def put_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a host array every process holds in full."""
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """A split padded to whole batches and placed on the devices, batches along axis 0."""
  images: jax.Array
  labels: jax.Array
  mask: jax.Array
  size: int


def make_eval_set(images: np.ndarray, labels: np.ndarray, batch_size: int,
                  mesh: jax.sharding.Mesh) -> EvalSet:
  """Pads a split to a whole number of batches (mask 0 on padding) and puts it on the devices."""
  num_devices = mesh.devices.size
  size = len(labels)
  batch_size = -(-min(batch_size, size) // num_devices) * num_devices
  num_batches = -(-size // batch_size)
  padding = num_batches * batch_size - size

  def stack(array):
    padded = np.concatenate([array, np.zeros((padding,) + array.shape[1:], array.dtype)])
    return padded.reshape((num_batches, batch_size) + array.shape[1:])

  sharding = NamedSharding(mesh, P(None, 'data'))
  return EvalSet(images=put_global(stack(images), sharding),
                 labels=put_global(stack(labels.astype(np.int32)), sharding),
                 mask=put_global(stack(np.ones(size, bool)), sharding), size=size)


def compile_evaluate(ctx: StepContext, mesh: jax.sharding.Mesh) -> Callable:
  replicated = NamedSharding(mesh, P())
  return jax.jit(functools.partial(evaluate_batches, ctx=ctx),
                 out_shardings=(replicated, NamedSharding(mesh, P(None, 'data'))))


def evaluate(evaluate_fn: Callable, variables: dict, eval_set: EvalSet, *,
             with_predictions: bool = True) -> tuple[dict, Optional[np.ndarray]]:
  """{'loss', 'accuracy'} over a split and the predicted class of each of its examples.

  Args:
    evaluate_fn: `compile_evaluate`'s function, or anything called the same way.
    variables: {'params', 'batch_stats'}, replicated.
    eval_set: the split, from `make_eval_set`.
    with_predictions: False skips gathering the predictions to the host (returns None for them).
  """
  summed, predictions = evaluate_fn(variables, eval_set.images, eval_set.labels, eval_set.mask)
  computed = {name: float(value) for name, value in summed.compute().items()}
  if not with_predictions:
    return computed, None
  predictions = np.asarray(multihost_utils.process_allgather(predictions, tiled=True))
  return computed, predictions.reshape(-1)[:eval_set.size]


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """counts[true, predicted]."""
  flat = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
  return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def resident_placement(config: ml_collections.ConfigDict, train_images: np.ndarray) -> bool:
  """Whether the training set goes on the device (config.data.placement)."""
  placement = config.data.placement
  if placement not in ('auto', 'device', 'host'):
    raise UserError(f'config.data.placement={placement!r} is not one of auto, device, host')
  if placement != 'auto':
    return placement == 'device'
  memory = jax.local_devices()[0].memory_stats() or {}
  limit = memory.get('bytes_limit', MAX_RESIDENT_BYTES * 4) // 4
  return train_images.nbytes <= min(limit, MAX_RESIDENT_BYTES)


# ---------------------------------------------------------------------------------------------
# The epoch plan.


@dataclasses.dataclass(frozen=True)
class EpochPlan:
  """How one epoch splits into steps (input_pipeline's batches) and compiled calls."""
  size: int             # training examples
  batch_size: int       # global
  steps: int            # optimizer steps an epoch, the partial last batch included
  partial: int          # size of the trained partial last batch (0: none)
  steps_per_call: int
  num_devices: int

  @property
  def num_full(self) -> int:
    return self.steps - (1 if self.partial else 0)

  def calls(self, start_step: int) -> list[tuple[int, int, int]]:
    """(first step in the epoch, steps, batch size) of each compiled call from start_step on.

    Full steps are grouped from the start of the epoch, so a run resumed at a call boundary
    makes the same calls (and compiled shapes) as one that never stopped.
    """
    calls = []
    step = start_step
    while step < self.num_full:
      count = min(self.steps_per_call - step % self.steps_per_call, self.num_full - step)
      calls.append((step, count, self.batch_size))
      step += count
    if self.partial and start_step <= self.num_full:
      calls.append((self.num_full, 1, self.partial))
    return calls


def epoch_plan(config: ml_collections.ConfigDict, size: int, num_devices: int) -> EpochPlan:
  """Steps of an epoch; the last partial batch (cut to a multiple of the devices) is trained."""
  batch_size = config.batch_size
  if batch_size < 1 or batch_size % num_devices:
    raise UserError(f'config.batch_size={batch_size} must be a positive multiple of the '
                    f'{num_devices} devices')
  steps = input_pipeline.steps_per_epoch(size, batch_size, config.drop_remainder,
                                         multiple_of=num_devices)
  if steps < 1:
    raise UserError(f'config.batch_size={batch_size} leaves no training step for the {size} '
                    'training examples: lower it, or unset config.drop_remainder')
  num_full = size // batch_size
  partial = (size % batch_size) // num_devices * num_devices if steps > num_full else 0
  steps_per_call = config.steps_per_call or default_steps_per_call(num_full)
  return EpochPlan(size=size, batch_size=batch_size, steps=steps, partial=partial,
                   steps_per_call=max(1, min(steps_per_call, num_full)),
                   num_devices=num_devices)


def default_steps_per_call(num_full: int = AUTO_STEPS_PER_CALL) -> int:
  """Steps a compiled call fuses when config.steps_per_call is 0: 1 on a CPU (see `_scan`)."""
  return 1 if jax.default_backend() == 'cpu' else _auto_steps_per_call(num_full)


def _auto_steps_per_call(num_full: int) -> int:
  """A divisor of the full steps near AUTO_STEPS_PER_CALL (one compiled shape), else that."""
  for count in range(min(AUTO_STEPS_PER_CALL, num_full), AUTO_STEPS_PER_CALL // 2 - 1, -1):
    if count > 0 and num_full % count == 0:
      return count
  return AUTO_STEPS_PER_CALL


# ---------------------------------------------------------------------------------------------
# Checkpoints.


def checkpoint_manager(directory: epath.PathLike, *,
                       read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=1, create=not read_only, read_only=read_only)
  return ocp.CheckpointManager(writers.as_path(directory), options=options,
                               item_names=('state', 'meta'))


def _process_zero_decides(value: Optional[int]) -> Optional[int]:
  """Process 0's value (an int >= 0, or None) on every process.

  What each process reads of shared storage (a bucket's listing) may differ for a moment; a
  decision that sent processes down different paths would leave some waiting in a collective.
  """
  if jax.process_count() == 1:
    return value
  agreed = int(multihost_utils.broadcast_one_to_all(
      np.asarray(-1 if value is None else value, np.int32)))
  return None if agreed < 0 else agreed


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState, meta: dict) -> None:
  """Saves state and meta at the state's step, unless a checkpoint of that step exists.

  One exists when a run that died without a clean stop (no SIGTERM) is resumed and replays steps
  it had saved, e.g. a best checkpoint written after the latest one. The existing checkpoint is
  kept rather than deleted and rewritten, so there is never a moment without one.
  """
  step = int(jax.device_get(state.step))
  if _process_zero_decides(int(step in manager.all_steps())):
    return
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)


def restore_checkpoint(manager: ocp.CheckpointManager, abstract_state: TrainState,
                       step: Optional[int] = None) -> tuple[TrainState, dict]:
  """The state and metadata saved at `step` (default: the latest); UserError if unusable."""
  step = manager.latest_step() if step is None else step
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  except Exception as e:  # pylint: disable=broad-except
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise UserError(f'checkpoint {manager.directory}/{step} cannot be restored into this config '
                    f'({reason}): it is damaged or was written by another config; use the config '
                    'it was trained with, or move the checkpoint aside or use a new --workdir to '
                    'start over') from e
  return restored.state, restored.meta


CHECKPOINTS = ('latest', 'best')


def restore_run_checkpoint(run: 'Run', checkpoint: str = 'latest') -> tuple[TrainState, dict]:
  """The state and metadata of a run's latest or best checkpoint; UserError if there is none."""
  if checkpoint not in CHECKPOINTS:
    raise UserError(f'--checkpoint={checkpoint} is not one of {", ".join(CHECKPOINTS)}')
  directory = writers.as_path(run.workdir) / 'checkpoints' / checkpoint
  if not directory.is_dir():
    raise UserError(f'no checkpoint in {directory}: train first (python -m resnet_jax.main '
                    f'--workdir={run.workdir}), or check --workdir')
  manager = checkpoint_manager(directory, read_only=True)
  try:
    if manager.latest_step() is None:
      raise UserError(f'no checkpoint in {directory}: train first, or check --workdir')
    return restore_checkpoint(
        manager, abstract_train_state(run.ctx, run.config.data.image_size, run.mesh))
  finally:
    manager.close()


def abstract_train_state(ctx: StepContext, image_size: int, mesh) -> TrainState:
  """The state's shapes, dtypes and (replicated) shardings, for restoring."""
  replicated = NamedSharding(mesh, P())
  shapes = jax.eval_shape(functools.partial(create_train_state, ctx, image_size))
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)


# ---------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class RunClock:
  """Wall-clock accounting of a run (host side)."""
  start: float = dataclasses.field(default_factory=time.time)
  compile_seconds: float = 0.0
  train_seconds: float = 0.0
  train_images: int = 0
  eval_seconds: float = 0.0


def _abstract(leaf):
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding,
                                weak_type=leaf.weak_type)
  return leaf


class _Compiled:
  """Ahead-of-time compiled functions, one per name and batch shapes, compiled on worker threads.

  `prepare` starts a compile without waiting, so that shapes needed later (the epoch's partial
  last batch, evaluation) compile while the devices train instead of stalling them when first
  called. The clock's compile_seconds counts the time the loop waited for a compiler.
  """

  def __init__(self, clock: RunClock):
    self._clock = clock
    self._futures = {}
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4,
                                                       thread_name_prefix='compile')

  @staticmethod
  def _key(name: str, args) -> tuple:
    # args[0] (the state or the variables) has one shape a run; the batches vary.
    return name, tuple((leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(args[1:]))

  def prepare(self, name: str, jitted, *args,
              after: Optional[concurrent.futures.Future] = None) -> concurrent.futures.Future:
    """Starts compiling jitted for args (arrays or ShapeDtypeStructs) unless it has been.

    `after`: a compile to finish first. On a GPU, XLA times candidate kernels while compiling
    (autotuning); the main step's timings should not be taken beside other compiles.
    """
    key = self._key(name, args)
    if key not in self._futures:
      abstract_args = jax.tree.map(_abstract, args)

      def lower_and_compile():
        if after is not None:
          concurrent.futures.wait([after])
        return jitted.lower(*abstract_args).compile()

      self._futures[key] = self._pool.submit(lower_and_compile)
    return self._futures[key]

  def __call__(self, name: str, jitted, *args):
    self.prepare(name, jitted, *args)
    future = self._futures[self._key(name, args)]
    if not future.done():
      start = time.perf_counter()
      concurrent.futures.wait([future])
      self._clock.compile_seconds += time.perf_counter() - start
    return future.result()(*args)

  def close(self) -> None:
    self._pool.shutdown(wait=False, cancel_futures=True)


# JAX's preemption sync point counts calls over the whole process, which may train several runs
# (a sweep): the ids given to it must keep rising from one run to the next.
_PREEMPTION_CALL_IDS = itertools.count(1)


def _preemption_check() -> tuple[Callable[[], bool], Callable[[], None]]:
  """(stop after the call just made?, a function restoring what it changed); once a call.

  Every process answers alike for the same call. One process: a SIGTERM handler sets a flag.
  Several: JAX's preemption service (started by jax.distributed.initialize, which hears SIGTERM
  itself) agrees on the call at which all stop, through the coordinator, without a device
  collective that would wait for the call in flight.
  """
  if jax.process_count() > 1:
    return (lambda: multihost_utils.reached_preemption_sync_point(next(_PREEMPTION_CALL_IDS)),
            lambda: None)
  event = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    return event.is_set, lambda: None
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: event.set())
  return event.is_set, lambda: signal.signal(signal.SIGTERM, previous)


def _format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'


def versions() -> dict:
  return {'jax': jax.__version__, 'flax': flax.__version__, 'optax': optax.__version__,
          'orbax_checkpoint': getattr(ocp, '__version__', ''),
          'python': platform.python_version()}


def _write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  path = writers.as_path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  (path / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


@dataclasses.dataclass(frozen=True)
class Run:
  """What train_and_evaluate sets up before the loop."""
  config: ml_collections.ConfigDict
  workdir: str
  ctx: StepContext
  optimizer: Any  # optim.create_optimizer's Optimizer
  splits: Any
  mesh: jax.sharding.Mesh
  plan: EpochPlan
  resident: bool
  host_batcher: Optional[input_pipeline.HostBatcher]  # None when the set is on the device


def validate_run_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError, naming the key, for the first loop setting out of range."""
  checks = [
      ('num_epochs', config.num_epochs >= 1, 'must be >= 1'),
      ('eval_batch_size', config.eval_batch_size >= 1, 'must be >= 1'),
      ('eval_every_epochs', config.eval_every_epochs >= 1, 'must be >= 1'),
      ('checkpoint_every_epochs', config.checkpoint_every_epochs >= 1, 'must be >= 1'),
      ('log_every_steps', config.log_every_steps >= 1, 'must be >= 1'),
      ('steps_per_call', config.steps_per_call >= 0, 'must be >= 0 (0 = auto)'),
      ('ema_decay', 0 <= config.ema_decay < 1, 'must be in [0, 1) (0 = no EMA)'),
      ('param_histograms_every_epochs', config.param_histograms_every_epochs >= 0,
       'must be >= 0 (0 = none)'),
  ]
  for key, ok, rule in checks:
    if not ok:
      raise UserError(f'config.{key}={config[key]!r} is invalid: {rule}')


def setup_run(config: ml_collections.ConfigDict, workdir: str, splits=None) -> Run:
  """Checks the config, loads the data and builds model and optimizer; UserError on mistakes.

  `splits` (input_pipeline.Splits) skips loading the data again, e.g. for several benchmarks.
  """
  validate_run_config(config)
  models.check_budget(config.model, config.data.image_size)
  augment.check_config(config.augment)
  if splits is None:
    splits = input_pipeline.load_splits(config.data, config.seed)
  mesh = create_mesh()
  plan = epoch_plan(config, len(splits.train_labels), mesh.devices.size)
  optimizer = optim.create_optimizer(config, plan.steps)
  ctx = StepContext(model=models.build_model(config.model), tx=optimizer.tx,
                    learning_rate=optimizer.learning_rate, config=config,
                    mean=tuple(float(m) for m in splits.mean),
                    std=tuple(float(s) for s in splits.std))
  resident = resident_placement(config, splits.train_images)
  host_batcher = None if resident else input_pipeline.HostBatcher(
      splits.train_images, splits.train_labels, backend=config.data.host_backend)
  return Run(config=config, workdir=workdir, ctx=ctx, optimizer=optimizer, splits=splits,
             mesh=mesh, plan=plan, resident=resident, host_batcher=host_batcher)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains config's system, evaluating every epoch, checkpointing and resuming in workdir.

  Args:
    config: a config from configs/ (see resnet_jax/defaults.py for every key).
    workdir: where checkpoints, metrics, plots and the report go (a local folder or a URL such
      as gs://bucket/run); a run found there resumes.

  Returns:
    The results (what results.json holds), or {'preempted': True, ...} if SIGTERM stopped it.

  Raises:
    UserError: a bad config, missing data, an unusable checkpoint or a non-finite loss.
  """
  clock = RunClock()
  run = setup_run(config, workdir)
  splits = run.splits
  logging.info('data: %s; %s placement; %d devices (%s); %d steps an epoch, up to %d a call',
               splits.source, 'device' if run.resident else 'host', run.mesh.devices.size,
               jax.devices()[0].device_kind, run.plan.steps, run.plan.steps_per_call)
  if jax.process_index() == 0:
    _write_config(workdir, config)
  checkpoint_dir = writers.as_path(workdir) / 'checkpoints'
  latest_manager = checkpoint_manager(checkpoint_dir / 'latest')
  best_manager = checkpoint_manager(checkpoint_dir / 'best')
  writer = writers.create_writer(workdir, is_main=jax.process_index() == 0)
  should_stop, restore_signal = _preemption_check()
  compiled = _Compiled(clock)
  try:
    return _train_loop(run, clock, compiled, latest_manager, best_manager, writer, should_stop)
  finally:
    compiled.close()
    restore_signal()
    for manager in (latest_manager, best_manager):
      manager.wait_until_finished()
      manager.close()
    writer.close()


def run_identity(run: Run) -> dict:
  """What a checkpoint's run must share with the config resuming it (saved in its meta)."""
  config, plan = run.config, run.plan
  return {'config.batch_size': config.batch_size, 'config.num_epochs': config.num_epochs,
          'config.seed': config.seed, 'training examples (config.data)': plan.size,
          'steps an epoch': plan.steps}


def check_same_run(run: Run, meta: dict, directory) -> None:
  """UserError naming the first setting the config changed since the checkpoint was saved."""
  for name, now in run_identity(run).items():
    saved = meta.get('run', {}).get(name, now)  # Checkpoints from before the check lack it.
    if saved != now:
      raise UserError(f'the checkpoint in {directory} was trained with {name} = {saved}, the '
                      f'config gives {now}; resume with the original config, or use a new '
                      '--workdir')


@dataclasses.dataclass
class _Progress:
  """The host's running metric sums (`metric_sums` dicts) and the train-time mark of an epoch."""
  epoch_sums: dict
  last_log_step: int
  window: dict = dataclasses.field(default_factory=dict)
  mark: float = 0.0
  compile_mark: float = 0.0
  learning_rate: float = float('nan')  # of the last step read back


def _resident_feed(run: Run, train_set: tuple, take: Callable, epoch: int,
                   start_step: int) -> Callable:
  """(first, count, batch size) -> a call's batch arguments, the set on the devices.

  The epoch's batch indices go to the devices once; each call takes its rows there.
  """
  del start_step  # Each call names its first step.
  plan = run.plan
  sharding = NamedSharding(run.mesh, P(None, 'data'))
  batches = epoch_batches(run, epoch)
  full = (put_global(np.stack(batches[:plan.num_full]).astype(np.int32), sharding)
          if plan.num_full else None)
  partial = (put_global(batches[plan.num_full][None].astype(np.int32), sharding)
             if plan.partial else None)

  def feed(first, count, batch_size):
    del batch_size  # Given by the rows taken.
    return (partial if first == plan.num_full else take(full, first, count)), *train_set

  return feed


def _batch_specs(run: Run, train_set: Optional[tuple], count: int, batch_size: int) -> tuple:
  """The batch arguments of a train call of `count` steps (resident if train_set is given)."""
  sharding = NamedSharding(run.mesh, P(None, 'data'))
  if train_set is not None:
    indices = jax.ShapeDtypeStruct((count, batch_size), jnp.int32, sharding=sharding)
    return indices, *train_set
  labels = jax.ShapeDtypeStruct((count, batch_size), jnp.int32, sharding=sharding)
  size = run.config.data.image_size
  images = jax.ShapeDtypeStruct((count, batch_size, size, size, 3), jnp.uint8,
                                sharding=sharding)
  return images, labels


def _streamed_feed(run: Run, epoch: int, start_step: int) -> Callable:
  """(first, count, batch size) -> a call's batches, sent from this process's host."""
  sharding = NamedSharding(run.mesh, P(None, 'data'))
  stacked = _stacked_host_batches(run, epoch, start_step)

  def feed(first, count, batch_size):
    del first, count, batch_size  # The generator yields the calls in order.
    return tuple(jax.make_array_from_process_local_data(sharding, local)
                 for local in next(stacked))

  return feed


def _train_loop(run: Run, clock: RunClock, compiled: _Compiled, latest_manager, best_manager,
                writer, should_stop: Callable[[], bool]) -> dict:
  """The epoch loop of train_and_evaluate."""
  config, ctx, splits, mesh, plan = run.config, run.ctx, run.splits, run.mesh, run.plan
  replicated = NamedSharding(mesh, P())

  meta = {'epoch': 0, 'step_in_epoch': 0, 'train_sums': {}, 'best_val_accuracy': -1.0,
          'best_epoch': 0, 'history': [], 'run': run_identity(run), 'elapsed_seconds': 0.0}
  abstract_state = abstract_train_state(ctx, config.data.image_size, mesh)
  latest_step = _process_zero_decides(latest_manager.latest_step())
  if latest_step is not None:
    state, meta = restore_checkpoint(latest_manager, abstract_state, latest_step)
    check_same_run(run, meta, latest_manager.directory)
    results_path = writers.as_path(run.workdir) / report.RESULTS_FILE
    if meta['epoch'] >= config.num_epochs and _process_zero_decides(int(results_path.exists())):
      logging.info('%s has finished already; its results: %s', run.workdir, results_path)
      return json.loads(results_path.read_text())
    meta = dict(meta, run=run_identity(run))
    logging.info('resuming from %s: epoch %d, step %d of it (global step %d)',
                 latest_manager.directory, meta['epoch'] + 1, meta['step_in_epoch'],
                 int(state.step))
  else:
    state = initial_state(ctx, config.data.image_size, mesh)
  history = meta['history']
  # The run's wall time so far, summed over the processes that trained it (resumes included).
  elapsed_before = meta.get('elapsed_seconds', 0.0)
  elapsed = lambda: elapsed_before + time.time() - clock.start

  run_steps = jit_train_steps(ctx, mesh, resident=run.resident)
  if run.resident:
    train_set = put_train_set(splits, mesh)
    take = jax.jit(functools.partial(lax.dynamic_slice_in_dim, axis=0), static_argnums=2,
                   out_shardings=NamedSharding(mesh, P(None, 'data')))
    epoch_feed = functools.partial(_resident_feed, run, train_set, take)
  else:
    train_set = None
    epoch_feed = functools.partial(_streamed_feed, run)
  evaluate_fn = compile_evaluate(ctx, mesh)
  val_set = make_eval_set(splits.val_images, splits.val_labels, config.eval_batch_size, mesh)
  # Validation on the test set (seed 000's protocol): the last epoch's evaluation is the test's.
  val_is_test = splits.val_labels is splits.test_labels
  final_test = None

  def run_eval(variables, eval_set, with_predictions=True):
    start = time.perf_counter()
    result = evaluate(functools.partial(compiled, 'eval', evaluate_fn),
                      variables, eval_set, with_predictions=with_predictions)
    clock.eval_seconds += time.perf_counter() - start
    return result

  # The first call's shape compiles alone; every other shape the run needs, after it, while the
  # devices train.
  calls = plan.calls(meta['step_in_epoch']) + plan.calls(0)
  first = compiled.prepare('train', run_steps, state,
                           *_batch_specs(run, train_set, *calls[0][1:]))
  for _, count, batch_size in calls[1:]:
    compiled.prepare('train', run_steps, state, *_batch_specs(run, train_set, count, batch_size),
                     after=first)
  compiled.prepare('eval', evaluate_fn, state.eval_variables(), val_set.images, val_set.labels,
                   val_set.mask, after=first)

  progress = _Progress(epoch_sums={}, last_log_step=int(state.step))
  stop_after_epoch = False
  for epoch in range(meta['epoch'], config.num_epochs):
    epoch_start = time.perf_counter()
    resumed = epoch == meta['epoch']
    start_step = meta['step_in_epoch'] if resumed else 0
    progress.epoch_sums = meta.get('train_sums', {}) if resumed else {}
    progress.mark, progress.compile_mark = epoch_start, clock.compile_seconds
    feed = epoch_feed(epoch, start_step)
    in_flight = None
    for first, count, batch_size in plan.calls(start_step):
      # The next call is dispatched before the previous one's metrics are read, so the devices
      # never wait for the host.
      state, result = compiled('train', run_steps, state, *feed(first, count, batch_size))
      if in_flight:
        _finish_call(run, clock, writer, epoch, progress, latest_manager, *in_flight)
      in_flight = (first, count, batch_size, result)
      if not stop_after_epoch and should_stop():
        # The call in flight is checked (its loss finite) before anything is saved.
        step = _finish_call(run, clock, writer, epoch, progress, latest_manager, *in_flight)
        in_flight = None
        if first + count == plan.steps:  # The epoch's last call: close the epoch, then stop.
          stop_after_epoch = True
          continue
        meta = dict(meta, epoch=epoch, step_in_epoch=first + count,
                    train_sums=progress.epoch_sums, elapsed_seconds=elapsed())
        save_checkpoint(latest_manager, state, meta)
        return _stopped(run, latest_manager, epoch, first + count, step)
    if in_flight:
      _finish_call(run, clock, writer, epoch, progress, latest_manager, *in_flight)

    record = {'epoch': epoch + 1, 'step': int(state.step),
              **{f'train_{k}': v for k, v in mean_of_sums(progress.epoch_sums).items()},
              'learning_rate': progress.learning_rate,
              'epoch_seconds': time.perf_counter() - epoch_start}
    is_last = epoch + 1 == config.num_epochs
    if (epoch + 1) % config.eval_every_epochs == 0 or is_last:
      last_test = is_last and val_is_test
      val, predictions = run_eval(state.eval_variables(), val_set, with_predictions=last_test)
      if last_test:
        final_test = val, predictions
      record.update(val_loss=val['loss'], val_accuracy=val['accuracy'])
      # Back on the devices: a host-side hook (reduce-on-plateau) may return host arrays.
      state = jax.device_put(
          state.replace(opt_state=run.optimizer.on_epoch_end(state.opt_state, val)), replicated)
    record['elapsed_seconds'] = elapsed()
    history.append(record)
    writer.write_scalars(record['step'], {k: v for k, v in record.items() if k != 'step'})
    if config.param_histograms_every_epochs and (
        (epoch + 1) % config.param_histograms_every_epochs == 0):
      gradcam.write_param_histograms(writer, record['step'], state.params)
    writer.flush()
    _log_epoch(config, record)
    meta = dict(meta, epoch=epoch + 1, step_in_epoch=0, train_sums={}, history=history,
                elapsed_seconds=record['elapsed_seconds'])
    if record.get('val_accuracy', -1.0) > meta['best_val_accuracy']:
      meta.update(best_val_accuracy=record['val_accuracy'], best_epoch=epoch + 1)
      if config.keep_best_checkpoint:
        save_checkpoint(best_manager, state, meta)
    if (epoch + 1) % config.checkpoint_every_epochs == 0 or is_last or stop_after_epoch:
      save_checkpoint(latest_manager, state, meta)
    if stop_after_epoch and not is_last:
      return _stopped(run, latest_manager, epoch + 1, 0, record['step'])

  if final_test is None:
    test_set = make_eval_set(splits.test_images, splits.test_labels, config.eval_batch_size,
                             mesh)
    final_test = run_eval(state.eval_variables(), test_set)
  test, predictions = final_test
  best_test_accuracy = None
  if config.keep_best_checkpoint and best_manager.latest_step() is not None:
    if val_is_test:  # The best checkpoint's validation score is its test score.
      best_test_accuracy = meta['best_val_accuracy']
    else:
      best_state, _ = restore_checkpoint(best_manager, abstract_state)
      best_test_accuracy = run_eval(best_state.eval_variables(), test_set,
                                    with_predictions=False)[0]['accuracy']
  final_val = next((r for r in reversed(history) if 'val_accuracy' in r), {})
  results = run_results(run, models.count_params(state.params), test) | {
      'steps': int(state.step),
      'final_val_accuracy': final_val.get('val_accuracy'),
      'final_val_loss': final_val.get('val_loss'),
      'best_val_accuracy': meta['best_val_accuracy'] if meta['best_val_accuracy'] >= 0 else None,
      'best_epoch': meta['best_epoch'],
      'best_test_accuracy': best_test_accuracy,
      'wall_seconds': time.time() - clock.start,
      'elapsed_seconds': elapsed(),
      # When validation (the test set) first scored the PyTorch reference's final accuracy.
      'reference_reached': report.first_reaching(history, config.reference.pytorch_final / 100)
                           if val_is_test and config.reference.pytorch_final else None,
      'compile_seconds': clock.compile_seconds,
      'train_seconds': clock.train_seconds,
      'eval_seconds': clock.eval_seconds,
      'images_per_second': clock.train_images / max(clock.train_seconds, 1e-9),
  }
  if jax.process_index() == 0:
    report.write_report(writers.as_path(run.workdir), results, history,
                        confusion_matrix(splits.test_labels, predictions,
                                         config.model.num_classes),
                        write_plots=config.write_plots)
  return results


def _stopped(run: Run, latest_manager, epoch: int, step_in_epoch: int, step: int) -> dict:
  """After a SIGTERM: waits for the checkpoint, says how to resume; train_and_evaluate's result."""
  latest_manager.wait_until_finished()
  print(f'SIGTERM: saved a checkpoint at epoch {epoch + 1}, step {step_in_epoch} of it '
        f'(global step {step}); resume with the same command: python -m resnet_jax.main '
        f'--config=<the same config> --workdir={run.workdir}', flush=True)
  return {'preempted': True, 'epoch': epoch, 'step': step}


def _finish_call(run: Run, clock: RunClock, writer, epoch: int, progress: _Progress,
                 latest_manager, first: int, count: int, batch_size: int,
                 result: CallResult) -> int:
  """Reads a finished call's results: checks its loss, adds them up, logs; its last global step."""
  plan = run.plan
  result = jax.device_get(result)
  if result.first_bad_step >= 0:
    _raise_non_finite(run, int(result.first_bad_step), latest_manager)
  progress.learning_rate = float(result.learning_rate)
  now = time.perf_counter()
  clock.train_seconds += now - progress.mark - (clock.compile_seconds - progress.compile_mark)
  progress.mark, progress.compile_mark = now, clock.compile_seconds
  clock.train_images += count * batch_size
  sums = metric_sums(result.metrics)
  progress.epoch_sums = add_sums(progress.epoch_sums, sums)
  progress.window = add_sums(progress.window, sums)
  step = epoch * plan.steps + first + count
  if step - progress.last_log_step >= run.config.log_every_steps or first + count == plan.steps:
    _log_progress(run, writer, progress, epoch, step, clock)
    progress.window, progress.last_log_step = {}, step
  return step


def run_results(run: Run, parameters: int, test: dict) -> dict:
  """The results fields every report has: the system, its test score, data and machine."""
  config, splits = run.config, run.splits
  device = jax.devices()[0]
  return {
      'model': config.model.name,
      'parameters': parameters,
      'epochs': config.num_epochs,
      'final_test_accuracy': test['accuracy'],
      'final_test_loss': test['loss'],
      'device_kind': device.device_kind,
      'platform': device.platform,
      'device_count': jax.device_count(),
      'process_count': jax.process_count(),
      'placement': 'device' if run.resident else 'host',
      'data_source': splits.source,
      'train_examples': len(splits.train_labels),
      'val_examples': len(splits.val_labels),
      'test_examples': len(splits.test_labels),
      'class_names': [str(name) for name in splits.class_names],
      'seed': config.seed,
      'versions': versions(),
      'reference': config.reference.to_dict(),
      'workdir': str(writers.as_path(run.workdir)),
      'command': ' '.join(sys.argv),
      'preempted': False,
  }


def _stacked_host_batches(run: Run, epoch: int, start_step: int):
  """Yields this process's share of each call's batches, stacked [steps, batch/processes, ...]."""
  config, plan = run.config, run.plan
  batches = run.host_batcher.epoch(
      plan.batch_size, seed=config.seed, epoch=epoch, shuffle=True,
      drop_remainder=config.drop_remainder, start_step=start_step,
      process_index=jax.process_index(), process_count=jax.process_count(),
      multiple_of=plan.num_devices)
  for _, count, _ in plan.calls(start_step):
    images, labels = [], []
    for _ in range(count):
      batch_images, batch_labels = next(batches)
      images.append(np.asarray(batch_images))
      labels.append(np.asarray(batch_labels).astype(np.int32))
    yield np.stack(images), np.stack(labels)


def _log_progress(run: Run, writer, progress: _Progress, epoch, step, clock):
  """The progress line (and its scalars): epoch, step, loss, accuracy, lr, images/s, ETA."""
  config = run.config
  computed = mean_of_sums(progress.window)
  total_steps = run.plan.steps * config.num_epochs
  images_per_second = clock.train_images / max(clock.train_seconds, 1e-9)
  eta = (total_steps - step) * config.batch_size / max(images_per_second, 1e-9)
  learning_rate = progress.learning_rate
  writer.write_scalars(step, {'train_loss': computed['loss'],
                              'train_accuracy': computed['accuracy'],
                              'learning_rate': learning_rate,
                              'images_per_second': images_per_second})
  logging.info('epoch %d/%d step %d/%d: loss %.4f acc %.2f%% lr %.4g, %.0f images/s, ETA %s',
               epoch + 1, config.num_epochs, step, total_steps, computed['loss'],
               100 * computed['accuracy'], learning_rate, images_per_second,
               _format_seconds(eta))


def _log_epoch(config, record: dict) -> None:
  train = (f"train loss {record['train_loss']:.4f} acc {100 * record['train_accuracy']:.2f}%"
           if 'train_loss' in record else 'no training metrics (a checkpoint without them)')
  val = (f", validation loss {record['val_loss']:.4f} acc {100 * record['val_accuracy']:.2f}%"
         if 'val_accuracy' in record else '')
  logging.info('epoch %d/%d: %s%s (%.1fs)', record['epoch'], config.num_epochs, train, val,
               record['epoch_seconds'])


def _raise_non_finite(run: Run, bad_step: int, latest_manager):
  """UserError for a non-finite loss at global step bad_step, naming the checkpoint on disk."""
  steps = run.plan.steps
  saved = latest_manager.latest_step()
  if saved is None:
    kept = 'no checkpoint had been saved yet'
  else:
    epochs, rest = divmod(saved, steps)
    where = f'after epoch {epochs}' if not rest else f'epoch {epochs + 1}, step {rest} of it'
    kept = f'the last good checkpoint ({where}) is kept in {latest_manager.directory}'
  raise UserError(
      f'non-finite training loss at epoch {bad_step // steps + 1}, step {bad_step % steps + 1} '
      f'of it; {kept}; try a lower config.optim.learning_rate (now '
      f'{run.config.optim.learning_rate}), '
      "config.optim.clip_mode='global_norm' or config.model.dtype='float32'")
