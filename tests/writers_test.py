"""Writers: TensorBoard events and metrics.jsonl, with and without TensorFlow."""

import subprocess
import sys
import textwrap

import numpy as np

from resnet_jax import writers

# Runs in a fresh interpreter where `import tensorflow` fails, as on the GPU machines.
_WITHOUT_TF = textwrap.dedent("""
    import sys
    sys.modules['tensorflow'] = None
    import numpy as np
    from resnet_jax import writers
    import clu.periodic_actions  # imports clu.metric_writers, which needs TF unless shimmed
    assert 'tensorflow' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}
    w = writers.create_writer(sys.argv[1], is_main=True)
    w.write_scalars(3, {'loss': 0.25, 'accuracy': 0.5})
    w.write_scalars(7, {'loss': 0.125})
    w.write_images(7, {'grid': np.zeros((4, 4, 3), np.uint8)})
    w.write_histograms(7, {'w': np.arange(100.0)})
    w.write_texts(7, {'note': 'hello'})
    w.close()
""")


def _tensorboard_scalars(logdir):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={'scalars': 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}, acc


def test_tensorflow_free_writer_writes_events_and_jsonl(tmp_path):
  result = subprocess.run([sys.executable, '-c', _WITHOUT_TF, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  scalars, acc = _tensorboard_scalars(tmp_path / 'tensorboard')
  assert scalars['loss'] == [(3, 0.25), (7, 0.125)]
  assert scalars['accuracy'] == [(3, 0.5)]
  assert acc.Tags()['histograms'] == ['w']
  assert acc.Histograms('w')[0].histogram_value.num == 100
  assert acc.Tags()['images'] == ['grid']
  records = writers.read_jsonl(tmp_path / 'metrics.jsonl')
  assert [(r['step'], r['loss']) for r in records] == [(3, 0.25), (7, 0.125)]
  assert records[0]['accuracy'] == 0.5


def test_non_main_process_writes_no_files(tmp_path):
  w = writers.create_writer(str(tmp_path / 'w'), is_main=False)
  w.write_scalars(1, {'loss': np.float32(1.5)})
  w.close()
  assert not (tmp_path / 'w').exists()
