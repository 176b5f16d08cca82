"""PyTorch checkpoints of seed-style ResNets <-> Flax variables of `models.ResNet`.

The canonical PyTorch names are kuangliu/pytorch-cifar's (what seed 000's code builds on and what
`torch_resnet.TorchResNet` and `export` use), derived from the Flax module names by `torch_name`:

  conv1, bn1                         stem conv and BatchNorm
  se.fc1, se.fc2                     SE after the stem (se='stem'), 1x1 convs with bias
  layer{L}.{i}.conv{j}, .bn{j}       block i (0-based) of layer L (1-based); j = 1..2 (3 bottleneck)
  layer{L}.{i}.fc1, .fc2             SE in every block (se='block'), as kuangliu's SENet
  layer{L}.{i}.shortcut.0, .1        projection shortcut conv and BatchNorm
  bn_final                           the last BatchNorm of a preact model
  linear                             the dense head

Other repositories name the same layers differently: `LAYOUTS` lists each naming as a function of
the canonical key, and a state_dict is read with the one whose keys it has. Checkpoint wrappers
(`{'net': state_dict, 'acc': ..., 'epoch': ...}` and the like) are unwrapped and `module.`
(nn.DataParallel) and `_orig_mod.` (torch.compile) prefixes dropped first.

Conv weights OIHW become HWIO kernels, linear (out, in) becomes (in, out); BatchNorm weight, bias,
running_mean and running_var become scale, bias, mean and var; num_batches_tracked is ignored.
"""

import os
import re
from typing import Any, Callable, Mapping, NamedTuple

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from resnet_jax import models
from resnet_jax.errors import UserError

_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
               'mean': 'running_mean', 'var': 'running_var'}
_MODULE_NAMES = {'shortcut_conv': 'shortcut.0', 'shortcut_bn': 'shortcut.1'}
_BLOCK = re.compile(r'^(layer\d+)_(\d+)$')
_SHOWN = 4  # offenders listed in an error
# Where a training script's checkpoint keeps the state_dict, in the order tried.
CHECKPOINT_KEYS = ('net', 'state_dict', 'model_state_dict', 'model')
# Prefixes a wrapper adds to every key: nn.DataParallel / DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ('module.', '_orig_mod.')
NUM_BATCHES_TRACKED = 'num_batches_tracked'


class Layout(NamedTuple):
  """One repository's naming: `rename` maps a canonical (kuangliu) key to its key."""
  name: str
  source: str
  rename: Callable[[str], str]


def _efficient_resnets_key(key: str) -> str:
  key = re.sub(r'^layer(\d+)\.', lambda m: f'residual_layers.{int(m[1]) - 1}.', key)
  return re.sub(r'^se\.fc([12])\.', r'seblock.conv\1.', key)


LAYOUTS = (
    Layout('kuangliu', 'kuangliu/pytorch-cifar ResNet, SENet and forks; resnet_jax.export',
           lambda key: key),
    Layout('efficient_resnets', "Nikunj-Gupta/Efficient_ResNets project1_model.py (seed 000)",
           _efficient_resnets_key),
    Layout('se_module', 'block SE as a submodule, layer{L}.{i}.se.fc1',
           lambda key: re.sub(r'^(layer\d+\.\d+)\.fc([12])\.', r'\1.se.fc\2.', key)),
)


def torch_name(path: tuple[str, ...]) -> str:
  """The canonical PyTorch key of a Flax variable, e.g. ('params', 'layer1_0', 'conv1', 'kernel')
  -> 'layer1.0.conv1.weight'; a block's SE convs are the block's own: 'layer1.0.fc1.weight'."""
  *modules, leaf = path[1:]
  names = []
  for module in modules:
    if module == 'se' and names and names[-1].startswith('layer'):
      continue
    names.append(_MODULE_NAMES.get(module, _BLOCK.sub(r'\1.\2', module)))
  return '.'.join(names + [_LEAF_NAMES[leaf]])


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:  # conv OIHW -> HWIO
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:  # linear (out, in) -> (in, out)
    return array.T
  return array


def _to_torch_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:
    return array.transpose(3, 2, 0, 1)
  if array.ndim == 2:
    return array.T
  return array


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  return _to_torch_layout(np.empty(flax_shape, np.bool_)).shape


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch.Tensor, possibly on a GPU or in half precision
    value = value.detach().float().cpu().numpy()
  return np.asarray(value, np.float32)


def _listed(label: str, names: list[str]) -> str:
  shown = ', '.join(names[:_SHOWN]) + (', ...' if len(names) > _SHOWN else '')
  return f'{len(names)} {label} ({shown})'


def _is_state_dict(value: Any) -> bool:
  return (isinstance(value, Mapping) and bool(value)
          and all(isinstance(k, str) and hasattr(v, 'shape') for k, v in value.items()))


def unwrap_checkpoint(loaded: Any, where: str = 'the checkpoint') -> dict:
  """The state_dict in what torch.load returned: itself, or under one of CHECKPOINT_KEYS.

  Wrapper prefixes (WRAPPER_PREFIXES) are dropped and num_batches_tracked buffers left out.

  Raises:
    UserError: no state_dict is found.
  """
  state_dict = loaded
  if not _is_state_dict(loaded) and isinstance(loaded, Mapping):
    state_dict = next((loaded[k] for k in CHECKPOINT_KEYS if _is_state_dict(loaded.get(k))), None)
  if not _is_state_dict(state_dict):
    kind = (f"a dict with keys {', '.join(map(str, list(loaded)[:6]))}"
            if isinstance(loaded, Mapping) else f'a {type(loaded).__name__}')
    raise UserError(f"{where} holds {kind}, not a state_dict nor one under "
                    f"{'/'.join(CHECKPOINT_KEYS)}; save it with torch.save(model.state_dict(), "
                    'path)')
  prefixed = True
  while prefixed:
    prefixed = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state_dict)),
                    None)
    if prefixed:
      state_dict = {k[len(prefixed):]: v for k, v in state_dict.items()}
  return {k: v for k, v in state_dict.items() if not k.endswith(NUM_BATCHES_TRACKED)}


def load_state_dict(path: str) -> dict:
  """The state_dict of a torch.save file: a bare state_dict or a training script's checkpoint."""
  if not os.path.isfile(path):
    raise UserError(f'PyTorch checkpoint {path} is not a file')
  import torch  # pylint: disable=g-import-not-at-top  # Only this path needs PyTorch.
  try:
    loaded = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise UserError(f'PyTorch checkpoint {path} cannot be read by torch.load ({reason}); save '
                    'it with torch.save(model.state_dict(), path)') from e
  return unwrap_checkpoint(loaded, f'PyTorch checkpoint {path}')


def _flax_shapes(model_cfg: config_dict.ConfigDict, image_size: int) -> dict:
  return traverse_util.flatten_dict(
      models.variable_shapes(models.build_model(model_cfg), image_size))


def _match(given: Mapping[str, Any], shapes: dict, layout: Layout) -> tuple[list, list, list]:
  """(missing, unexpected, wrong shape) keys of `given` read with `layout` against `shapes`."""
  expected = {layout.rename(torch_name(path)): shape.shape for path, shape in shapes.items()}
  missing = [key for key in expected if key not in given]
  unexpected = sorted(set(given) - set(expected))
  wrong_shape = [f'{key} {tuple(np.shape(given[key]))} != {_torch_shape(shape)}'
                 for key, shape in expected.items()
                 if key in given and tuple(np.shape(given[key])) != _torch_shape(shape)]
  return missing, unexpected, wrong_shape


def matching_presets(state_dict: Mapping[str, Any], image_size: int = 32) -> list[str]:
  """The named models (models.PRESETS) whose every key and shape the state_dict has."""
  given = unwrap_checkpoint(state_dict)
  names = []
  for name in models.PRESETS:
    shapes = _flax_shapes(models.preset(name), image_size)
    if any(not any(_match(given, shapes, layout)) for layout in LAYOUTS):
      names.append(name)
  return names


def _hint(given: Mapping[str, Any], image_size: int) -> str:
  names = matching_presets(given, image_size)
  if names:
    return (f"it is the named model {' or '.join(names)}: use that model (evaluate "
            f'--model {names[0]})')
  return ('no named model matches it either (python -m resnet_jax.models); set config.model to '
          'the saved network')


def variables_from_torch(state_dict: Mapping[str, Any], model_cfg: config_dict.ConfigDict,
                         image_size: int = 32) -> dict:
  """Flax variables {'params', 'batch_stats'} of `build_model(model_cfg)` from a PyTorch state_dict.

  Args:
    state_dict: names -> torch tensors or numpy arrays in one of LAYOUTS (or a checkpoint
      wrapping one, see `unwrap_checkpoint`).
    model_cfg: the `config.model` of the same network.
    image_size: input side; matters only for the head of a model with pool > 0.

  Raises:
    UserError: no layout's keys fit this config, or they fit with wrong shapes; one line naming
      the layouts tried, the closest one's offenders and the named model that fits, if any.
  """
  given = unwrap_checkpoint(state_dict)
  shapes = _flax_shapes(model_cfg, image_size)
  tried = [(layout, *_match(given, shapes, layout)) for layout in LAYOUTS]
  for layout, missing, unexpected, wrong_shape in tried:
    if missing or unexpected:
      continue
    if wrong_shape:
      wrong = _listed('of the wrong shape', wrong_shape)
      raise UserError(f'PyTorch state_dict has the keys of config.model (name={model_cfg.name}) '
                      f'in the {layout.name} layout but {wrong}'
                      '; the saved network has other widths or kernels: set config.model to it')
    arrays = {path: _to_numpy(given[layout.rename(torch_name(path))]) for path in shapes}
    non_finite = [torch_name(path) for path, array in arrays.items()
                  if not np.isfinite(array).all()]
    if non_finite:
      raise UserError(f'PyTorch state_dict holds NaN or infinite values in '
                      f'{_listed("tensors", non_finite)}: the network it saved had diverged; '
                      'export an earlier, finite checkpoint')
    return traverse_util.unflatten_dict(
        {path: jnp.asarray(_to_flax_layout(array)) for path, array in arrays.items()})
  counts = '; '.join(f'{layout.name} ({layout.source}): {len(missing)} missing, '
                     f'{len(unexpected)} unexpected' for layout, missing, unexpected, _ in tried)
  layout, missing, unexpected, _ = min(tried, key=lambda t: len(t[1]) + len(t[2]))
  offenders = ', '.join(_listed(label, names) for label, names in
                        (('missing', missing), ('unexpected', unexpected)) if names)
  raise UserError(f'PyTorch state_dict fits no layout of config.model (name={model_cfg.name}): '
                  f'tried {counts}; closest {layout.name}: {offenders}; {_hint(given, image_size)}')


def state_dict_from_variables(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The kuangliu-layout state_dict (numpy arrays) of Flax variables; TorchResNet loads it.

  The inverse of `variables_from_torch`, bitwise; every BatchNorm gets num_batches_tracked 0,
  which PyTorch's strict loading expects.
  """
  state_dict = {}
  for path, value in traverse_util.flatten_dict(jax.device_get(dict(variables))).items():
    key = torch_name(path)
    state_dict[key] = np.ascontiguousarray(_to_torch_layout(np.asarray(value)))
    if path[-1] == 'mean':
      state_dict[key.rsplit('.', 1)[0] + '.' + NUM_BATCHES_TRACKED] = np.array(0, np.int64)
  return state_dict
