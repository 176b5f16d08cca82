"""JAX's persistent compilation cache, on for every command.

A GPU compile of the seed-000 model takes about a minute, and XLA's GPU autotuning times its
kernels again for every new shape. With the cache, a resumed, preempted or repeated run with the
same shapes compiles in seconds. Every command turns it on as it parses its flags
(`cli.parse_flags`), in one folder per user:

- `$RESNET_JAX_COMPILATION_CACHE`, where set: a folder (or a `gs://` URL that several hosts share),
  or `off` to turn the cache off;
- else `$JAX_COMPILATION_CACHE_DIR`, jax's own variable, where set;
- else `$XDG_CACHE_HOME/resnet_jax/jax` (`~/.cache/resnet_jax/jax`).

XLA's GPU autotuning results are cached in the same folder where the installed jax supports it
(`jax_persistent_cache_enable_xla_caches`, on by default since jax 0.4.31). jax's own thresholds
apply (`JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`, 1 s by default: quick compiles are not kept).
"""

import os
from typing import Mapping, Optional

from absl import logging

ENV_VAR = 'RESNET_JAX_COMPILATION_CACHE'
OFF = ('off', 'none', '0', 'false')


def cache_dir(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """The cache folder the environment asks for (see the module docstring), None for `off`."""
  environ = os.environ if environ is None else environ
  chosen = environ.get(ENV_VAR, '').strip()
  if chosen.lower() in OFF:
    return None
  if chosen:
    return chosen
  if environ.get('JAX_COMPILATION_CACHE_DIR'):
    return environ['JAX_COMPILATION_CACHE_DIR']
  base = environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'resnet_jax', 'jax')


def enable(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """Points jax's persistent cache at `cache_dir()`; the folder, or None (off or unusable)."""
  import jax  # pylint: disable=g-import-not-at-top  # Only once a command runs.
  folder = cache_dir(environ)
  if folder is None:
    return None
  if '://' not in folder:
    try:
      os.makedirs(folder, exist_ok=True)
    except OSError as e:
      logging.warning('compilation cache off: %s cannot be made (%s); set %s to a writable '
                      'folder, or to off', folder, e.strerror or e, ENV_VAR)
      return None
  jax.config.update('jax_compilation_cache_dir', folder)
  return folder
