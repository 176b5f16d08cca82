"""One training step, pure: augment, forward, loss, backward, update, metrics; and its scans.

Everything here is a pure function of its arguments (the step's randomness is
`fold_in(state.rng, state.step)`), jitted by `resnet_jax.training.feed` over a mesh of every device. A
compiled call runs several steps (`scan_train_steps`), summing their metrics on the device and
finding the first non-finite loss, so that the host reads a call's results while the next runs.
"""

import dataclasses
from typing import Any, Callable, Mapping

from flax import struct
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import optax

from resnet_jax import models
from resnet_jax import platforms
from resnet_jax.data import augment
from resnet_jax.models import losses
# Before clu.metrics: makes clu importable without TensorFlow.
from resnet_jax.reporting import writers  # noqa: F401  pylint: disable=unused-import
from clu import metrics  # pylint: disable=g-bad-import-order


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
  platform: platforms.Platform  # the run's devices: the dtype of 'auto', a scan or an unroll
  # Parts of a training batch kept apart (each device's shard, config.batch_statistics=
  # 'per_device'): BatchNorm statistics and mixup pairs stay within a part; 1: the global batch.
  batch_groups: int = 1
  # {dotted config key: value} read instead of the config's, possibly traced scalars: a
  # population member's (`training.members.member_context`, which also rebuilds tx for them).
  values: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def dtype(self):
    return models.DTYPES[models.compute_dtype(self.config.model, self.platform)]


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
      config.model.num_classes, ctx.dtype, groups=ctx.batch_groups,
      mixup_alpha=ctx.values.get('augment.mixup_alpha'))
  # Whether labels are smoothed is the config's; by how much may be a member's value.
  smoothing = (ctx.values.get('label_smoothing', config.label_smoothing)
               if config.label_smoothing else 0.0)

  def loss_fn(params):
    logits, new_model_state = ctx.model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
        mutable=['batch_stats'], rngs={'dropout': dropout_key})
    logits = logits.astype(jnp.float32)
    loss = losses.cross_entropy(logits, soft_targets, smoothing)
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


def scan_train_steps(state, batches, batch_fn, ctx) -> tuple[TrainState, CallResult]:
  """Runs train_step over the leading axis of `batches`; also finds the first non-finite loss."""

  def body(carry, batch):
    state, summed, first_bad_step = carry
    images_u8, labels = batch_fn(batch)
    new_state, step_metrics = train_step(state, images_u8, labels, ctx)
    bad = ~jnp.isfinite(step_metrics.loss.total)
    first_bad_step = jnp.where(bad & (first_bad_step < 0), state.step, first_bad_step)
    return (new_state, summed.merge(step_metrics), first_bad_step), None

  init = (state, Metrics.empty(), jnp.asarray(-1, jnp.int32))
  (state, summed, first_bad_step), _ = scan(body, init, batches, unroll=ctx.platform.is_cpu)
  # A step's loss is computed before its update: an update that overflows shows only in the
  # parameters, so they are checked once a call (before anything can save them).
  params_finite = jnp.isfinite(optax.global_norm(state.params))
  first_bad_step = jnp.where((first_bad_step < 0) & ~params_finite, state.step - 1,
                             first_bad_step)
  learning_rate = jnp.asarray(ctx.learning_rate(state.step - 1, state.opt_state), jnp.float32)
  return state, CallResult(summed, first_bad_step, learning_rate)


def scan(body, init, xs, *, unroll: bool):
  """lax.scan, or unrolled in Python (on a CPU, where XLA runs a while loop's convolutions ~20x
  slower: `platforms.Platform.is_cpu` of the run's devices decides)."""
  if not unroll:
    return lax.scan(body, init, xs)
  carry, outputs = init, []
  for i in range(jax.tree.leaves(xs)[0].shape[0]):
    carry, output = body(carry, jax.tree.map(lambda x, i=i: x[i], xs))
    outputs.append(output)
  return carry, jax.tree.map(lambda *ys: jnp.stack(ys), *outputs)


def image_rows(images_u8: jax.Array) -> jax.Array:
  """Images [..., H, W, C] as lane-dense rows [..., H * W * C], as the devices keep them.

  A minor dimension of 3 would pad to 128 lanes on a TPU (about 43 times the bytes); rows of
  3,072 bytes fill them.
  """
  return images_u8.reshape(images_u8.shape[:-3] + (-1,))


def images_from_rows(rows: jax.Array, image_size: int) -> jax.Array:
  """`image_rows` undone inside the compiled step: [..., S * S * 3] -> [..., S, S, 3]."""
  return rows.reshape(rows.shape[:-1] + (image_size, image_size, 3))


def train_steps_resident(state, indices, image_rows_u8, labels, ctx):
  """len(indices) steps; batch i is rows indices[i] of the set (whole on every device, as rows)."""
  size = ctx.config.data.image_size
  return scan_train_steps(
      state, indices, lambda idx: (images_from_rows(image_rows_u8[idx], size), labels[idx]), ctx)


def train_steps_streamed(state, images_u8, labels, ctx):
  """len(images_u8) steps on stacked batches [steps, batch, H, W, C] sent from the host."""
  return scan_train_steps(state, (images_u8, labels), lambda batch: batch, ctx)


def evaluate_batches(variables, image_rows_u8, labels, mask, ctx):
  """Summed metrics and predictions over stacked padded batches [num_batches, batch, ...].

  The images come as lane-dense rows (`image_rows`) [num_batches, batch, S * S * 3].
  """
  size = ctx.config.data.image_size

  def body(summed, batch):
    rows, batch_labels, batch_mask = batch
    batch_metrics, predictions = eval_step(variables, images_from_rows(rows, size), batch_labels,
                                           batch_mask, ctx)
    return summed.merge(batch_metrics), predictions

  return scan(body, Metrics.empty(), (image_rows_u8, labels, mask), unroll=ctx.platform.is_cpu)
