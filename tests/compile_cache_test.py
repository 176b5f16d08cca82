"""compile_cache: where the persistent compilation cache goes, and that every command turns it on."""

import os
import subprocess
import sys

import pytest

from resnet_jax import compile_cache

from conftest import REPO  # pylint: disable=g-bad-import-order


@pytest.mark.parametrize('environ,expected', [
    ({'HOME': '/home/u'}, '/home/u/.cache/resnet_jax/jax'),
    ({'HOME': '/home/u', 'XDG_CACHE_HOME': '/c'}, '/c/resnet_jax/jax'),
    ({'HOME': '/home/u', 'JAX_COMPILATION_CACHE_DIR': '/j'}, '/j'),
    ({'JAX_COMPILATION_CACHE_DIR': '/j', 'RESNET_JAX_COMPILATION_CACHE': '/r'}, '/r'),
    ({'JAX_COMPILATION_CACHE_DIR': '/j', 'RESNET_JAX_COMPILATION_CACHE': 'off'}, None),
    ({'RESNET_JAX_COMPILATION_CACHE': 'gs://bucket/cache'}, 'gs://bucket/cache'),
])
def test_cache_dir_follows_the_environment(monkeypatch, environ, expected):
  monkeypatch.setattr(os.path, 'expanduser', lambda path: path.replace('~', environ.get('HOME', '~')))
  assert compile_cache.cache_dir(environ) == expected


# A command's flag parsing, then one compile: the cache folder it names must receive the entry.
_PARSE_AND_COMPILE = (
    'import sys; from resnet_jax import cli; '
    "cli.parse_flags([sys.argv[0], '--workdir=' + sys.argv[1]], require_config=False); "
    'import jax; print(jax.config.jax_compilation_cache_dir); '
    'jax.jit(lambda x: x * 2 + 1)(jax.numpy.arange(3.0)).block_until_ready()')


@pytest.mark.parametrize('setting', ['folder', 'off'])
def test_every_command_turns_the_cache_on_unless_told_off(tmp_path, setting):
  folder = tmp_path / 'cache'
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env.update(JAX_PLATFORMS='cpu', JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             RESNET_JAX_COMPILATION_CACHE=str(folder) if setting == 'folder' else 'off',
             HOME=str(tmp_path))
  out = subprocess.run([sys.executable, '-c', _PARSE_AND_COMPILE, str(tmp_path / 'run')],
                       env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=120, check=True).stdout
  if setting == 'folder':
    assert out.strip() == str(folder)
    assert any(folder.iterdir())
  else:
    assert out.strip() == 'None'
    assert not folder.exists() and not (tmp_path / '.cache').exists()
