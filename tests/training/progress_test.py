"""progress: a progress line counts the steps of its epoch; its speed and ETA omit the first call."""

import logging
import time
import types

import pytest

from resnet_jax import defaults
from resnet_jax.training import progress


class Scalars:
  """A metric writer that keeps what it is given."""

  def __init__(self):
    self.written = []

  def write_scalars(self, step, scalars):
    self.written.append((step, scalars))


def one_call_of(images: int):
  """A call's fetched metrics (`steps.Metrics`' fields), of `images` images."""
  return types.SimpleNamespace(loss=types.SimpleNamespace(total=2.0 * images, count=images),
                               accuracy=types.SimpleNamespace(total=0.5 * images, count=images))


def test_steps_count_within_the_epoch_and_the_eta_leaves_out_the_first_call(caplog):
  config = defaults.base_config()
  config.num_epochs, config.batch_size = 2, 10
  clock, writer = progress.RunClock(), Scalars()
  line = progress.Progress(epoch_sums={}, last_log_step=0)
  caplog.set_level(logging.INFO, logger='absl')

  def call(seconds: float, epoch: int, step: int, log: bool = True):
    line.mark = time.perf_counter() - seconds  # The call took `seconds`.
    line.add_call(clock, one_call_of(10), 10, 0.1)
    if log:
      progress.log_progress(writer, line, config, 4, epoch, step)
    return caplog.records[-1].getMessage()

  # The first call (100 s: what the compile left to it) gives no speed and no ETA.
  assert call(100.0, 0, 1) == ('epoch 1/2 step 1/4: loss 2.0000 acc 50.00% lr 0.1; images/s '
                               'and ETA from the next line (the first call is not timed)')
  call(1.0, 0, 2, log=False)
  # Two calls of 1 s: 1 s a step, 1 step left in the epoch, 5 in the run (not 34 s a step).
  assert call(1.0, 0, 3) == ('epoch 1/2 step 3/4: loss 2.0000 acc 50.00% lr 0.1, 10 images/s, '
                             'ETA epoch 0m01s, run 0m05s')
  assert call(2.0, 1, 6).startswith('epoch 2/2 step 2/4: ')  # global step 6: epoch 2's second
  assert caplog.records[-1].getMessage().endswith('5 images/s, ETA epoch 0m04s, run 0m04s')
  assert [step for step, _ in writer.written] == [1, 3, 6]
  assert 'images_per_second' not in writer.written[0][1]
  assert writer.written[1][1]['images_per_second'] == pytest.approx(10, rel=1e-3)
  # The run's own clock counts every call's train time, the first one's too.
  assert clock.train_seconds == pytest.approx(104, rel=1e-3) and clock.train_images == 40
