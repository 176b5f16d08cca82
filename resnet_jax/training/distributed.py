"""Multi-host start-up: `jax.distributed` from the environment the `launch/` scripts set.

One run may span several processes (hosts, or one process per GPU); each calls
`initialize_from_env()` before any other JAX call, and `jax.process_index()` /
`jax.process_count()` then say which share of every batch it feeds. What the environment can say:

- `RESNET_JAX_COORDINATOR_ADDRESS` (host:port of process 0), `RESNET_JAX_NUM_PROCESSES`,
  `RESNET_JAX_PROCESS_ID` and optionally `RESNET_JAX_LOCAL_DEVICE_IDS` (e.g. `0` or `0,1`): set
  by `launch/gpu_multinode.sbatch` and `launch/local_gpus.sh`; all three or none.
- `RESNET_JAX_DISTRIBUTED=auto`: JAX finds the cluster itself (a Cloud TPU VM pod slice, where
  `launch/tpu_vm.sh` sets it; also SLURM, Open MPI, Kubernetes). `off`: one process, always.
- Otherwise, inside a SLURM step (`srun`) of more than one task, JAX reads SLURM's variables.
- Nothing of the above: one process, and `initialize_from_env()` does nothing.

Each process of a multi-process run writes its own log file: process 0 `<command>.log`, process
i `<command>.process<i>.log`, side by side in the workdir that all hosts share.
"""

import contextlib
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import jax

from resnet_jax import console_logs
from resnet_jax.errors import UserError

COORDINATOR_ADDRESS = 'RESNET_JAX_COORDINATOR_ADDRESS'
NUM_PROCESSES = 'RESNET_JAX_NUM_PROCESSES'
PROCESS_ID = 'RESNET_JAX_PROCESS_ID'
LOCAL_DEVICE_IDS = 'RESNET_JAX_LOCAL_DEVICE_IDS'
DISTRIBUTED = 'RESNET_JAX_DISTRIBUTED'
STOP_TIMEOUT = 'RESNET_JAX_STOP_TIMEOUT'
DEFAULT_STOP_TIMEOUT_SECONDS = 600
EXPLICIT_VARIABLES = (COORDINATOR_ADDRESS, NUM_PROCESSES, PROCESS_ID)


def _int_variable(environ: Mapping[str, str], name: str, minimum: int) -> int:
  value = environ[name]
  try:
    number = int(value)
  except ValueError:
    number = minimum - 1
  if number < minimum:
    raise UserError(f'{name}={value!r} is not an integer >= {minimum}: fix or unset it.')
  return number


def _explicit_settings(environ: Mapping[str, str]) -> dict[str, Any]:
  """The arguments the RESNET_JAX_* variables give, checked."""
  missing = [name for name in EXPLICIT_VARIABLES if not environ.get(name)]
  if missing:
    given = [name for name in EXPLICIT_VARIABLES if name not in missing]
    raise UserError(f'{", ".join(given)} set but {", ".join(missing)} not: set all of '
                    f'{", ".join(EXPLICIT_VARIABLES)} (the launch/ scripts do) or none.')
  address = environ[COORDINATOR_ADDRESS]
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise UserError(f'{COORDINATOR_ADDRESS}={address!r} is not host:port, '
                    'e.g. 10.0.0.1:12355 (the address of process 0).')
  num_processes = _int_variable(environ, NUM_PROCESSES, 1)
  process_id = _int_variable(environ, PROCESS_ID, 0)
  if process_id >= num_processes:
    raise UserError(f'{PROCESS_ID}={process_id} is not below {NUM_PROCESSES}={num_processes}: '
                    f'number the processes 0 to {num_processes - 1}.')
  local_device_ids = None
  if ids := environ.get(LOCAL_DEVICE_IDS, '').strip():
    try:
      local_device_ids = [int(i) for i in ids.split(',')]
    except ValueError:
      raise UserError(f'{LOCAL_DEVICE_IDS}={ids!r} is not a comma-separated list of device '
                      'numbers, e.g. 0 or 0,1: fix or unset it.') from None
  # 'deactivate': the variables say everything; JAX's own cluster detection would otherwise
  # pin a one-process-per-node SLURM task to a single GPU.
  return dict(coordinator_address=address, num_processes=num_processes, process_id=process_id,
              local_device_ids=local_device_ids, cluster_detection_method='deactivate')


def distributed_settings(environ: Mapping[str, str]) -> dict[str, Any] | None:
  """The keyword arguments for `jax.distributed.initialize` that `environ` asks for.

  Args:
    environ: the environment, e.g. `os.environ`.

  Returns:
    None for a single process; else the arguments (`{}` lets JAX detect the cluster).

  Raises:
    UserError: the variables are incomplete, malformed or contradict each other.
  """
  mode = environ.get(DISTRIBUTED, '').strip().lower()
  if mode not in ('', 'auto', 'off'):
    raise UserError(f'{DISTRIBUTED}={environ[DISTRIBUTED]!r} is not one of auto, off: '
                    'fix or unset it.')
  explicit = any(environ.get(name) for name in EXPLICIT_VARIABLES)
  if mode == 'off':
    return None
  if mode == 'auto':
    if explicit:
      raise UserError(f'{DISTRIBUTED}=auto and {COORDINATOR_ADDRESS}/{NUM_PROCESSES}/'
                      f'{PROCESS_ID} are both set: unset one of them.')
    return {}
  if explicit:
    settings = _explicit_settings(environ)
    return settings if settings['num_processes'] > 1 else None
  if int(environ.get('SLURM_STEP_NUM_TASKS', '1') or '1') > 1:
    return dict(cluster_detection_method='slurm')
  return None


def initialize_from_env() -> None:
  """Joins this process to its multi-process run, if the environment describes one.

  Call it first, before any other JAX call. A no-op for a single process and when
  `jax.distributed` is already initialised. On CPU, processes exchange data through Gloo.

  Raises:
    UserError: the environment's settings are incomplete or malformed.
  """
  settings = distributed_settings(os.environ)
  if settings is None or jax.distributed.is_initialized():
    return
  # Without CPU collectives (None) a multi-process CPU computation fails; a choice (Gloo, JAX's
  # default, or MPI) stays.
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**settings)
  console_logs.name_log_for_process(jax.process_index())
  if jax.process_count() > 1 and jax.devices()[0].platform == 'cpu':
    # On CPU the persistent cache's key holds each process's own devices: process 0 reads the
    # executables it wrote, every other process compiles its own, and on jax 0.12 the two
    # kinds wait for each other forever in their first collective. Nothing is lost: only
    # process 0 could ever read the cache.
    jax.config.update('jax_enable_compilation_cache', False)


def stop_timeout_seconds(environ: Mapping[str, str]) -> int:
  """How long a stop of several processes may take, in seconds (`RESNET_JAX_STOP_TIMEOUT`)."""
  if not environ.get(STOP_TIMEOUT, '').strip():
    return DEFAULT_STOP_TIMEOUT_SECONDS
  return _int_variable(environ, STOP_TIMEOUT, 1)


@contextlib.contextmanager
def deadline(seconds: float, line: str) -> Iterator[None]:
  """Ends the process, printing `line` and exiting with status 1, if the block outlasts seconds.

  For a wait on other processes that may never come (one died, or waits in a collective that
  the others never enter): the process ends at once, without waiting for its threads or
  the computations in flight; checkpoints are written atomically, so the last one is kept.
  """
  def watch(done: threading.Event):
    if not done.wait(seconds):
      print(line, file=sys.stderr, flush=True)
      os._exit(1)  # pylint: disable=protected-access  # The main thread may never return.

  with console_logs.watched(watch, 'deadline'):
    yield
