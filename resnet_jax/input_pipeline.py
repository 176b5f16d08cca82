"""Data sources, train/validation/test splits, normalisation constants and host-side batches.

Every source yields uint8 NHWC images and integer labels. `load_splits` picks the source named by
`config.data.source`, checks every split it returns with `validate_split` (one check for every
source, TFDS included), cuts subsets, holds out validation and computes the normalisation;
augmentation happens later, on the device (`augment.py`).

An explicit `config.data.data_dir` is used or refused: `auto` searches ./data, $RESNET_JAX_DATA
and ../shared/data/cifar10_jpeg only where data_dir is empty.

Each epoch's order comes from `epoch_permutation` alone, whichever path consumes it: the host
iterators here (NumPy, or tf.data where TensorFlow is installed) and the trainer's device-resident
path, which gathers batches by the same indices inside the compiled step.

The JPEG copy (`jpeg_npz`) and image folders (`folder`) are stored sorted by class; they are read
in a fixed shuffled order (`np.random.default_rng(0)` for train, `(1)` for test, the order that
`../shared/data/cifar10_jpeg/to_cifar_batches.py` writes), so that subsets and held-out fractions
cover every class, and so that `jpeg_npz` and the `cifar_batches` it converts to hold the same
arrays.
"""

import concurrent.futures
import importlib.util
import io
import os
import pathlib
import pickle
from typing import Iterator, NamedTuple, Sequence
import zipfile
import zlib

import numpy as np
from PIL import Image

from resnet_jax.errors import UserError

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                   'ship', 'truck')
SOURCES = ('auto', 'tfds', 'cifar_batches', 'jpeg_npz', 'folder', 'synthetic')
HOST_BACKENDS = ('auto', 'numpy', 'tf')
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.ppm', '.tif', '.tiff')
CIFAR_BATCHES_FOLDER = 'cifar-10-batches-py'
CIFAR_TRAIN_FILES = tuple(f'data_batch_{i}' for i in range(1, 6))
JPEG_NPZ_FILES = ('train.npz', 'test.npz')
# `auto` looks in config.data.data_dir alone where it is set, else in ./data, $RESNET_JAX_DATA,
# then the shared JPEG copy.
DATA_ENV_VAR = 'RESNET_JAX_DATA'
SHARED_DATA_DIR = os.path.join('..', 'shared', 'data', 'cifar10_jpeg')
SYNTHETIC_SIZES = (50_000, 10_000)
# Tags of the NumPy random streams (`_stream`); non-zero, so that no two streams coincide.
_EPOCH_ORDER_STREAM = 1
_HOLDOUT_STREAM = 2
_SYNTHETIC_STREAM = 3
_DECODE_CHUNK = 1024


class Splits(NamedTuple):
  """The data of one run: uint8 NHWC images, int32 labels, normalisation in [0, 1] units."""
  train_images: np.ndarray
  train_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: tuple[str, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  source: str


class _Split(NamedTuple):
  """One split as a source read it, unchecked; `where` names its file or folder in errors."""
  images: np.ndarray
  labels: np.ndarray
  where: str


class _Loaded(NamedTuple):
  """What a source reads: train and test splits, class names, a description for the report."""
  train: _Split
  test: _Split
  class_names: tuple[str, ...]
  source: str


def _one_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0] if text else type(error).__name__


def _stream(tag: int, seed: int = 0, epoch: int = 0) -> np.random.Generator:
  """The random stream `tag` of a seed (and epoch), distinct from every other stream.

  SeedSequence pads its entropy with zeros, so (seed, epoch) and (seed, epoch, 0) or an integer
  seed k and (k, 0) would give one stream: three words, each below 2**32, the last the non-zero
  tag, differ from each other and from every integer seed (the fixed orders of `_fixed_order`).
  """
  return np.random.default_rng((seed % 2**32, epoch % 2**32, tag))


# ------------------------------------------------------------------------------------------------
# Sources.


def import_tensorflow():
  """Imports TensorFlow for host-side work only: it must not take the accelerators from JAX."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TensorFlow already initialised its devices.
    pass
  return tf


def tf_importable() -> bool:
  return importlib.util.find_spec('tensorflow') is not None


def _tfds_importable() -> bool:
  return tf_importable() and importlib.util.find_spec('tensorflow_datasets') is not None


def _tfds_prepared(data_cfg) -> bool:
  """Whether TFDS has `config.data.tfds_name` on disk (never downloads)."""
  if not _tfds_importable():
    return False
  import_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.builder(data_cfg.tfds_name, data_dir=data_cfg.data_dir or None).is_prepared()
  except Exception:  # pylint: disable=broad-except  # Any failure means "not usable here".
    return False


def _load_tfds(data_cfg) -> _Loaded:
  """`config.data.tfds_name` through tensorflow_datasets, from its data_dir, without download."""
  if not _tfds_importable():
    raise UserError("config.data.source='tfds' needs tensorflow and tensorflow-datasets "
                    "(pip install 'resnet-jax[tf]'); or set config.data.source='cifar_batches' "
                    "or 'jpeg_npz' with config.data.data_dir")
  tf = import_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, data_dir = data_cfg.tfds_name, data_cfg.data_dir or None
  arrays = {}
  try:
    for split, subset in (('train', data_cfg.train_subset), ('test', data_cfg.test_subset)):
      ds, info = tfds.load(name, split=f'{split}[:{subset}]' if subset > 0 else split,
                           data_dir=data_dir, download=False, with_info=True)
      batches = list(tfds.as_numpy(ds.batch(10_000)))
      arrays[split] = _Split(np.concatenate([b['image'] for b in batches]),
                             np.concatenate([b['label'] for b in batches]),
                             f'TFDS {name} {split} split')
  except (AssertionError, ValueError, OSError, KeyError, tf.errors.OpError) as e:
    raise UserError(
        f'TFDS dataset {name!r} is not prepared in {data_dir or "the default TFDS data_dir"} '
        f'({_one_line(e)}); prepare it with `tfds build {name} --data_dir=DIR` and set '
        'config.data.data_dir=DIR, or use config.data.source=cifar_batches|jpeg_npz') from None
  return _Loaded(arrays['train'], arrays['test'], tuple(info.features['label'].names),
                 f'tfds {name} ({data_dir or "default data_dir"})')


class _BatchUnpickler(pickle.Unpickler):
  """Unpickles CIFAR batch files, allowing only the NumPy types they hold (no code execution)."""

  _ALLOWED = ('_reconstruct', 'ndarray', 'dtype', '_frombuffer', 'scalar')

  def find_class(self, module, name):
    if module.split('.')[0] != 'numpy' or name not in self._ALLOWED:
      raise pickle.UnpicklingError(f'unexpected object {module}.{name}')
    if module.startswith('numpy.core') and hasattr(np, '_core'):  # Pickles from NumPy 1.
      module = 'numpy._core' + module[len('numpy.core'):]
    return super().find_class(module, name)


def _read_pickle(path: pathlib.Path) -> dict:
  with open(path, 'rb') as f:
    content = _BatchUnpickler(f, encoding='bytes').load()
  if not isinstance(content, dict):
    raise ValueError(f'expected a dict, found {type(content).__name__}')
  return {k.decode() if isinstance(k, bytes) else k: v for k, v in content.items()}


def _read_cifar_batch(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """One pickled batch: rows of 3072 channel-planar uint8 values, and their labels."""
  try:
    content = _read_pickle(path)
    data = np.asarray(content['data'])
    labels = np.asarray(content['labels'])  # validate_split checks the type.
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
      raise ValueError(f'data has shape {data.shape} and dtype {data.dtype}, '
                       'expected (N, 3072) uint8')
    if labels.shape != (len(data),):
      raise ValueError(f'{len(labels)} labels for {len(data)} images')
  except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError,
          AttributeError, IndexError) as e:
    raise UserError(f'{path} is not a readable CIFAR-10 batch ({_one_line(e)}); re-extract '
                    'cifar-10-python.tar.gz (or rerun to_cifar_batches.py) there, or point '
                    'config.data.data_dir at a good copy') from None
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar_batches_folder(path: pathlib.Path) -> pathlib.Path | None:
  """The `cifar-10-batches-py` folder at or inside path, if there is one."""
  for folder in (path / CIFAR_BATCHES_FOLDER, path):
    if (folder / CIFAR_TRAIN_FILES[0]).is_file():
      return folder
  return None


def _load_cifar_batches(path: pathlib.Path) -> _Loaded:
  """The pickled `cifar-10-batches-py` layout (CIFAR-10 site, torchvision, Keras)."""
  folder = _cifar_batches_folder(path)
  if folder is None:
    raise UserError(f'no {CIFAR_BATCHES_FOLDER}/{CIFAR_TRAIN_FILES[0]} at or inside {path}; set '
                    f'config.data.data_dir to the folder that contains {CIFAR_BATCHES_FOLDER}')
  missing = [f for f in CIFAR_TRAIN_FILES + ('test_batch',) if not (folder / f).is_file()]
  if missing:
    raise UserError(f'{folder} lacks {", ".join(missing)}; re-extract cifar-10-python.tar.gz '
                    'there, or point config.data.data_dir at a complete copy')
  train = [_read_cifar_batch(folder / f) for f in CIFAR_TRAIN_FILES]
  test_images, test_labels = _read_cifar_batch(folder / 'test_batch')
  class_names = CIFAR10_CLASSES
  if (folder / 'batches.meta').is_file():
    try:
      class_names = tuple(n.decode() if isinstance(n, bytes) else str(n)
                          for n in _read_pickle(folder / 'batches.meta')['label_names'])
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError) as e:
      raise UserError(f'{folder / "batches.meta"} is unreadable ({_one_line(e)}); delete it '
                      '(the CIFAR-10 class names are then used) or re-extract the data') from None
  return _Loaded(_Split(np.concatenate([t[0] for t in train]),
                        np.concatenate([t[1] for t in train]),
                        str(folder / 'data_batch_[1-5]')),
                 _Split(test_images, test_labels, str(folder / 'test_batch')),
                 class_names, f'cifar_batches {folder}')


def _to_rgb_array(image: Image.Image, image_size: int) -> np.ndarray:
  if image.mode != 'RGB':
    image = image.convert('RGB')
  if image.size != (image_size, image_size):
    image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
  return np.asarray(image)


def _decode_images(files: Sequence, image_size: int, where) -> np.ndarray:
  """Decodes image files (paths or file objects) with Pillow, in chunks on a thread pool."""

  def decode_chunk(chunk):
    out = np.empty((len(chunk), image_size, image_size, 3), np.uint8)
    for i, file in enumerate(chunk):
      with Image.open(file) as image:
        out[i] = _to_rgb_array(image, image_size)
    return out

  chunks = [files[i:i + _DECODE_CHUNK] for i in range(0, len(files), _DECODE_CHUNK)]
  try:
    with concurrent.futures.ThreadPoolExecutor(min(32, os.cpu_count() or 1)) as pool:
      decoded = list(pool.map(decode_chunk, chunks))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise UserError(f'cannot decode an image in {where} ({_one_line(e)}); replace or remove the '
                    'file, or point config.data.data_dir at good data') from None
  return np.concatenate(decoded) if decoded else np.zeros((0, image_size, image_size, 3), np.uint8)


def _resize_images(images: np.ndarray, image_size: int) -> np.ndarray:
  if images.shape[1:3] == (image_size, image_size):
    return images
  return np.stack([_to_rgb_array(Image.fromarray(x), image_size) for x in images])


def _fixed_order(n: int, order_seed: int, limit: int) -> np.ndarray:
  """The fixed shuffled order of a class-sorted source (module docstring), first `limit` kept."""
  order = np.random.default_rng(order_seed).permutation(n)
  return order[:limit] if limit > 0 else order


def _read_jpeg_npz(path: pathlib.Path, order_seed: int, limit: int, image_size: int):
  """One npz of the JPEG copy: `jpeg` (concatenated files), `offsets` (n+1), `labels`."""
  try:
    with np.load(path) as content:
      jpeg, offsets, labels = content['jpeg'], content['offsets'], content['labels']
    if (jpeg.ndim != 1 or offsets.shape != (len(labels) + 1,) or offsets[-1] != len(jpeg)
        or np.any(np.diff(offsets) <= 0)):
      raise ValueError(f'jpeg/offsets/labels disagree ({len(jpeg)} bytes, {len(offsets)} '
                       f'offsets, {len(labels)} labels)')
  except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error) as e:
    raise UserError(f'{path} is not a readable JPEG npz ({_one_line(e)}); copy train.npz and '
                    'test.npz again (see their sha256 in the README), or set '
                    'config.data.data_dir to a good copy') from None
  order = _fixed_order(len(labels), order_seed, limit)
  files = [io.BytesIO(jpeg[offsets[i]:offsets[i + 1]]) for i in order]
  return _Split(_decode_images(files, image_size, path), labels[order], str(path))


def _load_jpeg_npz(path: pathlib.Path, data_cfg) -> _Loaded:
  missing = [f for f in JPEG_NPZ_FILES if not (path / f).is_file()]
  if missing:
    raise UserError(f'{path} lacks {", ".join(missing)}; set config.data.data_dir to the folder '
                    'holding train.npz and test.npz (e.g. ../shared/data/cifar10_jpeg)')
  train = _read_jpeg_npz(path / 'train.npz', 0, data_cfg.train_subset, data_cfg.image_size)
  test = _read_jpeg_npz(path / 'test.npz', 1, data_cfg.test_subset, data_cfg.image_size)
  return _Loaded(train, test, CIFAR10_CLASSES, f'jpeg_npz {path}')


def _folder_split(root: pathlib.Path, class_names, order_seed, limit, image_size):
  files, labels = [], []
  for label, name in enumerate(class_names):
    folder = root / name
    found = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []
    files += found
    labels += [label] * len(found)
  if not files:
    raise UserError(f'no image files ({", ".join(IMAGE_EXTENSIONS)}) in the class folders of '
                    f'{root}; config.data.data_dir must hold train/<class>/* and test/<class>/*')
  order = _fixed_order(len(files), order_seed, limit)
  images = _decode_images([files[i] for i in order], image_size, root)
  return _Split(images, np.asarray(labels, np.int32)[order], str(root))


def _load_folder(path: pathlib.Path, data_cfg) -> _Loaded:
  """Users' data: data_dir/train/<class>/* and data_dir/test/<class>/*, classes sorted by name."""
  train_root, test_root = path / 'train', path / 'test'
  if not train_root.is_dir() or not test_root.is_dir():
    raise UserError(f'{path} needs train/ and test/ folders of class subfolders; set '
                    'config.data.data_dir to that folder')
  class_names = tuple(sorted(p.name for p in train_root.iterdir() if p.is_dir()))
  unknown = sorted(p.name for p in test_root.iterdir()
                   if p.is_dir() and p.name not in class_names)
  if unknown:
    raise UserError(f'{test_root} has classes {unknown} that {train_root} lacks; use the same '
                    'class folder names in train/ and test/')
  train = _folder_split(train_root, class_names, 0, data_cfg.train_subset, data_cfg.image_size)
  test = _folder_split(test_root, class_names, 1, data_cfg.test_subset, data_cfg.image_size)
  return _Loaded(train, test, class_names, f'folder {path}')


def _load_synthetic(data_cfg) -> _Loaded:
  """Deterministic random images, learnable: half a fixed per-class template, half noise."""
  rng = _stream(_SYNTHETIC_STREAM)
  size, num_classes = data_cfg.image_size, len(CIFAR10_CLASSES)
  templates = rng.integers(0, 128, (num_classes, size, size, 3), dtype=np.uint8)

  def make(n, split):
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    images = templates[labels] + rng.integers(0, 128, (n, size, size, 3), dtype=np.uint8)
    return _Split(images, labels, f'synthetic {split} split')

  n_train, n_test = (subset if subset > 0 else default for subset, default in
                     zip((data_cfg.train_subset, data_cfg.test_subset), SYNTHETIC_SIZES))
  return _Loaded(make(n_train, 'train'), make(n_test, 'test'), CIFAR10_CLASSES,
                 'synthetic (random images)')


def _auto_search_dirs(data_cfg) -> list[pathlib.Path]:
  """config.data.data_dir alone where it is set (used or refused), else the default places."""
  if data_cfg.data_dir:
    return [pathlib.Path(data_cfg.data_dir)]
  dirs = ('data', os.environ.get(DATA_ENV_VAR, ''), SHARED_DATA_DIR)
  return [pathlib.Path(d) for d in dirs if d]


def _load_auto(data_cfg) -> _Loaded:
  """TFDS where it is installed and prepared; else the first local copy found."""
  if _tfds_prepared(data_cfg):
    return _load_tfds(data_cfg)
  search = _auto_search_dirs(data_cfg)
  for path in search:
    if _cifar_batches_folder(path) is not None:
      return _load_cifar_batches(path)
    if all((path / f).is_file() for f in JPEG_NPZ_FILES):
      return _load_jpeg_npz(path, data_cfg)
  if data_cfg.data_dir:
    state = 'holds' if search[0].is_dir() else 'is not a folder, so it holds'
    raise UserError(
        f'config.data.data_dir={data_cfg.data_dir!r} {state} no CIFAR-10 (looked there only, '
        f'for {CIFAR_BATCHES_FOLDER}/, {" and ".join(JPEG_NPZ_FILES)}, or TFDS '
        f'{data_cfg.tfds_name!r}); point it at the data, set config.data.source, or leave it '
        'empty to search the default places')
  raise UserError(
      f'no CIFAR-10 found (TFDS {data_cfg.tfds_name!r} not prepared; no {CIFAR_BATCHES_FOLDER} '
      f'or train.npz/test.npz in {", ".join(str(p) for p in search)}); set '
      f'config.data.data_dir to the data, or config.data.source to {"|".join(SOURCES[1:])}, '
      f'or ${DATA_ENV_VAR}')


def _load_source(data_cfg) -> _Loaded:
  source = data_cfg.source
  if source not in SOURCES:
    raise UserError(f'config.data.source={source!r} is unknown; use one of {", ".join(SOURCES)}')
  if source == 'auto':
    return _load_auto(data_cfg)
  if source == 'tfds':
    return _load_tfds(data_cfg)
  if source == 'synthetic':
    return _load_synthetic(data_cfg)
  if not data_cfg.data_dir:
    raise UserError(f'config.data.source={source!r} needs config.data.data_dir (the folder '
                    'holding the data)')
  path = pathlib.Path(data_cfg.data_dir)
  if not path.is_dir():
    raise UserError(f'config.data.data_dir={str(path)!r} is not a folder; point it at the data')
  if source == 'cifar_batches':
    return _load_cifar_batches(path)
  if source == 'jpeg_npz':
    return _load_jpeg_npz(path, data_cfg)
  return _load_folder(path, data_cfg)


# ------------------------------------------------------------------------------------------------
# Splits and normalisation.


def _validation_fraction(validation) -> float | None:
  """None for 'test' (the test set validates), else the held-out fraction of train."""
  text = str(validation).strip()
  if text == 'test':
    return None
  try:
    fraction = float(text)
  except ValueError:
    fraction = float('nan')
  if not 0 < fraction < 1:
    raise UserError(f"config.data.validation={validation!r} is invalid; use 'test' or a "
                    "fraction of the training set in (0, 1), e.g. '0.1'")
  return fraction


def _hold_out(images, labels, fraction, seed):
  """Splits train into (train, validation), deterministically for the seed; order is kept."""
  n = len(labels)
  n_val = int(round(fraction * n))
  if not 0 < n_val < n:
    raise UserError(f'config.data.validation={fraction} leaves {n_val} of {n} training images '
                    'for validation; use a larger fraction or more data')
  perm = _stream(_HOLDOUT_STREAM, seed).permutation(n)
  val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
  return images[train], labels[train], images[val], labels[val]


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple, tuple]:
  """Per-channel mean and (population) std of uint8 images, in [0, 1] units."""
  channels = images.shape[-1]
  total, total_sq = np.zeros(channels), np.zeros(channels)
  for start in range(0, len(images), chunk):
    x = images[start:start + chunk].reshape(-1, channels).astype(np.float64)
    total += x.sum(axis=0)
    total_sq += np.square(x).sum(axis=0)
  count = images.size // channels
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  return tuple(float(m) for m in mean / 255), tuple(float(s) for s in std / 255)


def _normalization(data_cfg, train_images) -> tuple[tuple, tuple]:
  if data_cfg.normalization == 'computed':
    return channel_stats(train_images)
  if data_cfg.normalization != 'constants':
    raise UserError(f'config.data.normalization={data_cfg.normalization!r} is unknown; use '
                    "'constants' (config.data.mean/std) or 'computed' (from the training split)")
  mean, std = tuple(float(m) for m in data_cfg.mean), tuple(float(s) for s in data_cfg.std)
  channels = train_images.shape[-1]
  if len(mean) != channels or len(std) != channels or min(std) <= 0:
    raise UserError(f'config.data.mean and config.data.std need {channels} values each (std > 0), '
                    f'got {mean} and {std}')
  return mean, std


def validate_split(images, labels, *, num_classes: int,
                   where: str) -> tuple[np.ndarray, np.ndarray]:
  """Checks one split as a source read it: the one check every source's data goes through.

  Args:
    images: should be uint8 (N, H, W, 3).
    labels: should be N integers in [0, num_classes).
    num_classes: labels must be below it.
    where: the file, folder or source the split came from, named in the error.

  Returns:
    (images, labels as int32).

  Raises:
    UserError: one line naming `where`, what is wrong and how to fix it.
  """
  images, labels = np.asarray(images), np.asarray(labels)
  fix = 'fix or replace the data, or point config.data.data_dir at a good copy'
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise UserError(f'{where}: images are {images.dtype} of shape {images.shape}, expected uint8 '
                    f'(N, height, width, 3); {fix}')
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise UserError(f'{where}: labels are {labels.dtype} of shape {labels.shape}, expected N '
                    f'integers; {fix}')
  if len(labels) != len(images):
    raise UserError(f'{where}: {len(labels)} labels for {len(images)} images; {fix}')
  if not len(labels):
    raise UserError(f'{where} holds no examples; {fix}')
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if len(bad):
    raise UserError(
        f'{where}: {len(bad)} of {len(labels)} labels are outside [0, {num_classes}) (e.g. '
        f'{labels[bad[0]]} at index {bad[0]}), the classes of this run; fix the labels (where '
        'the data has more classes: its class names and config.model.num_classes)')
  return images, labels.astype(np.int32)


def _checked(split: _Split, subset_key: str, data_cfg, num_classes: int):
  """A split validated, cut to config.data.<subset_key> (0: all) and resized to image_size."""
  images, labels = validate_split(split.images, split.labels, num_classes=num_classes,
                                  where=split.where)
  subset = data_cfg[subset_key]
  if subset > len(labels):
    raise UserError(f'config.data.{subset_key}={subset} asks for more than the {len(labels)} '
                    f'examples of {split.where}; use at most {len(labels)}, or 0 for all')
  if subset > 0:
    images, labels = images[:subset], labels[:subset]
  return _resize_images(images, data_cfg.image_size), labels


def load_splits(data_cfg, seed: int, num_classes: int = 0) -> Splits:
  """Loads config.data's source and returns train/validation/test splits.

  Args:
    data_cfg: `config.data` (see defaults.py).
    seed: the run's seed; picks the held-out validation examples.
    num_classes: `config.model.num_classes`: labels must be below it and below the data's
      class count; 0: the data's class count alone.

  Returns:
    `Splits`; with validation='test' the validation arrays are the test arrays.

  Raises:
    UserError: unknown settings, or data that is missing, corrupt or out of range.
  """
  for key in ('train_subset', 'test_subset'):
    if data_cfg[key] < 0:
      raise UserError(f'config.data.{key}={data_cfg[key]} must be >= 0 (0 = all)')
  if data_cfg.image_size <= 0:
    raise UserError(f'config.data.image_size={data_cfg.image_size} must be positive')
  fraction = _validation_fraction(data_cfg.validation)
  loaded = _load_source(data_cfg)
  classes = min(num_classes or len(loaded.class_names), len(loaded.class_names))
  train_x, train_y = _checked(loaded.train, 'train_subset', data_cfg, classes)
  test_x, test_y = _checked(loaded.test, 'test_subset', data_cfg, classes)
  if fraction is None:
    val_x, val_y, validation = test_x, test_y, 'the test set'
  else:
    train_x, train_y, val_x, val_y = _hold_out(train_x, train_y, fraction, seed)
    validation = f'{fraction:g} of train held out (seed {seed})'
  mean, std = _normalization(data_cfg, train_x)
  source = (f'{loaded.source}: {len(train_y)} train, {len(val_y)} validation '
            f'({validation}), {len(test_y)} test')
  return Splits(train_x, train_y, val_x, val_y, test_x, test_y, tuple(loaded.class_names),
                mean, std, source)


# ------------------------------------------------------------------------------------------------
# Epoch order and host batches.


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of the n training examples in an epoch: the one definition every path uses."""
  return _stream(_EPOCH_ORDER_STREAM, seed, epoch).permutation(n).astype(np.int32)


def steps_per_epoch(n: int, batch_size: int, drop_remainder: bool = False,
                    multiple_of: int = 1) -> int:
  """Batches in an epoch; a partial last batch counts if, cut to `multiple_of`, it is not empty."""
  full, rest = divmod(n, batch_size)
  return full + int(not drop_remainder and rest >= multiple_of)


def epoch_batch_indices(n: int, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True,
                        drop_remainder: bool = False, multiple_of: int = 1) -> list[np.ndarray]:
  """The global example indices of every batch of an epoch, in `epoch_permutation` order.

  The last partial batch is kept unless drop_remainder, cut to a multiple of `multiple_of`
  (the process or device count), so up to multiple_of - 1 examples an epoch can be skipped.

  Returns:
    A list of int32 index arrays, one per step.
  """
  order = (epoch_permutation(seed, epoch, n) if shuffle else np.arange(n, dtype=np.int32))
  batches = [order[i * batch_size:(i + 1) * batch_size]
             for i in range(steps_per_epoch(n, batch_size, drop_remainder, multiple_of))]
  if batches and len(batches[-1]) % multiple_of:
    batches[-1] = batches[-1][:len(batches[-1]) // multiple_of * multiple_of]
  return batches


def _numpy_batches(images, labels, local_batches):
  for indices in local_batches:
    yield images[indices], labels[indices]


def _tf_tensors(images, labels):
  """TensorFlow's copy of the arrays, which tf.data gathers from (0.4 s for 50,000 images)."""
  tf = import_tensorflow()
  return tf.constant(images), tf.constant(labels)


def _tf_batches(tensors, local_batches):
  """tf.data: the permuted indices, batched, gathered in parallel, prefetched."""
  tf = import_tensorflow()
  images_t, labels_t = tensors
  ds = tf.data.Dataset.from_tensor_slices(np.concatenate(local_batches))
  ds = ds.batch(len(local_batches[0]))
  ds = ds.map(lambda i: (tf.gather(images_t, i), tf.gather(labels_t, i)),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


class HostBatcher:
  """Host batches of one training set, epoch after epoch.

  The tf.data backend copies the arrays into TensorFlow on the first epoch that needs them and
  reuses that copy for every later epoch.

  Attributes:
    images: uint8 (N, H, W, C).
    labels: int32 (N,).
    backend: 'numpy' or 'tf' (tf.data), as resolved from the `backend` argument: 'numpy', 'tf'
      or 'auto' (tf where TensorFlow is installed); both yield identical batches.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, backend: str = 'auto'):
    if backend not in HOST_BACKENDS:
      raise UserError(f'config.data.host_backend={backend!r} is unknown; use one of '
                      f'{", ".join(HOST_BACKENDS)}')
    if backend == 'tf' and not tf_importable():
      raise UserError("config.data.host_backend='tf' needs tensorflow (pip install "
                      "'resnet-jax[tf]'); or use 'numpy' or 'auto'")
    self.images = images
    self.labels = np.asarray(labels, np.int32)
    self.backend = 'tf' if backend == 'tf' or (backend == 'auto' and tf_importable()) else 'numpy'
    self._tensors = None

  def epoch(self, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True,
            drop_remainder: bool = False, start_step: int = 0, process_index: int = 0,
            process_count: int = 1,
            multiple_of: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of uint8 NHWC batches for this process, in `epoch_permutation` order.

    Every process computes the same global batches (`epoch_batch_indices`) and yields its own
    contiguous share, batch_size // process_count examples. Without drop_remainder each example
    is seen exactly once an epoch, except that the partial last batch is cut to a multiple of
    `multiple_of`; with it, the n % batch_size examples at the end of the permutation (different
    ones each epoch) are skipped.

    Args:
      batch_size: the global batch, across every process.
      seed: the run's seed.
      epoch: the epoch number (picks the permutation).
      shuffle: False keeps the stored order (evaluation).
      drop_remainder: drop the partial last batch.
      start_step: batches already trained this epoch, skipped (mid-epoch resume).
      process_index: this process.
      process_count: processes sharing each global batch.
      multiple_of: what the partial last batch is cut to a multiple of: the global device count,
        so that the batch is the one the resident path trains (`epoch_batch_indices` with the
        same argument); a multiple of process_count. 0: process_count.

    Returns:
      An iterator of (images uint8, labels int32), this process's share of each batch.
    """
    if batch_size <= 0 or batch_size % process_count:
      raise UserError(f'config.batch_size={batch_size} must be a positive multiple of the '
                      f'process count ({process_count})')
    multiple_of = multiple_of or process_count
    if multiple_of % process_count:
      raise ValueError(f'multiple_of={multiple_of} is not a multiple of the {process_count} '
                       'processes')
    global_batches = epoch_batch_indices(len(self.labels), batch_size, seed=seed, epoch=epoch,
                                         shuffle=shuffle, drop_remainder=drop_remainder,
                                         multiple_of=multiple_of)
    local_batches = []
    for indices in global_batches[start_step:]:
      share = len(indices) // process_count
      local_batches.append(indices[process_index * share:(process_index + 1) * share])
    if self.backend == 'numpy' or not local_batches:
      return _numpy_batches(self.images, self.labels, local_batches)
    if self._tensors is None:
      self._tensors = _tf_tensors(self.images, self.labels)
    return _tf_batches(self._tensors, local_batches)
