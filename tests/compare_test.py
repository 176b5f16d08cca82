"""compare: a finished JAX run beside the PyTorch trainer's run of the same config."""

import json

import pytest

from resnet_jax import compare

pytest.importorskip('torch')


def _results(seed, final, best):
  return {'seed': seed, 'final_val_accuracy': final, 'best_val_accuracy': best,
          'wall_seconds': 10.0, 'images_per_second': 100.0, 'parameters': 5}


def test_summary_gives_the_gap_and_the_seed_spread():
  summary = compare.summarise({'jax': [_results(0, 0.50, 0.52), _results(1, 0.54, 0.56)],
                               'torch': [_results(0, 0.51, 0.51), _results(1, 0.51, 0.53)]})
  assert summary['jax']['final'][0] == pytest.approx(52.0)
  assert summary['gap']['final'] == pytest.approx(1.0)
  assert summary['gap']['best'] == pytest.approx(2.0)
  assert summary['seed_std'] == pytest.approx(summary['jax']['final'][1])
  assert summary['seed_std'] > 2


def test_compare_with_an_existing_jax_run_writes_the_side_by_side(smoke_run, tmp_path):
  config, workdir, results = smoke_run
  summary = compare.compare(config, str(tmp_path), jax_workdir=str(workdir), torch_threads=1)
  assert summary['jax']['final'][0] == pytest.approx(100 * results['final_val_accuracy'])
  assert len(summary['runs']['jax'][0]['history']) == config.num_epochs
  text = (tmp_path / compare.MARKDOWN_FILE).read_text()
  assert '| jax |' in text and '| torch |' in text and 'Gap (JAX - PyTorch)' in text
  assert 'torch 2.' in text and 'jax 0.' in text
  assert (tmp_path / compare.FIGURE_FILE).stat().st_size > 0
  assert json.loads((tmp_path / compare.JSON_FILE).read_text())['torch']['seeds'] == [0]
