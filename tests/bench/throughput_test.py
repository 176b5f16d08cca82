"""One measurement: its FLOP count against an analytic one, steps per call, placement, memory."""

import jax
import jax.numpy as jnp
import pytest

from resnet_jax import platforms
from resnet_jax.bench import throughput
from resnet_jax.data import input_pipeline
from resnet_jax.training import feed

from conftest import synthetic_config


def forward_conv_flops(image_size=32):
  """2 * H * W * k * k * Cin * Cout of every convolution of synthetic_config's model, one image."""
  convs = [(32, 3, 3, 8),                     # stem
           (32, 3, 8, 8), (32, 3, 8, 8),      # layer 1 block
           (16, 3, 8, 16), (16, 3, 16, 16),   # layer 2 block (stride 2)
           (16, 1, 8, 16)]                    # its projection shortcut
  return sum(2 * size * size * k * k * cin * cout for size, k, cin, cout in convs)


def test_measure_counts_training_flops_and_throughput():
  config = synthetic_config(steps_per_call=2)
  splits = input_pipeline.load_splits(config.data, config.seed)
  row = throughput.measure(config, splits, calls=2, warmup_calls=1, eval_repeats=1)
  assert (row.batch_size, row.dtype, row.steps_per_call) == (64, 'float32', 2)
  assert row.train_images_per_second > 0 and row.eval_images_per_second > 0
  assert row.placement == 'device'
  # Forward + backward is about 3x the forward convolutions; XLA also counts BatchNorm,
  # activations, augmentation and the optimizer, which add a little on top.
  ratio = row.train_gflop_per_image * 1e9 / forward_conv_flops()
  assert 2.8 < ratio < 4.5, ratio
  assert row.mfu is None  # benchmark.finish fills it in, where the device's peak is known
  # The call holds the resident training set (256 images) and a few MiB of activations.
  assert splits.train_images.nbytes / 2**30 < row.memory_gib < 0.5


def test_streamed_placement_is_timed_through_its_feed():
  """Host batches every call, as training streams them: more timed calls than an epoch has."""
  config = synthetic_config(**{'data.placement': 'host'})
  splits = input_pipeline.load_splits(config.data, config.seed)
  row = throughput.measure(config, splits, calls=6, warmup_calls=1, eval_repeats=0,
                           count_flops=False)
  assert (row.placement, row.steps_per_call) == ('host', 1)
  assert row.train_images_per_second > 0
  assert row.eval_images_per_second is None and row.train_gflop_per_image is None
  # No training set on the device: the call holds one batch of uint8 images, not 256.
  assert row.memory_gib < splits.train_images.nbytes / 2**30 + 0.05


@pytest.fixture(scope='module')
def scan_rows():
  """Rows measured on the lax.scan path (as on a GPU): steps per call as training picks them, 1.

  40 full steps an epoch: training fuses 20 a call (a divisor near 32), not 32.
  """
  config = synthetic_config(batch_size=8, **{'data.train_subset': 320})
  splits = input_pipeline.load_splits(config.data, config.seed)
  with pytest.MonkeyPatch.context() as patch:
    # Every decision reads the run's Platform, built from its mesh's devices: a GPU's here.
    gpu = platforms.Platform(name='gpu', device_kind='GPU', device_count=1, process_count=1,
                             memory_bytes=None)
    patch.setattr(platforms.Platform, 'of', lambda devices: gpu)
    plan = feed.epoch_plan(config, len(splits.train_labels), gpu)
    rows = {}
    for steps_per_call in (0, 1):
      config.steps_per_call = steps_per_call
      rows[steps_per_call] = throughput.measure(config, splits, calls=1, warmup_calls=0,
                                                eval_repeats=1)
  return plan, rows


def test_steps_per_call_are_the_training_plans(scan_rows):
  plan, rows = scan_rows
  assert plan.steps_per_call == 20
  assert [rows[0].steps_per_call, rows[1].steps_per_call] == [20, 1]


def test_flops_per_image_do_not_depend_on_steps_per_call_under_scan(scan_rows):
  _, rows = scan_rows
  one, fused = rows[1].train_gflop_per_image, rows[0].train_gflop_per_image
  assert fused == pytest.approx(one, rel=1e-3), (fused, one)
  assert 2.8 < one * 1e9 / forward_conv_flops() < 4.5


def test_memory_is_what_the_compiled_call_needs():
  x = jnp.zeros((512, 512), jnp.float32)  # 1 MiB
  doubled = jax.jit(lambda a: a @ a).lower(x).compile()
  assert throughput.memory_gib(doubled) * 2**10 == pytest.approx(2.0, abs=0.1)  # in + out
  donated = jax.jit(lambda a: a + 1, donate_argnums=0).lower(x).compile()
  assert throughput.memory_gib(donated) * 2**10 == pytest.approx(1.0, abs=0.1)  # out reuses in


def test_peak_flops_known_for_the_h100_bfloat16():
  assert throughput.peak_flops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989e12
  assert throughput.peak_flops('cpu', 'float32') is None
