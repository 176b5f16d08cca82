"""results.json, the PNGs and report.md from a run's figures."""

import json

import numpy as np
import pytest

from resnet_jax.reporting import report
from conftest import assert_whole_epoch_ticks
from conftest import fake_bucket

CLASSES = ['cat', 'dog', 'ship']
REFERENCE = {'system': 'seed 000 best model', 'paper_accuracy': 96.04, 'pytorch_final': 92.38,
             'pytorch_best': 92.43, 'pytorch_epoch_seconds': 4.5}
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def run_figures():
  results = {
      'model': 'best', 'parameters': 4_697_742, 'epochs': 2, 'final_test_accuracy': 0.5,
      'best_test_accuracy': 0.55, 'final_val_accuracy': 0.5, 'best_val_accuracy': 0.55,
      'best_epoch': 1, 'wall_seconds': 12.0, 'compile_seconds': 3.0, 'images_per_second': 900.0,
      'device_kind': 'cpu', 'device_count': 1, 'class_names': CLASSES, 'reference': REFERENCE,
      'versions': {'jax': '0.0', 'python': '3'}}
  # The first epoch waited 16 s for compiles.
  history = [{'epoch': 1, 'train_loss': 2.0, 'train_accuracy': 0.3, 'val_loss': 1.8,
              'val_accuracy': 0.55, 'epoch_seconds': 16.9, 'compile_seconds': 16.0},
             {'epoch': 2, 'train_loss': 1.5, 'train_accuracy': 0.45, 'val_loss': 1.7,
              'val_accuracy': 0.5, 'epoch_seconds': 0.9, 'compile_seconds': 0.0}]
  confusion = np.array([[8, 2, 0], [5, 4, 1], [3, 0, 0]])
  return results, history, confusion


def test_per_class_accuracy_is_row_recall():
  accuracy = report.per_class_accuracy(np.array([[8, 2, 0], [5, 4, 1], [0, 0, 0]]))
  np.testing.assert_allclose(accuracy[:2], [0.8, 0.4])
  assert np.isnan(accuracy[2])  # No examples of that class.


def test_write_report_writes_every_file(tmp_path):
  results, history, confusion = run_figures()
  report.write_report(str(tmp_path), results, history, confusion)
  written = json.loads((tmp_path / 'results.json').read_text())
  assert written['model'] == 'best' and written['parameters'] == 4_697_742
  assert written['confusion_matrix'] == confusion.tolist()
  assert written['per_class_accuracy'] == pytest.approx({'cat': 0.8, 'dog': 0.4, 'ship': 0.0})
  for name in ('curves.png', 'confusion.png'):
    data = (tmp_path / name).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name


def test_curves_tick_whole_epochs(tmp_path):
  _, history, _ = run_figures()  # Epochs 1 and 2: matplotlib's default ticks 1.0, 1.2, ...
  fig = report.plot_curves(history, tmp_path / 'curves.png')
  for ax in fig.axes:
    assert_whole_epoch_ticks(ax)


def test_confusion_title_counts_the_images(tmp_path):
  _, _, confusion = run_figures()
  fig = report.plot_confusion(100 * confusion, CLASSES, tmp_path / 'confusion.png')
  assert fig.axes[0].get_title() == 'confusion matrix (test set, 2,300 images)'


def test_results_json_is_written_last_so_it_never_claims_a_missing_report(tmp_path,
                                                                          monkeypatch):
  results, history, confusion = run_figures()

  def crash(*args, **kwargs):
    raise RuntimeError('a plot failed')

  monkeypatch.setattr(report, 'plot_confusion', crash)
  with pytest.raises(RuntimeError):
    report.write_report(str(tmp_path), results, history, confusion)
  assert not (tmp_path / 'results.json').exists() and not (tmp_path / 'report.md').exists()


def test_report_sets_the_run_beside_its_reference(tmp_path):
  results, history, confusion = run_figures()
  report.write_report(str(tmp_path), results, history, confusion)
  markdown = (tmp_path / 'report.md').read_text()
  assert markdown.startswith('# seed 000 best model: best on CIFAR-10')
  assert '| this run | 50.00% | 55.00% |' in markdown
  assert '| PyTorch reference, same data | 92.38% | 92.43% |' in markdown
  assert 'REFERENCE.md' not in markdown
  assert '96.04%' in markdown
  # Was 'Time an epoch: 8.90 s median', of a compile epoch and a steady one.
  assert ('Time an epoch: 0.90 s median of 1 epoch (PyTorch reference: 4.5 s); 1 epoch that '
          'compiled left out (16.9 s)') in markdown
  assert '| dog | 40.0% |' in markdown
  assert '![learning curves](curves.png)' in markdown


def test_an_evaluation_report_prints_no_training_figures_as_zero(tmp_path):
  results, history, confusion = run_figures()
  for key in ('images_per_second', 'compile_seconds', 'best_test_accuracy', 'best_val_accuracy'):
    del results[key]  # What evaluate's results lack: it trains nothing.
  results.update(evaluated='runs/best/checkpoints/best', wall_seconds=7.0)
  report.write_report(str(tmp_path), results, history, confusion, write_plots=False)
  markdown = (tmp_path / 'report.md').read_text()
  assert 'compiled left out (16.9 s).' in markdown
  assert 'Scored runs/best/checkpoints/best in 7 s.' in markdown
  for zero in ('0 training images/s', 'compile 0.0 s', 'wall 0 s', 'wall 7 s'):
    assert zero not in markdown, zero


def test_a_training_report_gives_speed_compile_and_wall(tmp_path):
  results, history, confusion = run_figures()
  report.write_report(str(tmp_path), results, history, confusion, write_plots=False)
  assert ('compiled left out (16.9 s); 900 training images/s; compile 3.0 s; wall 12 s.') in (
      tmp_path / 'report.md').read_text()


def test_a_resumed_runs_wall_is_the_runs_over_its_processes(tmp_path):
  results, history, confusion = run_figures()
  results['elapsed_seconds'] = 164.0  # The last process's wall_seconds is 12.
  markdown = report.markdown(results, history, {}, write_plots=False)
  assert 'compile 3.0 s; wall 164 s.' in markdown


def test_epochs_that_all_compiled_are_said_to_include_it():
  history = [{'epoch': 1, 'epoch_seconds': 16.9, 'compile_seconds': 16.0}]
  assert report.epoch_time(history) == (
      'Time an epoch: 16.90 s median of 1 epoch, compiling included')
  assert report.epoch_time([{'epoch': 1}]) is None


def test_counts_agree_with_their_nouns():
  results, history, _ = run_figures()
  results.update(epochs=1, compute_dtype='float32', steps_per_call=1, placement='device')
  markdown = report.markdown(results, history[:1], {}, write_plots=False)
  assert '1 of 1 epoch recorded' in markdown  # Was '1 of 1 epochs'.
  assert 'Ran in float32, 1 step a compiled call, the training set on the device' in markdown
  results.update(epochs=30, steps_per_call=8)
  markdown = report.markdown(results, history, {}, write_plots=False)
  assert '2 of 30 epochs recorded' in markdown and '8 steps a compiled call' in markdown


def test_read_results_takes_a_torn_file_as_missing(tmp_path):
  assert report.read_results(tmp_path) is None
  results, history, confusion = run_figures()
  written = report.write_report(tmp_path, results, history, confusion, write_plots=False)
  assert report.read_results(tmp_path) == json.loads(json.dumps(written))
  whole = (tmp_path / 'results.json').read_text()
  (tmp_path / 'results.json').write_text(whole[:len(whole) // 2])  # A copy cut short.
  assert report.read_results(tmp_path) is None  # Was a JSONDecodeError in every reader.
  (tmp_path / 'results.json').write_text('[]')
  assert report.read_results(tmp_path) is None


def test_validation_on_the_test_set_is_named_so(tmp_path):
  results, history, confusion = run_figures()
  results['validates_on_test'] = True
  markdown = report.markdown(results, history, {}, write_plots=False)
  assert 'Test-set validation accuracy: final 50.00%, best 55.00% (epoch 1).' in markdown
  fig = report.plot_curves(history, tmp_path / 'curves.png', validates_on_test=True)
  assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == [
      'train', 'test-set validation']


def test_no_plots_when_asked(tmp_path):
  results, history, confusion = run_figures()
  results['reference'] = {}
  report.write_report(str(tmp_path), results, [], confusion, write_plots=False)
  assert not list(tmp_path.glob('*.png'))
  markdown = (tmp_path / 'report.md').read_text()
  assert 'PyTorch reference' not in markdown and 'seed paper' not in markdown  # no empty rows
  assert 'png' not in markdown


def test_write_report_to_a_gs_workdir(tmp_path):
  results, history, confusion = run_figures()
  with fake_bucket(tmp_path):
    report.write_report('gs://bucket/runs/best', results, history, confusion)
  out = tmp_path / 'runs' / 'best'
  assert json.loads((out / 'results.json').read_text())['confusion_matrix'] == confusion.tolist()
  assert (out / 'report.md').read_text().startswith('# seed 000 best model')
  for name in ('curves.png', 'confusion.png'):
    assert (out / name).read_bytes().startswith(PNG_MAGIC), name


def test_first_reaching_is_the_first_epoch_at_or_over_the_accuracy():
  history = [{'epoch': 1, 'val_accuracy': 0.5, 'elapsed_seconds': 10.0},
             {'epoch': 2, 'train_loss': 1.0, 'elapsed_seconds': 15.0},  # not evaluated
             {'epoch': 3, 'val_accuracy': 0.9238, 'elapsed_seconds': 20.0},
             {'epoch': 4, 'val_accuracy': 0.95, 'elapsed_seconds': 25.0}]
  assert report.first_reaching(history, 0.9238) == {'epoch': 3, 'elapsed_seconds': 20.0}
  assert report.first_reaching(history, 0.94) == {'epoch': 4, 'elapsed_seconds': 25.0}
  assert report.first_reaching(history, 0.96) is None


@pytest.mark.parametrize('reached,line', [
    ({'epoch': 150, 'elapsed_seconds': 183.4},
     "Reached the PyTorch reference's 92.38% at epoch 150 of 2 after 183 s (compile and "
     'evaluation included; the reference: ~15 min).'),
    (None, "Did not reach the PyTorch reference's 92.38%: best 55.00% at epoch 1 of 2 vs 92.38%."),
])
def test_report_says_first_whether_and_when_the_reference_accuracy_was_reached(tmp_path, reached,
                                                                             line):
  results, history, confusion = run_figures()
  results['reference'] = dict(REFERENCE, pytorch_seconds=900.0)
  results['reference_reached'] = reached
  report.write_report(str(tmp_path), results, history, confusion, write_plots=False)
  assert report.time_to_reference(results) == line
  # Near the top: right after the run's summary, before the accuracy table.
  assert (tmp_path / 'report.md').read_text().splitlines()[4] == f'**Time to accuracy:** {line}'


def test_no_time_to_accuracy_where_it_was_not_measured(tmp_path):
  results, history, confusion = run_figures()  # No reference_reached: validation was no test.
  assert report.time_to_reference(results) is None
  results['reference_reached'] = None
  results['reference'] = dict(REFERENCE, pytorch_final=0.0)  # No reference accuracy known.
  assert report.time_to_reference(results) is None
  report.write_report(str(tmp_path), results, history, confusion, write_plots=False)
  assert 'Time to accuracy' not in (tmp_path / 'report.md').read_text()


def test_the_data_and_what_ran_are_said_once(tmp_path):
  results, history, confusion = run_figures()
  results.update(data_source='jpeg_npz data: 512 train, 256 validation (the test set), 256 test',
                 train_examples=512, test_examples=256, compute_dtype='bfloat16',
                 steps_per_call=97, placement='device', batch_statistics='per_device')
  report.write_report(str(tmp_path), results, history, confusion, write_plots=False)
  markdown = (tmp_path / 'report.md').read_text()
  first = markdown.split('\n\n')[1]
  assert 'data: jpeg_npz data: 512 train, 256 validation (the test set), 256 test images;' in first
  assert first.count('512') == 1
  assert ('Ran in bfloat16, 97 steps a compiled call, the training set on the device, BatchNorm '
          'statistics per_device.') in markdown
