"""The launch/ scripts: what --dry-run prints, and what the local and SLURM ones really start.

Real runs use a fake `python` (and a fake `srun`) that record what each process was given.
"""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parent.parent / 'launch'
SCRIPTS = ('local_gpus.sh', 'gpu_multinode.sbatch', 'tpu_vm.sh')
MAIN = ['-m', 'resnet_jax.main']
GPU_CHECK = ['-m', 'resnet_jax.platform_check', '--expect=gpu']
EXTRAS = tomllib.loads((LAUNCH.parent / 'pyproject.toml').read_text())['project'][
    'optional-dependencies']

# Records argv and the distributed variables as one line per process: fake python's output.
# The GPU check passes (NO_GPU=1: fails as the real one does on a machine without a GPU).
FAKE_PYTHON = """#!/usr/bin/env bash
if [[ $2 == resnet_jax.platform_check ]]; then
  if [[ -n ${NO_GPU:-} ]]; then echo 'error: jax finds no GPU (fake)' >&2; exit 2; fi
  exit 0
fi
id="${RESNET_JAX_PROCESS_ID:-single}"
printf '%s\\n' "gpu=${CUDA_VISIBLE_DEVICES:-}" "coordinator=${RESNET_JAX_COORDINATOR_ADDRESS:-}" \
  "num=${RESNET_JAX_NUM_PROCESSES:-}" "local=${RESNET_JAX_LOCAL_DEVICE_IDS:-}" "$@" \
  > "$RECORD_DIR/$id"
if [[ $id == "${FAIL_PROCESS:-}" ]]; then
  until [[ -e $RECORD_DIR/0 ]]; do sleep 0.1; done
  exit 3
fi
if [[ -n ${SLEEP:-} ]]; then exec sleep "$SLEEP"; fi
"""

# Runs the step's command once per task, as srun does, with SLURM's per-task variables.
FAKE_SRUN = """#!/usr/bin/env bash
per_node=1
while [[ $1 == --* ]]; do
  case "$1" in --ntasks=*) ntasks="${1#*=}" ;; --ntasks-per-node=*) per_node="${1#*=}" ;; esac
  shift
done
for ((i = 0; i < ntasks; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$((i % per_node)) "$@" || exit $?
done
"""

# Lists the allocation's hosts, and only for the query the script should make.
FAKE_SCONTROL = """#!/usr/bin/env bash
[[ "$1 $2 $3" == "show hostnames gpu-[07-08]" ]] || exit 9
printf 'gpu-07\\ngpu-08\\n'
"""

SLURM_ENV = dict(SLURM_JOB_ID='123456', SLURM_JOB_NODELIST='gpu-[07-08]', SLURM_JOB_NUM_NODES='2',
                 SLURM_GPUS_ON_NODE='4')


def executable(path: pathlib.Path, text: str) -> pathlib.Path:
  path.write_text(text)
  path.chmod(0o755)
  return path


@pytest.fixture
def fakes(tmp_path):
  """A bin/ of fake scontrol and srun, a fake python, and the folder it records into."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  executable(bin_dir / 'scontrol', FAKE_SCONTROL)
  executable(bin_dir / 'srun', FAKE_SRUN)
  python = executable(tmp_path / 'fake_python', FAKE_PYTHON)
  records = tmp_path / 'records'
  records.mkdir()
  return dict(bin=bin_dir, python=python, records=records)


def launch(script, *args, env=None, bin_dir=None, check=True):
  """Runs a launch script with a clean environment plus `env`; returns the CompletedProcess."""
  path = os.environ['PATH'] if bin_dir is None else f'{bin_dir}:{os.environ["PATH"]}'
  full_env = dict(PATH=path, HOME=os.environ.get('HOME', '/tmp'), **(env or {}))
  result = subprocess.run(['bash', str(LAUNCH / script), *args], env=full_env,
                          capture_output=True, text=True, timeout=60)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def dry_run(script, *args, **kwargs):
  """The commands a --dry-run prints, each split into argv as the shell would."""
  out = launch(script, '--dry-run', *args, **kwargs).stdout
  return [shlex.split(line) for line in out.splitlines() if not line.startswith('#')]


def records(folder):
  return {path.name: path.read_text().splitlines() for path in folder.iterdir()}


# local_gpus.sh


def test_local_one_process_passes_config_workdir_and_overrides():
  commands = dry_run('local_gpus.sh', '--config', 'configs/smoke.py', '--workdir', '/runs/a b',
                     '--config.num_epochs=3', "--config.model.num_blocks=(2, 2)", '--',
                     '--other=it\'s')
  assert commands == [['python3', *GPU_CHECK],
                      ['python3', *MAIN, '--config=configs/smoke.py', '--workdir=/runs/a b',
                       '--config.num_epochs=3', '--config.model.num_blocks=(2, 2)',
                       "--other=it's"]]


def test_local_process_per_gpu_numbers_processes_and_gpus():
  check, *commands = dry_run('local_gpus.sh', '--workdir=/runs/x', '--process-per-gpu',
                             '--num-gpus', '3', '--port', '2345',
                             env=dict(RESNET_JAX_PYTHON='/venv/bin/python'))
  assert check == ['/venv/bin/python', *GPU_CHECK]
  assert commands[-1] == ['wait']
  assert len(commands) == 4
  for gpu, command in enumerate(commands[:3]):
    assert command == ['env', f'CUDA_VISIBLE_DEVICES={gpu}',
                       'RESNET_JAX_COORDINATOR_ADDRESS=127.0.0.1:2345',
                       'RESNET_JAX_NUM_PROCESSES=3', f'RESNET_JAX_PROCESS_ID={gpu}',
                       '/venv/bin/python', *MAIN, '--config=configs/best.py',
                       '--workdir=/runs/x', '&']


def test_local_process_per_gpu_dry_run_counts_gpus_or_is_told_never_guesses(tmp_path):
  # PATH without nvidia-smi: bash and the core tools only.
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for tool in ('bash', 'env', 'dirname', 'printf', 'cat'):
    found = shutil.which(tool)
    if found:
      (bin_dir / tool).symlink_to(found)
  command = ['bash', str(LAUNCH / 'local_gpus.sh'), '--dry-run', '--process-per-gpu',
             '--workdir=w']
  result = subprocess.run(command, env=dict(PATH=str(bin_dir)), capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 2 and not result.stdout
  assert result.stderr.splitlines() == [
      'local_gpus.sh: nvidia-smi not found, so the GPUs cannot be counted: pass --num-gpus N']
  told = subprocess.run(command + ['--num-gpus=3'], env=dict(PATH=str(bin_dir)),
                        capture_output=True, text=True, timeout=60)
  assert told.returncode == 0, told.stderr
  assert len([line for line in told.stdout.splitlines() if 'RESNET_JAX_PROCESS_ID=' in line]) == 3


def test_local_requires_workdir_and_a_gpu_count():
  result = launch('local_gpus.sh', '--dry-run', check=False)
  assert result.returncode == 2 and '--workdir is required' in result.stderr
  result = launch('local_gpus.sh', '--dry-run', '--workdir=w', '--process-per-gpu',
                  '--num-gpus=0', check=False)
  assert result.returncode == 2 and 'positive integer' in result.stderr


def test_local_process_per_gpu_really_starts_every_process(fakes):
  launch('local_gpus.sh', '--workdir=/runs/x', '--process-per-gpu', '--num-gpus=2',
         '--port=2345', '--config.seed=4', env=dict(RESNET_JAX_PYTHON=str(fakes['python']),
                                                   RECORD_DIR=str(fakes['records'])))
  got = records(fakes['records'])
  assert sorted(got) == ['0', '1']
  for process in ('0', '1'):
    assert got[process] == [f'gpu={process}', 'coordinator=127.0.0.1:2345', 'num=2', 'local=',
                            *MAIN, '--config=configs/best.py', '--workdir=/runs/x',
                            '--config.seed=4']


def test_local_one_failing_process_stops_the_others(fakes):
  start = time.monotonic()
  result = launch('local_gpus.sh', '--workdir=/runs/x', '--process-per-gpu', '--num-gpus=2',
                  env=dict(RESNET_JAX_PYTHON=str(fakes['python']),
                           RECORD_DIR=str(fakes['records']), FAIL_PROCESS='1', SLEEP='30'),
                  check=False)
  assert result.returncode != 0
  assert time.monotonic() - start < 20  # process 0 was stopped, not waited for
  assert sorted(records(fakes['records'])) == ['0', '1']


# gpu_multinode.sbatch


def test_slurm_one_process_per_gpu(fakes):
  check, command = dry_run('gpu_multinode.sbatch', '--workdir', '/shared/run', '--config',
                           'configs/smoke.py', '--config.batch_size=512', env=SLURM_ENV,
                           bin_dir=fakes['bin'])
  assert check == ['srun', '--nodes=1', '--ntasks=1', 'python3', *GPU_CHECK]  # on a GPU node
  port = 20000 + 123456 % 10000
  split = command.index('bash')
  assert command[:split] == ['srun', '--nodes=2', '--ntasks=8', '--ntasks-per-node=4',
                             '--kill-on-bad-exit=1', 'env',
                             f'RESNET_JAX_COORDINATOR_ADDRESS=gpu-07:{port}',
                             'RESNET_JAX_NUM_PROCESSES=8']
  assert 'RESNET_JAX_LOCAL_DEVICE_IDS=$SLURM_LOCALID' in command[split + 2]
  assert command[split + 4:] == ['python3', *MAIN, '--config=configs/smoke.py',
                                 '--workdir=/shared/run', '--config.batch_size=512']


def test_slurm_one_process_per_node_sees_every_gpu(fakes):
  [command] = dry_run('gpu_multinode.sbatch', '--workdir=/shared/run', '--port=3000',
                      '--allow-cpu', env=dict(SLURM_ENV, RESNET_JAX_PROCESS_PER='node'),
                      bin_dir=fakes['bin'])
  assert command[1:9] == ['--nodes=2', '--ntasks=2', '--ntasks-per-node=1', '--kill-on-bad-exit=1',
                          'env', 'RESNET_JAX_COORDINATOR_ADDRESS=gpu-07:3000',
                          'RESNET_JAX_NUM_PROCESSES=2', 'bash']
  assert 'LOCAL_DEVICE_IDS' not in command[10]


def test_slurm_tasks_get_their_process_and_device_ids(fakes):
  launch('gpu_multinode.sbatch', '--workdir=/shared/run', '--gpus-per-node=2', '--port=3000',
         '--', '--config.seed=1',
         env=dict(SLURM_ENV, RESNET_JAX_PYTHON=str(fakes['python']),
                  RECORD_DIR=str(fakes['records'])), bin_dir=fakes['bin'])
  got = records(fakes['records'])
  assert sorted(got) == ['0', '1', '2', '3']
  for process in range(4):
    assert got[str(process)] == ['gpu=', 'coordinator=gpu-07:3000', 'num=4',
                                 f'local={process % 2}', *MAIN, '--config=configs/best.py',
                                 '--workdir=/shared/run', '--config.seed=1']


@pytest.mark.parametrize('env, args, message', [
    ({}, (), 'not inside a SLURM allocation'),
    (dict(SLURM_ENV, SLURM_GPUS_ON_NODE=''), (), '--gpus-per-node'),
    (SLURM_ENV, ('--process-per=socket',), 'gpu or node'),
])
def test_slurm_mistakes_are_one_line(fakes, env, args, message):
  result = launch('gpu_multinode.sbatch', '--dry-run', '--workdir=w', *args, env=env,
                  bin_dir=fakes['bin'], check=False)
  assert result.returncode == 2 and message in result.stderr and not result.stdout


# tpu_vm.sh


def remote_command(command):
  """The argv of the --command=... that a gcloud ssh line runs on every worker."""
  [remote] = [word[len('--command='):] for word in command if word.startswith('--command=')]
  return remote


def test_tpu_creates_copies_installs_and_trains_on_all_workers():
  commands = dry_run('tpu_vm.sh', '--name', 'tpu1', '--project', 'proj', '--zone', 'us-east5-a',
                     '--accelerator-type', 'v5litepod-16', '--spot', '--workdir', 'gs://bkt/run',
                     '--config', 'configs/smoke.py', '--config.num_epochs=2', '--',
                     '--config.seed=7')
  scope = ['--zone=us-east5-a', '--project=proj']
  tpu = ['gcloud', 'compute', 'tpus', 'tpu-vm']
  create, tar, scp, setup, train = commands
  assert create == [*tpu, 'create', 'tpu1', *scope, '--accelerator-type=v5litepod-16',
                    '--version=v2-alpha-tpuv5-lite', '--spot']
  assert tar[0] == 'tar' and tar[-3:] == ['-C', str(LAUNCH.parent), '.']
  assert scp == [*tpu, 'scp', tar[tar.index('-czf') + 1], 'tpu1:resnet-jax.tar.gz', *scope,
                 '--worker=all']
  assert setup[:7 + len(scope)] == [*tpu, 'ssh', 'tpu1', *scope, '--worker=all']
  assert 'tar -xzf resnet-jax.tar.gz' in remote_command(setup)
  assert "uv pip install --python=resnet-jax-venv/bin/python './resnet-jax[tpu,gcs]'" in (
      remote_command(setup))
  assert train[:-1] == setup[:-1]
  cd, run = remote_command(train).split(' && ')
  assert cd == 'cd resnet-jax'
  assert shlex.split(run) == ['RESNET_JAX_DISTRIBUTED=auto', '../resnet-jax-venv/bin/python',
                              *MAIN, '--config=configs/smoke.py', '--workdir=gs://bkt/run',
                              '--config.num_epochs=2', '--config.seed=7']


def test_tpu_settings_from_environment_git_clone_and_delete_after():
  env = dict(RESNET_JAX_TPU_NAME='envtpu', RESNET_JAX_ZONE='europe-west4-a',
             RESNET_JAX_ACCELERATOR_TYPE='v4-32', RESNET_JAX_TPU_VERSION='tpu-ubuntu2204-base',
             RESNET_JAX_WORKDIR='gs://bkt/env', RESNET_JAX_CONFIG='configs/best.py')
  commands = dry_run('tpu_vm.sh', '--git', 'https://example.com/r.git', '--git-ref', 'v1',
                     '--delete-after', env=env)
  create, setup, train, delete = commands
  assert create[4:] == ['create', 'envtpu', '--zone=europe-west4-a', '--accelerator-type=v4-32',
                        '--version=tpu-ubuntu2204-base']
  assert 'git clone --depth=1 --branch=v1 https://example.com/r.git resnet-jax' in (
      remote_command(setup))
  assert '--worker=all' in setup and '--worker=all' in train
  assert '--workdir=gs://bkt/env' in remote_command(train)
  assert delete == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'envtpu',
                    '--zone=europe-west4-a', '--quiet']


def test_tpu_skip_setup_only_creates_and_trains():
  commands = dry_run('tpu_vm.sh', '--skip-setup', '--workdir=gs://bkt/run')
  assert [command[4] for command in commands] == ['create', 'ssh']


def test_tpu_delete_runs_nothing_else():
  commands = dry_run('tpu_vm.sh', '--delete', '--name=tpu1', '--project=proj')
  assert commands == [['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'tpu1', '--project=proj',
                       '--quiet']]


def test_tpu_workdir_must_be_a_bucket():
  result = launch('tpu_vm.sh', '--dry-run', '--workdir=/tmp/run', check=False)
  assert result.returncode == 2 and 'gs://' in result.stderr and not result.stdout


# Accelerator builds: the extras, and the GPU check


def test_pyproject_has_an_extra_for_each_accelerator_and_for_bucket_workdirs():
  for extra in ('cuda12', 'cuda13', 'tpu'):
    assert [r.split('>')[0] for r in EXTRAS[extra]] == [f'jax[{extra}]'], extra
  assert EXTRAS['gcs'] == ['etils[epath-gcs]']  # gcsfs, for etils.epath and TensorBoard


def test_tpu_installs_its_extras():
  setup = dry_run('tpu_vm.sh', '--workdir=gs://bkt/run')[3]
  [extras] = re.findall(r"\./resnet-jax\[([a-z0-9,]+)\]", remote_command(setup))
  assert extras.split(',') == ['tpu', 'gcs'] and {'tpu', 'gcs'} <= set(EXTRAS)


@pytest.mark.parametrize('script, env', [('local_gpus.sh', {}),
                                         ('gpu_multinode.sbatch', SLURM_ENV)])
def test_gpu_launchers_start_nothing_where_jax_has_no_gpu(fakes, script, env):
  env = dict(env, RESNET_JAX_PYTHON=str(fakes['python']), RECORD_DIR=str(fakes['records']),
             NO_GPU='1')
  result = launch(script, '--workdir=/runs/x', env=env, bin_dir=fakes['bin'], check=False)
  assert result.returncode == 2 and not records(fakes['records'])
  assert result.stderr.splitlines() == [
      f'{script}: jax finds no GPU (fake); --allow-cpu starts it on the CPU anyway']
  launch(script, '--workdir=/runs/x', '--allow-cpu', env=env, bin_dir=fakes['bin'])
  assert records(fakes['records'])
  commands = dry_run(script, '--workdir=/runs/x', env=dict(env, RESNET_JAX_ALLOW_CPU='true'),
                     bin_dir=fakes['bin'])
  assert not any(GPU_CHECK[1] in command for command in commands)


def test_the_gpu_check_names_the_extra_to_install(tmp_path):
  env = dict(RESNET_JAX_PYTHON=sys.executable, JAX_PLATFORMS='cpu', PYTHONPATH=str(LAUNCH.parent))
  result = launch('local_gpus.sh', f'--workdir={tmp_path}', env=env, check=False)
  assert result.returncode == 2, result.stderr
  [line] = result.stderr.splitlines()
  assert line.startswith('local_gpus.sh: jax finds no GPU (its default backend is cpu): install '
                         "a CUDA jax with pip install -e '.[cuda13]'"), line
  assert line.endswith('--allow-cpu starts it on the CPU anyway')
  assert set(re.findall(r"'\.\[(\w+)\]'", line)) == {'cuda13', 'cuda12'} <= set(EXTRAS)
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize('script', SCRIPTS)
def test_usage_and_unknown_flags(script):
  assert 'Usage:' in launch(script, '--help').stdout
  result = launch(script, '--bogus', check=False)
  assert result.returncode == 2 and 'unknown argument: --bogus' in result.stderr


@pytest.mark.skipif(shutil.which('shellcheck') is None, reason='shellcheck not installed')
def test_shellcheck_clean():
  scripts = [f'launch/{script}' for script in (*SCRIPTS, 'common.sh')]
  result = subprocess.run(['shellcheck', '-x', *scripts], cwd=LAUNCH.parent,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout
