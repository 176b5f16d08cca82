"""The base configuration: every key a run reads, with its default.

Configs in `configs/` start from `base_config()` and change what their recipe changes. The returned
ConfigDict is locked: a misspelt key (in a config file or a `--config.x=y` override) fails at once.
Sequences are tuples; a command-line override takes the same form, e.g.
`--config.model.num_blocks='(2,2,2)'`.
"""

import json
from typing import Any

from ml_collections import config_dict

# Seed 000's normalisation constants (its public PyTorch code).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


def model_config(**overrides) -> config_dict.ConfigDict:
  """The model section; `models.preset(name)` fills it for a named model."""
  cfg = config_dict.ConfigDict(dict(
      name='custom',              # label used in reports; the layout keys below are the truth
      block='basic',              # 'basic' | 'bottleneck'
      expansion=4,                # bottleneck output = planes * expansion
      num_blocks=(4, 4, 3),       # B_i; its length is N, the number of residual layers
      channels=(64, 128, 256),    # C_i (bottleneck: planes)
      kernel_sizes=(3, 3, 3),     # F_i, conv kernel in each layer's blocks
      shortcut_kernel_sizes=(1, 1, 1),  # K_i, projection shortcut kernel
      stem_channels=64,
      stem_kernel_size=3,
      pool=0,                     # 0 = global average pool; P > 0: AvgPool(P, stride P), flatten
      se='stem',                  # squeeze-and-excitation: 'none' | 'stem' | 'block'
      se_reduction=16,
      block_dropout=0.0,          # dropout inside every residual block
      layer_dropout=0.0,          # dropout after every residual layer (seed 002)
      head_dropout=0.0,           # dropout before the dense head
      activation='relu',          # relu | relu6 | leaky_relu | elu | swish
      leaky_relu_slope=0.01,
      init='pytorch',             # pytorch | he | xavier | normal | orthogonal
      block_order='original',     # original | preact | bn_after_add (seed 004, figure 9)
                                  # | preact_kuangliu (kuangliu/pytorch-cifar's PreActBlock)
      num_classes=10,
      dtype='auto',               # compute dtype: auto (bfloat16 on a GPU or TPU, float32 on a
                                  # CPU) | float32 | bfloat16 (parameters stay float32)
      bn_dtype='float32',         # BatchNorm's normalisation arithmetic: float32 | compute (in
                                  # `dtype`); its statistics and parameters are float32 either way
      param_budget=5_000_000,     # a larger model stops before compiling; raise it on purpose
  ))
  cfg.update(overrides)
  return cfg


def data_config() -> config_dict.ConfigDict:
  """Where the images come from, and how they are split, normalised and placed."""
  return config_dict.ConfigDict(dict(
      # auto | tfds | cifar_batches | jpeg_npz | folder | synthetic
      source='auto',
      data_dir='',                # used or refused where set; '' = auto searches ./data,
                                  # $RESNET_JAX_DATA, ../shared/data/cifar10_jpeg
      tfds_name='cifar10',
      validation='test',          # 'test' (seed 000) or a held-out fraction of train, e.g. '0.1'
      normalization='constants',  # 'constants' (mean/std below) | 'computed' (from the train split)
      mean=CIFAR10_MEAN,
      std=CIFAR10_STD,
      placement='auto',           # auto | device (whole uint8 set on the device) | host (streamed)
      host_backend='auto',        # auto | tf | numpy
      train_subset=0,             # >0: first N training examples only (tests, smoke runs)
      test_subset=0,
      image_size=32,
  ))


def validates_on_test(validation) -> bool:
  """Whether config.data.validation makes the test set the validation set ('test')."""
  return str(validation).strip() == 'test'


def flat_json(config: Any, prefix: str = '') -> dict[str, Any]:
  """{dotted key: value} of a ConfigDict or a JSON tree of dicts, values as JSON has them."""
  if isinstance(config, config_dict.ConfigDict):
    config = json.loads(config.to_json_best_effort(sort_keys=True))
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(flat_json(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def augment_config() -> config_dict.ConfigDict:
  """Training augmentation, run on the device inside the compiled step."""
  return config_dict.ConfigDict(dict(
      crop_padding=4,             # zero (black) padding before the random crop; 0 = no crop
      hflip=0.5,                  # probability of a horizontal flip
      vflip=0.0,
      rotation_degrees=0.0,       # uniform in [-d, d]
      brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,  # colour jitter, torchvision meaning
      erasing_prob=0.0,           # random erasing (torchvision RandomErasing, value 0)
      erasing_scale=(0.02, 0.33),
      erasing_ratio=(0.3, 3.3),
      cutout_size=0,              # >0: one square of this side zeroed at a random centre
      noise_std=0.0,              # Gaussian noise added after normalisation
      mixup_alpha=0.0,            # >0: mixup with Beta(alpha, alpha), soft labels
  ))


def optim_config() -> config_dict.ConfigDict:
  """The optimizer chain: direction, weight decay, clipping, Lookahead."""
  return config_dict.ConfigDict(dict(
      optimizer='sgd',            # sgd | adam | adamw | adagrad | adadelta
      learning_rate=0.1,
      momentum=0.9,
      nesterov=False,
      b1=0.9, b2=0.999, eps=1e-8,  # adam, adamw
      rho=0.9,                    # adadelta
      adadelta_eps=1e-6,
      adagrad_eps=1e-10,
      weight_decay=5e-4,
      weight_decay_mode='coupled',  # coupled (added to the gradient, PyTorch SGD) | decoupled (AdamW)
      weight_decay_mask='all',    # all | no_bn_bias
      l1=0.0,
      clip_mode='value',          # none | value (per element, seed 000's code) | global_norm
      clip=0.1,
      lookahead_k=5,              # 0 = no Lookahead
      lookahead_alpha=0.5,
  ))


def schedule_config() -> config_dict.ConfigDict:
  """The learning-rate schedule."""
  return config_dict.ConfigDict(dict(
      # constant | cosine | warmup_cosine | onecycle | exponential | step | multistep
      # | cosine_restarts | plateau
      name='cosine',
      unit='epoch',               # 'epoch' (PyTorch's per-epoch scheduler.step()) | 'step'
      t_max_epochs=0,             # cosine: 0 = num_epochs
      min_lr=0.0,                 # eta_min
      warmup_epochs=0.0,
      gamma=0.1,                  # exponential, step, multistep, plateau factor
      step_size=30,               # step: epochs between decays
      milestones=(),              # multistep: epochs
      max_lr=0.0,                 # onecycle: 0 = optim.learning_rate
      pct_start=0.3,
      div_factor=25.0,
      final_div_factor=1e4,
      anneal_strategy='cos',
      three_phase=False,
      t_0=10,                     # cosine_restarts: first period (epochs)
      t_mult=1,
      patience=10,                # plateau
      threshold=1e-4,
      plateau_mode='min',         # plateau watches validation loss ('min') or accuracy ('max')
  ))


def reference_config(**overrides) -> config_dict.ConfigDict:
  """What the report sets the run beside (docs/reference.md); 0 = none known."""
  cfg = config_dict.ConfigDict(dict(
      system='',                  # e.g. "seed 000 best model"
      paper_accuracy=0.0,         # the seed paper's own reported test accuracy (%)
      pytorch_final=0.0,          # the PyTorch reference on the JPEG CIFAR-10 copy (%)
      pytorch_best=0.0,
      pytorch_epoch_seconds=0.0,
      pytorch_seconds=0.0,        # the reference run's wall time to its final accuracy
  ))
  cfg.update(overrides)
  return cfg


def seed000_reference(system: str = 'seed 000 best model') -> config_dict.ConfigDict:
  """docs/reference.md's PyTorch run of seed 000's recipe on the JPEG copy, and its paper's figure.

  200 epochs on an H100: 92.38% final, 92.43% best, about 4.5 s an epoch (about 15 minutes).
  """
  return reference_config(system=system, paper_accuracy=96.04, pytorch_final=92.38,
                          pytorch_best=92.43, pytorch_epoch_seconds=4.5, pytorch_seconds=900.0)


def base_config() -> config_dict.ConfigDict:
  """Every key a run reads, locked."""
  config = config_dict.ConfigDict()
  config.seed = 0
  config.model = model_config()
  config.data = data_config()
  config.augment = augment_config()
  config.optim = optim_config()
  config.schedule = schedule_config()

  config.label_smoothing = 0.0
  config.batch_size = 128          # global, across every device and host
  config.eval_batch_size = 1000
  config.num_epochs = 200
  config.drop_remainder = False    # False: the last partial batch is trained, as PyTorch does
  config.steps_per_call = 0        # steps fused in one compiled call (lax.scan); 0 = auto
  # BatchNorm statistics and mixup pairs over the global batch ('global': N devices train exactly
  # like one) or within each device's shard ('per_device', as PyTorch's DDP: no reduction across
  # devices in the forward pass; faster on many devices at small batches per device)
  config.batch_statistics = 'global'
  config.ema_decay = 0.0           # >0: keep an EMA of the weights and evaluate it
  config.eval_flip_tta = False     # average logits over the image and its mirror at evaluation
  config.eval_every_epochs = 1
  config.log_every_steps = 100
  config.log_every_seconds = 30.0  # a progress line at least this often (and after the first call)
  config.checkpoint_every_epochs = 1
  # ...and at most once in this many seconds (always at the last epoch and at a stop): on an
  # accelerator an epoch lasts about a second, and a save every epoch would cost a tenth of it
  config.checkpoint_min_seconds = 60.0
  config.keep_best_checkpoint = True
  config.write_plots = True
  config.param_histograms_every_epochs = 0  # >0: TensorBoard histograms of every parameter array

  config.reference = reference_config()
  # Train several runs of this config at once, one per group of devices, in one compiled program
  # (`resnet_jax.training.population`): each seed's run in <workdir>/seed_<S>/. () = one run.
  config.population = config_dict.ConfigDict(dict(seeds=()))
  config.lock()
  return config
