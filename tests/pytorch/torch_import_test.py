"""PyTorch checkpoints -> Flax: the package's PyTorch ResNet, and networks named as the seeds'
public repositories name them, saved as those repositories save them."""

import jax
import numpy as np
import pytest

from conftest import randomise_batchnorm
from conftest import relative_error
from resnet_jax import models
from resnet_jax.errors import UserError
from resnet_jax.pytorch import torch_import

torch = pytest.importorskip('torch')
from resnet_jax.pytorch import torch_resnet  # pylint: disable=g-import-not-at-top,wrong-import-position

tnn = torch.nn
F = torch.nn.functional

BATCH = 4


def _custom_cfg():
  """SE in every block, leaky_relu, 5x5 convs, 3x3 shortcuts, and a 2x2 pooled map in the head."""
  cfg = models.preset('s003_resnet12')
  cfg.update(dict(name='custom', num_blocks=(1, 2, 1), channels=(32, 48, 64),
                  kernel_sizes=(5, 5, 5), shortcut_kernel_sizes=(3, 3, 3), stem_channels=16,
                  se='block', se_reduction=4, activation='leaky_relu', leaky_relu_slope=0.2,
                  pool=4, block_dropout=0.1, head_dropout=0.3, param_budget=20_000_000))
  return cfg


def _small_cfg(**overrides):
  cfg = models.preset('s003_resnet12')
  cfg.update({**dict(name='small', num_blocks=(2, 1), channels=(8, 16), kernel_sizes=(3, 3),
                     shortcut_kernel_sizes=(1, 1), stem_channels=16), **overrides})
  return cfg


CASES = {
    'best': lambda: models.preset('best'),
    'resnet18': lambda: models.preset('resnet18'),
    'improved_resnet': lambda: models.preset('improved_resnet'),
    'se_block_leaky_5x5': _custom_cfg,
    'preact_bottleneck_swish': lambda: _small_cfg(block='bottleneck', block_order='preact',
                                                  activation='swish'),
    'preact_kuangliu_se': lambda: _small_cfg(block_order='preact_kuangliu', se='block',
                                             se_reduction=4, layer_dropout=0.2),
    'bn_after_add_elu': lambda: _small_cfg(block_order='bn_after_add', activation='elu'),
}


def _images(seed=0):
  return np.random.default_rng(seed).normal(size=(BATCH, 32, 32, 3)).astype(np.float32)


def _torch_forward(net, images, train=False):
  net.train(train)
  with torch.no_grad():
    return net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def _flax_forward(variables, cfg, images):
  return models.build_model(cfg).apply(variables, images, train=False)


@pytest.fixture(scope='module', params=list(CASES))
def case(request):
  cfg = CASES[request.param]()
  torch.manual_seed(len(request.param))
  net = randomise_batchnorm(torch_resnet.TorchResNet(cfg), seed=len(request.param))
  return cfg, net, _images()


def test_eval_logits_match(case):
  cfg, net, images = case
  variables = torch_import.variables_from_torch(net.state_dict(), cfg)
  logits = _flax_forward(variables, cfg, images)
  assert logits.dtype == np.float32
  assert relative_error(logits, _torch_forward(net, images)) < 1e-4


def test_train_logits_and_running_statistics_match(case):
  cfg, net, images = case
  cfg = cfg.copy_and_resolve_references()
  cfg.block_dropout = cfg.layer_dropout = cfg.head_dropout = 0.0  # draws differ by framework
  net.cfg = torch_resnet.settings(cfg)
  for block in net.modules():
    if isinstance(block, torch_resnet.Block):
      block.dropout = 0.0
  variables = torch_import.variables_from_torch(net.state_dict(), cfg)
  logits, state = models.build_model(cfg).apply(variables, images, train=True,
                                                mutable=['batch_stats'])
  assert relative_error(logits, _torch_forward(net, images, train=True)) < 1e-4

  updated = torch_import.variables_from_torch(net.state_dict(), cfg)['batch_stats']
  pairs = zip(jax.tree_util.tree_leaves(state['batch_stats']),
              jax.tree_util.tree_leaves(updated),
              jax.tree_util.tree_leaves(variables['batch_stats']))
  for ours, theirs, before in pairs:
    assert not np.allclose(theirs, before)
    assert relative_error(ours, theirs) < 1e-4


def test_named_models_have_the_flax_parameter_counts():
  for name in ('best', 'senet18'):
    net = torch_resnet.TorchResNet(models.preset(name))
    assert sum(p.numel() for p in net.parameters()) == models.model_size(models.preset(name))


# ---- The seeds' public repositories, named as they name their layers (written here, not
# imported, so that they check the layouts independently).

class BasicBlock(tnn.Module):
  """kuangliu/pytorch-cifar models/resnet.py BasicBlock (project1_model.py's, drop=0, too)."""

  def __init__(self, in_planes, planes, stride):
    super().__init__()
    self.conv1 = tnn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.shortcut = tnn.Sequential()
    if stride != 1 or in_planes != planes:
      self.shortcut = tnn.Sequential(tnn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                     tnn.BatchNorm2d(planes))

  def forward(self, x):
    out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(out + self.shortcut(x))


class Project1SEBlock(tnn.Module):
  """Its SEBlock: pool, conv1 (1x1, bias), ReLU, conv2, sigmoid."""

  def __init__(self, channels, reduction=16):
    super().__init__()
    self.conv1 = tnn.Conv2d(channels, channels // reduction, 1, bias=True)
    self.conv2 = tnn.Conv2d(channels // reduction, channels, 1, bias=True)

  def forward(self, x):
    return x * torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(x, 1)))))


class Project1ResNet(tnn.Module):
  """Seed 000's best model as project1_model.py's get_ResNet builds it: [4, 4, 3], C1 = 64."""

  def __init__(self, num_blocks=(4, 4, 3), channels=64):
    super().__init__()
    self.conv1 = tnn.Conv2d(3, channels, 3, 1, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(channels)
    self.seblock = Project1SEBlock(channels)
    layers, in_planes = [], channels
    for n, blocks in enumerate(num_blocks):
      planes, stride, stack = channels * 2**n, 1 if n == 0 else 2, []
      for i in range(blocks):
        stack.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
        in_planes = planes
      layers.append(tnn.Sequential(*stack))
    self.residual_layers = tnn.ModuleList(layers)
    self.pool = 32 // 2**(len(num_blocks) - 1)
    self.linear = tnn.Linear(in_planes, 10)

  def forward(self, x):
    out = self.seblock(F.relu(self.bn1(self.conv1(x))))
    for layer in self.residual_layers:
      out = layer(out)
    return self.linear(F.avg_pool2d(out, self.pool).flatten(1))


class KuangliuPreActSEBlock(tnn.Module):
  """kuangliu/pytorch-cifar models/senet.py PreActBlock: SE as the block's fc1, fc2."""

  def __init__(self, in_planes, planes, stride):
    super().__init__()
    self.bn1 = tnn.BatchNorm2d(in_planes)
    self.conv1 = tnn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    if stride != 1 or in_planes != planes:
      self.shortcut = tnn.Sequential(tnn.Conv2d(in_planes, planes, 1, stride, bias=False))
    self.fc1 = tnn.Conv2d(planes, planes // 16, 1)
    self.fc2 = tnn.Conv2d(planes // 16, planes, 1)

  def forward(self, x):
    out = F.relu(self.bn1(x))
    shortcut = self.shortcut(out) if hasattr(self, 'shortcut') else x
    out = self.conv2(F.relu(self.bn2(self.conv1(out))))
    w = torch.sigmoid(self.fc2(F.relu(self.fc1(F.avg_pool2d(out, out.size(2))))))
    return out * w + shortcut


class KuangliuNet(tnn.Module):
  """kuangliu's ResNet / SENet: conv1, bn1, layer1..4, avg_pool2d(4), linear.

  `widths` other than kuangliu's (64, 128, 256, 512) keep the test fast; the names are the same.
  """

  def __init__(self, block, widths, num_blocks=(2, 2, 2, 2)):
    super().__init__()
    self.conv1 = tnn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(widths[0])
    in_planes = widths[0]
    for layer, (blocks, planes) in enumerate(zip(num_blocks, widths), start=1):
      stack = []
      for i in range(blocks):
        stack.append(block(in_planes, planes, 2 if layer > 1 and i == 0 else 1))
        in_planes = planes
      setattr(self, f'layer{layer}', tnn.Sequential(*stack))
    self.linear = tnn.Linear(in_planes, 10)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
    return self.linear(F.avg_pool2d(out, 4).flatten(1))


def _efficient_resnets_checkpoint(net):
  """Efficient_ResNets main.py: {'net', 'acc', 'epoch', 'config'} of an nn.DataParallel net."""
  return {'net': {f'module.{k}': v for k, v in net.state_dict().items()}, 'acc': 95.1,
          'epoch': 180, 'config': {'optim': 'sgd', 'lr': 0.1, 'max_epochs': 200}}


def _kuangliu_checkpoint(net):
  """kuangliu main.py's ckpt.pth: {'net', 'acc', 'epoch'} of an nn.DataParallel net."""
  return {'net': {f'module.{k}': v for k, v in net.state_dict().items()}, 'acc': 93.0,
          'epoch': 150, 'pos_best_acc': 0}


def _quarter(name):
  """The named model at a quarter of its widths."""
  cfg = models.preset(name)
  cfg.update(name=f'{name}/4', stem_channels=16, channels=(16, 32, 64, 128))
  return cfg


QUARTER = (16, 32, 64, 128)
FOREIGN = {
    'efficient_resnets_best': (lambda: models.preset('best'), Project1ResNet,
                               _efficient_resnets_checkpoint),
    'kuangliu_resnet18': (lambda: _quarter('resnet18'),
                          lambda: KuangliuNet(BasicBlock, QUARTER), _kuangliu_checkpoint),
    'kuangliu_senet18': (lambda: _quarter('senet18'),
                         lambda: KuangliuNet(KuangliuPreActSEBlock, QUARTER),
                         _kuangliu_checkpoint),
}


def _saved(name, tmp_path):
  """(config.model, the torch net, its checkpoint saved as its repository saves it)."""
  make_cfg, make_net, wrap = FOREIGN[name]
  torch.manual_seed(7)
  net = randomise_batchnorm(make_net(), seed=7)
  path = tmp_path / 'ckpt.pth'
  torch.save(wrap(net), path)
  return make_cfg(), net, str(path)


@pytest.mark.parametrize('name', list(FOREIGN))
def test_foreign_checkpoints_load_with_logits_parity(name, tmp_path):
  cfg, net, path = _saved(name, tmp_path)
  variables = torch_import.variables_from_torch(torch_import.load_state_dict(path), cfg)
  images = _images(seed=3)
  assert relative_error(_flax_forward(variables, cfg, images), _torch_forward(net, images)) < 1e-4


def test_wrong_config_says_which_named_model_fits(tmp_path):
  _, net, _ = _saved('efficient_resnets_best', tmp_path)
  state_dict = {f'_orig_mod.{k}': v for k, v in net.state_dict().items()}
  assert torch_import.matching_presets(state_dict) == ['best']
  with pytest.raises(UserError) as error:
    torch_import.variables_from_torch(state_dict, models.preset('s004_resnet10'))
  message = str(error.value)
  assert '\n' not in message and 'name=s004_resnet10' in message
  for layout in torch_import.LAYOUTS:
    assert f'{layout.name} ({layout.source}): ' in message
  assert 'closest efficient_resnets: ' in message
  assert 'it is the named model best: use that model (evaluate --model best)' in message


def test_mismatched_state_dict_lists_offenders():
  cfg = _custom_cfg()
  state_dict = dict(torch_resnet.TorchResNet(cfg).state_dict())
  del state_dict['layer2.1.fc1.weight']
  state_dict['layer9.0.conv1.weight'] = np.zeros((1, 1, 1, 1), np.float32)
  with pytest.raises(UserError) as error:
    torch_import.variables_from_torch(state_dict, cfg)
  message = str(error.value)
  assert '\n' not in message and 'fits no layout of config.model (name=custom)' in message
  assert 'kuangliu (kuangliu/pytorch-cifar ResNet, SENet and forks; resnet_jax.export): ' \
         '1 missing, 1 unexpected' in message
  assert ('closest kuangliu: 1 missing (layer2.1.fc1.weight), 1 unexpected '
          '(layer9.0.conv1.weight)') in message
  assert 'no named model matches it either' in message


def test_wrong_shapes_are_named():
  cfg = _custom_cfg()
  state_dict = dict(torch_resnet.TorchResNet(cfg).state_dict())
  state_dict['linear.weight'] = np.zeros((10, 7), np.float32)
  with pytest.raises(UserError, match=r'in the kuangliu layout but 1 of the wrong shape '
                                      r'\(linear.weight \(10, 7\) != \(10, 256\)\)'):
    torch_import.variables_from_torch(state_dict, cfg)


def test_block_se_as_a_submodule_is_a_layout():
  cfg = _custom_cfg()
  net = randomise_batchnorm(torch_resnet.TorchResNet(cfg), seed=2)
  renamed = {k.replace('.fc', '.se.fc') if k.startswith('layer') else k: v
             for k, v in net.state_dict().items()}
  assert 'layer1.0.se.fc1.weight' in renamed
  ours = torch_import.variables_from_torch(net.state_dict(), cfg)
  theirs = torch_import.variables_from_torch(renamed, cfg)
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('wrapper', ['net', 'state_dict', 'model_state_dict', 'model'])
def test_checkpoint_wrappers_and_prefixes_are_unwrapped(wrapper):
  state_dict = {'module._orig_mod.conv1.weight': np.ones((2, 3, 3, 3), np.float32),
                'module._orig_mod.bn1.num_batches_tracked': np.array(3)}
  unwrapped = torch_import.unwrap_checkpoint({wrapper: state_dict, 'epoch': 3})
  assert list(unwrapped) == ['conv1.weight']


def test_a_checkpoint_without_a_state_dict_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match='holds a dict with keys optimizer, epoch, not a state_dict'):
    torch_import.unwrap_checkpoint({'optimizer': {}, 'epoch': 1})
  path = tmp_path / 'garbage.pt'
  path.write_text('not a checkpoint')
  with pytest.raises(UserError, match='cannot be read by torch.load'):
    torch_import.load_state_dict(str(path))
  with pytest.raises(UserError, match='is not a file'):
    torch_import.load_state_dict(str(tmp_path / 'missing.pt'))


def test_torch_names_follow_kuangliu():
  assert torch_import.torch_name(('params', 'layer3_12', 'shortcut_conv', 'kernel')) == (
      'layer3.12.shortcut.0.weight')
  assert torch_import.torch_name(('batch_stats', 'layer1_0', 'shortcut_bn', 'var')) == (
      'layer1.0.shortcut.1.running_var')
  assert torch_import.torch_name(('params', 'se', 'fc2', 'bias')) == 'se.fc2.bias'
  assert torch_import.torch_name(('params', 'layer2_1', 'se', 'fc1', 'kernel')) == (
      'layer2.1.fc1.weight')


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_non_finite_weights_are_refused_not_scored(bad):
  cfg = _small_cfg()
  variables = models.build_model(cfg).init(jax.random.key(0), np.zeros((1, 32, 32, 3)),
                                           train=False)
  state_dict = torch_import.state_dict_from_variables(variables)
  state_dict['layer1.0.conv1.weight'] = state_dict['layer1.0.conv1.weight'].copy()
  state_dict['layer1.0.conv1.weight'].flat[3] = bad
  with pytest.raises(UserError, match=r'NaN or infinite values in 1 tensors '
                                      r'\(layer1\.0\.conv1\.weight\)') as info:
    torch_import.variables_from_torch(state_dict, cfg)
  assert '\n' not in str(info.value)
