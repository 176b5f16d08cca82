"""Populations: several runs of one network trained at once, one per group of devices.

The devices are split into equal groups, one a member, on a 2-D mesh ('members', 'data'). The
train call is the single run's (`steps.train_steps_resident`) under `jax.shard_map` over
'members': each member's state lives on its group, data-parallel over the group's 'data' axis as
a single run is over its mesh, and no collective crosses members. Members differ in their seed
and in the scalar hyperparameters of `members.MEMBER_SCALARS`, which reach the one program as
per-member arrays. Each member is its single run: its own config and workdir (a `runs.Run` on its
group's devices), its data order, initialisation and step randomness from its own seed.

`Population` is what the training loop (`train.TrainLoop`) asks of the devices, as `train.Solo`
is for one run: the loop is the same for both.
"""

import contextlib
import dataclasses
import functools
import os
from typing import Any, Callable, Optional, Sequence

from absl import logging
import jax
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax.errors import UserError
from resnet_jax.reporting import population_report
from resnet_jax.reporting import report
from resnet_jax.training import evaluator
from resnet_jax.training import feed
from resnet_jax.training import members
from resnet_jax.training import progress
from resnet_jax.training import runs
from resnet_jax.training import steps
from resnet_jax.training import workdir_lock

MEMBERS = 'members'


def member_label(config: ml_collections.ConfigDict) -> str:
  """A member's folder in its population's workdir: seed_<S>."""
  return f'seed_{config.seed}'


def workdir_label(workdir: str) -> str:
  """A member's name in the population's lines and summary: its folder's."""
  return os.path.basename(os.path.normpath(workdir))


def seed_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """The members of a config with population.seeds: the config at each seed, as a single run."""
  configs = []
  for seed in config.population.seeds:
    member = config.copy_and_resolve_references()
    member.seed = int(seed)
    member.population.seeds = ()
    configs.append(member)
  return configs


def why_not_together(configs: Sequence[ml_collections.ConfigDict]) -> Optional[str]:
  """None where configs can train as one population, else why not, in one sentence."""
  runs_given = [(config.seed, sorted(members.member_values(config).items())) for config in configs]
  twice = next((seed for i, (seed, values) in enumerate(runs_given)
                if (seed, values) in runs_given[:i]), None)
  if twice is not None:
    return f'seed {twice} is given twice with the same hyperparameters (one run twice)'
  first = configs[0]
  if first.data.placement == 'host':
    return ("config.data.placement='host' streams each batch from the host, and a population "
            "reads its members' batches from the training set on their devices: use "
            "data.placement='device' or 'auto', or train the runs one at a time")
  if first.schedule.name == 'plateau':
    return ("config.schedule.name='plateau' sets each run's rate on the host from its own "
            'validation: train the runs one at a time')
  held_out = {c.seed for c in configs} if first.data.validation.strip() != 'test' else set()
  if len(held_out) > 1:
    return (f'config.data.validation={first.data.validation!r} holds out a different part of '
            'the training set for each seed, and a population trains its members on one: use '
            "data.validation='test', or train the seeds one at a time")
  return members.why_apart(configs)


def group_sizes(num_devices: int, batch_size: int) -> list[int]:
  """The member counts a population may have on num_devices devices: equal groups, each
  dividing the batch."""
  return [k for k in range(1, num_devices + 1)
          if num_devices % k == 0 and batch_size % (num_devices // k) == 0]


def members_per_round(config: ml_collections.ConfigDict, num_members: int,
                      devices=None) -> int:
  """How many members one program holds on `devices` (default: jax.devices()): the most, up to
  num_members, whose equal groups each take a share of the batch; 1 on one device."""
  devices = jax.devices() if devices is None else devices
  if jax.process_count() > 1:
    return 1
  fitting = [k for k in group_sizes(len(devices), config.batch_size) if k <= num_members]
  return max(fitting) if fitting else 1


@dataclasses.dataclass(frozen=True)
class Population:
  """Members on the rows of a ('members', 'data') mesh; their states stacked on axis 0.

  Attributes:
    members: each member's run (its config, workdir and group's devices).
    mesh: the population's mesh, members[i] on row i.
    values: {key: [values of each member]} of `members.MEMBER_SCALARS` where they differ.
  """
  members: list
  mesh: jax.sharding.Mesh
  values: dict

  @property
  def size(self) -> int:
    return len(self.members)

  def sharding(self, *rest) -> NamedSharding:
    """Split over members on axis 0 (and `rest` after it)."""
    return NamedSharding(self.mesh, P(MEMBERS, *rest))

  def stack(self, states: Sequence[Any]) -> Any:
    """Member states (each on its group) as one population state, without a copy between
    devices: member i's shards become row i's."""
    sharding = self.sharding()

    def stack_leaf(*leaves):
      shards = [shard.data[None] for leaf in leaves for shard in leaf.addressable_shards]
      return jax.make_array_from_single_device_arrays((len(leaves),) + leaves[0].shape,
                                                      sharding, shards)

    return jax.tree.map(stack_leaf, *states)

  def member_state(self, state, index: int):
    """Member index's part of a population state, on its group's devices (replicated there)."""
    member_mesh = self.members[index].mesh
    sharding = feed.replicated(member_mesh)
    devices = set(member_mesh.devices.flat)

    def take(leaf):
      shards = [shard.data[0] for shard in leaf.addressable_shards if shard.device in devices]
      return jax.make_array_from_single_device_arrays(leaf.shape[1:], sharding, shards)

    return jax.tree.map(take, state)

  def member_result(self, value, index: int):
    return jax.tree.map(lambda x: x[index], value)

  def initial_state(self) -> steps.TrainState:
    return self.stack([feed.initial_state(run.ctx, run.config.data.image_size, run.mesh)
                       for run in self.members])

  def abstract_state(self) -> steps.TrainState:
    """The population state's shapes and shardings, for compiling without the devices."""
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct((self.size,) + leaf.shape, leaf.dtype,
                                          sharding=self.sharding()),
        self.members[0].abstract_state())

  def batch_specs(self, count: int, batch_size: int) -> tuple:
    """The train call's (abstract) arguments after the state, for `count` steps of a batch a
    member: the indices, the training set (`feed.train_set_specs`) and the scalars."""
    run = self.members[0]
    indices = jax.ShapeDtypeStruct((self.size, count, batch_size), jnp.int32,
                                   sharding=self.sharding(None, feed.DATA))
    scalars = {key: jax.ShapeDtypeStruct((self.size,), jnp.float32, sharding=self.sharding())
               for key in self.values} or None
    return (indices, *feed.train_set_specs(run.plan.size, run.config.data.image_size,
                                           self.mesh), scalars)

  def scalars(self) -> Optional[dict]:
    """The per-member scalars as arrays split over members, the train call's last argument
    (None: the members share every one)."""
    if not self.values:
      return None
    return {key: feed.put_global(np.asarray(values, np.float32), self.sharding())
            for key, values in self.values.items()}

  def _member_ctx(self, values, steps_per_epoch):
    """The step's context for a member: the first's, with the member's scalars where given."""
    ctx = self.members[0].ctx
    return ctx if values is None else members.member_context(ctx, values, steps_per_epoch)

  def jit_train_steps(self) -> Callable:
    """The population's train call: (state, indices [members, steps, batch], images, labels,
    scalars (`scalars`))."""
    steps_per_epoch = self.members[0].plan.steps

    def member_steps(state, indices, image_rows_u8, labels, values):
      state = jax.tree.map(lambda x: x[0], state)
      values = None if values is None else {k: v[0] for k, v in values.items()}
      ctx = self._member_ctx(values, steps_per_epoch)
      new_state, result = steps.train_steps_resident(state, indices[0], image_rows_u8, labels,
                                                     ctx)
      return jax.tree.map(lambda x: x[None], (new_state, result))

    split, whole = P(MEMBERS), P()
    population_steps = jax.shard_map(
        member_steps, mesh=self.mesh, in_specs=(split, split, whole, whole, split),
        out_specs=split, axis_names={MEMBERS}, check_vma=False)
    return jax.jit(population_steps,
                   in_shardings=(self.sharding(), self.sharding(None, feed.DATA),
                                 feed.replicated(self.mesh), feed.replicated(self.mesh),
                                 self.sharding()),
                   out_shardings=self.sharding(), donate_argnums=0)

  def create_feed(self) -> 'PopulationFeed':
    run = self.members[0]
    return PopulationFeed(self, run.splits.train_images, run.splits.train_labels)

  def evaluate_fn(self) -> Callable:
    """(variables [members, ...], images, labels, mask) -> (summed Metrics, classes) a member."""
    ctx = self.members[0].ctx

    def member_evaluate(variables, image_rows_u8, labels, mask):
      variables = jax.tree.map(lambda x: x[0], variables)
      summed, predictions = steps.evaluate_batches(variables, image_rows_u8, labels, mask, ctx)
      return jax.tree.map(lambda x: x[None], (summed, predictions))

    split, whole = P(MEMBERS), P()
    return jax.jit(jax.shard_map(member_evaluate, mesh=self.mesh,
                                 in_specs=(split, whole, whole, whole), out_specs=split,
                                 axis_names={MEMBERS}, check_vma=False),
                   out_shardings=(self.sharding(), self.sharding(None, feed.DATA)))

  def state_sharding(self):
    return self.sharding()


class PopulationFeed:
  """The training set on every device; each member's call takes its rows of its own order, and
  the members' scalars (`Population.scalars`)."""
  resident = True

  def __init__(self, population: Population, train_images: np.ndarray, train_labels: np.ndarray):
    self._population = population
    self._plan = population.members[0].plan
    mesh = population.mesh
    self.train_set = feed.put_train_set(train_images, train_labels, mesh)
    self.scalars = population.scalars()
    self._sharding = population.sharding(None, feed.DATA)
    self._take = jax.jit(functools.partial(lax.dynamic_slice_in_dim, axis=1), static_argnums=2,
                         out_shardings=self._sharding)

  def batch_specs(self, count: int, batch_size: int) -> tuple:
    return self._population.batch_specs(count, batch_size)

  def epoch(self, epoch: int, start_step: int) -> feed.CallBatches:
    """Each member's order of the epoch (from its seed) goes to its group once."""
    del start_step
    plan = self._plan
    orders = [run.plan.epoch_batches(epoch) for run in self._population.members]
    full = (feed.put_global(np.stack([np.stack(order[:plan.num_full]) for order in orders])
                            .astype(np.int32), self._sharding) if plan.num_full else None)
    partial = (feed.put_global(np.stack([order[plan.num_full][None] for order in orders])
                               .astype(np.int32), self._sharding) if plan.partial else None)

    def call_batches(first, count, batch_size):
      del batch_size
      rows = partial if first == plan.num_full else self._take(full, first, count)
      return rows, *self.train_set, self.scalars

    return call_batches


def create_population(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str],
                      devices=None, splits=None) -> Population:
  """The members' runs on equal groups of `devices` (default: every device); UserError where
  the configs cannot train together or the devices do not split into a group each. `splits`:
  the data, where the caller has it (as `runs.setup_run`'s)."""
  reason = why_not_together(configs)
  if reason:
    raise UserError(f'these runs cannot train as one population: {reason}')
  devices = list(jax.devices() if devices is None else devices)
  count = len(configs)
  if jax.process_count() > 1:
    raise UserError('a population trains in one process (its members\' checkpoints are written '
                    'by the process holding them): run it on one host, or train the runs one at '
                    'a time')
  if count not in group_sizes(len(devices), configs[0].batch_size):
    raise UserError(
        f'{report.counted(count, "member")} cannot split {report.counted(len(devices), "device")} '
        f'into equal groups that each take a share of config.batch_size='
        f'{configs[0].batch_size}: use one of '
        f'{", ".join(map(str, group_sizes(len(devices), configs[0].batch_size)))} members')
  grid = np.asarray(devices).reshape(count, len(devices) // count)
  first = runs.setup_run(configs[0], workdirs[0], splits=splits, devices=list(grid[0]))
  members_runs = [first] + [
      dataclasses.replace(runs.setup_run(config, workdir, splits=first.splits,
                                         devices=list(row)), data=first.data)
      for config, workdir, row in zip(configs[1:], workdirs[1:], grid[1:])]
  if not first.resident:
    raise UserError('the training set does not fit on each device (data.placement chose the '
                    'host), and a population reads its members\' batches there: train the runs '
                    'one at a time')
  values = {}
  for key in members.MEMBER_SCALARS:
    column = [members.member_values(run.config)[key] for run in members_runs]
    if len(set(column)) > 1:
      values[key] = column
  mesh = jax.sharding.Mesh(grid, (MEMBERS, feed.DATA))
  return Population(members=members_runs, mesh=mesh, values=values)


def log_start(layout, num_members: int) -> None:
  """The run's start lines (its first member's), and the population's."""
  progress.log_start(layout.members[0])
  count, devices = len(layout.members), layout.mesh.devices.size
  logging.info('population: %s of %s (%s) on %s, one program%s',
               report.counted(count, 'member'), num_members,
               ', '.join(workdir_label(run.workdir) for run in layout.members),
               report.counted(devices, 'device'),
               f', {devices // count} a member' if count > 1 else ' (one at a time: more '
               'devices train more members at once)')


def training_rounds(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str],
                    devices=None) -> list[list[int]]:
  """The members' indices in the order they train, one list a program: the finished ones (a
  results.json), which only read their results again, one at a time; the others as many at once
  as `members_per_round` allows."""
  finished = [i for i, workdir in enumerate(workdirs) if report.read_results(workdir)]
  rest = [i for i in range(len(configs)) if i not in finished]
  rounds = [[i] for i in finished]
  while rest:
    count = members_per_round(configs[rest[0]], len(rest), devices)
    rounds.append(rest[:count])
    rest = rest[count:]
  return rounds


def train_population(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str],
                     workdir: str, *, resume_command: Optional[str] = None) -> list[dict]:
  """Trains each configs[i] into workdirs[i] (a single run's workdir), as many at once as the
  devices allow (`training_rounds`), holding the lock of `workdir`, where the population's
  summary goes, and of every member's.

  Returns:
    Each member's results, as `train.train_and_evaluate` returns them ({'preempted': True, ...}
    for every member not finished when a stop came).

  Raises:
    UserError: runs that cannot train together (`why_not_together`), and every error a single
      run raises.
  """
  from resnet_jax.training import train  # pylint: disable=g-import-not-at-top
  reason = why_not_together(configs)
  if reason:
    raise UserError(f'these runs cannot train as one population: {reason}')
  results = [None] * len(configs)
  with contextlib.ExitStack() as locks:
    for folder, purpose in [(workdir, 'training a population')] + [
        (member_workdir, f'training in the population of {workdir}') for member_workdir in workdirs]:
      locks.enter_context(workdir_lock.hold(folder, purpose, resume_command))
    for indices in training_rounds(configs, workdirs):
      chosen = [configs[i] for i in indices], [workdirs[i] for i in indices]
      layout = (train.Solo(runs.setup_run(chosen[0][0], chosen[1][0])) if len(indices) == 1
                else create_population(*chosen))
      log_start(layout, len(configs))
      trained = train.train_members(layout, progress.RunClock(), resume_command, workdir)
      for index, member_results in zip(indices, trained):
        results[index] = member_results
      if trained[0].get('preempted'):
        return [r or trained[0] for r in results]
    if jax.process_index() == 0:
      population_report.write_population_report(
          workdir, {workdir_label(w): w for w in workdirs}, resume_command,
          write_plots=configs[0].write_plots)
  return results
