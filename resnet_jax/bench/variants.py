"""Benchmark variants: named config overrides and environments, and their CPU numerics check.

A variants file (`configs/benchmarks/*.py`) defines `get_variants()` returning a list of
`Variant` (or dicts of its fields). Each variant is a candidate setting for speed: config
overrides (applied after the benchmark's batch size and dtype, so a variant may set its own) and
environment variables (XLA_FLAGS and the like, which take effect only in a fresh process).

`check_numerics` trains one epoch of a small config on this machine with each variant and with
the config alone, and compares them, so that a GPU run of the variants measures speed only.
"""

import dataclasses
import importlib.util
import os
import subprocess
import sys
from typing import Any, Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np

from resnet_jax import errors
from resnet_jax.errors import UserError
from resnet_jax.training import feed
from resnet_jax.training import run_config
from resnet_jax.training import runs
from resnet_jax.training import steps

# What a variant's training is expected to be against the config alone's.
SAME = 'same'        # the same computation, grouped or placed otherwise
CLOSE = 'close'      # other rounding (e.g. BatchNorm in bfloat16): near the same numbers
DIFFERS = 'differs'  # another training (e.g. another batch size): not compared
NUMERICS = (SAME, CLOSE, DIFFERS)
# Relative differences allowed after one epoch: of the mean training loss, and of the
# parameters (norm of the difference over the norm). 'same' allows XLA's reassociation only.
TOLERANCES = {SAME: 1e-5, CLOSE: 5e-2}


@dataclasses.dataclass(frozen=True)
class Variant:
  """One candidate setting.

  Attributes:
    name: a label (letters, digits, '_', '-'), unique in its file.
    overrides: config key (dotted, below `config`, e.g. 'model.bn_dtype') -> value.
    env: environment variables for a fresh process; XLA_FLAGS is added to the process's own.
    numerics: SAME, CLOSE or DIFFERS (what `check_numerics` expects).
    note: why it is a candidate.
  """
  name: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  env: Mapping[str, str] = dataclasses.field(default_factory=dict)
  numerics: str = SAME
  note: str = ''


DEFAULT = Variant('default', note='the config as given')


def check_variant(variant: Variant) -> Variant:
  """The variant, or UserError naming what is wrong with it."""
  name = variant.name
  if not name or not all(c.isalnum() or c in '_-' for c in name):
    raise UserError(f'variant name {name!r} must be letters, digits, _ or - (it is a flag value)')
  if variant.numerics not in NUMERICS:
    raise UserError(f"variant {name}: numerics={variant.numerics!r} is not one of "
                    f"{', '.join(NUMERICS)}")
  if not all(isinstance(value, str) for value in variant.env.values()):
    raise UserError(f'variant {name}: env values must be strings')
  return variant


def _as_variant(item: Any, where: str) -> Variant:
  """A Variant of a Variant or a dict of its fields; UserError naming a field it lacks."""
  if isinstance(item, Variant):
    return item
  fields = [field.name for field in dataclasses.fields(Variant)]
  if not isinstance(item, Mapping):
    raise UserError(f'{where} is a {type(item).__name__}, not a Variant or a dict of its fields '
                    f'({", ".join(fields)})')
  unknown = sorted(set(item) - set(fields))
  if unknown or 'name' not in item:
    wrong = f'no field {", ".join(map(repr, unknown))}' if unknown else "no 'name'"
    raise UserError(f'{where} has {wrong} (a misspelling?); a Variant\'s fields are '
                    f'{", ".join(fields)}')
  return Variant(**item)


def load_variants(path: str) -> list[Variant]:
  """The variants of a variants file (its get_variants()); UserError for a bad file."""
  if not os.path.isfile(path):
    raise UserError(f'--variants={path} does not exist')
  spec = importlib.util.spec_from_file_location('variants_file', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    get_variants = getattr(module, 'get_variants', None)
    if not callable(get_variants):
      raise UserError(f'--variants={path} defines no get_variants(); define one returning a list '
                      'of Variant (see configs/benchmarks/)')
    listed = get_variants()
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # The file runs the user's code.
    raise UserError(f'--variants={path} cannot be loaded: {errors.located(e)}; fix the '
                    'file') from None
  if not isinstance(listed, (list, tuple)):
    raise UserError(f'--variants={path}: get_variants() returned {type(listed).__name__}, not a '
                    'list of Variant (or dicts of its fields)')
  variants = [check_variant(_as_variant(item, f'--variants={path}: item {number}'))
              for number, item in enumerate(listed, start=1)]
  names = [v.name for v in variants]
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated or not variants:
    raise UserError(f'--variants={path}: ' + (f"names repeated: {', '.join(repeated)}"
                                              if repeated else 'no variants'))
  return variants


def select(variants: Sequence[Variant], names: Sequence[str]) -> list[Variant]:
  """The variants named (all where names is empty), in the file's order."""
  unknown = sorted(set(names) - {v.name for v in variants})
  if unknown:
    raise UserError(f"--only_variants: no variant named {', '.join(unknown)}; the file has "
                    f"{', '.join(v.name for v in variants)}")
  return [v for v in variants if not names or v.name in names]


def apply(config: ml_collections.ConfigDict, variant: Variant) -> ml_collections.ConfigDict:
  """A copy of config with the variant's overrides; UserError for a key the config lacks."""
  config = config.copy_and_resolve_references()
  for key, value in variant.overrides.items():
    run_config.set_key(config, key, value, f'variant {variant.name}')
  return config


def environment(variant: Variant, base: Mapping[str, str]) -> dict[str, str]:
  """The environment of the variant's process: base with the variant's; XLA_FLAGS appended."""
  env = dict(base)
  for key, value in variant.env.items():
    env[key] = ' '.join(filter(None, [base.get(key, ''), value])) if key == 'XLA_FLAGS' else value
  return env


def unknown_xla_flags(variants: Sequence[Variant]) -> Optional[str]:
  """None where this jax knows every XLA flag the variants set, else XLA's complaint.

  XLA parses XLA_FLAGS when its first backend starts and aborts on a flag it does not know, so
  one fresh process holding all of them finds a misspelt flag here, not on the GPU.
  """
  flags = ' '.join(v.env['XLA_FLAGS'] for v in variants if 'XLA_FLAGS' in v.env)
  if not flags:
    return None
  start_backend = 'import jax; jax.numpy.zeros(1).block_until_ready()'
  result = subprocess.run([sys.executable, '-c', start_backend],
                          env=dict(os.environ, XLA_FLAGS=flags), capture_output=True, text=True,
                          timeout=120, check=False)
  if result.returncode == 0:
    return None
  lines = [line for line in result.stderr.splitlines() if 'flag' in line.lower()]
  return (lines or result.stderr.splitlines() or ['exit status %d' % result.returncode])[-1]


@dataclasses.dataclass(frozen=True)
class NumericsCheck:
  """One variant's epoch against the config alone's, at one compute dtype.

  Attributes:
    passed: True or False where compared, None where not (DIFFERS, or environment only).
    loss_difference: |loss - loss_default| / |loss_default| of the epoch's mean training loss.
    param_difference: ||params - params_default|| / ||params_default|| over every parameter.
  """
  variant: str
  dtype: str
  numerics: str
  passed: Optional[bool]
  loss_difference: Optional[float] = None
  param_difference: Optional[float] = None
  tolerance: Optional[float] = None
  reason: str = ''


def start_state(config: ml_collections.ConfigDict, splits) -> steps.TrainState:
  """A fresh TrainState from config.seed, on the host (to start several trainings alike)."""
  run = runs.setup_run(config, workdir='', splits=splits)
  return jax.device_get(feed.initial_state(run.ctx, config.data.image_size, run.mesh))


def train_epoch(config: ml_collections.ConfigDict, splits,
                start: Optional[steps.TrainState] = None) -> tuple[float, list[np.ndarray]]:
  """The mean training loss and the parameters after one epoch, trained as training does.

  The epoch plan's calls, through the feed config.data.placement picks. `start`: a host state
  (start_state) to start from where it fits this config's state, else a fresh one.
  """
  run = runs.setup_run(config, workdir='', splits=splits)
  shapes = lambda tree: jax.tree.map(lambda leaf: (leaf.shape, leaf.dtype), tree)
  if start is not None and shapes(start) == shapes(run.abstract_state()):
    state = jax.device_put(start, feed.replicated(run.mesh))
  else:  # Initialising compiles slowly on a CPU (the random initialisers): reused where it fits.
    state = feed.initial_state(run.ctx, config.data.image_size, run.mesh)
  train_feed = feed.create_feed(config, run.plan, run.mesh, splits.train_images,
                                splits.train_labels, resident=run.resident)
  train_steps = feed.jit_train_steps(run.ctx, run.mesh, resident=run.resident)
  call_batches, sums = train_feed.epoch(0, 0), {}
  for first, count, batch_size in run.plan.calls(0):
    state, result = train_steps(state, *call_batches(first, count, batch_size))
    sums = steps.add_sums(sums, steps.metric_sums(jax.device_get(result.metrics)))
  params = [np.asarray(p, np.float64) for p in jax.tree.leaves(jax.device_get(state.params))]
  return steps.mean_of_sums(sums)['loss'], params


def _relative(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def compare(variant: Variant, dtype: str, trained, reference) -> NumericsCheck:
  """The check of a variant's train_epoch result against the config alone's."""
  (loss, params), (reference_loss, reference_params) = trained, reference
  loss_difference = abs(loss - reference_loss) / max(abs(reference_loss), 1e-30)
  param_difference = _relative(np.concatenate([p.ravel() for p in params]),
                               np.concatenate([p.ravel() for p in reference_params]))
  tolerance = TOLERANCES[variant.numerics]
  return NumericsCheck(variant.name, dtype, variant.numerics,
                       passed=max(loss_difference, param_difference) <= tolerance,
                       loss_difference=loss_difference, param_difference=param_difference,
                       tolerance=tolerance)


def check_numerics(config: ml_collections.ConfigDict, splits, variants: Sequence[Variant],
                   dtypes: Sequence[str]) -> list[NumericsCheck]:
  """Each variant's epoch against the config alone's, at each compute dtype, on this machine.

  Environment-only variants are not trained: XLA's GPU flags do nothing on a CPU, so the run
  would be the config alone's; `unknown_xla_flags` checks that their flags exist.
  """
  checks, start = [], None
  for dtype in dtypes:
    base = config.copy_and_resolve_references()
    base.model.dtype = dtype
    reference = None
    for variant in variants:
      if variant.numerics == DIFFERS or not variant.overrides:
        reason = ('another training' if variant.numerics == DIFFERS else
                  'environment only: on a CPU it trains as the config alone' if variant.env else
                  'the config alone')
        checks.append(NumericsCheck(variant.name, dtype, variant.numerics, None, reason=reason))
        continue
      # Parameters are float32 whatever the dtype: one start serves every training here.
      start = start or start_state(base, splits)
      reference = reference or train_epoch(base, splits, start)
      trained = train_epoch(apply(base, variant), splits, start)
      checks.append(compare(variant, dtype, trained, reference))
  return checks


def format_checks(checks: Sequence[NumericsCheck]) -> str:
  """A markdown table of numerics checks."""
  fmt = lambda value: '-' if value is None else f'{value:.1e}'
  verdict = {True: 'pass', False: '**FAIL**', None: 'not compared'}
  lines = ['| variant | dtype | expected | loss diff | param diff | tolerance | result |',
           '|' + '---|' * 7]
  for c in checks:
    lines.append(f'| {c.variant} | {c.dtype} | {c.numerics} | {fmt(c.loss_difference)} | '
                 f'{fmt(c.param_difference)} | {fmt(c.tolerance)} | '
                 f'{verdict[c.passed]}{": " + c.reason if c.reason else ""} |')
  return '\n'.join(lines)
