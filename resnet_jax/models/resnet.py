"""The configurable ResNet of the seed papers, its named models, parameter budget and summary.

One Flax module covers every knob of `defaults.model_config()`. The layout follows
docs/reference.md: convs without bias and symmetric padding k // 2 (as PyTorch pads), a stem conv
(stride 1) + BN + activation, residual layers whose first block strides 2 (all but the first
layer), a KxK conv + BN shortcut only where the stride or the width changes, then pooling and a
dense head.

Module names follow the PyTorch code the seeds build on (kuangliu/pytorch-cifar): `conv1`, `bn1`,
`se`, `layer{L}_{i}` (block i of layer L, 1-based L), `linear`; `torch_import` derives the PyTorch
state_dict names from them.

`python -m resnet_jax.models` prints the table of named models, `--name best` one summary.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from resnet_jax import defaults
from resnet_jax import platforms
from resnet_jax.errors import UserError

BLOCKS = ('basic', 'bottleneck')
SE_PLACES = ('none', 'stem', 'block')
ACTIVATIONS = ('relu', 'relu6', 'leaky_relu', 'elu', 'swish')
INITS = ('pytorch', 'he', 'xavier', 'normal', 'orthogonal')
BLOCK_ORDERS = ('original', 'preact', 'bn_after_add', 'preact_kuangliu')
PREACT_ORDERS = ('preact', 'preact_kuangliu')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# config.model.dtype='auto': bfloat16 on a GPU or TPU, float32 on a CPU (`compute_dtype`, from
# the run's `platforms.Platform`).
AUTO_DTYPE = 'auto'
BN_DTYPES = ('float32', 'compute')
LAYER_KEYS = ('num_blocks', 'channels', 'kernel_sizes', 'shortcut_kernel_sizes')


def _layout(num_blocks, channels, **overrides) -> dict:
  """Basic blocks, 3x3 convs, 1x1 shortcuts, stem 64, no SE: what most seeds use."""
  layers = len(num_blocks)
  layout = dict(block='basic', num_blocks=tuple(num_blocks), channels=tuple(channels),
                kernel_sizes=(3,) * layers, shortcut_kernel_sizes=(1,) * layers,
                stem_channels=64, se='none')
  return {**layout, **overrides}


# Every row of docs/reference.md's table: name -> overrides of `defaults.model_config()`.
PRESETS = {
    # Seed 000's best model (96.04% in its paper); its pool 8 is global on 32x32 input.
    'best': _layout((4, 4, 3), (64, 128, 256), se='stem', se_reduction=16),
    # ResNet-18 of seeds 000 and 003: 11.2M parameters, so it lifts the 5M budget.
    'resnet18': _layout((2, 2, 2, 2), (64, 128, 256, 512), param_budget=12_000_000),
    # ResNet-10 of seeds 001 and 003; seed 003 initialises convs Kaiming-normal, the head Xavier.
    'resnet10': _layout((2, 1, 1, 1), (64, 128, 256, 512), init='he'),
    # Seed 002's ImprovedResNet: bottleneck x4, stem 32, LeakyReLU, dropout after each residual
    # layer (its best range 0.1-0.3: 0.2 here).
    'improved_resnet': _layout((3, 3, 3), (64, 128, 256), block='bottleneck', expansion=4,
                               stem_channels=32, activation='leaky_relu', leaky_relu_slope=0.01,
                               layer_dropout=0.2),
    # Seed 004, table 1 (its pool 4 is global on 32x32 input).
    's004_resnet10': _layout((1, 1, 1, 1), (64, 128, 256, 512)),
    's004_resnet16': _layout((2, 1, 2, 2), (64, 128, 256, 256)),
    # Seed 004's best model (94.43% in its paper).
    's004_resnet24': _layout((3, 3, 2, 3), (64, 128, 128, 256)),
    's004_resnet48': _layout((8, 5, 5, 5), (64, 128, 128, 128)),
    # Seed 003, table 2: stem 64 as its text says; Kaiming-normal convs, Xavier head.
    's003_resnet12': _layout((2, 2, 2), (16, 32, 64), init='he'),
    's003_resnet14_4': _layout((2, 2, 2, 1), (16, 32, 64, 512), init='he'),
    's003_resnet14_5': _layout((2, 3, 3, 1, 1), (16, 32, 64, 128, 512), init='he'),
    # kuangliu/pytorch-cifar's SENet18 (pre-activation blocks with SE), which torch_import reads.
    'senet18': _layout((2, 2, 2, 2), (64, 128, 256, 512), se='block', se_reduction=16,
                       block_order='preact_kuangliu', param_budget=12_000_000),
}


def preset(name: str) -> config_dict.ConfigDict:
  """The model config of a named model (a row of docs/reference.md)."""
  if name not in PRESETS:
    raise UserError(f"unknown model name {name!r}; choose one of {', '.join(PRESETS)}")
  return defaults.model_config(name=name, **PRESETS[name])


def activation_fn(name: str, leaky_relu_slope: float) -> Callable[[jax.Array], jax.Array]:
  """The activation function called `name` (seed 004, table 3; PyTorch's default parameters)."""
  return {
      'relu': nn.relu,
      'relu6': nn.relu6,
      'leaky_relu': functools.partial(nn.leaky_relu, negative_slope=leaky_relu_slope),
      'elu': nn.elu,
      'swish': nn.swish,
  }[name]


def _uniform(bound: float) -> Callable:
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def initializers(init: str, fan_in: int, head: bool = False) -> tuple[Callable, Callable]:
  """(kernel_init, bias_init) of a conv or dense layer for the `init` scheme.

  pytorch: PyTorch's default, kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)), bias likewise.
  he: Kaiming normal (gain sqrt 2, fan_in) for convs, Xavier normal for the head (seed 003).
  xavier: Xavier (Glorot) normal. normal: N(0, 0.02). orthogonal: orthogonal.
  Every scheme but pytorch starts biases at zero.
  """
  xavier = nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal')
  if init == 'pytorch':
    return nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'), _uniform(fan_in**-0.5)
  kernel_init = {
      'he': xavier if head else nn.initializers.variance_scaling(2.0, 'fan_in', 'normal'),
      'xavier': xavier,
      'normal': nn.initializers.normal(0.02),
      'orthogonal': nn.initializers.orthogonal(),
  }[init]
  return kernel_init, nn.initializers.zeros


def conv(features: int, kernel_size: int, init: str, dtype: Any, name: str, stride: int = 1,
         bias_fan_in: int | None = None) -> nn.Conv:
  """A conv padded k // 2 on every side as PyTorch pads ('SAME' is asymmetric at stride 2).

  It has a bias (initialised for `bias_fan_in` inputs) only where bias_fan_in is given.
  """
  kernel_init, bias_init = initializers(init, fan_in=bias_fan_in or 1)
  pad = kernel_size // 2
  return nn.Conv(features, (kernel_size, kernel_size), strides=stride, padding=((pad, pad),) * 2,
                 use_bias=bias_fan_in is not None, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=kernel_init, bias_init=bias_init, name=name)


class BatchNorm(nn.Module):
  """BatchNorm exactly as PyTorch's BatchNorm2d (momentum 0.1 in its terms, eps 1e-5).

  Normalises with the biased batch variance and updates `var` with the unbiased one, as PyTorch
  does. Statistics are plain means over every axis but the last; under a data-parallel jit XLA
  makes them global over the batch. With `groups` > 1 the batch is that many equal consecutive
  parts (the devices' shards, `config.batch_statistics='per_device'`), each normalised with its
  own statistics as PyTorch's DDP does, so no reduction crosses devices; the running statistics
  move by the parts' average. Statistics and parameters are float32 whatever `dtype` is; the
  normalisation itself runs in `arithmetic_dtype` (config.model.bn_dtype).
  """
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  arithmetic_dtype: Any = jnp.float32
  groups: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    groups = self.groups if train else 1
    shape = x.shape
    x = x.reshape((groups, shape[0] // groups) + shape[1:]) if groups > 1 else x
    x32 = x.astype(jnp.float32)
    if train:
      axes = tuple(range(1 if groups > 1 else 0, x.ndim - 1))
      # One pass over x (E[x^2] - E[x]^2, as flax.linen.BatchNorm does by default): the two
      # reductions fuse into one read, where the centred form reads x twice.
      mean = jnp.mean(x32, axes, keepdims=groups > 1)
      var = jnp.maximum(jnp.mean(jnp.square(x32), axes, keepdims=groups > 1) - jnp.square(mean),
                        0.0)
      if not self.is_initializing():
        count = x.size // features // groups
        unbiased_var = var * (count / max(count - 1, 1))
        batch_mean, batch_var = ((mean, unbiased_var) if groups == 1 else
                                 (jnp.mean(mean.reshape(-1, features), 0),
                                  jnp.mean(unbiased_var.reshape(-1, features), 0)))
        running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * batch_mean
        running_var.value = (1 - self.momentum) * running_var.value + self.momentum * batch_var
    else:
      mean, var = running_mean.value, running_var.value
    a = self.arithmetic_dtype
    y = ((x.astype(a) - mean.astype(a)) * (scale * jax.lax.rsqrt(var + self.epsilon)).astype(a)
         + bias.astype(a))
    return y.astype(self.dtype).reshape(shape)


class SqueezeExcite(nn.Module):
  """Seed 000's SE: global average pool, 1x1 conv (bias) C -> C/r, ReLU, 1x1 conv -> C, sigmoid."""
  reduction: int
  weight_init: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    hidden = max(1, features // self.reduction)
    s = jnp.mean(x, axis=(1, 2), keepdims=True, dtype=jnp.float32)
    s = conv(hidden, 1, self.weight_init, self.dtype, 'fc1', bias_fan_in=features)(s)
    s = conv(features, 1, self.weight_init, self.dtype, 'fc2', bias_fan_in=hidden)(nn.relu(s))
    return x * nn.sigmoid(s).astype(x.dtype)


class ResidualBlock(nn.Module):
  """A basic (two convs) or bottleneck (three convs) residual block.

  Attributes:
    convs: (kernel size, features, stride) of each conv on the residual branch, in order.
    shortcut_kernel_size: K of the projection shortcut (used only where shape changes).
    block_order: 'original' conv-BN-act ... BN, add, act; 'bn_after_add' conv-BN-act ... conv,
      add, BN, act; 'preact' BN-act-conv ... add (He et al. 2016, "Identity mappings");
      'preact_kuangliu' likewise, but the projection shortcut is a conv alone on the first
      BN-act's output (kuangliu/pytorch-cifar's PreActBlock).
    se_reduction: > 0 puts SE on the residual branch, before the addition.
    dropout: rate of the dropout before the branch's last conv.
  """
  convs: Sequence[tuple[int, int, int]]
  shortcut_kernel_size: int
  block_order: str
  act: Callable[[jax.Array], jax.Array]
  weight_init: str
  se_reduction: int = 0
  dropout: float = 0.0
  dtype: Any = jnp.float32
  bn_dtype: Any = jnp.float32
  bn_groups: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = functools.partial(BatchNorm, dtype=self.dtype, arithmetic_dtype=self.bn_dtype,
                             groups=self.bn_groups)
    bn = lambda i, h: norm(name=f'bn{i}')(h, train)
    preact = self.block_order in PREACT_ORDERS
    last = len(self.convs)
    h = x
    for i, (kernel_size, features, stride) in enumerate(self.convs, start=1):
      if preact:
        h = self.act(bn(i, h))
        if i == 1:
          activated = h
      if i == last and self.dropout:
        h = nn.Dropout(self.dropout, deterministic=not train, name='dropout')(h)
      h = conv(features, kernel_size, self.weight_init, self.dtype, f'conv{i}', stride=stride)(h)
      if preact or (self.block_order == 'bn_after_add' and i == last):
        continue  # BN comes before the next conv, or after the addition
      h = bn(i, h)
      if i < last:
        h = self.act(h)
    if self.se_reduction:
      h = SqueezeExcite(self.se_reduction, self.weight_init, self.dtype, name='se')(h)

    stride = max(s for _, _, s in self.convs)
    shortcut = x
    if stride != 1 or x.shape[-1] != h.shape[-1]:
      kuangliu = self.block_order == 'preact_kuangliu'
      shortcut = conv(h.shape[-1], self.shortcut_kernel_size, self.weight_init, self.dtype,
                      'shortcut_conv', stride=stride)(activated if kuangliu else x)
      if not kuangliu:
        shortcut = norm(name='shortcut_bn')(shortcut, train)
    h = h + shortcut
    if preact:
      return h
    if self.block_order == 'bn_after_add':
      h = bn(last, h)
    return self.act(h)


class ResNet(nn.Module):
  """The configurable ResNet; `build_model` fills it from `config.model` (keys documented there).

  Preact models (block_order 'preact') end with `bn_final` + activation before the pool. `pool` 0 is a global average
  pool; P > 0 averages PxP windows (stride P) and flattens channel-major, as PyTorch does, so the
  head's weights are interchangeable with PyTorch's.
  """
  block: str
  num_blocks: Sequence[int]
  channels: Sequence[int]
  kernel_sizes: Sequence[int]
  shortcut_kernel_sizes: Sequence[int]
  expansion: int = 4
  stem_channels: int = 64
  stem_kernel_size: int = 3
  pool: int = 0
  se: str = 'none'
  se_reduction: int = 16
  block_dropout: float = 0.0
  layer_dropout: float = 0.0
  head_dropout: float = 0.0
  activation: str = 'relu'
  leaky_relu_slope: float = 0.01
  weight_init: str = 'pytorch'
  block_order: str = 'original'
  num_classes: int = 10
  dtype: Any = jnp.float32
  bn_dtype: Any = jnp.float32  # BatchNorm's arithmetic
  bn_groups: int = 1  # parts of a training batch with their own statistics (BatchNorm.groups)

  def _branch(self, features: int, kernel_size: int, stride: int) -> tuple[tuple[int, ...], ...]:
    if self.block == 'bottleneck':
      return ((1, features, 1), (kernel_size, features, stride),
              (1, features * self.expansion, 1))
    return ((kernel_size, features, stride), (kernel_size, features, 1))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Logits (float32) of images x (B, H, W, 3); dropout draws from the 'dropout' rng stream."""
    act = activation_fn(self.activation, self.leaky_relu_slope)
    norm = functools.partial(BatchNorm, dtype=self.dtype, arithmetic_dtype=self.bn_dtype,
                             groups=self.bn_groups)
    x = jnp.asarray(x, self.dtype)
    x = conv(self.stem_channels, self.stem_kernel_size, self.weight_init, self.dtype,
             'conv1')(x)
    x = act(norm(name='bn1')(x, train))
    if self.se == 'stem':
      x = SqueezeExcite(self.se_reduction, self.weight_init, self.dtype, name='se')(x)

    layers = zip(self.num_blocks, self.channels, self.kernel_sizes, self.shortcut_kernel_sizes)
    for layer, (blocks, features, kernel_size, shortcut_kernel_size) in enumerate(layers, start=1):
      for i in range(blocks):
        stride = 2 if layer > 1 and i == 0 else 1
        x = ResidualBlock(
            convs=self._branch(features, kernel_size, stride),
            shortcut_kernel_size=shortcut_kernel_size, block_order=self.block_order, act=act,
            weight_init=self.weight_init, dropout=self.block_dropout, dtype=self.dtype,
            bn_dtype=self.bn_dtype, bn_groups=self.bn_groups,
            se_reduction=self.se_reduction if self.se == 'block' else 0,
            name=f'layer{layer}_{i}')(x, train)
      if self.layer_dropout:
        x = nn.Dropout(self.layer_dropout, deterministic=not train,
                       name=f'layer{layer}_dropout')(x)
    if self.block_order == 'preact':
      x = act(norm(name='bn_final')(x, train))

    x = self._pool(x.astype(jnp.float32))
    if self.head_dropout:
      x = nn.Dropout(self.head_dropout, deterministic=not train, name='head_dropout')(x)
    kernel_init, bias_init = initializers(self.weight_init, fan_in=x.shape[-1], head=True)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=kernel_init, bias_init=bias_init, name='linear')(x)
    return x.astype(jnp.float32)

  def _pool(self, x: jax.Array) -> jax.Array:
    if not self.pool:
      return jnp.mean(x, axis=(1, 2))
    height, width = x.shape[1:3]
    if height % self.pool or width % self.pool:
      raise UserError(f'config.model.pool={self.pool} does not divide the final {height}x{width} '
                      'feature map; use a divisor of it, or 0 for a global average pool')
    x = nn.avg_pool(x, (self.pool, self.pool), strides=(self.pool, self.pool))
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_positive_int(key: str, value, odd: bool = False):
  if not _is_int(value) or value < 1 or (odd and value % 2 == 0):
    kind = 'an odd positive integer' if odd else 'a positive integer'
    raise UserError(f'config.model.{key}={value!r} must be {kind}')


def _check_choice(key: str, value, choices):
  if value not in choices:
    raise UserError(f"config.model.{key}={value!r} is not one of {', '.join(choices)}")


def validate(model_cfg: config_dict.ConfigDict):
  """Raises UserError (one line naming the key) for a model config that cannot be built."""
  for key in LAYER_KEYS:
    values = model_cfg[key]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
      raise UserError(f'config.model.{key}={values!r} must be a non-empty sequence, one entry '
                      "a residual layer, e.g. '(4,4,3)'")
    for value in values:
      _check_positive_int(key, value, odd=key.endswith('kernel_sizes'))
  layers = len(model_cfg.num_blocks)
  for key in LAYER_KEYS[1:]:
    if len(model_cfg[key]) != layers:
      raise UserError(f'config.model.{key} has {len(model_cfg[key])} entries but '
                      f'config.model.num_blocks has {layers}; give one per residual layer')
  for key in ('stem_channels', 'expansion', 'se_reduction', 'num_classes', 'param_budget'):
    _check_positive_int(key, model_cfg[key])
  _check_positive_int('stem_kernel_size', model_cfg.stem_kernel_size, odd=True)
  if not _is_int(model_cfg.pool) or model_cfg.pool < 0:
    raise UserError(f'config.model.pool={model_cfg.pool!r} must be 0 (global average pool) or a '
                    'positive pooling window')
  for key in ('block_dropout', 'layer_dropout', 'head_dropout'):
    rate = model_cfg[key]
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= rate < 1.0:
      raise UserError(f'config.model.{key}={rate!r} must be a dropout rate in [0, 1)')
  for key, choices in (('block', BLOCKS), ('se', SE_PLACES), ('activation', ACTIVATIONS),
                       ('init', INITS), ('block_order', BLOCK_ORDERS),
                       ('dtype', (AUTO_DTYPE, *DTYPES)),
                       ('bn_dtype', BN_DTYPES)):
    _check_choice(key, model_cfg[key], choices)


def compute_dtype(model_cfg: config_dict.ConfigDict,
                  platform: platforms.Platform | None) -> str:
  """The compute dtype a run uses: config.model.dtype, with 'auto' chosen for the run's devices.

  'auto' is bfloat16 on a GPU or TPU (the fast path; parameters, BatchNorm statistics and the loss
  stay float32) and float32 on a CPU, where bfloat16 is slower and only emulated, or without a
  platform (a model built for its shapes alone).
  """
  if model_cfg.dtype != AUTO_DTYPE:
    return model_cfg.dtype
  return 'float32' if platform is None or platform.is_cpu else 'bfloat16'


def build_model(model_cfg: config_dict.ConfigDict, bn_groups: int = 1,
                platform: platforms.Platform | None = None) -> ResNet:
  """The ResNet that `config.model` describes; raises UserError for an invalid config.

  bn_groups: parts of a training batch that BatchNorm normalises apart (`BatchNorm.groups`).
  platform: the run's devices, which decide model.dtype='auto' (`compute_dtype`).
  """
  validate(model_cfg)
  as_is = ('block', 'expansion', 'stem_channels', 'stem_kernel_size', 'pool', 'se',
           'se_reduction', 'activation', 'block_order', 'num_classes')
  rates = ('block_dropout', 'layer_dropout', 'head_dropout', 'leaky_relu_slope')
  dtype = DTYPES[compute_dtype(model_cfg, platform)]
  return ResNet(
      **{key: model_cfg[key] for key in as_is},
      **{key: float(model_cfg[key]) for key in rates},
      **{key: tuple(model_cfg[key]) for key in LAYER_KEYS},
      weight_init=model_cfg.init, dtype=dtype,
      bn_dtype=dtype if model_cfg.bn_dtype == 'compute' else jnp.float32, bn_groups=bn_groups)


def variable_shapes(model: nn.Module, image_size: int = 32) -> dict:
  """The model's variables ({'params', 'batch_stats'}) as shapes, without computing anything."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


def count_params(params) -> int:
  """Number of scalars in a tree of arrays (or shapes), e.g. variables['params']."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


def model_size(model_cfg: config_dict.ConfigDict, image_size: int = 32) -> int:
  """The number of trainable parameters of the model `config.model` describes."""
  return count_params(variable_shapes(build_model(model_cfg), image_size)['params'])


def check_budget(model_cfg: config_dict.ConfigDict, image_size: int = 32) -> int:
  """The model's parameter count; raises UserError where it is over config.model.param_budget."""
  count = model_size(model_cfg, image_size)
  if count > model_cfg.param_budget:
    raise UserError(f'model has {count:,} parameters, over config.model.param_budget='
                    f'{model_cfg.param_budget}; shrink the model or raise the budget')
  return count


def summary_table(model_cfg: config_dict.ConfigDict, image_size: int = 32) -> str:
  """A table of the model's top-level layers (output shape, parameters) and the total."""
  model = build_model(model_cfg)
  rows = [('layer', 'output shape', 'parameters')]

  def add_rows(x):  # traced once; the captured outputs are in call order only inside the trace
    variables = model.init(jax.random.key(0), x, train=False)
    _, state = model.apply(variables, x, train=False, capture_intermediates=True,
                           mutable=['intermediates'])
    params = variables['params']
    for name, captured in state['intermediates'].items():
      if name != '__call__':
        shape = captured['__call__'][0].shape[1:]
        rows.append((name, str(shape), f'{count_params(params.get(name, {})):,}'))
    rows.append((f'total ({model_cfg.name})', '', f'{count_params(params):,}'))

  jax.eval_shape(add_rows, jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  widths = [max(len(row[col]) for row in rows) for col in range(3)]
  return '\n'.join(f'{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}'.rstrip()
                   for a, b, c in rows)
