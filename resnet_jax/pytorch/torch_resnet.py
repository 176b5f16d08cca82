"""The configurable ResNet of `models.py` in PyTorch, named as kuangliu/pytorch-cifar names it.

Optional: only torch paths import this module (`export`, `torch_train`, the parity tests), and it
imports nothing from resnet_jax, so `export` copies it beside an exported checkpoint (model.pt
-> model.py) for use without this package. model.pt holds 'net' (the state dict), 'acc',
'epoch', 'model_config' (config.model as a dict) and 'normalize' (the training data's
per-channel 'mean' and 'std', in [0, 1] units):

  import torch, model                      # model.py, beside model.pt
  checkpoint = torch.load('model.pt')
  net = model.TorchResNet(checkpoint['model_config']).eval()
  net.load_state_dict(checkpoint['net'])
  mean = torch.tensor(checkpoint['normalize']['mean']).view(1, -1, 1, 1)
  std = torch.tensor(checkpoint['normalize']['std']).view(1, -1, 1, 1)
  # images: float32 (N, 3, H, W) (NCHW), RGB in [0, 1] (uint8 / 255, torchvision's ToTensor())
  logits = net((images - mean) / std)

State-dict keys (kuangliu/pytorch-cifar's ResNet and SENet; `torch_import` reads them):

  conv1, bn1                       stem conv and BatchNorm
  se.fc1, se.fc2                   SE after the stem (se='stem'), 1x1 convs with bias
  layer{L}.{i}.conv{j}, .bn{j}     block i (0-based) of layer L (1-based), j = 1..2 (3 bottleneck)
  layer{L}.{i}.fc1, .fc2           SE in every block (se='block'), as kuangliu's SENet
  layer{L}.{i}.shortcut.0, .1      projection shortcut conv and BatchNorm (conv only in
                                   block_order 'preact_kuangliu', kuangliu's PreActBlock)
  bn_final                         the last BatchNorm of a block_order='preact' model
  linear                           the dense head
"""

import types
from typing import Any, Mapping

import torch
from torch import nn
import torch.nn.functional as F


def settings(cfg: Any) -> Any:
  """Attribute access to a model config given as a ConfigDict, an object or a plain dict."""
  return types.SimpleNamespace(**cfg) if isinstance(cfg, Mapping) else cfg


def activation(cfg: Any) -> nn.Module:
  return {'relu': nn.ReLU(), 'relu6': nn.ReLU6(), 'elu': nn.ELU(), 'swish': nn.SiLU(),
          'leaky_relu': nn.LeakyReLU(cfg.leaky_relu_slope)}[cfg.activation]


def conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


def squeeze_excite(x: torch.Tensor, fc1: nn.Conv2d, fc2: nn.Conv2d) -> torch.Tensor:
  w = F.adaptive_avg_pool2d(x, 1)
  return x * torch.sigmoid(fc2(F.relu(fc1(w))))


def se_convs(channels: int, reduction: int) -> tuple[nn.Conv2d, nn.Conv2d]:
  hidden = max(1, channels // reduction)
  return nn.Conv2d(channels, hidden, 1), nn.Conv2d(hidden, channels, 1)


class SqueezeExcite(nn.Module):
  """Seed 000's SE block: pool, 1x1 conv C -> C/r, ReLU, 1x1 conv -> C, sigmoid, scale."""

  def __init__(self, channels: int, reduction: int):
    super().__init__()
    self.fc1, self.fc2 = se_convs(channels, reduction)

  def forward(self, x):
    return squeeze_excite(x, self.fc1, self.fc2)


class Block(nn.Module):
  """A basic or bottleneck residual block in every `block_order` of `models.ResidualBlock`."""

  def __init__(self, cfg, in_planes: int, planes: int, kernel: int, shortcut_kernel: int,
               stride: int):
    super().__init__()
    self.act = activation(cfg)
    self.dropout = cfg.block_dropout
    self.order = cfg.block_order
    self.preact = self.order in ('preact', 'preact_kuangliu')
    if cfg.block == 'basic':
      out_planes = planes
      convs = [conv(in_planes, planes, kernel, stride), conv(planes, planes, kernel)]
    else:
      out_planes = planes * cfg.expansion
      convs = [conv(in_planes, planes, 1), conv(planes, planes, kernel, stride),
               conv(planes, out_planes, 1)]
    self.num_convs = len(convs)
    for i, layer in enumerate(convs, start=1):
      setattr(self, f'conv{i}', layer)
      setattr(self, f'bn{i}', nn.BatchNorm2d(
          layer.in_channels if self.preact else layer.out_channels))
    self.se = cfg.se == 'block'
    if self.se:
      self.fc1, self.fc2 = se_convs(out_planes, cfg.se_reduction)
    self.shortcut = nn.Sequential()
    if stride != 1 or in_planes != out_planes:
      projection = [conv(in_planes, out_planes, shortcut_kernel, stride)]
      if self.order != 'preact_kuangliu':
        projection.append(nn.BatchNorm2d(out_planes))
      self.shortcut = nn.Sequential(*projection)

  def forward(self, x):
    out, last, activated = x, self.num_convs, None
    for i in range(1, last + 1):
      bn = getattr(self, f'bn{i}')
      if self.preact:
        out = self.act(bn(out))
        activated = out if i == 1 else activated
      if i == last:
        out = F.dropout(out, self.dropout, self.training)
      out = getattr(self, f'conv{i}')(out)
      if not self.preact and not (self.order == 'bn_after_add' and i == last):
        out = bn(out)
        if i < last:
          out = self.act(out)
    if self.se:
      out = squeeze_excite(out, self.fc1, self.fc2)
    kuangliu = self.order == 'preact_kuangliu' and len(self.shortcut)
    out = out + self.shortcut(activated if kuangliu else x)
    if self.preact:
      return out
    if self.order == 'bn_after_add':
      out = getattr(self, f'bn{last}')(out)
    return self.act(out)


class TorchResNet(nn.Module):
  """`models.build_model(cfg)` in PyTorch: the same layers, the same forward, the same names."""

  def __init__(self, cfg: Any, image_size: int = 32):
    super().__init__()
    cfg = settings(cfg)
    self.cfg = cfg
    self.act = activation(cfg)
    self.conv1 = conv(3, cfg.stem_channels, cfg.stem_kernel_size)
    self.bn1 = nn.BatchNorm2d(cfg.stem_channels)
    if cfg.se == 'stem':
      self.se = SqueezeExcite(cfg.stem_channels, cfg.se_reduction)
    in_planes, size = cfg.stem_channels, image_size
    for layer, (blocks, planes, kernel, shortcut_kernel) in enumerate(zip(
        cfg.num_blocks, cfg.channels, cfg.kernel_sizes, cfg.shortcut_kernel_sizes), start=1):
      stack = []
      for i in range(blocks):
        stride = 2 if layer > 1 and i == 0 else 1
        stack.append(Block(cfg, in_planes, planes, kernel, shortcut_kernel, stride))
        in_planes = planes * (cfg.expansion if cfg.block == 'bottleneck' else 1)
        size = (size + 1) // stride
      setattr(self, f'layer{layer}', nn.Sequential(*stack))
    if cfg.block_order == 'preact':
      self.bn_final = nn.BatchNorm2d(in_planes)
    positions = (size // cfg.pool) ** 2 if cfg.pool else 1
    self.linear = nn.Linear(in_planes * positions, cfg.num_classes)

  def forward(self, x):
    """Logits of images x (B, 3, H, W), normalised."""
    cfg = self.cfg
    out = self.act(self.bn1(self.conv1(x)))
    if cfg.se == 'stem':
      out = self.se(out)
    for layer in range(1, len(cfg.num_blocks) + 1):
      out = getattr(self, f'layer{layer}')(out)
      out = F.dropout(out, cfg.layer_dropout, self.training)
    if cfg.block_order == 'preact':
      out = self.act(self.bn_final(out))
    out = F.avg_pool2d(out, cfg.pool) if cfg.pool else F.adaptive_avg_pool2d(out, 1)
    return self.linear(F.dropout(out.flatten(1), cfg.head_dropout, self.training))


def initialise(net: TorchResNet, init: str) -> None:
  """Re-initialises conv and linear layers as `models.initializers(init)` does (BN keeps 1, 0).

  'pytorch' is PyTorch's own default, left as built; the others zero every bias.
  """
  if init == 'pytorch':
    return
  for module in net.modules():
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
      continue
    weight, head = module.weight, isinstance(module, nn.Linear)
    if init == 'he' and not head:
      nn.init.kaiming_normal_(weight, mode='fan_in', nonlinearity='relu')
    elif init in ('he', 'xavier'):
      nn.init.xavier_normal_(weight)
    elif init == 'normal':
      nn.init.normal_(weight, 0.0, 0.02)
    else:
      nn.init.orthogonal_(weight)
    if module.bias is not None:
      nn.init.zeros_(module.bias)
