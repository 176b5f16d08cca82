"""The PyTorch baseline: the same model's training step in PyTorch, timed on the same device.

What docs/reference.md's PyTorch rows time: forward, backward and an SGD step (momentum 0.9, weight
decay 5e-4) of `torch_resnet.TorchResNet(config.model)` on synthetic images already on the device
(no input pipeline), channels_last, bf16 autocast for the bfloat16 dtype (TF32 for float32 on a
GPU), eager and, where it works, torch.compile'd. Optional: torch is imported only here, and only
when it is installed.
"""

import dataclasses
import importlib.metadata
import importlib.util
import time
from typing import Optional, Sequence

import ml_collections

from resnet_jax import errors

EAGER = 'eager'
COMPILED = 'compiled'


@dataclasses.dataclass(frozen=True)
class TorchResult:
  """One mode's timing; error set (the rest None) where the mode failed."""
  mode: str
  batch_size: int
  dtype: str
  compile_seconds: Optional[float] = None  # the first step's time (torch.compile's work in it)
  images_per_second: Optional[float] = None
  memory_gib: Optional[float] = None
  device: str = ''
  error: Optional[str] = None


def unavailable() -> Optional[str]:
  """Why the baseline cannot run here (no torch, or no resnet_jax.pytorch.torch_resnet), else None."""
  if importlib.util.find_spec('torch') is None:
    return 'torch is not installed'
  if importlib.util.find_spec('resnet_jax.pytorch.torch_resnet') is None:
    return 'resnet_jax.pytorch.torch_resnet is missing'
  return None


def version() -> Optional[str]:
  """The installed torch's version (without importing it), None where there is none."""
  try:
    return importlib.metadata.version('torch')
  except importlib.metadata.PackageNotFoundError:
    return None


def _time_mode(torch, net, images, labels, dtype: str, steps: int, warmup: int):
  """(first step seconds, images a second) of SGD steps of net on one batch."""
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  device = images.device
  optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
  sync = torch.cuda.synchronize if device.type == 'cuda' else lambda: None

  def step():
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
      loss = F.cross_entropy(net(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

  start = time.perf_counter()
  step()
  sync()
  first = time.perf_counter() - start
  for _ in range(warmup):
    step()
  sync()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  sync()
  return first, steps * len(labels) / (time.perf_counter() - start)


def torch_baseline(config: ml_collections.ConfigDict, batch_size: int, dtype: str, *,
                   steps: int = 20, warmup: int = 3,
                   modes: Sequence[str] = (EAGER, COMPILED)) -> list[TorchResult]:
  """The PyTorch training step's throughput in each mode, on cuda where there is one, else cpu.

  A mode that fails (torch.compile without a working compiler, say) gives a result with its
  error instead of stopping the benchmark.
  """
  import torch  # pylint: disable=import-outside-toplevel
  from resnet_jax.pytorch import torch_resnet  # pylint: disable=import-outside-toplevel
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  torch.backends.cudnn.benchmark = True
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  size = config.data.image_size
  generator = torch.Generator().manual_seed(config.seed)
  images = torch.randn(batch_size, 3, size, size, generator=generator).to(
      device, memory_format=torch.channels_last)
  labels = torch.randint(0, config.model.num_classes, (batch_size,), generator=generator).to(device)
  results = []
  for mode in modes:
    torch.manual_seed(config.seed)
    net = torch_resnet.TorchResNet(config.model, size).to(device, memory_format=torch.channels_last)
    net.train()
    if device.type == 'cuda':
      torch.cuda.reset_peak_memory_stats()
    try:
      first, rate = _time_mode(torch, torch.compile(net) if mode == COMPILED else net, images,
                               labels, dtype, steps, warmup)
    except Exception as e:  # pylint: disable=broad-except  # torch.compile fails many ways.
      results.append(TorchResult(mode, batch_size, dtype, device=device.type,
                                 error=f'{type(e).__name__}: {errors.one_line(e)}'))
      continue
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == 'cuda' else None
    results.append(TorchResult(mode, batch_size, dtype, compile_seconds=first,
                               images_per_second=rate, memory_gib=memory, device=device.type))
  return results
