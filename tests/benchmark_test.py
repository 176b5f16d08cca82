"""The benchmark: its FLOP count against an analytic one, its table, JSON and errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from resnet_jax import benchmark
from resnet_jax import defaults
from resnet_jax import input_pipeline
from resnet_jax import feed

from conftest import REPO


def tiny_config():
  config = defaults.base_config()
  config.model = defaults.model_config(
      name='tiny', num_blocks=(1, 1), channels=(8, 16), kernel_sizes=(3, 3),
      shortcut_kernel_sizes=(1, 1), stem_channels=8, se='none')
  config.data.source = 'synthetic'
  config.data.train_subset = 256
  config.data.test_subset = 100
  config.batch_size = 64
  config.eval_batch_size = 50
  return config


def forward_conv_flops(image_size=32):
  """2 * H * W * k * k * Cin * Cout of every convolution of tiny_config's model, one image."""
  convs = [(32, 3, 3, 8),                     # stem
           (32, 3, 8, 8), (32, 3, 8, 8),      # layer 1 block
           (16, 3, 8, 16), (16, 3, 16, 16),   # layer 2 block (stride 2)
           (16, 1, 8, 16)]                    # its projection shortcut
  return sum(2 * size * size * k * k * cin * cout for size, k, cin, cout in convs)


def test_measure_counts_training_flops_and_throughput():
  config = tiny_config()
  config.steps_per_call = 2
  splits = input_pipeline.load_splits(config.data, config.seed)
  row = benchmark.measure(config, splits, calls=2, warmup_calls=1, eval_repeats=1)
  assert (row.batch_size, row.dtype, row.steps_per_call) == (64, 'float32', 2)
  assert row.train_images_per_second > 0 and row.eval_images_per_second > 0
  # Forward + backward is about 3x the forward convolutions; XLA also counts BatchNorm,
  # activations, augmentation and the optimizer, which add a little on top.
  ratio = row.train_gflop_per_image * 1e9 / forward_conv_flops()
  assert 2.8 < ratio < 4.5, ratio
  assert row.mfu is None  # no peak is known for a CPU
  # The call holds the resident training set (256 images) and a few MiB of activations.
  assert splits.train_images.nbytes / 2**30 < row.memory_gib < 0.5


@pytest.fixture(scope='module')
def scan_rows():
  """Rows measured on the lax.scan path (as on a GPU): steps per call as training picks them, 1.

  40 full steps an epoch: training fuses 20 a call (a divisor near 32), not 32.
  """
  config = tiny_config()
  config.batch_size = 8
  config.data.train_subset = 320
  splits = input_pipeline.load_splits(config.data, config.seed)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(feed.jax, 'default_backend', lambda: 'gpu')
    plan = feed.epoch_plan(config, len(splits.train_labels), num_devices=1)
    rows = {}
    for steps_per_call in (0, 1):
      config.steps_per_call = steps_per_call
      rows[steps_per_call] = benchmark.measure(config, splits, calls=1, warmup_calls=0,
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
  assert benchmark.memory_gib(doubled) * 2**10 == pytest.approx(2.0, abs=0.1)  # in + out
  donated = jax.jit(lambda a: a + 1, donate_argnums=0).lower(x).compile()
  assert benchmark.memory_gib(donated) * 2**10 == pytest.approx(1.0, abs=0.1)  # out reuses in


def test_table_has_a_row_per_measurement():
  row = benchmark.Measurement(128, 'bfloat16', 32, 10.0, 60000.0, 150000.0, 4.8, 0.29, 3.5)
  table = benchmark.format_table([row, row]).splitlines()
  assert len(table) == 4
  assert 'memory GiB' in table[0]
  assert '| 128 | bfloat16 | 32 | 10.0 | 60,000 | 150,000 | 4.80 | 29.0% | 3.50 |' == table[2]


def test_peak_flops_known_for_the_h100_bfloat16():
  assert benchmark.peak_flops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989e12
  assert benchmark.peak_flops('cpu', 'float32') is None


def _run(args, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'resnet_jax.benchmark', *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)


def test_command_line_prints_table_and_writes_json(tmp_path):
  output = tmp_path / 'bench.json'
  result = _run(['--config=configs/smoke.py', '--config.data.source=synthetic',
                 '--batch_sizes=32', '--dtypes=float32,bfloat16', '--calls=1',
                 f'--output={output}'], tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  written = json.loads(output.read_text())
  assert [(r['batch_size'], r['dtype']) for r in written['results']] == [
      (32, 'float32'), (32, 'bfloat16')]
  assert written['table'] in result.stdout
  assert written['versions']['jax']
  assert all(r['memory_gib'] > 0 for r in written['results'])


@pytest.mark.parametrize('args, message', [
    (['--config=configs/smoke.py', '--batch_sizes=big'], '--batch_sizes must be integers'),
    (['--config=configs/smoke.py', '--config.model.activation=gelu'], 'config.model.activation'),
    # Checked before the benchmark runs, not after it (which lost the results).
    (['--config=configs/smoke.py', '--output={tmp_path}/missing/b.json'],
     'missing does not exist; create it first'),
])
def test_mistakes_are_one_line(tmp_path, args, message):
  args = [arg.format(tmp_path=tmp_path) for arg in args]
  result = _run([f'--output={tmp_path}/b.json', *args, '--config.data.source=synthetic'],
                tmp_path)
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  assert message in result.stderr.strip().splitlines()[-1]
