"""The PyTorch reference trainer: what it refuses, its schedules against optim's, its
augmentations, and a short run."""

import json

import jax
import numpy as np
import pytest

from conftest import smoke_config
from resnet_jax.errors import UserError
from resnet_jax.models import optim

torch = pytest.importorskip('torch')
from resnet_jax.pytorch import torch_train  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_EPOCHS, STEPS_PER_EPOCH = 6, 3


@pytest.mark.parametrize('key, value, fragment', [
    ('optim.optimizer', 'adagrad', 'is not one of sgd, adam, adamw'),
    ('optim.l1', 1e-3, 'has no torch.optim form'),
    ('augment.cutout_size', 8, 'is not run by the PyTorch trainer (only crop_padding'),
    ('augment.rotation_degrees', 10.0, 'is not run by the PyTorch trainer'),
    ('ema_decay', 0.99, 'has no torch.optim form'),
    ('model.dtype', 'bfloat16', 'must be float32'),
])
def test_what_torch_does_not_express_is_refused_in_one_line(key, value, fragment):
  config = smoke_config(**{key: value})
  with pytest.raises(UserError) as error:
    torch_train.check_config(config)
  message = str(error.value)
  assert message.startswith(f'config.{key}={value!r} {fragment}') and '\n' not in message


@pytest.mark.parametrize('schedule', [
    dict(name='cosine', min_lr=1e-3), dict(name='warmup_cosine', warmup_epochs=2),
    dict(name='exponential', gamma=0.7, unit='step'), dict(name='multistep', milestones=(2, 4)),
    dict(name='cosine_restarts', t_0=2, t_mult=2), dict(name='onecycle'),
    dict(name='step', step_size=2, gamma=0.5, unit='step'),
])
def test_schedules_follow_optims_rates(schedule):
  config = smoke_config(num_epochs=NUM_EPOCHS, **{f'schedule.{k}': v for k, v in schedule.items()})
  learning_rate = optim.create_optimizer(config, STEPS_PER_EPOCH).learning_rate
  param = torch.zeros(1, requires_grad=True)
  optimizer = torch.optim.SGD([param], lr=config.optim.learning_rate)
  scheduler, per_step = torch_train.make_scheduler(config, optimizer, STEPS_PER_EPOCH)
  for step in range(NUM_EPOCHS * STEPS_PER_EPOCH):
    expected = float(jax.jit(learning_rate)(step, None))
    assert optimizer.param_groups[0]['lr'] == pytest.approx(expected, rel=1e-5, abs=1e-12), step
    optimizer.step()
    if per_step or (step + 1) % STEPS_PER_EPOCH == 0:
      scheduler.step()


def test_augment_crops_with_black_padding_flips_and_mixes():
  config = smoke_config(**{'augment.hflip': 1.0, 'augment.mixup_alpha': 0.4})
  images = torch.full((16, 3, 8, 8), 255, dtype=torch.uint8)
  labels = torch.arange(16) % 10
  mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
  generator = torch.Generator().manual_seed(0)
  x, targets = torch_train.augment(images, labels, config.augment, mean, std, 10, generator)
  assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32
  np.testing.assert_allclose(targets.sum(1).numpy(), 1.0, rtol=1e-6)
  config.augment.mixup_alpha = 0.0
  x, targets = torch_train.augment(images, labels, config.augment, mean, std, 10, generator)
  assert set(np.unique(x.numpy())) <= {0.0, 1.0} and (x == 0).any()  # zero padding came in
  assert torch.equal(targets.argmax(1), labels)


def test_a_short_run_reports_its_history(tmp_path):
  # ' test' validates on the test set, as everywhere (torch_train compared it unstripped).
  config = smoke_config(num_epochs=2, **{'data.validation': ' test'})
  results = torch_train.train_and_evaluate(config, str(tmp_path), threads=1)
  assert [r['epoch'] for r in results['history']] == [1, 2]
  assert results['best_test_accuracy'] == results['best_val_accuracy'] is not None
  assert results['parameters'] == 5_266 and results['framework'] == 'pytorch'
  assert 0 <= results['final_val_accuracy'] <= 1 and results['images_per_second'] > 0
  written = json.loads((tmp_path / torch_train.RESULTS_FILE).read_text())
  assert written['final_test_accuracy'] == results['final_test_accuracy']
