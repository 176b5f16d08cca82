"""compile_check: the smoke run compiled for TPU slices on this CPU: its calls, bytes and FLOPs."""

import dataclasses
import importlib.util
import json
import runpy
import subprocess
import sys

import pytest

from resnet_jax import compile_check
from resnet_jax import targets
from resnet_jax.bench import throughput
from resnet_jax.data import input_pipeline
from resnet_jax.errors import UserError

from conftest import REPO, with_overrides  # pylint: disable=g-bad-import-order

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec('libtpu') is None,
    reason='libtpu is not installed (the [tpu] extra): no TPU topology to compile for')

# The smoke model, wider (convolutions dominate its FLOPs, as in the real models), on 160
# training images: two full steps of 64 fused in a call, and a partial batch of 32.
OVERRIDES = {'model.channels': (16, 32), 'model.stem_channels': 16, 'data.train_subset': 160}


def smoke_config(**overrides):
  config = runpy.run_path(str(REPO / 'configs' / 'smoke.py'))['get_config']()
  return with_overrides(config, {**OVERRIDES, **overrides})


@pytest.fixture(scope='module')
def single_host():
  return compile_check.check(smoke_config(), targets.tpu_slice('v5litepod-8'))


def test_every_call_of_the_run_compiles_and_fits_one_host(single_host):
  calls = single_host.calls
  assert [(c.kind, c.steps, c.batch) for c in calls] == [
      ('train', 2, 64), ('train', 1, 32), ('eval', 1, 256)]
  assert (single_host.platform.device_count, single_host.target.hosts) == (8, 1)
  assert single_host.run.compute_dtype == 'bfloat16' and single_host.run.resident
  assert single_host.fits
  assert all(0 < c.bytes_per_chip < single_host.hbm == 16 << 30 for c in calls)
  # The fused call loops: it is estimated from the one-step call.
  assert calls[0].estimate_from == 'the call of 1 step, times 2'
  assert calls[0].estimated_seconds == pytest.approx(2 * single_host.step.estimated_seconds)
  assert single_host.images_per_second == pytest.approx(64 / single_host.step.estimated_seconds)
  assert single_host.step.all_reduces > 0 and single_host.step.all_reduce_bytes > 0


def test_flops_an_image_are_the_benchmarks_count(single_host):
  config = smoke_config(**{'data.source': 'synthetic', 'model.dtype': 'bfloat16'})
  splits = input_pipeline.load_splits(config.data, config.seed)
  measured = throughput.measure(config, splits, calls=1, warmup_calls=0, eval_repeats=0)
  assert single_host.flops_per_image / 1e9 == pytest.approx(measured.train_gflop_per_image,
                                                            rel=0.05)


def test_a_call_over_the_chips_memory_is_refused_in_one_line(single_host):
  assert compile_check.failure(single_host) is None
  largest = max(call.bytes_per_chip for call in single_host.calls)
  smaller = dataclasses.replace(single_host.run.platform, memory_bytes=largest - 1)
  refused = dataclasses.replace(single_host,
                                run=dataclasses.replace(single_host.run, platform=smaller))
  assert not refused.fits
  line = compile_check.failure(refused)
  assert line.startswith('the train call (2 steps of 64) needs ') and '\n' not in line
  assert 'lower config.batch_size' in line and 'TPU v5 lite' in line


def population_check(seeds: int):
  """`seeds` seeds on a v5litepod-8 (two steps of 64 a member, one step a call)."""
  config = smoke_config(**{'population.seeds': tuple(range(seeds)), 'data.train_subset': 128,
                           'steps_per_call': 1})
  return compile_check.check(config, targets.tpu_slice('v5litepod-8'))


@pytest.fixture(scope='module')
def population_of_8():
  return population_check(8)


def test_a_population_of_8_is_8_members_of_a_chip_with_no_collective(population_of_8):
  result = population_of_8
  assert (result.members, result.seeds, result.run.platform.device_count) == (8, 8, 1)
  assert [(c.kind, c.steps, c.batch) for c in result.calls] == [('train', 1, 64),
                                                                ('eval', 1, 256)]
  assert result.fits and compile_check.failure(result) is None
  # A member's chip talks to no other: no all-reduce at all (a data-parallel run has some).
  assert result.cross_member_collectives == 0
  assert all(call.all_reduces == 0 and call.collective_groups == [] for call in result.calls)
  # Member-images/s: every member's batch a step.
  assert result.images_per_second == pytest.approx(8 * 64 / result.step.estimated_seconds)
  written = compile_check.as_json(result, 'configs/smoke.py')
  assert (written['members'], written['chips'], written['chips_per_member']) == (8, 8, 1)
  assert written['images_per_chip'] == 64 and written['cross_member_collectives'] == 0
  lines = compile_check.summary_lines(result)
  assert ('population: 8 seeds, 8 members at once (1 round), each on 1 chip of the 8: one '
          'program') in lines
  assert 'collectives across members: none (groups of the collectives: no collective)' in lines


def test_a_member_needs_on_its_chip_what_its_single_run_needs_on_one(population_of_8):
  config = smoke_config(**{'data.train_subset': 128, 'steps_per_call': 1})
  alone = compile_check.check(config, targets.tpu_slice('v5litepod-1'))
  assert [c.name for c in alone.calls] == [c.name for c in population_of_8.calls]
  # Its state, the training set and its batch: the same arguments, and no more in all (XLA may
  # lay the population's temporaries out tighter).
  for member, single in zip(population_of_8.calls, alone.calls):
    assert member.arguments == pytest.approx(single.arguments, rel=0.02), member.name
    assert 0 < member.bytes_per_chip <= single.bytes_per_chip, member.name


def test_a_population_of_4_reduces_within_each_member_only():
  result = population_check(4)
  assert (result.members, result.run.platform.device_count) == (4, 2)
  # The gradients' all-reduces join the two chips of each member: groups {0,1}, {2,3}, ...
  assert result.step.all_reduces > 0
  assert {g for call in result.calls for g in call.collective_groups} == {'[4,2]<=[8]'}
  assert result.cross_member_collectives == 0 and compile_check.failure(result) is None
  # Were one to join two members' chips, the command would end in its error line.
  joined = dataclasses.replace(result.step, cross_member_collectives=1)
  line = compile_check.failure(dataclasses.replace(result, calls=[joined]))
  assert line.startswith("the population's program has 1 collective joining devices of two "
                         'members') and '\n' not in line


def test_collectives_joining_two_members_are_found():
  within, across = [[0, 1], [2, 3]], [[0, 2], [1, 3]]
  assert not compile_check.cross_member(within, devices_per_member=2)
  assert compile_check.cross_member(across, devices_per_member=2)
  assert compile_check.cross_member(None, devices_per_member=2)  # every device


def test_a_population_over_the_chips_memory_is_refused_in_one_line(population_of_8):
  largest = max(call.bytes_per_chip for call in population_of_8.calls)
  smaller = dataclasses.replace(population_of_8.run.platform, memory_bytes=largest - 1)
  refused = dataclasses.replace(population_of_8,
                                run=dataclasses.replace(population_of_8.run, platform=smaller))
  line = compile_check.failure(refused)
  assert line.startswith('the train call (1 step of 64) needs ') and '\n' not in line
  assert line.endswith('lower config.batch_size, or train fewer members at once (8 now, 1 chip '
                       'each): config.population.seeds of 4 seeds trains them on 2 chips each')


def test_a_pod_slice_compiles_as_one_program_of_every_host(tmp_path):
  output = tmp_path / 'check.json'
  process = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.compile_check', '--config', 'configs/smoke.py',
       '--topology', 'v5litepod-16', '--config.steps_per_call=1', f'--output={output}'],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert process.returncode == 0, process.stderr
  assert 'a batch of 64: 4 images a chip, 16 a host on each of 4 hosts' in process.stderr
  result = json.loads(output.read_text())
  assert (result['topology'], result['chips'], result['hosts']) == ('v5litepod-16', 16, 4)
  assert result['fits'] and result['device_kind'] == 'TPU v5 lite'
  assert [(c['kind'], c['steps'], c['batch']) for c in result['calls']] == [
      ('train', 1, 64), ('eval', 1, 256)]
  assert result['images_per_second_estimate'] > 0 and result['flops_per_image'] > 0


def test_a_wrong_topology_is_one_line_and_exit_2():
  process = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.compile_check', '--config', 'configs/smoke.py',
       '--topology', 'v5litepod-12'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert process.returncode == 2
  assert process.stderr.strip().splitlines()[-1].startswith(
      'error: --topology=v5litepod-12: v5litepod counts chips')


def test_a_compiler_crash_is_one_line_not_a_dead_command(monkeypatch):
  # libtpu 0.0.42.1 segfaults on every v6e compile: the compiles run in a child process.
  monkeypatch.setattr(subprocess, 'run', lambda *a, **k: subprocess.CompletedProcess(a, -11))
  with pytest.raises(UserError) as info:
    compile_check.compile_in_child('configs/smoke.py', 'v6e-8')
  assert str(info.value).startswith(
      'the compiler crashed (SIGSEGV) while compiling configs/smoke.py for v6e-8 (libtpu ')
  assert "pip install -U 'jax[tpu]'" in str(info.value)
