"""The config a run was trained with, read back from the config.json in its workdir.

The trainer writes the resolved config (file and every `--config.x=y` override) to
<workdir>/config.json, so `evaluate` and `inspect` need only `--workdir`. A `--config` given as
well must describe the same run: it may differ only in the keys of `FREE_KEYS` (how the run is
scored and where its data lies), else it is refused in one line naming the keys that differ.
"""

import json
from typing import Any, Optional

from etils import epath
from ml_collections import config_dict

from resnet_jax import defaults
from resnet_jax import cli
from resnet_jax import writers
from resnet_jax.errors import UserError

# The resolved config a run was started with, in its workdir.
CONFIG_FILE = 'config.json'

# Keys a given --config may set differently from the run's: evaluation only (how the test set is
# scored and reported) and this machine's (where the data lies, how it is fed).
FREE_KEYS = ('eval_batch_size', 'eval_flip_tta', 'write_plots', 'data.data_dir',
             'data.placement', 'data.host_backend')
FREE_SECTIONS = ('reference',)  # Labels of the report only.
SHOWN_DIFFERENCES = 4


def write_config(workdir: epath.PathLike, config: config_dict.ConfigDict) -> None:
  """The resolved config, as CONFIG_FILE in workdir."""
  path = writers.as_path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  (path / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


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
  path = writers.as_path(workdir) / CONFIG_FILE
  if not path.exists():
    raise UserError(f'no {path}: check --workdir, or pass --config=<the config file the run was '
                    'trained with>')
  try:
    return config_from_json(path.read_text())
  except (OSError, ValueError, TypeError, AttributeError) as e:
    raise UserError(f'{path} cannot be read ({cli.one_line(e)}); pass --config=<the '
                    'config file the run was trained with>') from e


def _flat(config: config_dict.ConfigDict) -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    if isinstance(value, config_dict.ConfigDict):
      flat.update({f'{key}.{inner}': v for inner, v in _flat(value).items()})
    else:
      flat[key] = value
  return flat


def differences(saved: config_dict.ConfigDict,
                given: config_dict.ConfigDict) -> dict[str, tuple[Any, Any]]:
  """{dotted key: (saved value, given value)} where they differ, FREE_KEYS and FREE_SECTIONS aside.

  A key only one of them has (None on the other side) differs too.
  """
  saved_flat, given_flat = _flat(saved), _flat(given)
  return {key: (saved_flat.get(key), given_flat.get(key))
          for key in sorted(saved_flat.keys() | given_flat.keys())
          if key not in FREE_KEYS and key.split('.')[0] not in FREE_SECTIONS
          and saved_flat.get(key) != given_flat.get(key)}


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
  if given is not None and not (writers.as_path(workdir) / CONFIG_FILE).exists():
    return given
  saved = saved_config(workdir)
  if given is None:
    return saved
  differing = differences(saved, given)
  if differing:
    shown = ', '.join(f'config.{key} ({there!r} in the run, {here!r} given)'
                      for key, (there, here) in list(differing.items())[:SHOWN_DIFFERENCES])
    more = len(differing) - SHOWN_DIFFERENCES
    raise UserError(f"--config differs from the run's {CONFIG_FILE} in {shown}"
                    f"{f' and {more} more keys' if more > 0 else ''}; drop --config to use the "
                    "run's own, or add the overrides it was trained with")
  return given
