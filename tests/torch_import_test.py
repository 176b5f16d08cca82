"""Forward parity with PyTorch: the same networks in PyTorch, converted by torch_import."""

import jax
import numpy as np
import pytest

from resnet_jax import models
from resnet_jax import torch_import
from resnet_jax.errors import UserError

torch = pytest.importorskip('torch')
tnn = torch.nn
F = torch.nn.functional

BATCH = 4


def _activation(cfg) -> tnn.Module:
  return {'relu': tnn.ReLU(), 'relu6': tnn.ReLU6(), 'elu': tnn.ELU(), 'swish': tnn.SiLU(),
          'leaky_relu': tnn.LeakyReLU(cfg.leaky_relu_slope)}[cfg.activation]


def _conv(cin, cout, kernel, stride=1):
  return tnn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class SE(tnn.Module):
  """Seed 000's squeeze-and-excitation (osmr/imgclsmob SEBlock)."""

  def __init__(self, channels, reduction):
    super().__init__()
    self.fc1 = tnn.Conv2d(channels, channels // reduction, 1, bias=True)
    self.fc2 = tnn.Conv2d(channels // reduction, channels, 1, bias=True)

  def forward(self, x):
    w = F.adaptive_avg_pool2d(x, 1)
    return x * torch.sigmoid(self.fc2(F.relu(self.fc1(w))))


class Block(tnn.Module):
  """kuangliu/pytorch-cifar's BasicBlock / Bottleneck, with SE and dropout before the last conv.

  block_order 'preact' puts BN + activation before each conv and nothing after the addition;
  'bn_after_add' moves the last BN after the addition.
  """

  def __init__(self, cfg, in_planes, planes, kernel, shortcut_kernel, stride):
    super().__init__()
    self.act = _activation(cfg)
    self.drop = tnn.Dropout(cfg.block_dropout)
    if cfg.block == 'basic':
      out_planes = planes
      self.convs = ['conv1', 'conv2']
      self.conv1 = _conv(in_planes, planes, kernel, stride)
      self.conv2 = _conv(planes, planes, kernel)
    else:
      out_planes = planes * cfg.expansion
      self.convs = ['conv1', 'conv2', 'conv3']
      self.conv1 = _conv(in_planes, planes, 1)
      self.conv2 = _conv(planes, planes, kernel, stride)
      self.conv3 = _conv(planes, out_planes, 1)
    self.order = cfg.block_order
    for i, name in enumerate(self.convs, start=1):
      conv = getattr(self, name)
      channels = conv.in_channels if self.order == 'preact' else conv.out_channels
      setattr(self, f'bn{i}', tnn.BatchNorm2d(channels))
    self.se = SE(out_planes, cfg.se_reduction) if cfg.se == 'block' else None
    self.shortcut = tnn.Sequential()
    if stride != 1 or in_planes != out_planes:
      self.shortcut = tnn.Sequential(_conv(in_planes, out_planes, shortcut_kernel, stride),
                                     tnn.BatchNorm2d(out_planes))

  def forward(self, x):
    out, last = x, len(self.convs)
    for i, name in enumerate(self.convs, start=1):
      bn = getattr(self, f'bn{i}')
      if self.order == 'preact':
        out = self.act(bn(out))
      if i == last:
        out = self.drop(out)
      out = getattr(self, name)(out)
      if self.order == 'original' or (self.order == 'bn_after_add' and i < last):
        out = bn(out)
        if i < last:
          out = self.act(out)
    if self.se is not None:
      out = self.se(out)
    out = out + self.shortcut(x)
    if self.order == 'preact':
      return out
    if self.order == 'bn_after_add':
      out = getattr(self, f'bn{last}')(out)
    return self.act(out)


class TorchResNet(tnn.Module):

  def __init__(self, cfg, image_size=32):
    super().__init__()
    self.cfg = cfg
    self.act = _activation(cfg)
    self.conv1 = _conv(3, cfg.stem_channels, cfg.stem_kernel_size)
    self.bn1 = tnn.BatchNorm2d(cfg.stem_channels)
    self.se = SE(cfg.stem_channels, cfg.se_reduction) if cfg.se == 'stem' else None
    in_planes, size = cfg.stem_channels, image_size
    for layer, (blocks, planes, kernel, shortcut_kernel) in enumerate(zip(
        cfg.num_blocks, cfg.channels, cfg.kernel_sizes, cfg.shortcut_kernel_sizes), start=1):
      stack = []
      for i in range(blocks):
        stride = 2 if layer > 1 and i == 0 else 1
        stack.append(Block(cfg, in_planes, planes, kernel, shortcut_kernel, stride))
        in_planes = planes * (cfg.expansion if cfg.block == 'bottleneck' else 1)
        size = (size + 1) // stride
      setattr(self, f'layer{layer}', tnn.Sequential(*stack))
    self.bn_final = tnn.BatchNorm2d(in_planes) if cfg.block_order == 'preact' else None
    positions = (size // cfg.pool) ** 2 if cfg.pool else 1
    self.drop = tnn.Dropout(cfg.head_dropout)
    self.linear = tnn.Linear(in_planes * positions, cfg.num_classes)

  def forward(self, x):
    out = self.act(self.bn1(self.conv1(x)))
    if self.se is not None:
      out = self.se(out)
    for layer in range(1, len(self.cfg.num_blocks) + 1):
      out = getattr(self, f'layer{layer}')(out)
    if self.bn_final is not None:
      out = self.act(self.bn_final(out))
    out = F.avg_pool2d(out, self.cfg.pool) if self.cfg.pool else F.adaptive_avg_pool2d(out, 1)
    return self.linear(self.drop(out.flatten(1)))


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
    'bn_after_add_elu': lambda: _small_cfg(block_order='bn_after_add', activation='elu'),
}


def _randomised_torch_net(cfg, seed):
  torch.manual_seed(seed)
  net = TorchResNet(cfg)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, tnn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
        module.running_mean.normal_(0.0, 0.2)
        module.running_var.uniform_(0.5, 1.5)
  return net


def _relative_error(actual, expected) -> float:
  actual, expected = np.asarray(actual), np.asarray(expected)
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


@pytest.fixture(scope='module', params=list(CASES))
def case(request):
  cfg = CASES[request.param]()
  net = _randomised_torch_net(cfg, seed=len(request.param))
  images = np.random.default_rng(0).normal(size=(BATCH, 32, 32, 3)).astype(np.float32)
  return cfg, net, images


def _torch_forward(net, images, train):
  net.train(train)
  with torch.no_grad():
    return net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def test_eval_logits_match(case):
  cfg, net, images = case
  variables = torch_import.variables_from_torch(net.state_dict(), cfg)
  logits = models.build_model(cfg).apply(variables, images, train=False)
  expected = _torch_forward(net, images, train=False)
  assert logits.dtype == np.float32
  assert _relative_error(logits, expected) < 1e-4


def test_train_logits_and_running_statistics_match(case):
  cfg, net, images = case
  for module in net.modules():  # dropout draws differ between the frameworks
    if isinstance(module, tnn.Dropout):
      module.p = 0.0
  cfg = cfg.copy_and_resolve_references()
  cfg.block_dropout = cfg.layer_dropout = cfg.head_dropout = 0.0
  variables = torch_import.variables_from_torch(net.state_dict(), cfg)
  logits, state = models.build_model(cfg).apply(variables, images, train=True,
                                                mutable=['batch_stats'])
  expected = _torch_forward(net, images, train=True)
  assert _relative_error(logits, expected) < 1e-4

  updated = torch_import.variables_from_torch(net.state_dict(), cfg)['batch_stats']
  pairs = zip(jax.tree_util.tree_leaves(state['batch_stats']),
              jax.tree_util.tree_leaves(updated),
              jax.tree_util.tree_leaves(variables['batch_stats']))
  for ours, theirs, before in pairs:
    assert not np.allclose(theirs, before)
    assert _relative_error(ours, theirs) < 1e-4


def test_dataparallel_prefix_is_dropped():
  cfg = _custom_cfg()
  net = _randomised_torch_net(cfg, seed=1)
  plain = torch_import.variables_from_torch(net.state_dict(), cfg)
  prefixed = torch_import.variables_from_torch(
      {f'module.{k}': v for k, v in net.state_dict().items()}, cfg)
  for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(prefixed)):
    np.testing.assert_array_equal(a, b)


def test_mismatched_state_dict_lists_offenders():
  cfg = _custom_cfg()
  state_dict = dict(_randomised_torch_net(cfg, seed=1).state_dict())
  del state_dict['layer2.1.se.fc1.weight']
  state_dict['layer9.0.conv1.weight'] = np.zeros((1, 1, 1, 1), np.float32)
  state_dict['linear.weight'] = np.zeros((10, 7), np.float32)
  with pytest.raises(UserError) as error:
    torch_import.variables_from_torch(state_dict, cfg)
  message = str(error.value)
  assert '\n' not in message and 'config.model' in message
  assert '1 missing (layer2.1.se.fc1.weight)' in message
  assert '1 unexpected (layer9.0.conv1.weight)' in message
  assert 'linear.weight (10, 7) != (10, 256)' in message


def test_torch_names_follow_kuangliu():
  assert torch_import.torch_name(('params', 'layer3_12', 'shortcut_conv', 'kernel')) == (
      'layer3.12.shortcut.0.weight')
  assert torch_import.torch_name(('batch_stats', 'layer1_0', 'shortcut_bn', 'var')) == (
      'layer1.0.shortcut.1.running_var')
  assert torch_import.torch_name(('params', 'se', 'fc2', 'bias')) == 'se.fc2.bias'
