r"""Sweeps: one training run per point of a grid or a random search over config keys.

  python -m resnet_jax.sweep --config configs/sweeps/s003_table4.py --workdir runs/s003_table4

A sweep config (configs/sweeps/*.py) returns `sweep_config(base, grid=..., random=...)`: `base` is
a full run config, `grid` maps dotted config keys to the values to try (every combination runs),
`random` maps keys to distributions sampled `num_samples` times. A value for a whole section (e.g.
`model`: `models.preset(name)`, or `schedule`: a dict of the keys to change) replaces those keys
together and is labelled by its `name`. Any key can be overridden on the command line, the base's
as `--config.base.num_epochs=30`, the grid's as `--config.grid.optim.learning_rate='(0.1,0.01)'`.

Each point trains in <workdir>/<point>/ through `train.train_and_evaluate`, or, where points
differ only in scalar hyperparameters (learning rate, weight decay, seed, ...) and the devices
hold several runs, as one population (`population.train_population`: several runs in one compiled
program, each on its own group of devices), each still in its own <workdir>/<point>/;
`--population_size=N` trains at most N points at once (default: as many as the devices hold; 1:
one point at a time). Running the command again skips finished points (a whole results.json,
`report.read_results`; a torn one is written again from the point's final checkpoint) and
resumes a partial one from its checkpoint, but only where the config the point's folder recorded
(config.json) is the point's config now: a sweep whose base or values changed is refused before
any training, naming the point and the keys that differ (use a new --workdir, or delete the
point's folder to train it again), since training over the old run would mix two configs in one
point. Points over the parameter budget are reported, not run; every other point's config is
checked before the first trains; a point whose training fails with a user error (e.g. a
diverging learning rate) is reported and the sweep goes on. Independent processes can share the
points: started alike, each leaves a point another holds (its folder's lock) to it, so each point
trains once; `--process_index=i --process_count=n` runs every n-th point (or population) instead
(under `jax.distributed` every run spans all processes, so every process runs every point).
Ctrl-C exits 130 with the sweep's own command to resume it.
Every process writes the table for all points it finds (`sweep_report`): <workdir>/sweep.csv and
sweep.md, the validation curves of every run (curves.png) and accuracy against each swept key
(accuracy_vs_<key>.png).
"""

import copy
import dataclasses
import itertools
import json
import math
import os
import re
import shlex
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import flags
from absl import logging
import jax
from ml_collections import config_dict
import numpy as np

from resnet_jax import cli
from resnet_jax import defaults
from resnet_jax import errors
from resnet_jax import files
from resnet_jax import models
from resnet_jax.errors import UserError
from resnet_jax.reporting import report
from resnet_jax.reporting import sweep_report
from resnet_jax.training import distributed
from resnet_jax.training import population
from resnet_jax.training import run_config
from resnet_jax.training import runs
from resnet_jax.training import train
from resnet_jax.training import workdir_lock

DISTRIBUTIONS = ('uniform', 'log_uniform', 'int', 'choice')
ERROR_FILE = 'sweep_error.txt'
# Statuses in the table.
DONE = 'done'
SKIPPED_DONE = 'skipped (done)'
OVER_BUDGET = 'skipped (over budget)'
PENDING = 'pending'
PREEMPTED = 'stopped'  # 'stopped (SIGTERM)' or 'stopped (SIGINT)': resumed by the same command
IN_USE = 'in progress in another process'
POPULATIONS_DIR = 'populations'  # <workdir>/populations/<first point>/: a population's own folder.
STALE = 'stale'  # A point of another process whose folder holds a run of another config.
# Keys that decide whether a point runs, not what it trains: a change keeps finished points.
UNCOMPARED_KEYS = ('model.param_budget',)


def _nest(flat: Optional[Mapping[str, Any]], where: str) -> config_dict.ConfigDict:
  """{'optim.learning_rate': v} -> ConfigDict(optim=ConfigDict(learning_rate=tuple(v)))."""
  nested = config_dict.ConfigDict()
  for key, value in (flat or {}).items():
    *parents, leaf = key.split('.')
    section = nested
    for name in parents:
      if name not in section:
        section[name] = config_dict.ConfigDict()
      section = section[name]
      if not isinstance(section, config_dict.ConfigDict):
        raise UserError(f'{where}: {key!r} is inside another swept key; sweep one or the other')
    if leaf in section:
      raise UserError(f'{where}: {key!r} is both a key and a section; sweep one or the other')
    section[leaf] = tuple(_values(value, f'{where}.{key}'))
  return nested


def sweep_config(base: config_dict.ConfigDict, grid: Optional[Mapping[str, Sequence]] = None,
                 random: Optional[Mapping[str, Sequence]] = None, num_samples: int = 0,
                 seed: int = 0) -> config_dict.ConfigDict:
  """The config of a sweep (what a configs/sweeps/*.py file returns).

  Args:
    base: the run config every point starts from (e.g. `defaults.base_config()`).
    grid: dotted config key -> values to try; every combination of them is a point.
    random: dotted config key -> distribution: ('uniform', low, high), ('log_uniform', low,
      high), ('int', low, high) (both ends included) or ('choice', value, value, ...).
    num_samples: points drawn from `random` (each combined with every grid point).
    seed: seed of the random draws.
  """
  config = config_dict.ConfigDict()
  config.base = base
  config.grid = _nest(grid, 'config.grid')
  config.random = config_dict.ConfigDict(dict(
      num_samples=num_samples, seed=seed, params=_nest(random, 'config.random.params')))
  return config


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of a sweep: its folder name, swept values (key -> value, label) and config."""
  name: str
  values: dict
  labels: dict
  config: config_dict.ConfigDict


def _flatten(nested: config_dict.ConfigDict, where: str, prefix: str = '') -> dict:
  """Leaves of a nested ConfigDict as {'a.b': leaf}; every leaf must be a non-empty sequence."""
  flat = {}
  for name, value in nested.items():
    key = f'{prefix}{name}'
    if isinstance(value, config_dict.ConfigDict):
      flat.update(_flatten(value, where, f'{key}.'))
    else:
      flat[key] = _values(value, f'{where}.{key}')
  return flat


def _values(value, where: str) -> tuple:
  """A swept key's values: a non-empty tuple or list (a string is one value, not its letters)."""
  if not isinstance(value, (tuple, list)) or not value:
    hint = f'({value!r},)' if isinstance(value, str) else '(0.1, 0.01)'
    raise UserError(f'{where}={value!r} must be a non-empty tuple of the values to try, e.g. '
                    f'{hint}')
  return tuple(value)


def _sample(spec: tuple, key: str, rng: np.random.Generator):
  """One draw from a distribution spec of config.random.params."""
  where = f'config.random.params.{key}'
  kind, args = spec[0], spec[1:]
  if kind not in DISTRIBUTIONS:
    raise UserError(f"{where}: unknown distribution {kind!r}; use one of "
                    f"{', '.join(DISTRIBUTIONS)}, e.g. ('log_uniform', 1e-3, 1e-1)")
  if kind == 'choice':
    if not args:
      raise UserError(f"{where}: ('choice', ...) needs at least one value")
    return args[rng.integers(len(args))]
  if len(args) != 2 or not args[0] <= args[1]:
    raise UserError(f"{where}: ({kind!r}, low, high) needs low <= high, got {spec!r}")
  low, high = args
  if kind == 'int':
    return int(rng.integers(low, high + 1))
  if kind == 'log_uniform':
    if low <= 0:
      raise UserError(f"{where}: 'log_uniform' needs low > 0, got {spec!r}")
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))
  return float(rng.uniform(low, high))


def _label(value) -> str:
  """How a swept value reads in a folder name and a table."""
  if isinstance(value, (Mapping, config_dict.ConfigDict)):
    if 'name' in value:
      return str(value['name'])
    return '+'.join(f'{k}-{_label(v)}' for k, v in value.items())
  if isinstance(value, (tuple, list)):
    return 'x'.join(_label(v) for v in value)
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value)


def sweep_points(sweep_cfg: config_dict.ConfigDict) -> list[Point]:
  """Every point of the sweep, in order: the grid product, each with every random draw."""
  grid = _flatten(sweep_cfg.grid, 'config.grid')
  random_specs = _flatten(sweep_cfg.random.params, 'config.random.params')
  num_samples = sweep_cfg.random.num_samples
  if random_specs and num_samples < 1:
    raise UserError('config.random.num_samples must be >= 1 where config.random.params is set')
  if not grid and not random_specs:
    raise UserError('the sweep has no points: set config.grid and/or config.random.params')
  rng = np.random.default_rng(sweep_cfg.random.seed)
  draws = [{key: _sample(spec, key, rng) for key, spec in random_specs.items()}
           for _ in range(num_samples if random_specs else 0)] or [{}]
  shorts = sweep_report.short_keys([*grid, *random_specs])
  points = []
  for grid_values in itertools.product(*grid.values()):
    for sample, drawn in enumerate(draws):
      values = dict(zip(grid, grid_values)) | drawn
      config = copy.deepcopy(sweep_cfg.base)
      for key, value in values.items():
        where = 'config.grid' if key in grid else 'config.random.params'
        run_config.set_key(config, key, value, f'{where}.{key}')
      labels = {key: _label(value) for key, value in values.items()}
      parts = [f'sample={sample}'] if random_specs else []
      parts += [f'{shorts[key]}={label}' for key, label in labels.items()]
      name = re.sub(r'[^A-Za-z0-9_.=,+-]', '_', ','.join(parts))
      points.append(Point(name=name, values=values, labels=labels, config=config))
  names = [point.name for point in points]
  if len(set(names)) != len(names):
    duplicate = next(name for name in names if names.count(name) > 1)
    raise UserError(f'two points of the sweep are both named {duplicate!r}: give the section '
                    "values of config.grid distinct 'name' fields")
  return points


def parameter_counts(points: Sequence[Point]) -> dict[str, tuple[int, bool]]:
  """point name -> (parameters, within config.model.param_budget), each distinct model once.

  Raises:
    UserError: a point's model cannot be built (bad layout, unknown name).
  """
  by_model, counts = {}, {}
  for point in points:
    model_cfg, image_size = point.config.model, point.config.data.image_size
    model_key = (model_cfg.to_json(sort_keys=True), image_size)
    if model_key not in by_model:
      models.validate(model_cfg)
      try:
        by_model[model_key] = models.check_budget(model_cfg, image_size), True
      except UserError:
        by_model[model_key] = models.model_size(model_cfg, image_size), False
    counts[point.name] = by_model[model_key]
  return counts


def _read_json(path: str) -> Optional[dict]:
  if not os.path.isfile(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def changed_keys(point: Point, workdir: str) -> list[str]:
  """The config keys where the run recorded in the point's folder differs from point.config.

  Returns:
    Dotted keys, sorted ([] where the folder records no run, or the same config).

  Raises:
    UserError: the recorded config.json cannot be read.
  """
  path = os.path.join(workdir, point.name, run_config.CONFIG_FILE)
  try:
    recorded = _read_json(path)
  except (OSError, ValueError) as e:
    raise UserError(f'{path} cannot be read ({errors.one_line(e)}); delete '
                    f'{os.path.dirname(path)} to train the point again') from None
  if recorded is None:
    return []
  return list(run_config.changed(defaults.flat_json(recorded),
                                 defaults.flat_json(point.config), UNCOMPARED_KEYS))


def check_points_unchanged(points: Sequence[Point], workdir: str) -> None:
  """UserError naming the first point whose folder holds a run of another config."""
  for point in points:
    keys = changed_keys(point, workdir)
    if keys:
      point_dir = os.path.join(workdir, point.name)
      shown = ', '.join(f'config.{key}' for key in keys[:4]) + (', ...' if len(keys) > 4 else '')
      raise UserError(f'sweep point {point.name}: {point_dir} holds a run of another config '
                      f'({shown} differ); use a new --workdir, or delete {point_dir} to train the '
                      'point again')


def resume_command() -> str:
  """The command line that resumes this sweep (its own arguments, quoted for a shell)."""
  return ' '.join(['python -m resnet_jax.sweep', *map(shlex.quote, sys.argv[1:])])


def run_point(point: Point, workdir: str) -> str:
  """Trains one point in workdir/<name> unless it has finished; returns its status.

  A point another process is training (its folder's lock held) is left to it: IN_USE.
  """
  point_dir = os.path.join(workdir, point.name)
  if report.read_results(point_dir) is not None:
    return SKIPPED_DONE  # Missing or torn: the trainer writes it (again) from the checkpoint.
  try:
    results = train.train_and_evaluate(point.config, point_dir, resume_command=resume_command())
  except workdir_lock.InUse:
    return IN_USE
  except UserError as e:
    if jax.process_index() == 0:
      os.makedirs(point_dir, exist_ok=True)
      files.write_atomic(os.path.join(point_dir, ERROR_FILE), f'{e}\n')
    return f'failed: {e}'
  return _trained_status(point, workdir, results)


def _trained_status(point: Point, workdir: str, results: dict) -> str:
  """The status of a point its trainer returned results for (an older failure's note removed)."""
  if results.get('preempted'):
    return f"{PREEMPTED} ({results.get('signal') or 'SIGTERM'})"
  error_path = os.path.join(workdir, point.name, ERROR_FILE)
  if jax.process_index() == 0 and os.path.exists(error_path):
    os.remove(error_path)
  return DONE


def group_points(points: Sequence[Point], counts: Mapping[str, tuple[int, bool]],
                 population_size: int = 0, *,
                 why_not_together: Optional[Callable[[Sequence], Optional[str]]] = None,
                 members_per_round: Optional[Callable[[Any, int], int]] = None,
                 ) -> list[list[Point]]:
  """The points in the groups that train at once: populations, and single points.

  Points within the parameter budget that can train as one population with the first of their
  family (`why_not_together` of the two is None: they differ only in the seed and scalar
  hyperparameters) are split, in the sweep's order, into populations of `population_size`
  points, or (0) of as many as `members_per_round` holds on this process's devices (each
  population checked whole); every other point is a group of its own.
  The groups depend only on the sweep, --population_size and the devices, not on what has
  trained, so processes started alike on alike machines divide them alike.

  Args:
    points: the sweep's points (`sweep_points`).
    counts: from `parameter_counts` (points over the budget are not grouped).
    population_size: most points a population; 0: as many as the devices hold; 1: no populations.
    why_not_together: default `population.why_not_together`.
    members_per_round: default `population.members_per_round`.

  Returns:
    Every point once, in groups ordered by their first point (a group keeps the sweep's order).
  """
  if population_size < 0:
    raise UserError(f'--population_size={population_size} must be >= 0 (0: as many points at '
                    'once as the devices hold; 1: one point at a time)')
  if population_size == 1:
    return [[point] for point in points]
  why_not_together = why_not_together or population.why_not_together
  members_per_round = members_per_round or population.members_per_round
  families = []  # Points that can share one program, each family in the sweep's order.
  for point in points:
    family = counts[point.name][1] and next(
        (known for known in families if counts[known[0].name][1] and
         why_not_together([known[0].config, point.config]) is None), None)
    if family:
      family.append(point)
    else:
      families.append([point])
  groups = []
  for family in families:
    size = 1 if len(family) == 1 else (population_size or
                                       members_per_round(family[0].config, len(family)))
    for start in range(0, len(family), size):
      group = family[start:start + size]
      together = len(group) == 1 or why_not_together([p.config for p in group]) is None
      groups += [group] if together else [[point] for point in group]
  order = {point.name: number for number, point in enumerate(points)}
  return sorted(groups, key=lambda group: order[group[0].name])


def run_population(points: Sequence[Point], workdir: str) -> dict[str, str]:
  """Trains a group's unfinished points as one population; the statuses of those it settled.

  Finished points are SKIPPED_DONE. Where fewer than two are left, or the population fails with
  a user error (e.g. one member's loss diverged), the points it left out are trained one at a
  time (`run_point`), so that an error lands on its own point.
  """
  statuses = {point.name: SKIPPED_DONE for point in points
              if report.read_results(os.path.join(workdir, point.name)) is not None}
  members = [point for point in points if point.name not in statuses]
  if len(members) < 2:
    return statuses
  population_dir = os.path.join(workdir, POPULATIONS_DIR, points[0].name)
  logging.info('sweep population of %d points at once (%s): %s', len(members), population_dir,
               ', '.join(point.name for point in members))
  try:
    results = population.train_population(
        [point.config for point in members],
        [os.path.join(workdir, point.name) for point in members], population_dir,
        resume_command=resume_command())
  except workdir_lock.InUse:
    return statuses | {point.name: IN_USE for point in members}
  except UserError as e:
    logging.warning('the population failed (%s); training its points one at a time', e)
    return statuses
  return statuses | {point.name: _trained_status(point, workdir, member_results)
                     for point, member_results in zip(members, results)}


def _status(point: Point, workdir: str, within_budget: bool) -> str:
  """The status of a point this process did not run, from what its folder holds."""
  point_dir = os.path.join(workdir, point.name)
  if not within_budget:
    return OVER_BUDGET
  if report.read_results(point_dir) is not None:
    keys = changed_keys(point, workdir)
    return f'{STALE}: another config ({", ".join(keys)})' if keys else DONE
  error_path = os.path.join(point_dir, ERROR_FILE)
  if os.path.isfile(error_path):
    with open(error_path, encoding='utf-8') as f:
      return f'failed: {f.read().strip()}'
  return PENDING


def summary_rows(points: Sequence[Point], workdir: str, statuses: Mapping[str, str],
                 counts: Mapping[str, tuple[int, bool]]) -> list[dict]:
  """One row a point: swept labels, parameters, accuracies, wall time and status."""
  rows = []
  for point in points:
    parameters, within_budget = counts[point.name]
    status = statuses.get(point.name)
    if status not in (DONE, SKIPPED_DONE, OVER_BUDGET):
      # What is on disk now: another process may have finished it (or found it stale) since.
      on_disk = _status(point, workdir, within_budget)
      if status is None or on_disk == DONE or on_disk.startswith(STALE):
        status = on_disk
    results = ({} if status.startswith(STALE) else
               report.read_results(os.path.join(workdir, point.name)) or {})
    rows.append({'point': point.name, **point.labels, 'parameters': parameters,
                 **{name: results.get(name) for name in sweep_report.ACCURACIES},
                 'wall_seconds': report.run_seconds(results), 'status': status})
  return rows


def check_points(points: Sequence[Point], counts: Mapping[str, tuple[int, bool]]) -> None:
  """UserError naming the first point (within the budget) whose config no run could train."""
  for point in points:
    if counts[point.name][1]:
      try:
        runs.check_config(point.config)
      except UserError as e:
        raise UserError(f'sweep point {point.name}: {e} (no point was trained; fix the sweep '
                        'config)') from e


def run_sweep(sweep_cfg: config_dict.ConfigDict, workdir: str, process_index: int = 0,
              process_count: int = 1, population_size: int = 0) -> list[dict]:
  """Runs this process's share of the sweep's points, then writes the sweep's tables and plots.

  Args:
    sweep_cfg: from `sweep_config` (a configs/sweeps/*.py file).
    workdir: the sweep's folder; point p trains in workdir/<p.name>.
    process_index: this process runs groups (`group_points`) process_index, process_index +
      process_count, ...
    process_count: independent processes sharing the points.
    population_size: most points trained at once as a population (`group_points`).

  Returns:
    The table's rows (dicts: 'point', the swept keys' labels, 'parameters', accuracies,
    'wall_seconds' (the run's, over its resumes), 'status').

  Raises:
    UserError: a bad sweep config (unknown key, bad value, a model that cannot be built), or a
      point of this process whose folder holds a run of another config.
  """
  if not 0 <= process_index < process_count:
    raise UserError(f'--process_index={process_index} must be in [0, --process_count='
                    f'{process_count})')
  if process_count > 1 and jax.process_count() > 1:
    raise UserError('--process_count>1 splits points between independent processes; under '
                    'jax.distributed every run spans all processes: drop --process_count')
  points = sweep_points(sweep_cfg)
  counts = parameter_counts(points)
  grid_keys = list(_flatten(sweep_cfg.grid, 'config.grid'))
  check_points(points, counts)  # Every point's: grouping compares them all.
  groups = group_points(points, counts, population_size)[process_index::process_count]
  share = [point for group in groups for point in group]
  check_points_unchanged(share, workdir)
  os.makedirs(workdir, exist_ok=True)
  statuses, number = {}, 0
  for group in groups:
    if len(group) > 1:
      statuses.update(run_population(group, workdir))
    for point in group:
      number += 1
      parameters, within_budget = counts[point.name]
      if not within_budget:
        statuses[point.name] = OVER_BUDGET
      elif point.name not in statuses:
        logging.info('sweep point %d/%d: %s (%s parameters)', number, len(share), point.name,
                     f'{parameters:,}')
        statuses[point.name] = run_point(point, workdir)
      logging.info('[%d/%d] %s: %s', number, len(share), point.name, statuses[point.name])
    if any(statuses[point.name].startswith(PREEMPTED) for point in group):
      break
  rows = summary_rows(points, workdir, statuses, counts)
  if jax.process_index() == 0:
    trained = sum(row['status'] in (DONE, SKIPPED_DONE) for row in rows)
    sweep_report.write_summary(points, rows, workdir, grid_keys, trained)
  return rows


def sweep_command(sweep_cfg: config_dict.ConfigDict, workdir: str, process_index: int = 0,
                  process_count: int = 1, population_size: int = 0) -> None:
  """The command: runs the sweep (`run_sweep`), prints sweep.md; exits 130 after a Ctrl-C."""
  files.check_writable(workdir, '--workdir')
  distributed.initialize_from_env()
  cli.say_outputs(f'{workdir} (sweep.md; a run folder for each point)')
  rows = run_sweep(sweep_cfg, workdir, process_index, process_count, population_size)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'sweep.md'), encoding='utf-8') as f:
      logging.info('%s', f.read().rstrip())
  stopped = next((row['status'] for row in rows if row['status'].startswith(PREEMPTED)), None)
  if stopped:
    ctrl_c = 'SIGINT' in stopped
    logging.info("%s: the sweep stopped, its point's checkpoint saved; resume the sweep with: %s",
                 'Ctrl-C (SIGINT)' if ctrl_c else 'SIGTERM', resume_command())
    if ctrl_c:
      sys.exit(130)  # The shell's convention for an interrupted job, as main's.


def main(argv):
  del argv  # cli.run refuses positional arguments.
  sweep_command(cli.CONFIG.value, cli.WORKDIR.value, flags.FLAGS.process_index,
                flags.FLAGS.process_count, flags.FLAGS.population_size)


if __name__ == '__main__':
  # Defined here, not on import: sweep configs import this module (for `sweep_config`) while
  # it runs as __main__, and a second definition of a flag is an error.
  flags.DEFINE_integer('process_index', 0,
                       'This process runs points (or populations) process_index, + '
                       'process_count, ...')
  flags.DEFINE_integer('process_count', 1,
                       'Independent processes sharing the points (e.g. a job array).')
  flags.DEFINE_integer('population_size', 0,
                       'Most points trained at once as one population (points that differ only '
                       'in scalar hyperparameters); 0: as many as the devices hold; 1: one point '
                       'at a time.')
  cli.run(main, 'sweep', kind=cli.SWEEP)
