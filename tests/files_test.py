"""files: a file is written whole or not at all."""

import os

import pytest

from resnet_jax import files


def test_write_atomic_writes_text_and_bytes_with_the_usual_mode(tmp_path):
  files.write_atomic(tmp_path / 'a.txt', 'é\n')
  files.write_atomic(str(tmp_path / 'b.bin'), b'\x00\x01')
  assert (tmp_path / 'a.txt').read_text(encoding='utf-8') == 'é\n'
  assert (tmp_path / 'b.bin').read_bytes() == b'\x00\x01'
  umask = os.umask(0o022)
  os.umask(umask)
  assert (tmp_path / 'a.txt').stat().st_mode & 0o777 == 0o666 & ~umask
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a.txt', 'b.bin']


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch):
  path = tmp_path / 'results.json'
  path.write_text('old')

  def full_disk(fd):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(os, 'fsync', full_disk)
  with pytest.raises(OSError, match='No space left'):
    files.write_atomic(path, 'new, longer than the old')
  assert path.read_text() == 'old'
  assert [p.name for p in tmp_path.iterdir()] == ['results.json']
