"""The PyTorch reference trainer: a config's recipe on the same data and splits, in PyTorch.

What PyTorch expresses of the recipe runs as the seeds' PyTorch code runs it: SGD (momentum,
Nesterov), Adam and AdamW with coupled (or AdamW's decoupled) weight decay, value or norm
clipping before the decay is added, Lookahead with the reference's timing, every schedule as
`torch.optim.lr_scheduler` has it, crop, flip and mixup, label smoothing, dropout and the init
schemes. Anything else is refused with one line naming the key. The data is
`input_pipeline.load_splits`' and the batches `input_pipeline.epoch_batch_indices`', so both
frameworks see the same examples in the same order; augmentation draws differ.

Needs PyTorch (the `torch` extra); `compare` runs it beside the JAX trainer.
"""

import dataclasses
import json
import os
import platform
import time
from typing import Any

from absl import logging
import ml_collections
import numpy as np
import torch
import torch.nn.functional as F

from resnet_jax import defaults
from resnet_jax import files
from resnet_jax import models
from resnet_jax.data import input_pipeline
from resnet_jax.errors import UserError
from resnet_jax.models import optim
from resnet_jax.pytorch import torch_resnet

RESULTS_FILE = 'results.json'
# config.augment keys the trainer applies; every other one must be off.
AUGMENTATIONS = ('crop_padding', 'hflip', 'mixup_alpha')
_IGNORED_AUGMENT = ('erasing_scale', 'erasing_ratio')  # only read where erasing is on
OPTIMIZERS = ('sgd', 'adam', 'adamw')


class Lookahead:
  """Seed 000's Lookahead around a torch optimizer: slow weights taken after step 1, then every
  k steps slow += alpha * (fast - slow) and fast = slow (docs/reference.md)."""

  def __init__(self, optimizer: torch.optim.Optimizer, k: int, alpha: float):
    self.optimizer, self.k, self.alpha = optimizer, k, alpha
    self.param_groups = optimizer.param_groups
    self.slow = {}
    for group in self.param_groups:
      group['counter'] = 0

  def zero_grad(self):
    self.optimizer.zero_grad()

  def step(self):
    self.optimizer.step()
    for group in self.param_groups:
      if group['counter'] == 0:
        for fast in group['params']:
          if fast not in self.slow:
            self.slow[fast] = fast.detach().clone()
          slow = self.slow[fast]
          slow += self.alpha * (fast.detach() - slow)
          fast.data.copy_(slow)
      group['counter'] += 1
      if group['counter'] >= self.k:
        group['counter'] = 0


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError (one line, naming the key) for what this trainer does not run."""
  o = config.optim
  refusals = [
      ('optim.optimizer', o.optimizer not in OPTIMIZERS, f"is not one of {', '.join(OPTIMIZERS)}"),
      ('optim.weight_decay_mode', o.optimizer == 'sgd' and o.weight_decay_mode == 'decoupled',
       'decoupled is not torch.optim.SGD'),
      ('optim.l1', o.l1 != 0, 'has no torch.optim form'),
      ('ema_decay', config.ema_decay != 0, 'has no torch.optim form'),
      ('eval_flip_tta', config.eval_flip_tta, 'is not run by the PyTorch trainer'),
      ('model.dtype', config.model.dtype not in ('float32', models.AUTO_DTYPE),
       'must be float32 (or auto: PyTorch trains in float32)'),
  ]
  for key, value in config.augment.items():
    if key not in AUGMENTATIONS + _IGNORED_AUGMENT:
      refusals.append((f'augment.{key}', bool(value), 'is not run by the PyTorch trainer (only '
                       f"{', '.join(AUGMENTATIONS)})"))
  for key, refused, why in refusals:
    if refused:
      section, _, field = key.rpartition('.')
      value = (config[section] if section else config)[field]
      raise UserError(f'config.{key}={value!r} {why}; the PyTorch reference trainer cannot run it')


def make_optimizer(config: ml_collections.ConfigDict, net: torch.nn.Module):
  """The torch optimizer of config.optim (wrapped in Lookahead where lookahead_k > 0)."""
  o = config.optim
  params = list(net.parameters())
  if o.weight_decay_mask == 'no_bn_bias':
    params = [{'params': [p for p in params if p.ndim > 1]},
              {'params': [p for p in params if p.ndim <= 1], 'weight_decay': 0.0}]
  if o.optimizer == 'sgd':
    optimizer = torch.optim.SGD(params, lr=o.learning_rate, momentum=o.momentum,
                                nesterov=o.nesterov, weight_decay=o.weight_decay)
  else:
    decoupled = o.optimizer == 'adamw' or o.weight_decay_mode == 'decoupled'
    adam = torch.optim.AdamW if decoupled else torch.optim.Adam
    optimizer = adam(params, lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps,
                     weight_decay=o.weight_decay)
  return Lookahead(optimizer, o.lookahead_k, o.lookahead_alpha) if o.lookahead_k else optimizer


def make_scheduler(config: ml_collections.ConfigDict, optimizer: torch.optim.Optimizer,
                   steps_per_epoch: int):
  """(torch scheduler or None, whether it is stepped every step rather than every epoch)."""
  s, sched = config.schedule, torch.optim.lr_scheduler
  per_step = s.unit == 'step' or s.name == 'onecycle'
  unit = steps_per_epoch if s.unit == 'step' else 1
  length = (s.t_max_epochs or config.num_epochs) * unit
  if s.name == 'constant':
    return None, per_step
  if s.name == 'cosine':
    return sched.CosineAnnealingLR(optimizer, length, eta_min=s.min_lr), per_step
  if s.name == 'warmup_cosine':
    warmup = round(s.warmup_epochs * unit)
    return sched.SequentialLR(optimizer, [
        sched.LinearLR(optimizer, optim.WARMUP_START_FACTOR, 1.0, total_iters=warmup),
        sched.CosineAnnealingLR(optimizer, length - warmup, eta_min=s.min_lr)],
                              milestones=[warmup]), per_step
  if s.name == 'exponential':
    return sched.ExponentialLR(optimizer, s.gamma ** (1 / unit)), per_step
  if s.name == 'step':
    return sched.StepLR(optimizer, s.step_size * unit, s.gamma), per_step
  if s.name == 'multistep':
    return sched.MultiStepLR(optimizer, [m * unit for m in s.milestones], s.gamma), per_step
  if s.name == 'cosine_restarts':
    return sched.CosineAnnealingWarmRestarts(optimizer, s.t_0 * unit, s.t_mult,
                                             eta_min=s.min_lr), per_step
  if s.name == 'onecycle':
    return sched.OneCycleLR(
        optimizer, max_lr=s.max_lr or config.optim.learning_rate,
        total_steps=config.num_epochs * steps_per_epoch, pct_start=s.pct_start,
        anneal_strategy=s.anneal_strategy, cycle_momentum=False, div_factor=s.div_factor,
        final_div_factor=s.final_div_factor, three_phase=s.three_phase), True
  return sched.ReduceLROnPlateau(optimizer, mode=s.plateau_mode, factor=s.gamma,
                                 patience=s.patience, threshold=s.threshold,
                                 threshold_mode='rel', min_lr=s.min_lr), False


def augment(images: torch.Tensor, labels: torch.Tensor, aug_cfg, mean: torch.Tensor,
            std: torch.Tensor, num_classes: int, generator: torch.Generator):
  """uint8 (B, C, H, W) -> normalised float images and soft targets, as augment.train_preprocess
  does for crop (zero padding), horizontal flip and mixup."""
  batch, _, height, width = images.shape
  x = images
  if aug_cfg.crop_padding:
    pad = int(aug_cfg.crop_padding)
    padded = F.pad(x, (pad, pad, pad, pad))
    top, left = torch.randint(0, 2 * pad + 1, (2, batch), generator=generator)
    rows = (top[:, None] + torch.arange(height))[:, None, :, None]
    cols = (left[:, None] + torch.arange(width))[:, None, None, :]
    examples = torch.arange(batch)[:, None, None, None]
    channels = torch.arange(x.shape[1])[None, :, None, None]
    x = padded[examples, channels, rows, cols]
  if aug_cfg.hflip:
    flip = torch.rand(batch, generator=generator) < aug_cfg.hflip
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
  x = (x.float() / 255 - mean) / std
  targets = F.one_hot(labels, num_classes).float()
  if aug_cfg.mixup_alpha:
    alpha = float(aug_cfg.mixup_alpha)
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator)))
                .beta(alpha, alpha))
    perm = torch.randperm(batch, generator=generator)
    x, targets = lam * x + (1 - lam) * x[perm], lam * targets + (1 - lam) * targets[perm]
  return x, targets


def _as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
  return (torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
          torch.from_numpy(labels.astype(np.int64)))


def evaluate(net, images, labels, batch_size: int, mean, std, device) -> dict:
  """Mean loss and accuracy of net (eval mode) on uint8 NCHW images."""
  net.eval()
  loss, correct = 0.0, 0
  with torch.no_grad():
    for start in range(0, len(labels), batch_size):
      x = ((images[start:start + batch_size].float() / 255 - mean) / std).to(device)
      y = labels[start:start + batch_size].to(device)
      logits = net(x)
      loss += float(F.cross_entropy(logits, y, reduction='sum'))
      correct += int((logits.argmax(1) == y).sum())
  return {'loss': loss / len(labels), 'accuracy': correct / len(labels)}


def versions() -> dict:
  return {'torch': torch.__version__, 'python': platform.python_version(),
          'threads': torch.get_num_threads()}


@dataclasses.dataclass(frozen=True)
class _Training:
  """What a run's epochs work on: the net, its optimizer and schedule, the data as tensors."""
  net: torch.nn.Module
  optimizer: Any  # a torch optimizer, or Lookahead around one (`inner`)
  inner: torch.optim.Optimizer
  scheduler: Any
  per_step: bool
  plateau: bool
  device: torch.device
  generator: torch.Generator
  train_x: torch.Tensor
  train_y: torch.Tensor
  val_x: torch.Tensor
  val_y: torch.Tensor
  mean: torch.Tensor
  std: torch.Tensor


def _set_up(config: ml_collections.ConfigDict, splits, device: str, threads: int) -> _Training:
  """Seeds torch, builds and initialises the net, its optimizer and schedule, puts the data."""
  device = torch.device('cuda' if device == 'auto' and torch.cuda.is_available() else
                        'cpu' if device == 'auto' else device)
  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(config.seed)
  generator = torch.Generator().manual_seed(config.seed)
  net = torch_resnet.TorchResNet(config.model, config.data.image_size)
  torch_resnet.initialise(net, config.model.init)
  net.to(device)
  optimizer = make_optimizer(config, net)
  inner = getattr(optimizer, 'optimizer', optimizer)
  train_x, train_y = _as_tensors(splits.train_images, splits.train_labels)
  val_x, val_y = _as_tensors(splits.val_images, splits.val_labels)
  mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
  std = torch.tensor(splits.std).view(1, -1, 1, 1)
  steps_per_epoch = input_pipeline.steps_per_epoch(len(train_y), config.batch_size,
                                                   config.drop_remainder)
  scheduler, per_step = make_scheduler(config, inner, steps_per_epoch)
  plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
  return _Training(net, optimizer, inner, scheduler, per_step, plateau, device, generator,
                   train_x, train_y, val_x, val_y, mean, std)


def _train_batches(run: _Training, config: ml_collections.ConfigDict,
                   epoch: int) -> tuple[float, int, int]:
  """The steps of one epoch, in `epoch_batch_indices` order; returns (loss sum, correct, seen)."""
  loss_sum, correct, seen = 0.0, 0, 0
  for indices in input_pipeline.epoch_batch_indices(
      len(run.train_y), config.batch_size, seed=config.seed, epoch=epoch,
      drop_remainder=config.drop_remainder):
    index = torch.from_numpy(indices.astype(np.int64))
    x, targets = augment(run.train_x[index], run.train_y[index], config.augment, run.mean,
                         run.std, config.model.num_classes, run.generator)
    x, targets = x.to(run.device), targets.to(run.device)
    logits = run.net(x)
    loss = F.cross_entropy(logits, targets, label_smoothing=config.label_smoothing)
    run.optimizer.zero_grad()
    loss.backward()
    if config.optim.clip_mode == 'value':
      torch.nn.utils.clip_grad_value_(run.net.parameters(), config.optim.clip)
    elif config.optim.clip_mode == 'global_norm':
      torch.nn.utils.clip_grad_norm_(run.net.parameters(), config.optim.clip)
    run.optimizer.step()
    if run.scheduler is not None and run.per_step:
      run.scheduler.step()
    loss_sum += float(loss.detach()) * len(indices)
    correct += int((logits.argmax(1) == targets.argmax(1)).sum())
    seen += len(indices)
  return loss_sum, correct, seen


def _epoch(run: _Training, config: ml_collections.ConfigDict, epoch: int,
           start: float) -> tuple[dict, int, float]:
  """Trains and (when due) evaluates one epoch; returns (its record, images, train seconds)."""
  run.net.train()
  epoch_start = time.perf_counter()
  learning_rate = run.inner.param_groups[0]['lr']
  loss_sum, correct, seen = _train_batches(run, config, epoch)
  train_seconds = time.perf_counter() - epoch_start
  record = {'epoch': epoch + 1, 'train_loss': loss_sum / seen, 'train_accuracy': correct / seen,
            'learning_rate': learning_rate,
            'epoch_seconds': time.perf_counter() - epoch_start}
  if (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == config.num_epochs:
    val = evaluate(run.net, run.val_x, run.val_y, config.eval_batch_size, run.mean, run.std,
                   run.device)
    record.update(val_loss=val['loss'], val_accuracy=val['accuracy'])
    if run.plateau:
      run.scheduler.step(val['loss'] if config.schedule.plateau_mode == 'min' else
                         val['accuracy'])
  if run.scheduler is not None and not run.per_step and not run.plateau:
    run.scheduler.step()
  record['elapsed_seconds'] = time.time() - start
  logging.info('torch epoch %d/%d: loss %.4f, validation accuracy %.2f%%', epoch + 1,
               config.num_epochs, record['train_loss'],
               100 * record.get('val_accuracy', float('nan')))
  return record, seen, train_seconds


def _results(run: _Training, config: ml_collections.ConfigDict, splits, history: list[dict],
             start: float, train_seconds: float, train_images: int) -> dict:
  """The run's results (the JAX trainer's keys that apply), the test set scored where needed."""
  scored = [r for r in history if 'val_accuracy' in r]
  best = max(scored, key=lambda r: r['val_accuracy'])
  val_is_test = defaults.validates_on_test(config.data.validation)
  test = (evaluate(run.net, *_as_tensors(splits.test_images, splits.test_labels),
                   config.eval_batch_size, run.mean, run.std, run.device) if not val_is_test else
          {'accuracy': scored[-1]['val_accuracy'], 'loss': scored[-1]['val_loss']})
  device = run.device
  return {
      'framework': 'pytorch', 'model': config.model.name,
      'parameters': sum(p.numel() for p in run.net.parameters()), 'epochs': config.num_epochs,
      'final_val_accuracy': scored[-1]['val_accuracy'], 'best_val_accuracy': best['val_accuracy'],
      'best_epoch': best['epoch'], 'final_test_accuracy': test['accuracy'],
      'final_test_loss': test['loss'],
      'best_test_accuracy': best['val_accuracy'] if val_is_test else None,
      'wall_seconds': time.time() - start, 'train_seconds': train_seconds,
      'images_per_second': train_images / max(train_seconds, 1e-9),
      'device_kind': torch.cuda.get_device_name(device) if device.type == 'cuda' else
                     (platform.processor() or platform.machine()),
      'data_source': splits.source, 'seed': config.seed, 'versions': versions(),
      'history': history,
  }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, splits=None,
                       device: str = 'auto', threads: int = 0) -> dict:
  """Trains config's system in PyTorch, evaluating every epoch; writes workdir/results.json.

  Args:
    config: a config from configs/ (the same one the JAX trainer takes).
    workdir: where results.json (with the per-epoch history) goes; nothing is resumed.
    splits: input_pipeline.Splits already loaded for this config, or None to load them.
    device: 'auto' (CUDA where there is one), 'cpu' or 'cuda'.
    threads: torch's CPU threads; 0 leaves torch's default (one a core).

  Returns:
    The results, with the keys of the JAX trainer's that apply and 'history'.

  Raises:
    UserError: a config this trainer cannot run, or missing data.
  """
  start = time.time()
  check_config(config)
  optim.create_optimizer(config, 1)  # the same checks of optim and schedule as the JAX run
  models.validate(config.model)
  if splits is None:
    splits = input_pipeline.load_splits(config.data, config.seed)
  run = _set_up(config, splits, device, threads)
  history, train_seconds, train_images = [], 0.0, 0
  for epoch in range(config.num_epochs):
    record, seen, seconds = _epoch(run, config, epoch, start)
    history.append(record)
    train_images += seen
    train_seconds += seconds
  results = _results(run, config, splits, history, start, train_seconds, train_images)
  os.makedirs(workdir, exist_ok=True)
  files.write_atomic(os.path.join(workdir, RESULTS_FILE), json.dumps(results, indent=2))
  return results
