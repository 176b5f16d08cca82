"""Model zoo: exact sizes, budget, validation, dtypes, pooling, BatchNorm and initialisation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models
from resnet_jax.errors import UserError

# docs/reference.md's table: the seed papers' own counts.
REFERENCE_COUNTS = {
    'best': 4_697_742,
    'resnet18': 11_173_962,
    'resnet10': 4_977_226,
    'improved_resnet': 4_903_082,
    's004_resnet10': 4_903_242,
    's004_resnet16': 4_909_642,
    's004_resnet24': 4_935_242,
    's004_resnet48': 4_994_378,
}


def _count_by_formula(num_blocks, channels, stem=64, num_classes=10):
  """Basic blocks, 3x3 convs, 1x1 projections, counted by hand: kernels + 2 per BN channel."""
  count = 3 * 9 * stem + 2 * stem
  cin = stem
  for layer, (blocks, cout) in enumerate(zip(num_blocks, channels)):
    for i in range(blocks):
      count += 9 * cin * cout + 9 * cout * cout + 4 * cout
      if (layer > 0 and i == 0) or cin != cout:
        count += cin * cout + 2 * cout
      cin = cout
  return count + cin * num_classes + num_classes


def _images(batch=2, size=32, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


# Not jitted: on a CPU, op-by-op execution reuses each compiled op across these small models,
# where jit would compile every model anew.
def _init(model, images, seed=1):
  return model.init(jax.random.key(seed), images, train=False)


def _eval(model, variables, images):
  return model.apply(variables, images, train=False)


def _train(model, variables, images, seed=0):
  """(logits, batch_stats) of one training-mode forward."""
  logits, state = model.apply(variables, images, train=True, mutable=['batch_stats'],
                              rngs={'dropout': jax.random.key(seed)})
  return logits, state['batch_stats']


def _small_cfg(**overrides):
  cfg = models.preset('s003_resnet12')
  cfg.update({**dict(name='small', num_blocks=(1, 1), channels=(8, 16), kernel_sizes=(3, 3),
                     shortcut_kernel_sizes=(1, 1), stem_channels=8), **overrides})
  return cfg


@pytest.mark.parametrize('name', list(REFERENCE_COUNTS))
def test_reference_models_have_the_papers_parameter_counts(name):
  cfg = models.preset(name)
  assert cfg.name == name
  assert models.model_size(cfg) == REFERENCE_COUNTS[name]


@pytest.mark.parametrize('name,num_blocks,channels', [
    ('s003_resnet12', (2, 2, 2), (16, 32, 64)),
    ('s003_resnet14_4', (2, 2, 2, 1), (16, 32, 64, 512)),
    ('s003_resnet14_5', (2, 3, 3, 1, 1), (16, 32, 64, 128, 512)),
])
def test_seed_003_models_match_the_formula(name, num_blocks, channels):
  count = models.model_size(models.preset(name))
  assert count == _count_by_formula(num_blocks, channels)
  assert abs(count - {'s003_resnet12': 0.18e6, 's003_resnet14_4': 2.9e6,
                      's003_resnet14_5': 3.5e6}[name]) < 0.05e6


def test_every_reference_model_but_the_18_layer_ones_fits_the_default_budget():
  for name in models.PRESETS:
    cfg = models.preset(name)
    if name not in ('resnet18', 'senet18'):
      assert cfg.param_budget == 5_000_000
    assert models.check_budget(cfg) == models.model_size(cfg)


def test_budget_error_names_the_count_and_the_key():
  cfg = models.preset('resnet18')
  cfg.param_budget = 5_000_000
  with pytest.raises(UserError) as error:
    models.check_budget(cfg)
  assert str(error.value) == ('model has 11,173,962 parameters, over config.model.param_budget='
                              '5000000; shrink the model or raise the budget')


def test_unknown_preset_lists_the_names():
  with pytest.raises(UserError, match='unknown model name .*best, resnet18'):
    models.preset('resnet50')


@pytest.mark.parametrize('overrides,key', [
    (dict(kernel_sizes=(3, 3, 3)), 'config.model.kernel_sizes has 3 entries but '
                                   'config.model.num_blocks has 2'),
    (dict(channels=(8,)), 'config.model.channels has 1 entries'),
    (dict(activation='gelu'), "config.model.activation='gelu' is not one of relu"),
    (dict(block='wide'), 'config.model.block'),
    (dict(kernel_sizes=(3, 4)), 'config.model.kernel_sizes=4 must be an odd positive integer'),
    (dict(num_blocks=(1, 0)), 'config.model.num_blocks=0'),
    (dict(num_blocks=()), 'config.model.num_blocks=()'),
    (dict(head_dropout=1.0), 'config.model.head_dropout'),
    (dict(layer_dropout=-0.1), 'config.model.layer_dropout'),
    (dict(dtype='float16'), 'config.model.dtype'),
    (dict(bn_dtype='bfloat16'), "config.model.bn_dtype='bfloat16' is not one of float32, compute"),
    (dict(pool=-1), 'config.model.pool'),
])
def test_invalid_configs_raise_one_line_naming_the_key(overrides, key):
  with pytest.raises(UserError) as error:
    models.build_model(_small_cfg(**overrides))
  assert key in str(error.value)
  assert '\n' not in str(error.value)


def test_pool_that_does_not_divide_the_final_map_is_a_user_error():
  with pytest.raises(UserError, match='config.model.pool=3 does not divide the final 16x16'):
    models.model_size(_small_cfg(pool=3))


@pytest.mark.parametrize('pool,features', [(0, 16), (16, 16), (4, 16 * 4 * 4), (2, 16 * 8 * 8)])
def test_pooling_sets_the_head_input(pool, features):
  model = models.build_model(_small_cfg(pool=pool))
  variables = models.variable_shapes(model)
  assert variables['params']['linear']['kernel'].shape == (features, 10)
  logits = jax.eval_shape(functools.partial(model.apply, train=False), variables,
                          jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.float32))
  assert logits.shape == (3, 10)


def test_pool_equal_to_the_final_map_is_the_global_average():
  images = _images()
  model = models.build_model(_small_cfg())
  variables = _init(model, images)
  global_logits = _eval(model, variables, images)
  pooled_logits = _eval(models.build_model(_small_cfg(pool=16)), variables, images)
  np.testing.assert_allclose(pooled_logits, global_logits, rtol=1e-5, atol=1e-6)


def test_bfloat16_computes_in_bfloat16_with_float32_params_and_logits():
  images = _images()
  model32 = models.build_model(_small_cfg(se='block', se_reduction=4))
  model16 = models.build_model(_small_cfg(se='block', se_reduction=4, dtype='bfloat16'))
  variables = _init(model16, images)
  for leaf in jax.tree_util.tree_leaves(variables):
    assert leaf.dtype == jnp.float32
  logits16, batch_stats = _train(model16, variables, images)
  logits32, _ = _train(model32, variables, images)
  assert logits16.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(batch_stats))
  error = np.max(np.abs(logits16 - logits32)) / np.max(np.abs(logits32))
  assert 0 < error < 0.05


def test_summary_table_lists_layers_and_the_total():
  cfg = models.preset('best')
  table = models.summary_table(cfg)
  lines = table.splitlines()
  names = [line.split()[0] for line in lines[1:-1]]
  assert names[:3] == ['conv1', 'bn1', 'se'] and names[-1] == 'linear'
  assert names[3:-1] == [f'layer{l}_{i}' for l, n in ((1, 4), (2, 4), (3, 3)) for i in range(n)]
  assert lines[-1].split()[-1] == f'{models.model_size(cfg):,}' == '4,697,742'
  layer3_0 = next(line for line in lines if line.startswith('layer3_0'))
  assert '(8, 8, 256)' in layer3_0
  # two 3x3 convs, a 1x1 projection and three BatchNorms
  assert layer3_0.split()[-1] == f'{9 * 128 * 256 + 9 * 256 * 256 + 128 * 256 + 6 * 256:,}'
  assert sum(int(line.split()[-1].replace(',', '')) for line in lines[1:-1]) == 4_697_742


# preact adds bn_final (16 channels); layer2_0's bn1 normalises its 8 input channels, not 16.
@pytest.mark.parametrize('block_order,extra', [('original', 0), ('bn_after_add', 0),
                                               ('preact', 2 * 16 - 2 * (16 - 8))])
def test_block_orders(block_order, extra):
  cfg = _small_cfg(block_order=block_order)
  assert models.model_size(cfg) == models.model_size(_small_cfg()) + extra
  images = _images()
  model = models.build_model(cfg)
  logits, _ = _train(model, _init(model, images), images)
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))


def test_block_orders_compute_different_functions():
  images = _images()
  logits = []
  for block_order in ('original', 'bn_after_add'):
    model = models.build_model(_small_cfg(block_order=block_order))
    logits.append(_train(model, _init(model, images), images)[0])
  assert not np.allclose(logits[0], logits[1])


def test_bn_dtype_compute_normalises_in_the_compute_dtype():
  images = _images()
  cfg = functools.partial(_small_cfg, se='block', se_reduction=4)
  variables = _init(models.build_model(cfg()), images)
  train = lambda **kw: _train(models.build_model(cfg(**kw)), variables, images)
  # In float32 'compute' is float32: the same function, bit for bit.
  np.testing.assert_array_equal(train(bn_dtype='compute')[0], train()[0])
  logits, batch_stats = train(dtype='bfloat16', bn_dtype='compute')
  reference, reference_stats = train(dtype='bfloat16')
  assert logits.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(batch_stats))
  error = np.max(np.abs(logits - reference)) / np.max(np.abs(reference))
  assert 0 < error < 0.05
  # The statistics are float32 sums of the same bfloat16 activations in both.
  np.testing.assert_allclose(batch_stats['bn1']['mean'], reference_stats['bn1']['mean'],
                             rtol=1e-6, atol=1e-7)


def test_batchnorm_matches_pytorch_formulas():
  x = jax.random.normal(jax.random.key(0), (3, 2, 2, 5)) * 2.0 + 1.0
  bn = models.BatchNorm()
  variables = bn.init(jax.random.key(1), x, train=False)
  y, state = bn.apply(variables, x, train=True, mutable=['batch_stats'])
  flat = np.asarray(x).reshape(-1, 5)
  expected = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 5), expected, rtol=1e-5, atol=1e-5)
  stats = state['batch_stats']
  np.testing.assert_allclose(stats['mean'], 0.1 * flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
  y_eval = bn.apply({'params': variables['params'], **state}, x, train=False)
  np.testing.assert_allclose(
      np.asarray(y_eval).reshape(-1, 5),
      (flat - stats['mean']) / np.sqrt(stats['var'] + 1e-5), rtol=1e-5, atol=1e-5)


def test_dropout_draws_from_the_dropout_stream_in_training_only():
  images = _images()
  model = models.build_model(_small_cfg(block_dropout=0.3, layer_dropout=0.2, head_dropout=0.5))
  variables = _init(model, images)
  logits = [_train(model, variables, images, seed)[0] for seed in (0, 1, 1)]
  assert not np.allclose(logits[0], logits[1])
  np.testing.assert_array_equal(logits[1], logits[2])
  without = models.build_model(_small_cfg())
  np.testing.assert_array_equal(_eval(model, variables, images),
                                _eval(without, variables, images))


@pytest.mark.parametrize('init,std', [
    ('pytorch', (1 / 576)**0.5 / 3**0.5),  # U(+-1/sqrt(fan_in)), fan_in = 3 * 3 * 64
    ('he', (2 / 576)**0.5),
    ('xavier', (2 / (576 + 576))**0.5),
    ('normal', 0.02),
])
def test_initialisation_scales(init, std):
  kernel_init, bias_init = models.initializers(init, fan_in=576)
  kernel = np.asarray(kernel_init(jax.random.key(0), (3, 3, 64, 64)))
  assert abs(kernel.std() - std) < 0.05 * std
  assert abs(kernel.mean()) < 0.05 * std
  bias = np.asarray(bias_init(jax.random.key(1), (64,)))
  if init == 'pytorch':
    assert 0 < np.max(np.abs(bias)) <= 576**-0.5
  else:
    np.testing.assert_array_equal(bias, 0.0)


def test_he_initialises_the_head_xavier_normal():
  kernel_init, _ = models.initializers('he', fan_in=512, head=True)
  kernel = np.asarray(kernel_init(jax.random.key(0), (512, 10)))
  assert abs(kernel.std() - (2 / 522)**0.5) < 0.05 * (2 / 522)**0.5


def test_orthogonal_initialisation_is_orthogonal():
  cfg = _small_cfg(init='orthogonal')
  params = _init(models.build_model(cfg), _images())['params']
  kernel = np.asarray(params['layer2_0']['conv2']['kernel']).reshape(-1, 16)  # (9 * 16, 16)
  np.testing.assert_allclose(kernel.T @ kernel, np.eye(16), atol=1e-5)
  np.testing.assert_array_equal(params['layer2_0']['bn1']['scale'], 1.0)
  np.testing.assert_array_equal(params['layer2_0']['bn1']['bias'], 0.0)
  np.testing.assert_array_equal(params['linear']['bias'], 0.0)


def test_layer_dropout_sits_after_every_residual_layer():
  cfg = _small_cfg(layer_dropout=0.5)
  model = models.build_model(cfg)
  images = _images()
  _, state = model.apply(_init(model, images), images, train=True,
                         rngs={'dropout': jax.random.key(0)},
                         mutable=['batch_stats', 'intermediates'], capture_intermediates=True)
  names = [name for name in state['intermediates'] if name.endswith('_dropout')]
  assert names == [f'layer{i}_dropout' for i in range(1, len(cfg.num_blocks) + 1)]


def test_batchnorm_train_statistics_hold_with_an_offset_mean():
  # The one-pass variance (E[x^2] - E[x]^2) loses digits when |mean| >> std; BN inputs here
  # are conv outputs with |mean| of a few std at most. Offset 8 std: still within 1e-4.
  x = 8.0 + jax.random.normal(jax.random.key(3), (64, 8, 8, 16))
  bn = models.BatchNorm()
  variables = bn.init(jax.random.key(0), x, train=False)
  y, state = bn.apply(variables, x, train=True, mutable=['batch_stats'])
  x64 = np.asarray(x, np.float64).reshape(-1, 16)
  var64 = x64.var(axis=0)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 16),
                             (x64 - x64.mean(axis=0)) / np.sqrt(var64 + 1e-5), atol=1e-4)
  n = x64.shape[0]
  np.testing.assert_allclose(state['batch_stats']['var'], 0.9 + 0.1 * var64 * n / (n - 1),
                             rtol=1e-5)


def test_per_device_batchnorm_normalises_each_part_with_its_own_statistics():
  x = jax.random.normal(jax.random.key(0), (8, 2, 2, 5)) * 2.0 + 1.0
  grouped, whole = models.BatchNorm(groups=2), models.BatchNorm()
  variables = whole.init(jax.random.key(1), x, train=False)
  y, state = grouped.apply(variables, x, train=True, mutable=['batch_stats'])
  halves = [whole.apply(variables, part, train=True, mutable=['batch_stats'])
            for part in (x[:4], x[4:])]
  np.testing.assert_allclose(y, np.concatenate([h[0] for h in halves]), rtol=1e-6, atol=1e-6)
  for name in ('mean', 'var'):  # running statistics move by the parts' average
    np.testing.assert_allclose(state['batch_stats'][name],
                               np.mean([h[1]['batch_stats'][name] for h in halves], 0), rtol=1e-6)
  # At evaluation (running statistics) the groups make no difference.
  np.testing.assert_array_equal(grouped.apply(variables, x, train=False),
                                whole.apply(variables, x, train=False))
