"""The config a run was trained with, read back from the config.json in its workdir.

The trainer writes the resolved config (file and every `--config.x=y` override) to
<workdir>/config.json, so `evaluate` and `inspect` need only `--workdir`. A `--config` given as
well must describe the same run: it may differ only in the keys of `FREE_KEYS` (how the run is
scored and where its data lies), else it is refused in one line naming the keys that differ.
"""

import json
from typing import Any, Mapping, Optional, Sequence

from etils import epath
from ml_collections import config_dict

from resnet_jax import defaults
from resnet_jax import files
from resnet_jax.errors import UserError, one_line

CONFIG_FILE = files.CONFIG_FILE

# Keys a given --config may set differently from the run's: evaluation only (how the test set is
# scored and reported) and this machine's (where the data lies, how it is fed).
FREE_KEYS = ('eval_batch_size', 'eval_flip_tta', 'write_plots', 'data.data_dir',
             'data.placement', 'data.host_backend')
# Keys a resumed run may change, and nothing else: how the run is watched, logged, scored and
# stored, and this machine's way of running the same steps (how many a compiled call fuses,
# where the data lies and how it is fed). The steps taken, their order and their data do not
# change; the result is bitwise the same unless steps_per_call, placement or host_backend do
# (then float sums may round apart in the last bits).
RESUMABLE_KEYS = ('log_every_steps', 'log_every_seconds', 'eval_every_epochs', 'eval_batch_size',
                  'checkpoint_every_epochs', 'checkpoint_min_seconds', 'keep_best_checkpoint',
                  'write_plots', 'param_histograms_every_epochs', 'steps_per_call',
                  'data.data_dir', 'data.placement', 'data.host_backend', 'model.param_budget')
FREE_SECTIONS = ('reference',)  # Labels of the report only.
SHOWN_DIFFERENCES = 4


def write_config(workdir: epath.PathLike, config: config_dict.ConfigDict) -> None:
  """The resolved config, as CONFIG_FILE in workdir."""
  path = files.as_path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  files.write_atomic(path / CONFIG_FILE, config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


def _as_field_type(current: Any, value: Any) -> Any:
  """A value read from JSON in the type of the field it goes to: lists become tuples."""
  if isinstance(current, tuple) and isinstance(value, list):
    return tuple(_as_field_type((), item) if isinstance(item, list) else item for item in value)
  return value


def _update(section: config_dict.ConfigDict, saved: dict, where: str) -> None:
  for key, value in saved.items():
    if key not in section:
      raise UserError(f'{where}.{key} in {CONFIG_FILE} is no config key of this version; '
                      'pass --config=<the config file the run was trained with>')
    if isinstance(section[key], config_dict.ConfigDict):
      _update(section[key], value, f'{where}.{key}')
    else:
      section[key] = _as_field_type(section[key], value)


def config_from_json(text: str) -> config_dict.ConfigDict:
  """The locked ConfigDict of a config.json's text: `defaults.base_config()` updated with it.

  Raises:
    UserError: a key this version has no field for.
    ValueError, TypeError, AttributeError: text is no JSON object of config values.
  """
  saved = json.loads(text)
  if not isinstance(saved, dict):
    raise TypeError(f'a JSON {type(saved).__name__}, not an object')
  config = defaults.base_config()
  _update(config, saved, 'config')
  return config


def saved_config(workdir: epath.PathLike) -> config_dict.ConfigDict:
  """The config the run in workdir was trained with, from its config.json; UserError if none."""
  path = files.as_path(workdir) / CONFIG_FILE
  if not path.exists():
    inner = runs_inside(workdir)
    if inner:  # A population's or a sweep's folder.
      shown = ', '.join(inner[:4]) + (', ...' if len(inner) > 4 else '')
      runs = f'{len(inner)} run' + ('s' if len(inner) > 1 else '')
      raise UserError(f'{workdir} holds {runs} ({shown}) but is not one itself: give one as '
                      f'--workdir, e.g. --workdir={files.as_path(workdir) / inner[0]}')
    raise UserError(f'no {path}: check --workdir, or pass --config=<the config file the run was '
                    'trained with>')
  try:
    return config_from_json(path.read_text())
  except (OSError, ValueError, TypeError, AttributeError) as e:
    raise UserError(f'{path} cannot be read ({one_line(e)}); pass --config=<the '
                    'config file the run was trained with>') from e


def runs_inside(workdir: epath.PathLike) -> list[str]:
  """The folders right inside workdir that hold a run (a config.json), sorted."""
  folder = files.as_path(workdir)
  if not folder.is_dir():
    return []
  return sorted(child.name for child in folder.iterdir() if (child / CONFIG_FILE).exists())


def set_key(config: config_dict.ConfigDict, key: str, value: Any, where: str) -> None:
  """Sets a dotted key of config, as --config.KEY=VALUE would; a section takes a mapping.

  Raises:
    UserError: no such key (also in sections a config file built unlocked), or a value the key
      cannot take; one line that starts with `where` (what asked for it).
  """
  try:
    *parents, leaf = key.split('.')
    section = config
    for name in parents:
      section = section[name]
    if leaf not in section:
      raise KeyError(f'no key {leaf!r}')
    if isinstance(section[leaf], config_dict.ConfigDict):
      if not isinstance(value, (Mapping, config_dict.ConfigDict)):
        raise TypeError(f'{key} is a section: give a dict of its keys')
      for name, item in value.items():
        section[leaf][name] = item
    else:
      section[leaf] = value
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    raise UserError(f'{where}: config.{key} cannot be set to {value!r} ({one_line(e)}); use a '
                    'key and value of resnet_jax/defaults.py') from e


def is_free(key: str, free_keys: Sequence[str]) -> bool:
  """Whether a dotted key is in free_keys or a FREE_SECTIONS section."""
  return key in free_keys or key.split('.')[0] in FREE_SECTIONS


def changed(before: dict, after: dict, free_keys: Sequence[str] = (),
            *, both: bool = False) -> dict[str, tuple[Any, Any]]:
  """{key: (before, after)} of two flat dicts (`defaults.flat_json`) where they differ, free keys
  aside.

  A key only one side has differs too (None on the other), unless `both`: then only keys both
  sides have are compared (a schema that gained or lost keys between versions).
  """
  keys = before.keys() & after.keys() if both else before.keys() | after.keys()
  return {key: (before.get(key), after.get(key)) for key in sorted(keys)
          if not is_free(key, free_keys) and before.get(key) != after.get(key)}


def _shown(value: Any) -> Any:
  """A JSON value as the config writes it (lists as tuples)."""
  return tuple(_shown(item) for item in value) if isinstance(value, list) else value


def describe_changes(changes: dict[str, tuple[Any, Any]], before: str, after: str) -> str:
  """'config.a (1 in BEFORE, 2 in AFTER), ... and N more keys' for a UserError."""
  shown = ', '.join(f'config.{key} ({_shown(there)!r} {before}, {_shown(here)!r} {after})'
                    for key, (there, here) in list(changes.items())[:SHOWN_DIFFERENCES])
  more = len(changes) - SHOWN_DIFFERENCES
  return shown + (f' and {more} more keys' if more > 0 else '')


def differences(saved: config_dict.ConfigDict,
                given: config_dict.ConfigDict) -> dict[str, tuple[Any, Any]]:
  """{dotted key: (saved value, given value)} where they differ, FREE_KEYS and FREE_SECTIONS aside."""
  return changed(defaults.flat_json(saved), defaults.flat_json(given), FREE_KEYS)


def load_run_config(workdir: epath.PathLike,
                    given: Optional[config_dict.ConfigDict] = None) -> config_dict.ConfigDict:
  """The run's config: workdir's config.json, or `given` where it describes the same run.

  Args:
    workdir: the run's folder (local or a URL such as gs://...).
    given: the --config the user passed (with its overrides), or None.

  Returns:
    The config from config.json when given is None, else given (whose FREE_KEYS, e.g.
    eval_batch_size, may differ from the run's; with no config.json there, as for a PyTorch
    state_dict scored into a new folder, given as it is).

  Raises:
    UserError: no readable config.json, or a given config that differs from it elsewhere (the
      message names the keys).
  """
  if given is not None and not (files.as_path(workdir) / CONFIG_FILE).exists():
    return given
  saved = saved_config(workdir)
  if given is None:
    return saved
  differing = differences(saved, given)
  if differing:
    raise UserError(f"--config differs from the run's {CONFIG_FILE} in "
                    f"{describe_changes(differing, 'in the run', 'given')}; drop --config to use "
                    "the run's own, or add the overrides it was trained with")
  return given
