"""The benchmark command: variants over the grid, children for environments, table and JSON."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from resnet_jax import benchmark
from resnet_jax import errors
from resnet_jax.bench import throughput
from resnet_jax.bench import variants
from resnet_jax.bench.throughput import Measurement

from conftest import REPO, host_devices_env, synthetic_config


def _row(variant, batch, rate, framework='jax', gflop=None, dtype='bfloat16'):
  return Measurement(batch, dtype, 32, 10.0, rate, None, gflop, None, 3.5, variant=variant,
                     framework=framework)


def test_table_has_a_row_per_measurement():
  row = Measurement(128, 'bfloat16', 32, 10.0, 60000.0, 150000.0, 4.8, 0.29, 3.5)
  table = benchmark.format_table([row, row]).splitlines()
  assert len(table) == 4
  assert 'memory GiB' in table[0]
  assert ('| default | 128 | bfloat16 | 32 | device | 10.0 | 60,000 | 150,000 | 4.80 | 29.0% '
          '| 3.50 |  |') == table[2]


def test_finish_marks_the_fastest_per_group_and_the_speedup_over_pytorch():
  rows = [_row('default', 128, 50_000.0, gflop=4.4), _row('graphs', 128, 60_000.0),
          _row('default', 512, 90_000.0, gflop=4.4), _row('graphs', 512, 80_000.0),
          _row('pytorch eager', 128, 12_000.0, framework='torch')]
  done = benchmark.finish(rows, 'NVIDIA H100', 1)
  assert [(r.variant, r.batch_size, r.fastest) for r in done] == [
      ('default', 128, False), ('graphs', 128, True), ('pytorch eager', 128, False),
      ('default', 512, True), ('graphs', 512, False)]
  # The group's FLOPs, counted by its first variant, give every JAX row its MFU.
  assert done[1].train_gflop_per_image == 4.4
  assert done[1].mfu == pytest.approx(4.4e9 * 60_000 / 989e12)
  assert done[2].speedup == pytest.approx(5.0) and done[2].mfu is None
  assert 'fastest JAX is 5.00x this' in benchmark.format_table(done)


def test_a_variant_setting_the_batch_size_is_measured_once_per_dtype():
  options = benchmark.Options(batch_sizes=(128, 512), dtypes=('float32', 'bfloat16'))
  larger = variants.Variant('b1024', {'batch_size': 1024}, numerics=variants.DIFFERS)
  cells = benchmark.grid_configs(synthetic_config(), larger, options)
  assert [(c.model.dtype, c.batch_size) for c in cells] == [('float32', 1024),
                                                            ('bfloat16', 1024)]
  assert len(benchmark.grid_configs(synthetic_config(), variants.DEFAULT, options)) == 4


def _run(args, env=None):
  env = env or dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'resnet_jax.benchmark', *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)


VARIANTS_FILE = textwrap.dedent('''
    from resnet_jax.bench.variants import Variant

    def get_variants():
      return [Variant('default'),
              Variant('steps_2', {'steps_per_call': 2}),
              Variant('lhs', env={'XLA_FLAGS': '--xla_gpu_enable_latency_hiding_scheduler=true'}),
              Variant('unused', {'steps_per_call': 4})]
''')


def test_command_line_measures_variants_in_one_table_and_json(tmp_path):
  """An in-process variant and one with XLA_FLAGS (its own process) in one run."""
  (tmp_path / 'variants.py').write_text(VARIANTS_FILE)
  output = tmp_path / 'bench.json'
  result = _run(['--config=configs/smoke.py', '--config.data.source=synthetic',
                 '--batch_sizes=32', '--dtypes=float32', '--calls=1', '--torch_steps=0',
                 f'--variants={tmp_path}/variants.py', '--only_variants=default,steps_2,lhs',
                 '--end_to_end_epochs=1', f'--output={output}'])
  assert result.returncode == 0, result.stderr[-2000:]
  written = json.loads(output.read_text())
  rows, end_to_end = written['results'][:-1], written['results'][-1]
  assert [(r['variant'], r['batch_size'], r['steps_per_call']) for r in rows] == [
      ('default', 32, 1), ('steps_2', 32, 2), ('lhs', 32, 1)]
  assert all(r['error'] is None and r['memory_gib'] > 0 for r in rows)
  # A whole run of the config as given (evaluation and checkpoints included) against its
  # steady-state row.
  # Measured by its own run: its epoch's steps (512 images at batch 32) over its own wall.
  assert (end_to_end['variant'], end_to_end['batch_size'], end_to_end['steps']) == (
      'end to end', 32, 16)
  assert end_to_end['train_images_per_second'] == pytest.approx(512 / end_to_end['wall_seconds'])
  assert end_to_end['of_steady_state'] == pytest.approx(
      end_to_end['train_images_per_second'] / rows[0]['train_images_per_second'])
  assert not end_to_end['fastest']
  assert sum(r['fastest'] for r in rows) == 1
  # The first variant counted the FLOPs and timed evaluation; every row has the FLOPs.
  assert rows[0]['eval_images_per_second'] and not rows[1]['eval_images_per_second']
  assert rows[0]['hlo']['kernels'] > 0 and rows[1]['hlo'] is None  # the one-step call's HLO
  assert len({r['train_gflop_per_image'] for r in rows}) == 1
  # The console: a line a row as each is measured, then the table; the end-to-end run's own
  # lines (its epochs and progress) are in the log file only.
  console = [line[9:] for line in result.stderr.splitlines()]
  table = written['table'].splitlines()
  assert console[-len(table) - 1:-1] == table and console[-1] == f'wrote {output}'
  assert console[-len(table) - 3].startswith('| end to end | 32 | float32 | 1 | device |')
  assert console[-len(table) - 3].endswith(' | 16 steps in '
                                           f"{end_to_end['wall_seconds']:.1f} s |")
  assert not [line for line in console if line.startswith('epoch ')], result.stderr
  assert 'epoch 2/2 step 16/16' in (tmp_path / 'benchmark.log').read_text()
  assert [v['name'] for v in written['variants']] == ['default', 'steps_2', 'lhs']
  assert written['versions']['jax'] and written['device_count'] == 1


def test_population_row_is_its_members_images_against_one_run_of_all_of_them(tmp_path):
  """On 4 devices: 4 runs of batch 16 at once against one run of batch 64, in one process."""
  output = tmp_path / 'bench.json'
  result = _run(['--config=configs/smoke.py', '--config.data.source=synthetic',
                 '--config.data.train_subset=128', '--batch_sizes=16', '--dtypes=float32',
                 '--calls=2', '--torch_steps=0', '--end_to_end_epochs=0', '--extras=false',
                 f'--output={output}'], env=host_devices_env(4))
  assert result.returncode == 0, result.stderr[-2000:]
  written = json.loads(output.read_text())
  default, members, one_run = written['results']
  assert (default['variant'], default['batch_size'], default['members']) == ('default', 16, None)
  assert (members['variant'], members['batch_size'], members['members']) == ('population', 16, 4)
  assert (one_run['variant'], one_run['batch_size'], one_run['members']) == ('one run', 64, None)
  # Two timed calls of one step each: member-images are members x steps x batch.
  assert members['steps'] == one_run['steps'] == 2
  assert members['train_images_per_second'] == pytest.approx(
      4 * 2 * 16 / members['wall_seconds'])
  assert one_run['train_images_per_second'] == pytest.approx(2 * 64 / one_run['wall_seconds'])
  assert members['of_one_run'] == pytest.approx(
      members['train_images_per_second'] / one_run['train_images_per_second'])
  assert not members['fastest'] and default['fastest']
  assert written['table'].splitlines()[-2].startswith('| population | 16 | float32 | 1 |')
  assert written['device_count'] == 4


def test_population_rows_unasked_for_leave_out_a_config_that_cannot_train_as_one(monkeypatch):
  def refuse(*args, **kwargs):
    raise errors.UserError("these runs cannot train as one population: placement host")

  monkeypatch.setattr(throughput, 'population_members', lambda config: 4)
  monkeypatch.setattr(throughput, 'measure_population', refuse)
  config = synthetic_config()
  assert benchmark.population_rows(config, None, benchmark.Options(population_members=0)) == []
  with pytest.raises(errors.UserError, match='cannot train as one population'):
    benchmark.population_rows(config, None, benchmark.Options(population_members=4))


@pytest.mark.parametrize('args, message', [
    (['--config=configs/smoke.py', '--batch_sizes=big'], '--batch_sizes must be integers'),
    (['--config=configs/smoke.py', '--config.model.activation=gelu'], 'config.model.activation'),
    # Checked before the benchmark runs, not after it (which lost the results).
    (['--config=configs/smoke.py', '--output={tmp_path}/missing/b.json'],
     'missing does not exist; create it first'),
    (['--config=configs/smoke.py', '--variants={tmp_path}/none.py'], 'none.py does not exist'),
    (['--config=configs/smoke.py', '--variants=configs/benchmarks/gpu_variants.py',
      '--only_variants=fastest'], 'no variant named fastest'),
    # Recorded 0 images/s with exit status 0.
    (['--config=configs/smoke.py', '--calls=0'], '--calls=0'),
    # 3 runs do not split one device.
    (['--config=configs/smoke.py', '--population_members=3', '--batch_sizes=64',
      '--dtypes=float32', '--torch_steps=0', '--end_to_end_epochs=0', '--extras=false'],
     '3 members cannot split 1 device'),
])
def test_mistakes_are_one_line(tmp_path, args, message):
  args = [arg.format(tmp_path=tmp_path) for arg in args]
  result = _run([f'--output={tmp_path}/b.json', *args, '--config.data.source=synthetic'])
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  assert message in result.stderr.strip().splitlines()[-1]
