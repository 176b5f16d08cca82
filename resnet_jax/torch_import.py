"""PyTorch `state_dict` of a seed-style ResNet -> Flax variables of `models.ResNet`.

PyTorch names follow kuangliu/pytorch-cifar, which seed 000's code builds on, and are derived from
the Flax module names by `torch_name` (the one place that maps them):

  conv1, bn1                         stem conv and BatchNorm
  se.fc1, se.fc2                     SE after the stem (se='stem'), 1x1 convs with bias
  layer{L}.{i}.conv{j}, .bn{j}       block i (0-based) of layer L (1-based); j = 1..2 (3 bottleneck)
  layer{L}.{i}.se.fc1, .se.fc2       SE in every block (se='block')
  layer{L}.{i}.shortcut.0, .1        projection shortcut conv and BatchNorm
  bn_final                           the last BatchNorm of a preact model
  linear                             the dense head

Conv weights OIHW become HWIO kernels, linear (out, in) becomes (in, out); BatchNorm weight, bias,
running_mean and running_var become scale, bias, mean and var; num_batches_tracked is ignored. A
`module.` prefix (a checkpoint of an `nn.DataParallel`) is dropped.
"""

import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from ml_collections import config_dict

from resnet_jax import models
from resnet_jax.errors import UserError

_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
               'mean': 'running_mean', 'var': 'running_var'}
_MODULE_NAMES = {'shortcut_conv': 'shortcut.0', 'shortcut_bn': 'shortcut.1'}
_SHOWN = 4  # offenders listed in an error


def torch_name(path: tuple[str, ...]) -> str:
  """The PyTorch state_dict key of a Flax variable, e.g. ('params', 'layer1_0', 'conv1', 'kernel')
  -> 'layer1.0.conv1.weight'."""
  *modules, leaf = path[1:]
  modules = [_MODULE_NAMES.get(m, re.sub(r'^(layer\d+)_(\d+)$', r'\1.\2', m)) for m in modules]
  return '.'.join(modules + [_LEAF_NAMES[leaf]])


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:  # conv OIHW -> HWIO
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:  # linear (out, in) -> (in, out)
    return array.T
  return array


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(flax_shape) == 4:
    return tuple(flax_shape[i] for i in (3, 2, 0, 1))
  return tuple(reversed(flax_shape))


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch.Tensor, possibly on a GPU or in half precision
    value = value.detach().float().cpu().numpy()
  return np.asarray(value, np.float32)


def _listed(label: str, names: list[str]) -> str:
  shown = ', '.join(names[:_SHOWN]) + (', ...' if len(names) > _SHOWN else '')
  return f'{len(names)} {label} ({shown})'


def variables_from_torch(state_dict: Mapping[str, Any], model_cfg: config_dict.ConfigDict,
                         image_size: int = 32) -> dict:
  """Flax variables {'params', 'batch_stats'} of `build_model(model_cfg)` from a PyTorch state_dict.

  Args:
    state_dict: names -> torch tensors or numpy arrays, named as the module docstring lists.
    model_cfg: the `config.model` of the same network.
    image_size: input side; matters only for the head of a model with pool > 0.

  Raises:
    UserError: the state_dict has missing or unexpected keys or wrong shapes for this config.
  """
  if state_dict and all(key.startswith('module.') for key in state_dict):
    state_dict = {key[len('module.'):]: value for key, value in state_dict.items()}
  given = {key: value for key, value in state_dict.items()
           if not key.endswith('num_batches_tracked')}
  shapes = traverse_util.flatten_dict(
      models.variable_shapes(models.build_model(model_cfg), image_size))
  flat, missing, wrong_shape = {}, [], []
  for path, shape in shapes.items():
    key = torch_name(path)
    if key not in given:
      missing.append(key)
      continue
    array = _to_flax_layout(_to_numpy(given[key]))
    if array.shape != shape.shape:
      wrong_shape.append(f'{key} {tuple(np.shape(given[key]))} != {_torch_shape(shape.shape)}')
      continue
    flat[path] = jnp.asarray(array)
  unexpected = sorted(set(given) - {torch_name(path) for path in shapes})
  if missing or unexpected or wrong_shape:
    problems = [_listed(label, names) for label, names in (
        ('missing', missing), ('unexpected', unexpected), ('of the wrong shape', wrong_shape))
                if names]
    raise UserError(f"PyTorch state_dict does not match config.model (name={model_cfg.name}): "
                    f"keys {'; '.join(problems)}; set config.model to the saved network's layout")
  return traverse_util.unflatten_dict(flat)
