"""distributed: the environment's settings, and two real processes on 127.0.0.1 (CPU, Gloo).

The two-process tests run this file as a script in each process (see `_worker`).
"""

import importlib.util
import os
import pathlib
import pickle
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from resnet_jax import console_logs
from resnet_jax.errors import UserError
from resnet_jax.training import distributed

from conftest import host_devices_env  # pylint: disable=g-bad-import-order

REPO = pathlib.Path(__file__).resolve().parents[2]
LOCAL_DEVICES = 2  # per process: each process feeds and shards over more than one device
# The training run: two steps an epoch, each global batch split between the processes.
TRAIN_EXAMPLES, BATCH_SIZE, EPOCHS = 32, 16, 2


# distributed_settings: what the environment asks for.

EXPLICIT = dict(RESNET_JAX_COORDINATOR_ADDRESS='10.0.0.1:1234', RESNET_JAX_NUM_PROCESSES='4',
                RESNET_JAX_PROCESS_ID='3')


@pytest.mark.parametrize('environ', [
    {},
    dict(RESNET_JAX_DISTRIBUTED='off', **EXPLICIT),
    dict(EXPLICIT, RESNET_JAX_NUM_PROCESSES='1', RESNET_JAX_PROCESS_ID='0'),
    dict(SLURM_STEP_NUM_TASKS='1', SLURM_PROCID='0'),
    dict(SLURM_NTASKS='8', SLURM_PROCID='0'),  # a batch script, not an srun step
])
def test_single_process(environ):
  assert distributed.distributed_settings(environ) is None


def test_explicit_variables():
  assert distributed.distributed_settings(EXPLICIT) == dict(
      coordinator_address='10.0.0.1:1234', num_processes=4, process_id=3, local_device_ids=None,
      cluster_detection_method='deactivate')
  settings = distributed.distributed_settings(
      dict(EXPLICIT, RESNET_JAX_LOCAL_DEVICE_IDS='2,3', SLURM_STEP_NUM_TASKS='4'))
  assert settings['local_device_ids'] == [2, 3]
  assert settings['cluster_detection_method'] == 'deactivate'


def test_cluster_detection():
  assert distributed.distributed_settings(dict(RESNET_JAX_DISTRIBUTED='auto')) == {}
  assert distributed.distributed_settings(dict(SLURM_STEP_NUM_TASKS='16')) == dict(
      cluster_detection_method='slurm')


@pytest.mark.parametrize('change, message', [
    (dict(RESNET_JAX_PROCESS_ID=''), 'RESNET_JAX_PROCESS_ID not: set all of'),
    (dict(RESNET_JAX_COORDINATOR_ADDRESS='10.0.0.1'), 'is not host:port'),
    (dict(RESNET_JAX_COORDINATOR_ADDRESS='h:99999'), 'is not host:port'),
    (dict(RESNET_JAX_NUM_PROCESSES='two'), "RESNET_JAX_NUM_PROCESSES='two' is not an integer"),
    (dict(RESNET_JAX_NUM_PROCESSES='0'), 'is not an integer >= 1'),
    (dict(RESNET_JAX_PROCESS_ID='-1'), 'is not an integer >= 0'),
    (dict(RESNET_JAX_PROCESS_ID='4'), 'number the processes 0 to 3'),
    (dict(RESNET_JAX_LOCAL_DEVICE_IDS='0;1'), 'comma-separated list'),
    (dict(RESNET_JAX_DISTRIBUTED='on'), 'is not one of auto, off'),
    (dict(RESNET_JAX_DISTRIBUTED='auto'), 'unset one of them'),
])
def test_mistakes_are_one_line_user_errors(change, message):
  with pytest.raises(UserError, match='^[^\n]*$') as error:
    distributed.distributed_settings(dict(EXPLICIT, **change))
  assert message in str(error.value)


def test_partial_settings_name_what_is_missing():
  with pytest.raises(UserError, match='RESNET_JAX_COORDINATOR_ADDRESS set but '
                                      'RESNET_JAX_NUM_PROCESSES, RESNET_JAX_PROCESS_ID not'):
    distributed.distributed_settings(dict(RESNET_JAX_COORDINATOR_ADDRESS='h:1'))


def test_stop_timeout_seconds():
  assert distributed.stop_timeout_seconds({}) == distributed.DEFAULT_STOP_TIMEOUT_SECONDS
  assert distributed.stop_timeout_seconds({distributed.STOP_TIMEOUT: '90'}) == 90
  for bad in ('0', '-5', 'soon'):
    with pytest.raises(UserError, match=f"^RESNET_JAX_STOP_TIMEOUT='{bad}' is not an integer"):
      distributed.stop_timeout_seconds({distributed.STOP_TIMEOUT: bad})


def test_deadline_ends_a_process_that_outlasts_it_with_one_line():
  with distributed.deadline(60, 'never printed'):
    pass  # A block that finishes in time goes on.
  waits_forever = ('import time\n'
                   'from resnet_jax.training import distributed\n'
                   "with distributed.deadline(0.5, 'stop: did not finish'):\n"
                   '  time.sleep(60)\n'
                   "print('not reached')\n")
  start = time.perf_counter()
  ended = subprocess.run([sys.executable, '-c', waits_forever], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=50, check=False)
  assert time.perf_counter() - start < 40
  assert ended.returncode == 1
  assert ended.stderr.splitlines()[-1] == 'stop: did not finish'
  assert 'not reached' not in ended.stdout


def test_single_process_initialize_is_a_no_op(monkeypatch):
  for name in (*distributed.EXPLICIT_VARIABLES, distributed.DISTRIBUTED, 'SLURM_STEP_NUM_TASKS'):
    monkeypatch.delenv(name, raising=False)
  distributed.initialize_from_env()
  import jax  # pylint: disable=g-import-not-at-top
  assert not jax.distributed.is_initialized()
  assert jax.process_count() == 1


# Two processes on 127.0.0.1.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_processes(mode: str, tmp_path: pathlib.Path, timeout: int,
                     **env_changes: str) -> tuple[list[int], list[str]]:
  """Runs `_worker(mode)` in two processes joined as the launch scripts join them; their exit
  statuses and the ends of their logs."""
  port = _free_port()
  base_env = {k: v for k, v in host_devices_env(LOCAL_DEVICES).items()
              if not k.startswith(('RESNET_JAX_', 'SLURM_'))}
  base_env.update(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / 'tests')]),
                  RESNET_JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
                  RESNET_JAX_NUM_PROCESSES='2',
                  # A stop stuck waiting for the other process ends it, saying so in its log.
                  RESNET_JAX_STOP_TIMEOUT='200')
  base_env.update(env_changes)
  processes = []
  for process_id in range(2):
    env = dict(base_env, RESNET_JAX_PROCESS_ID=str(process_id))
    log = open(tmp_path / f'process{process_id}.log', 'w')  # pylint: disable=consider-using-with
    processes.append((subprocess.Popen(
        [sys.executable, __file__, mode, str(tmp_path / f'out{process_id}.pkl'), str(tmp_path)],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log))
  try:
    for process, _ in processes:
      process.wait(timeout=timeout)
  finally:
    for process, log in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
      log.close()
  logs = [(tmp_path / f'process{i}.log').read_text()[-3000:] for i in range(2)]
  return [process.returncode for process, _ in processes], logs


def _run_processes(mode: str, tmp_path: pathlib.Path, timeout: int) -> list[dict]:
  """Runs `_worker(mode)` in two processes; what each returned."""
  statuses, logs = _start_processes(mode, tmp_path, timeout)
  for status, log in zip(statuses, logs):
    assert status == 0, log
  return [pickle.loads((tmp_path / f'out{i}.pkl').read_bytes()) for i in range(2)]


def test_two_processes_initialize_and_exchange_data(tmp_path):
  results = _run_processes('collectives', tmp_path, timeout=120)
  for process_id, result in enumerate(results):
    assert result['process_index'] == process_id
    assert result['process_count'] == 2
    assert result['device_count'] == 2 * LOCAL_DEVICES
    assert result['local_device_count'] == LOCAL_DEVICES
    np.testing.assert_array_equal(result['gathered'], [[1, 2], [11, 12]])
    # Device d of process p holds 10 * p + d + 1; the sum runs over all four devices.
    assert result['global_sum'] == 1 + 2 + 11 + 12
    # Each process its own log file, side by side in the shared workdir.
    log = 'main.log' if process_id == 0 else f'main.process{process_id}.log'
    assert result['log_path'] == str(tmp_path / log)
    assert (tmp_path / log).is_file()
    # The persistent cache is off on CPU: the other processes never find process 0's entries.
    assert result['compilation_cache'] is False


@pytest.fixture(scope='module')
def two_process_run(tmp_path_factory):
  return _run_processes('train', tmp_path_factory.mktemp('two_process_run'), timeout=400)


def test_two_processes_train_identically_on_disjoint_shares(two_process_run):
  results = two_process_run
  first, second = results
  assert first['steps'] == second['steps'] == EPOCHS * TRAIN_EXAMPLES // BATCH_SIZE
  for epoch in range(EPOCHS):
    fed = [result['fed'][epoch] for result in results]
    assert len(fed[0]) == len(fed[1]) == TRAIN_EXAMPLES // 2
    assert sorted(np.concatenate(fed).tolist()) == list(range(TRAIN_EXAMPLES))
  assert first['fed'][0] != first['fed'][1]  # reshuffled every epoch
  # Every device of both processes holds the same parameters, bit for bit.
  replicas = [leaves for result in results for leaves in result['params']]
  assert len(replicas) == 2 * LOCAL_DEVICES
  for replica in replicas[1:]:
    for leaf, reference in zip(replica, replicas[0]):
      np.testing.assert_array_equal(leaf, reference)


def test_sigterm_to_one_process_stops_both_at_one_step_and_resume_is_bitwise(two_process_run,
                                                                              tmp_path):
  stopped = _run_processes('preempt', tmp_path, timeout=400)
  assert stopped[0]['preempted'] and stopped[1]['preempted']
  assert stopped[0]['step'] == stopped[1]['step'] < EPOCHS * TRAIN_EXAMPLES // BATCH_SIZE
  resumed = _run_processes('train', tmp_path, timeout=400)
  for result, uninterrupted in zip(resumed, two_process_run):
    assert result['steps'] == uninterrupted['steps']
    for replica, reference in zip(result['params'], uninterrupted['params']):
      for leaf, expected in zip(replica, reference):
        np.testing.assert_array_equal(leaf, expected)


def test_a_stop_that_cannot_finish_ends_with_one_line_and_status_1(tmp_path):
  start = time.perf_counter()
  statuses, logs = _start_processes('stuck', tmp_path, timeout=300, RESNET_JAX_STOP_TIMEOUT='15')
  assert time.perf_counter() - start < 250
  # Process 0 waits for process 1 in the save, which process 1 never makes. The first whose
  # limit comes ends with the line and status 1; the other then ends too: by its own limit, or
  # on hearing that the first is gone (a failed collective, or the coordinator's word).
  line = 'SIGTERM: the 2 processes did not finish the stop within 15 s'
  ended_by_limit = [status == 1 and line in log for status, log in zip(statuses, logs)]
  assert any(ended_by_limit), logs
  for status, log in zip(statuses, logs):
    assert status != 0, log
    if line in log:
      assert 'stopped without saving (the checkpoints already in' in log
      # Started from Python, without a command line (the line said 'command: None' before).
      assert 'resume by training the same config in the same workdir again' in log
  assert not (tmp_path / 'out0.pkl').exists() and not (tmp_path / 'out1.pkl').exists()


# What each process runs.


def _training_config():
  """configs/smoke.py (else a tiny model), on synthetic data streamed from the host."""
  from resnet_jax import defaults  # pylint: disable=g-import-not-at-top
  smoke = REPO / 'configs' / 'smoke.py'
  if smoke.is_file():
    spec = importlib.util.spec_from_file_location('smoke_config', smoke)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
  else:
    config = defaults.base_config()
    config.model.update(num_blocks=(1,), channels=(8,), kernel_sizes=(3,),
                        shortcut_kernel_sizes=(1,), stem_channels=8, se='none')
  config.data.source = 'synthetic'
  config.data.train_subset = TRAIN_EXAMPLES
  config.data.test_subset = 16
  config.eval_batch_size = 16
  config.write_plots = False
  config.keep_best_checkpoint = False
  config.data.placement = 'host'
  config.data.host_backend = 'numpy'
  config.batch_size = BATCH_SIZE
  config.drop_remainder = False
  config.num_epochs = EPOCHS
  return config


def _train(workdir: str, sigterm_process: int = -1, stuck_process: int = -1) -> dict:
  """Trains, recording the examples this process fed and its last saved parameters.

  Process `sigterm_process` sends itself SIGTERM at its first batch (as a preemption notice
  reaching one host) and waits a few seconds, so that JAX's preemption service (which polls
  for the signal) has told every process before training goes on. Process `stuck_process`
  never makes its saves.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from resnet_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import feed  # pylint: disable=g-import-not-at-top
  from resnet_jax.training import train  # pylint: disable=g-import-not-at-top

  config = _training_config()
  splits = input_pipeline.load_splits(config.data, config.seed)
  example_index = {image.tobytes(): i for i, image in enumerate(splits.train_images)}
  assert len(example_index) == TRAIN_EXAMPLES
  fed, saved = {}, {}
  host_call_batches = feed.StreamedFeed.host_call_batches

  def recording_batches(streamed_feed, epoch, start_step):
    if jax.process_index() == sigterm_process and not fed:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(4)
    for images, labels in host_call_batches(streamed_feed, epoch, start_step):
      fed.setdefault(epoch, []).extend(
          example_index[image.tobytes()] for image in images.reshape(-1, *images.shape[2:]))
      yield images, labels

  def recording_save(manager, state, meta):
    if jax.process_index() == stuck_process:
      time.sleep(3600)  # A process that never joins the save: the others wait for it.
    saved['params'] = [[np.asarray(shard.data) for shard in sorted(
        leaf.addressable_shards, key=lambda shard: shard.device.id)]
                       for leaf in jax.tree.leaves(state.params)]
    return save_checkpoint(manager, state, meta)

  save_checkpoint = checkpoints.save_checkpoint
  feed.StreamedFeed.host_call_batches = recording_batches
  checkpoints.save_checkpoint = recording_save
  results = train.train_and_evaluate(config, workdir)
  by_device = list(zip(*saved['params']))  # [device][leaf]
  return dict(steps=results.get('steps'), preempted=results['preempted'],
              step=results.get('step'), fed=[fed.get(epoch) for epoch in range(EPOCHS)],
              params=[list(leaves) for leaves in by_device])


def _worker(mode: str, out_path: str, workdir: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if mode == 'collectives':  # initialize_from_env must turn CPU collectives on if they are off
    jax.config.update('jax_cpu_collectives_implementation', None)
    console_logs.setup('main', workdir)  # as cli.parse_flags does, before the processes join
  distributed.initialize_from_env()
  distributed.initialize_from_env()  # a second call changes nothing
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  result = dict(process_index=jax.process_index(), process_count=jax.process_count(),
                device_count=jax.device_count(), local_device_count=jax.local_device_count(),
                log_path=console_logs.log_path(),
                compilation_cache=jax.config.jax_enable_compilation_cache)
  if mode == 'collectives':
    mine = 10 * jax.process_index() + np.arange(1, LOCAL_DEVICES + 1)
    result['gathered'] = np.asarray(multihost_utils.process_allgather(mine))
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))
    sharded = jax.make_array_from_process_local_data(
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data')), mine)
    total = jax.jit(jnp.sum, out_shardings=jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))(sharded)
    result['global_sum'] = int(np.asarray(total.addressable_data(0)))
  else:
    result.update(_train(os.path.join(workdir, 'run'),
                         sigterm_process=1 if mode in ('preempt', 'stuck') else -1,
                         stuck_process=1 if mode == 'stuck' else -1))
  pathlib.Path(out_path).write_bytes(pickle.dumps(result))


if __name__ == '__main__':
  sys.modules['tensorflow'] = None  # as on the GPU machines; and it starts faster
  _worker(*sys.argv[1:])
