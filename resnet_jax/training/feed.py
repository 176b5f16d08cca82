"""Where a run's arrays live, and how each compiled train call gets its batches.

One 1-D mesh (axis 'data') over every device: the state is replicated, batches are sharded on
their leading axis, so XLA computes BatchNorm statistics over the global batch and N devices
train like one. An epoch is planned as optimizer steps grouped into compiled calls
(`EpochPlan`). Two feeds give a call its batch arguments, behind one interface (`Feed`):
- `ResidentFeed` (the fast path): the whole uint8 training set is replicated on every device; a
  call receives only the batch indices (the host's `input_pipeline.epoch_permutation`);
- `StreamedFeed`: `input_pipeline.HostBatcher` sends each process's share of every batch.
"""

import dataclasses
import functools
from typing import Callable, Iterator, Protocol

import jax
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import platforms
from resnet_jax.data import input_pipeline
from resnet_jax.errors import UserError
from resnet_jax.training import steps

# A training set larger than this stays on the host under data.placement='auto'.
MAX_RESIDENT_BYTES = 4 << 30
# Steps fused in one compiled call when config.steps_per_call is 0 (on a CPU: 1): about this many,
# at most MAX_STEPS_PER_CALL (`default_steps_per_call`).
AUTO_STEPS_PER_CALL = 32
MAX_STEPS_PER_CALL = 128

# A call's batch arguments: (first step in the epoch, steps, batch size) -> arrays.
CallBatches = Callable[[int, int, int], tuple]


# The mesh axis a batch is split over (a population's mesh has 'members' before it).
DATA = 'data'


def create_mesh(devices) -> jax.sharding.Mesh:
  """The run's 1-D mesh over `devices` (every device of every process, in jax's order)."""
  return jax.sharding.Mesh(np.asarray(devices), (DATA,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Stacked batches [calls or steps, batch, ...], split over the devices on the batch axis."""
  return NamedSharding(mesh, P(None, DATA))


def put_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a host array every process holds in full."""
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def initial_state(ctx: steps.StepContext, image_size: int,
                  mesh: jax.sharding.Mesh) -> steps.TrainState:
  """A fresh TrainState, replicated on every device."""
  return jax.jit(functools.partial(steps.create_train_state, ctx, image_size),
                 out_shardings=replicated(mesh))()


def abstract_train_state(ctx: steps.StepContext, image_size: int,
                         mesh: jax.sharding.Mesh) -> steps.TrainState:
  """The state's shapes, dtypes and (replicated) shardings, for restoring and compiling."""
  shapes = jax.eval_shape(functools.partial(steps.create_train_state, ctx, image_size))
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated(mesh)), shapes)


def jit_train_steps(ctx: steps.StepContext, mesh: jax.sharding.Mesh, *,
                    resident: bool) -> Callable:
  """The jitted multi-step train call: state donated, batches sharded on the data axis.

  Resident: (state, indices [steps, batch], images_u8, labels) with the whole set replicated.
  Streamed: (state, images_u8 [steps, batch, ...], labels [steps, batch]).
  """
  if resident:
    return jax.jit(functools.partial(steps.train_steps_resident, ctx=ctx),
                   in_shardings=(replicated(mesh), batch_sharded(mesh), replicated(mesh),
                                 replicated(mesh)),
                   out_shardings=replicated(mesh), donate_argnums=0)
  return jax.jit(functools.partial(steps.train_steps_streamed, ctx=ctx),
                 in_shardings=(replicated(mesh), batch_sharded(mesh), batch_sharded(mesh)),
                 out_shardings=replicated(mesh), donate_argnums=0)


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
  seed: int             # config.seed: picks each epoch's order
  drop_remainder: bool

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

  def epoch_batches(self, epoch: int) -> list[np.ndarray]:
    """The global example indices of each of the epoch's steps, as the run trains them."""
    return input_pipeline.epoch_batch_indices(
        self.size, self.batch_size, seed=self.seed, epoch=epoch,
        drop_remainder=self.drop_remainder, multiple_of=self.num_devices)


def check_batch_size(batch_size: int, num_devices: int) -> None:
  """UserError unless the global batch splits evenly over the devices."""
  if batch_size < 1 or batch_size % num_devices:
    raise UserError(f'config.batch_size={batch_size} must be a positive multiple of the '
                    f'{num_devices} devices')


def epoch_plan(config: ml_collections.ConfigDict, size: int,
               platform: platforms.Platform) -> EpochPlan:
  """Steps of an epoch; the last partial batch (cut to a multiple of the devices) is trained."""
  batch_size, num_devices = config.batch_size, platform.device_count
  check_batch_size(batch_size, num_devices)
  num_steps = input_pipeline.steps_per_epoch(size, batch_size, config.drop_remainder,
                                             multiple_of=num_devices)
  if num_steps < 1:
    raise UserError(f'config.batch_size={batch_size} leaves no training step for the {size} '
                    'training examples: lower it, or unset config.drop_remainder')
  num_full = size // batch_size
  partial = (size % batch_size) // num_devices * num_devices if num_steps > num_full else 0
  steps_per_call = config.steps_per_call or default_steps_per_call(num_full, platform)
  return EpochPlan(size=size, batch_size=batch_size, steps=num_steps, partial=partial,
                   steps_per_call=max(1, min(steps_per_call, num_full)),
                   num_devices=num_devices, seed=config.seed,
                   drop_remainder=config.drop_remainder)


def default_steps_per_call(num_full: int, platform: platforms.Platform) -> int:
  """Steps a compiled call fuses when config.steps_per_call is 0: 1 on a CPU (`steps.scan`).

  On an accelerator, the full steps of an epoch split into calls of ONE shape wherever they can
  (every new shape is another compile, and on a GPU another round of autotuning): the largest
  divisor of the full steps in [AUTO_STEPS_PER_CALL / 2, AUTO_STEPS_PER_CALL], else the smallest
  up to MAX_STEPS_PER_CALL (batch 512 on 50,000 images: 97 full steps, a prime, one call of 97),
  else all of them where there are fewer than AUTO_STEPS_PER_CALL / 2, else AUTO_STEPS_PER_CALL
  (two shapes).
  """
  if platform.is_cpu:
    return 1
  candidates = [*range(AUTO_STEPS_PER_CALL, AUTO_STEPS_PER_CALL // 2 - 1, -1),
                *range(AUTO_STEPS_PER_CALL + 1, MAX_STEPS_PER_CALL + 1)]
  divisor = next((count for count in candidates if num_full % count == 0), None)
  if divisor:
    return divisor
  if num_full < AUTO_STEPS_PER_CALL // 2:
    return max(num_full, 1)
  return AUTO_STEPS_PER_CALL


# ---------------------------------------------------------------------------------------------
# Feeding the train call.


def device_bytes(shape: tuple[int, ...], dtype) -> int:
  """The bytes an array takes on a device that tiles its two minor dimensions, as a TPU does.

  The minor dimension pads to 128 lanes and the next to 32 bytes' worth of rows (8 rows of 4-byte
  values, 32 of 1-byte ones); a GPU or CPU needs no more. An upper bound for every platform.
  """
  itemsize = np.dtype(dtype).itemsize
  dims = list(shape) or [1]
  dims[-1] = -(-dims[-1] // 128) * 128
  if len(dims) > 1:
    rows = 32 // itemsize
    dims[-2] = -(-dims[-2] // rows) * rows
  return int(np.prod(dims)) * itemsize


def resident_bytes(train_images: np.ndarray, eval_images: np.ndarray) -> int:
  """What the resident path holds on each device: the training set and the evaluation set, as
  lane-dense rows (`steps.image_rows`), with their labels."""
  return sum(device_bytes((len(images), int(np.prod(images.shape[1:]))), np.uint8)
             + device_bytes((len(images),), np.int32) for images in (train_images, eval_images))


def resident_placement(config: ml_collections.ConfigDict, train_images: np.ndarray,
                       eval_images: np.ndarray, platform: platforms.Platform) -> bool:
  """Whether the training set goes on the device (config.data.placement).

  `auto`: where the training and evaluation sets take at most a quarter of a device's memory
  (`platform.memory_bytes`; unknown: MAX_RESIDENT_BYTES) and MAX_RESIDENT_BYTES, counted as the
  device holds them (`resident_bytes`).
  """
  placement = config.data.placement  # One of input_pipeline.PLACEMENTS (runs.check_config).
  if placement != 'auto':
    return placement == 'device'
  limit = (platform.memory_bytes or MAX_RESIDENT_BYTES * 4) // 4
  return resident_bytes(train_images, eval_images) <= min(limit, MAX_RESIDENT_BYTES)


def put_train_set(train_images: np.ndarray, train_labels: np.ndarray,
                  mesh: jax.sharding.Mesh) -> tuple[jax.Array, jax.Array]:
  """The training images as uint8 lane-dense rows [N, H * W * C] and the labels (int32), whole on
  every device; the compiled step gathers a batch's rows and reshapes them."""
  return (put_global(np.asarray(steps.image_rows(train_images)), replicated(mesh)),
          put_global(train_labels.astype(np.int32), replicated(mesh)))


def train_set_specs(size: int, image_size: int, mesh: jax.sharding.Mesh) -> tuple:
  """The resident training set's arrays (`put_train_set`) as shapes, for compiling ahead."""
  return (jax.ShapeDtypeStruct((size, image_size * image_size * 3), jnp.uint8,
                               sharding=replicated(mesh)),
          jax.ShapeDtypeStruct((size,), jnp.int32, sharding=replicated(mesh)))


def batch_specs(count: int, batch_size: int, mesh: jax.sharding.Mesh, *, resident: bool,
                train_size: int, image_size: int) -> tuple:
  """A train call's (abstract) batch arguments after the state, for `count` steps of a batch.

  Resident: the indices [steps, batch] and the whole set (`train_set_specs`); streamed: the
  stacked images [steps, batch, H, W, 3] and labels [steps, batch].
  """
  sharding = batch_sharded(mesh)
  if resident:
    indices = jax.ShapeDtypeStruct((count, batch_size), jnp.int32, sharding=sharding)
    return indices, *train_set_specs(train_size, image_size, mesh)
  images = jax.ShapeDtypeStruct((count, batch_size, image_size, image_size, 3), jnp.uint8,
                                sharding=sharding)
  return images, jax.ShapeDtypeStruct((count, batch_size), jnp.int32, sharding=sharding)


class Feed(Protocol):
  """Gives every compiled train call of an epoch its batch arguments (after the state)."""
  resident: bool

  def batch_specs(self, count: int, batch_size: int) -> tuple:
    """The (abstract) batch arguments of a call of `count` steps, for compiling ahead."""

  def epoch(self, epoch: int, start_step: int) -> CallBatches:
    """The epoch's calls' batch arguments, for calls from start_step on, made in order."""


class ResidentFeed:
  """The training set on every device; a call takes its rows of the epoch's index array."""
  resident = True

  def __init__(self, plan: EpochPlan, mesh: jax.sharding.Mesh, train_images: np.ndarray,
               train_labels: np.ndarray):
    self._plan, self._mesh, self._image_size = plan, mesh, train_images.shape[1]
    self.train_set = put_train_set(train_images, train_labels, mesh)
    self._take = jax.jit(functools.partial(lax.dynamic_slice_in_dim, axis=0), static_argnums=2,
                         out_shardings=batch_sharded(mesh))

  def batch_specs(self, count: int, batch_size: int) -> tuple:
    return batch_specs(count, batch_size, self._mesh, resident=True,
                       train_size=self._plan.size, image_size=self._image_size)

  def epoch(self, epoch: int, start_step: int) -> CallBatches:
    """The epoch's batch indices go to the devices once; each call takes its rows there."""
    del start_step  # Each call names its first step.
    plan, sharding = self._plan, batch_sharded(self._mesh)
    batches = plan.epoch_batches(epoch)
    full = (put_global(np.stack(batches[:plan.num_full]).astype(np.int32), sharding)
            if plan.num_full else None)
    partial = (put_global(batches[plan.num_full][None].astype(np.int32), sharding)
               if plan.partial else None)

    def call_batches(first, count, batch_size):
      del batch_size  # Given by the rows taken.
      rows = partial if first == plan.num_full else self._take(full, first, count)
      return rows, *self.train_set

    return call_batches


class StreamedFeed:
  """Batches from this process's host, stacked per call and sent to its devices."""
  resident = False

  def __init__(self, plan: EpochPlan, mesh: jax.sharding.Mesh,
               host_batcher: input_pipeline.HostBatcher, image_size: int):
    self._plan, self._mesh = plan, mesh
    self._host_batcher, self._image_size = host_batcher, image_size

  def batch_specs(self, count: int, batch_size: int) -> tuple:
    return batch_specs(count, batch_size, self._mesh, resident=False,
                       train_size=self._plan.size, image_size=self._image_size)

  def host_call_batches(self, epoch: int,
                        start_step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This process's share of each call's batches, stacked [steps, batch/processes, ...]."""
    plan = self._plan
    batches = self._host_batcher.epoch(
        plan.batch_size, seed=plan.seed, epoch=epoch, shuffle=True,
        drop_remainder=plan.drop_remainder, start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count(),
        multiple_of=plan.num_devices)
    for _, count, _ in plan.calls(start_step):
      images, labels = [], []
      for _ in range(count):
        batch_images, batch_labels = next(batches)
        images.append(np.asarray(batch_images))
        labels.append(np.asarray(batch_labels).astype(np.int32))
      yield np.stack(images), np.stack(labels)

  def epoch(self, epoch: int, start_step: int) -> CallBatches:
    sharding = batch_sharded(self._mesh)
    stacked = self.host_call_batches(epoch, start_step)

    def call_batches(first, count, batch_size):
      del first, count, batch_size  # The generator yields the calls in order.
      return tuple(jax.make_array_from_process_local_data(sharding, local)
                   for local in next(stacked))

    return call_batches


def create_feed(config: ml_collections.ConfigDict, plan: EpochPlan, mesh: jax.sharding.Mesh,
                train_images: np.ndarray, train_labels: np.ndarray, *,
                resident: bool) -> Feed:
  """The feed `resident` picks (`resident_placement`); the resident one puts the set on devices."""
  if resident:
    return ResidentFeed(plan, mesh, train_images, train_labels)
  host_batcher = input_pipeline.HostBatcher(train_images, train_labels,
                                            backend=config.data.host_backend)
  return StreamedFeed(plan, mesh, host_batcher, config.data.image_size)
