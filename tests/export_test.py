"""Export: Flax variables -> a kuangliu-layout PyTorch checkpoint and its module, and back."""

import ast
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import relative_error
from resnet_jax import errors
from resnet_jax import export
from resnet_jax import models
from resnet_jax.data import augment
from resnet_jax.pytorch import torch_import
from resnet_jax.training import workdir_lock

torch = pytest.importorskip('torch')
REPO = pathlib.Path(__file__).resolve().parent.parent

CONFIGS = {
    'se_stem': dict(se='stem', se_reduction=4),
    'se_block_preact_kuangliu': dict(se='block', se_reduction=4, block_order='preact_kuangliu'),
    'bottleneck_preact_pool': dict(block='bottleneck', block_order='preact', pool=4),
}


def _model_cfg(**overrides):
  cfg = models.preset('s003_resnet12')
  cfg.update(dict(name='small', num_blocks=(2, 1), channels=(8, 16), kernel_sizes=(3, 3),
                  shortcut_kernel_sizes=(1, 3), stem_channels=16, **overrides))
  return cfg


def _trained_like_variables(cfg, seed=0):
  """Initial variables with every leaf perturbed, so that no value is a default."""
  variables = models.build_model(cfg).init(jax.random.key(seed), np.zeros((1, 32, 32, 3)),
                                           train=False)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda v: np.asarray(v) + rng.uniform(0.1, 0.3, v.shape).astype(np.float32),
                      variables)


def _load_module(path):
  spec = importlib.util.spec_from_file_location('exported_model', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('name', list(CONFIGS))
def test_round_trip_is_bitwise_and_torch_logits_match(name, tmp_path):
  cfg = _model_cfg(**CONFIGS[name])
  variables = _trained_like_variables(cfg)
  path = str(tmp_path / 'model.pt')
  exported = export.save_torch_checkpoint(variables, cfg, path, acc=12.5, epoch=3)
  assert exported['definition'] == str(tmp_path / 'model.py')

  back = torch_import.variables_from_torch(torch_import.load_state_dict(path), cfg)
  leaves, treedef = jax.tree.flatten(variables)
  back_leaves, back_treedef = jax.tree.flatten(back)
  assert treedef == back_treedef
  for a, b in zip(leaves, back_leaves):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # Plain PyTorch: the module written beside it, strict loading, eval-mode logits.
  checkpoint = torch.load(path, weights_only=True)
  assert (checkpoint['acc'], checkpoint['epoch']) == (12.5, 3)
  net = _load_module(exported['definition']).TorchResNet(checkpoint['model_config'])
  net.load_state_dict(checkpoint['net'])
  net.eval()
  images = np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    theirs = net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  ours = models.build_model(cfg).apply(variables, images, train=False)
  assert relative_error(theirs, ours) < 1e-4


def test_export_run_writes_the_checkpoints_weights(smoke_run, tmp_path):
  config, workdir, results = smoke_run
  path = str(tmp_path / 'out' / 'best.pt')
  exported = export.export_run(config, str(workdir), path, checkpoint='best')
  checkpoint = torch.load(path, weights_only=True)
  assert checkpoint['epoch'] == results['best_epoch']
  assert checkpoint['acc'] == pytest.approx(100 * results['best_val_accuracy'])
  assert set(checkpoint['normalize']) == {'mean', 'std'}
  assert exported['keys'] == len(checkpoint['net'])
  assert sorted(torch_import.matching_presets(checkpoint)) == []  # the smoke model is unnamed
  torch_import.variables_from_torch(checkpoint, config.model)


def _snippet(text: str) -> str:
  """The loading snippet of a text: from `import torch, model` to `logits = ...`, dedented."""
  lines = text.splitlines()
  first = next(i for i, line in enumerate(lines) if line.strip().startswith('import torch, model'))
  last = next(i for i, line in enumerate(lines) if line.strip().startswith('logits = '))
  indent = len(lines[first]) - len(lines[first].lstrip())
  return '\n'.join(line[indent:] for line in lines[first:last + 1]) + '\n'


def test_model_py_docstring_loads_a_real_export_and_scores_as_the_run(smoke_run, tmp_path,
                                                                      monkeypatch):
  config, workdir, _ = smoke_run
  path = tmp_path / 'model.pt'
  export.export_run(config, str(workdir), str(path), checkpoint='latest')
  docstring = ast.get_docstring(ast.parse((tmp_path / 'model.py').read_text()))
  checkpoint = torch.load(path, weights_only=True)
  named = set(re.findall(r"checkpoint\['(\w+)'\]", docstring))
  assert {'net', 'model_config', 'normalize'} <= named <= set(checkpoint)
  assert set(re.findall(r"\['normalize'\]\['(\w+)'\]", docstring)) == set(checkpoint['normalize'])

  # The snippet as written, on uint8 images made NCHW float32 in [0, 1] as it says.
  images_u8 = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  scope = {'images': torch.from_numpy(images_u8.transpose(0, 3, 1, 2) / 255).float()}
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, 'model', raising=False)
  with torch.no_grad():
    exec(_snippet(docstring), scope)  # pylint: disable=exec-used
  monkeypatch.delitem(sys.modules, 'model', raising=False)

  variables, _, normalize = export.restore_variables(config, str(workdir), 'latest')
  ours = models.build_model(config.model).apply(
      variables, augment.eval_preprocess(images_u8, normalize['mean'], normalize['std'],
                                         np.float32), train=False)
  assert relative_error(scope['logits'].numpy(), ours) < 1e-4


def test_the_readme_gives_model_py_s_loading_snippet():
  from resnet_jax.pytorch import torch_resnet  # pylint: disable=g-import-not-at-top
  snippets = {_snippet(text) for text in (torch_resnet.__doc__,
                                          (REPO / 'README.md').read_text())}
  assert len(snippets) == 1


def test_definition_must_not_overwrite_the_checkpoint(tmp_path):
  cfg = _model_cfg()
  with pytest.raises(Exception, match='must not end in .py'):
    export.save_torch_checkpoint(_trained_like_variables(cfg), cfg, str(tmp_path / 'model.py'))


@pytest.mark.parametrize('to, message', [
    ('{tmp_path}', 'is a folder; give a file name'),
    ('{tmp_path}/a_file/model.pt', 'a_file is a file, not a folder'),
    ('/proc/model.pt', 'cannot be written'),
    ('{tmp_path}/model.py', 'must not end in .py'),
])
def test_destination_is_checked_in_one_line(tmp_path, to, message):
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(errors.UserError, match=message):
    export.check_destination(to.format(tmp_path=tmp_path))


def _command(args, hide_torch=False):
  """python -m resnet_jax.export args (with torch made unimportable)."""
  script = ('import sys\n'
            + ("sys.modules['torch'] = None\n" if hide_torch else '')
            + 'from resnet_jax import cli, export\n'
            "cli.run(export.main, 'export', require_config=False)\n")
  return subprocess.run([sys.executable, '-c', script, *args], capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300, check=False)


def test_command_refuses_before_any_work(smoke_run, tmp_path):
  _, workdir, _ = smoke_run
  # Each was a traceback, the first two after restoring the whole checkpoint.
  for args, hide_torch, message in [
      ([f'--to={tmp_path}'], False, 'is a folder; give a file name'),
      ([f'--to={tmp_path}/model.pt'], True, "export needs PyTorch"),
  ]:
    result = _command([f'--workdir={tmp_path}/none', *args], hide_torch)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and message in last, last
    assert not (tmp_path / 'none').exists() and not (tmp_path / 'model.pt').exists()
  assert "pip install -e '.[torch]'" in last
  with workdir_lock.hold(str(workdir), 'training'):
    result = _command([f'--workdir={workdir}', f'--to={tmp_path}/model.pt'])
  assert result.returncode == 2
  assert f'--workdir={workdir} is in use by pid {os.getpid()}' in result.stderr
