"""progress: a progress line counts the steps of its epoch; its speed and ETA omit the first call."""

import logging
import time
import types

import pytest

from resnet_jax import defaults
from resnet_jax.training import progress
from resnet_jax.training import steps


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


def member(writer):
  """What log_progress reads of a `train.Member`: its sums since the last line, its writer."""
  return types.SimpleNamespace(window={}, writer=writer)


def add_call(line, clock, members, images: int, learning_rates, losses=(2.0,)):
  """A call of `images` images a member (of mean loss losses[i]), read as the loop reads one."""
  for m, loss in zip(members, losses):
    call = one_call_of(images)
    call.loss.total = loss * images
    m.window = steps.add_sums(m.window, steps.metric_sums(call))
  line.add_call(clock, images * len(members), learning_rates)


def test_steps_count_within_the_epoch_and_the_eta_leaves_out_the_first_call(caplog):
  config = defaults.base_config()
  config.num_epochs, config.batch_size = 2, 10
  clock, writer = progress.RunClock(), Scalars()
  line, members = progress.Progress(last_log_step=0), [member(writer)]
  caplog.set_level(logging.INFO, logger='absl')

  def call(seconds: float, epoch: int, step: int, log: bool = True):
    line.mark = time.perf_counter() - seconds  # The call took `seconds`.
    add_call(line, clock, members, 10, [0.1])
    if log:
      progress.log_progress(members, line, config, 4, epoch, step)
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


def test_a_population_line_counts_every_member_and_each_writer_gets_its_own(caplog):
  config = defaults.base_config()
  config.num_epochs, config.batch_size = 1, 10
  clock = progress.RunClock()
  line = progress.Progress(last_log_step=0)
  members = [member(Scalars()), member(Scalars())]
  caplog.set_level(logging.INFO, logger='absl')
  for seconds, loss in ((100.0, 1.0), (1.0, 3.0)):
    line.mark = time.perf_counter() - seconds
    add_call(line, clock, members, 10, [0.1, 0.2], losses=(loss, loss + 1))
  progress.log_progress(members, line, config, 4, 0, 2)
  # The loss over both members' images; 20 member-images in the timed (second) call's second.
  assert caplog.records[-1].getMessage() == (
      'epoch 1/1 step 2/4: loss 2.5000 acc 50.00% lr 0.1-0.2, 20 member-images/s (2 members), '
      'ETA epoch 0m02s, run 0m02s')
  (step, first), = members[0].writer.written
  (_, second), = members[1].writer.written
  assert step == 2 and (first['train_loss'], second['train_loss']) == (2.0, 3.0)
  assert (first['learning_rate'], second['learning_rate']) == (0.1, 0.2)
  assert first['images_per_second'] == pytest.approx(10, rel=1e-3)  # A member's own images.
