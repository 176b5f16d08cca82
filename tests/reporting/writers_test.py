"""Writers: TensorBoard events and metrics.jsonl, with and without TensorFlow, local or gs://."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from resnet_jax import files
from resnet_jax.errors import UserError
from resnet_jax.reporting import writers

from conftest import fake_bucket  # pylint: disable=g-bad-import-order

TESTS = pathlib.Path(__file__).resolve().parents[1]  # conftest.py, which the child imports


# Runs in a fresh interpreter. Without TensorFlow (argv[4] == 'no_tf'), `import tensorflow`
# fails, as on the GPU machines; either way gcsfs does too, so that gs:// has no file system for
# TensorBoard's events. TensorFlow must not be imported where it is installed either.
_WRITE_EVENTS = textwrap.dedent("""
    import sys
    if sys.argv[4] == 'no_tf':
      sys.modules['tensorflow'] = None
    sys.modules['gcsfs'] = None
    sys.path.insert(0, sys.argv[3])
    import numpy as np
    from resnet_jax.reporting import writers
    import clu.periodic_actions  # imports clu.metric_writers, which needs TF unless shimmed
    from conftest import fake_bucket
    imported = lambda: {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}
    assert 'tensorflow' not in imported()
    with fake_bucket(sys.argv[2]):
      w = writers.create_writer(sys.argv[1], is_main=True)
      w.write_scalars(3, {'loss': 0.25, 'accuracy': 0.5})
      w.write_scalars(7, {'loss': 0.125})
      w.write_images(7, {'grid': np.zeros((4, 4, 3), np.uint8)})
      w.write_histograms(7, {'w': np.arange(100.0)})
      w.write_texts(7, {'note': 'hello'})
      w.close()
    assert 'tensorflow' not in imported()
""")


def _tensorboard_scalars(logdir):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={'scalars': 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}, acc


def _write_events(workdir, bucket, tmp_path, tensorflow='no_tf'):
  env = dict(os.environ, TMPDIR=str(tmp_path))
  return subprocess.run(
      [sys.executable, '-c', _WRITE_EVENTS, str(workdir), str(bucket), str(TESTS), tensorflow],
      capture_output=True, text=True, timeout=120, env=env)


def _assert_written(logdir, metrics_file):
  scalars, acc = _tensorboard_scalars(logdir)
  assert scalars['loss'] == [(3, 0.25), (7, 0.125)]
  assert scalars['accuracy'] == [(3, 0.5)]
  assert acc.Tags()['histograms'] == ['w']
  assert acc.Histograms('w')[0].histogram_value.num == 100
  assert acc.Tags()['images'] == ['grid']
  records = writers.read_jsonl(metrics_file)
  assert [(r['step'], r['loss']) for r in records] == [(3, 0.25), (7, 0.125)]
  assert records[0]['accuracy'] == 0.5


def test_tensorflow_free_writer_writes_events_and_jsonl(tmp_path):
  result = _write_events(tmp_path / 'run', tmp_path / 'bucket', tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  _assert_written(tmp_path / 'run' / 'tensorboard', tmp_path / 'run' / 'metrics.jsonl')


def test_gs_workdir_without_tensorflow_keeps_events_on_this_machine(tmp_path):
  bucket, local = tmp_path / 'bucket', tmp_path / 'local'
  local.mkdir()
  result = _write_events('gs://bucket/run', bucket, local)
  assert result.returncode == 0, result.stderr[-2000:]
  (logdir,) = local.glob('resnet_jax_tensorboard_*')
  assert f'TensorBoard events go to {logdir} on this machine' in result.stderr
  assert 'gs://bucket/run/tensorboard' in result.stderr
  _assert_written(logdir, bucket / 'run' / 'metrics.jsonl')
  assert not (bucket / 'run' / 'tensorboard').exists()


def test_jsonl_is_rewritten_whole_and_keeps_a_resumed_runs_lines(tmp_path):
  with fake_bucket(tmp_path):
    path = 'gs://bucket/run/metrics.jsonl'
    files.as_path('gs://bucket/run').mkdir(parents=True, exist_ok=True)
    first = writers.JsonLinesWriter(path)
    first.write_scalars(1, {'loss': np.float32(1.5)})
    first.flush()
    assert [r['loss'] for r in writers.read_jsonl(path)] == [1.5]
    first.write_scalars(2, {'loss': 1.25})
    first.close()
    resumed = writers.JsonLinesWriter(path)
    resumed.write_scalars(3, {'loss': 1.0})
    resumed.close()
    assert [(r['step'], r['loss']) for r in writers.read_jsonl(path)] == [(1, 1.5), (2, 1.25),
                                                                          (3, 1.0)]
  assert len((tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()) == 3


def test_a_flush_that_fails_leaves_the_previous_history(tmp_path, monkeypatch):
  path = tmp_path / 'metrics.jsonl'
  writer = writers.JsonLinesWriter(path)
  writer.write_scalars(1, {'loss': 2.0})
  writer.flush()
  writer.write_scalars(2, {'loss': 1.0})
  monkeypatch.setattr(os, 'replace', lambda *args: (_ for _ in ()).throw(OSError(28, 'full')))
  with pytest.raises(OSError):
    writer.flush()  # Was a rewrite in place: a crash here truncated or emptied the history.
  assert [r['step'] for r in writers.read_jsonl(path)] == [1]


def test_a_resume_repairs_a_torn_last_line_and_says_so(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
  assert [r['step'] for r in writers.read_jsonl(path)] == [1, 2]  # Was a JSONDecodeError.
  with absltest_logs() as logged:
    resumed = writers.JsonLinesWriter(path)
  assert 'dropped 1 torn line(s) left by an earlier crash; the 2 whole records are kept' in (
      logged.output[0])
  assert path.read_text().count('\n') == 2  # Repaired on disk at once.
  resumed.write_scalars(3, {'loss': 1.0})
  resumed.close()
  assert [r['step'] for r in writers.read_jsonl(path)] == [1, 2, 3]


def absltest_logs():
  """Captures absl's log records (what a run prints as warnings)."""
  import unittest  # pylint: disable=g-import-not-at-top
  return unittest.TestCase().assertLogs('absl', level='WARNING')


def test_as_path_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(files.as_path('gs://bucket/runs/best')) == 'gs://bucket/runs/best'
  assert str(files.as_path('runs/best')) == str(tmp_path / 'runs' / 'best')
  assert files.is_url('gs://bucket/x') and not files.is_url(tmp_path)
  assert writers.tensorboard_dir('runs/best') == str(tmp_path / 'runs' / 'best' / 'tensorboard')


def test_non_main_process_writes_no_files(tmp_path):
  w = writers.create_writer(str(tmp_path / 'w'), is_main=False)
  w.write_scalars(1, {'loss': np.float32(1.5)})
  w.close()
  assert not (tmp_path / 'w').exists()


def test_where_tensorflow_is_installed_the_writer_still_never_imports_it(tmp_path):
  # Its import would add seconds to every run's start.
  pytest.importorskip('tensorflow')
  result = _write_events(tmp_path / 'run', tmp_path / 'bucket', tmp_path, tensorflow='tf')
  assert result.returncode == 0, result.stderr[-2000:]
  _assert_written(tmp_path / 'run' / 'tensorboard', tmp_path / 'run' / 'metrics.jsonl')


def test_check_writable_accepts_folders_it_can_create_and_files_in_existing_folders(tmp_path):
  files.check_writable(tmp_path, '--workdir')
  files.check_writable(tmp_path / 'new' / 'run', '--workdir')
  files.check_writable(tmp_path / 'out.json', '--output', is_file=True)
  files.check_writable('gs://bucket/run', '--workdir')  # Left to the store.
  assert list(tmp_path.iterdir()) == []  # Nothing created, the probe removed.


@pytest.mark.parametrize('relative, is_file, message', [
    ('file.txt/run', False, 'file.txt is a file, not a folder'),
    ('missing/out.json', True, 'the folder {tmp_path}/missing does not exist; create it first'),
    ('.', True, 'is a folder; give a file name'),
])
def test_check_writable_refuses_in_one_line(tmp_path, relative, is_file, message):
  (tmp_path / 'file.txt').write_text('')
  with pytest.raises(UserError) as info:
    files.check_writable(tmp_path / relative, '--flag', is_file=is_file)
  assert str(info.value).startswith(f'--flag={tmp_path / relative}')
  assert message.format(tmp_path=tmp_path) in str(info.value)


def test_check_writable_refuses_a_folder_it_cannot_write(tmp_path):
  # /proc takes no new files, even from root (whom permission bits do not stop).
  with pytest.raises(UserError, match=r'--workdir=/proc/run cannot be written \(/proc: '):
    files.check_writable('/proc/run', '--workdir')
  if os.geteuid() != 0:
    tmp_path.chmod(0o500)
    with pytest.raises(UserError, match='cannot be written'):
      files.check_writable(tmp_path / 'run', '--workdir')


def test_a_resume_drops_the_records_past_the_step_it_resumes_from(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  first = writers.JsonLinesWriter(path)
  for step in (2, 4, 6, 8):  # A kill after step 8; the last checkpoint was at step 4.
    first.write_scalars(step, {'loss': 1.0 / step})
  first.close()
  resumed = writers.JsonLinesWriter(path, after_step=4)
  assert [r['step'] for r in writers.read_jsonl(path)] == [2, 4]  # Repaired on disk at once.
  for step in (6, 8):
    resumed.write_scalars(step, {'loss': 0.5 / step})
  resumed.close()
  records = writers.read_jsonl(path)
  # Was [2, 4, 6, 8, 6, 8]: the steps trained again were recorded twice.
  assert [(r['step'], r['loss']) for r in records] == [(2, 0.5), (4, 0.25), (6, 0.5 / 6),
                                                       (8, 0.5 / 8)]


def _raw_events(logdir) -> dict:
  """tag -> [(step, value)] of every scalar event the folder's files hold, none purged."""
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={'scalars': 0},
                                           purge_orphaned_data=False)
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


def test_a_resume_drops_the_tensorboard_events_past_its_step(tmp_path):
  logdir = tmp_path / 'tensorboard'
  first = writers.TensorBoardWriter(str(logdir))
  for step in (2, 4, 6, 8):
    first.write_scalars(step, {'loss': 1.0 / step})
  first.write_histograms(8, {'w': np.arange(10.0)})
  first.close()
  resumed = writers.TensorBoardWriter(str(logdir), after_step=4)
  for step in (6, 8):
    resumed.write_scalars(step, {'loss': 0.5 / step})
  resumed.close()
  # Was the old 6 and 8 as well, and the old histogram.
  assert _raw_events(logdir) == {'loss': [(2, 0.5), (4, 0.25), (6, pytest.approx(0.5 / 6)),
                                          (8, 0.0625)]}
  assert len(list(logdir.iterdir())) == 1  # The kept events were copied into the new file.
  again = writers.TensorBoardWriter(str(logdir), after_step=8)  # Nothing past it: kept as is.
  again.close()
  assert _raw_events(logdir)['loss'][-1] == (8, 0.0625)
