"""Data sources: each one read into uint8 NHWC images and integer labels, and the one check of them.

`load_source` picks the source named by `config.data.source` (tfds, the pickled
`cifar-10-batches-py`, the JPEG copy `jpeg_npz`, image folders, synthetic images, or `auto`, which
searches for them); `validate_split` is the check every split goes through (TFDS included).
Subsets, hold-out and normalisation are `input_pipeline`'s.

An explicit `config.data.data_dir` is used or refused: `auto` searches ./data, $RESNET_JAX_DATA
and ../shared/data/cifar10_jpeg only where data_dir is empty.

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
from typing import NamedTuple, Sequence
import zipfile
import zlib

import numpy as np
from PIL import Image

from resnet_jax.data import tf_host
from resnet_jax.errors import UserError, one_line

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                   'ship', 'truck')
SOURCES = ('auto', 'tfds', 'cifar_batches', 'jpeg_npz', 'folder', 'synthetic')
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.ppm', '.tif', '.tiff')
CIFAR_BATCHES_FOLDER = 'cifar-10-batches-py'
CIFAR_TRAIN_FILES = tuple(f'data_batch_{i}' for i in range(1, 6))
JPEG_NPZ_FILES = ('train.npz', 'test.npz')
# `auto` looks in config.data.data_dir alone where it is set, else in ./data, $RESNET_JAX_DATA,
# then the shared JPEG copy.
DATA_ENV_VAR = 'RESNET_JAX_DATA'
SHARED_DATA_DIR = os.path.join('..', 'shared', 'data', 'cifar10_jpeg')
SYNTHETIC_SIZES = (50_000, 10_000)
# Tags of the NumPy random streams (`random_stream`), every stream of the data in one place;
# non-zero, so that no two streams coincide.
EPOCH_ORDER_STREAM = 1
HOLDOUT_STREAM = 2
SYNTHETIC_STREAM = 3
_DECODE_CHUNK = 1024


class Split(NamedTuple):
  """One split as a source read it, unchecked; `where` names its file or folder in errors."""
  images: np.ndarray
  labels: np.ndarray
  where: str


class Loaded(NamedTuple):
  """What a source reads: train and test splits, class names, a description for the report."""
  train: Split
  test: Split
  class_names: tuple[str, ...]
  source: str


def random_stream(tag: int, seed: int = 0, epoch: int = 0) -> np.random.Generator:
  """The random stream `tag` of a seed (and epoch), distinct from every other stream.

  SeedSequence pads its entropy with zeros, so (seed, epoch) and (seed, epoch, 0) or an integer
  seed k and (k, 0) would give one stream: three words, each below 2**32, the last the non-zero
  tag, differ from each other and from every integer seed (the fixed orders of `_fixed_order`).
  """
  return np.random.default_rng((seed % 2**32, epoch % 2**32, tag))


def _tfds_importable() -> bool:
  return tf_host.tf_importable() and importlib.util.find_spec('tensorflow_datasets') is not None


def tfds_prepared(data_cfg) -> bool:
  """Whether TFDS has `config.data.tfds_name` on disk (never downloads)."""
  if not _tfds_importable():
    return False
  tf_host.import_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.builder(data_cfg.tfds_name, data_dir=data_cfg.data_dir or None).is_prepared()
  except Exception:  # pylint: disable=broad-except  # Any failure means "not usable here".
    return False


def _load_tfds(data_cfg) -> Loaded:
  """`config.data.tfds_name` through tensorflow_datasets, from its data_dir, without download."""
  if not _tfds_importable():
    raise UserError("config.data.source='tfds' needs tensorflow and tensorflow-datasets "
                    "(pip install 'resnet-jax[tf]'); or set config.data.source='cifar_batches' "
                    "or 'jpeg_npz' with config.data.data_dir")
  tf = tf_host.import_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, data_dir = data_cfg.tfds_name, data_cfg.data_dir or None
  arrays = {}
  try:
    for split, subset in (('train', data_cfg.train_subset), ('test', data_cfg.test_subset)):
      ds, info = tfds.load(name, split=f'{split}[:{subset}]' if subset > 0 else split,
                           data_dir=data_dir, download=False, with_info=True)
      batches = list(tfds.as_numpy(ds.batch(10_000)))
      arrays[split] = Split(np.concatenate([b['image'] for b in batches]),
                            np.concatenate([b['label'] for b in batches]),
                            f'TFDS {name} {split} split')
  except (AssertionError, ValueError, OSError, KeyError, tf.errors.OpError) as e:
    raise UserError(
        f'TFDS dataset {name!r} is not prepared in {data_dir or "the default TFDS data_dir"} '
        f'({one_line(e)}); prepare it with `tfds build {name} --data_dir=DIR` and set '
        'config.data.data_dir=DIR, or use config.data.source=cifar_batches|jpeg_npz') from None
  return Loaded(arrays['train'], arrays['test'], tuple(info.features['label'].names),
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
    raise UserError(f'{path} is not a readable CIFAR-10 batch ({one_line(e)}); re-extract '
                    'cifar-10-python.tar.gz (or rerun to_cifar_batches.py) there, or point '
                    'config.data.data_dir at a good copy') from None
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar_batches_folder(path: pathlib.Path) -> pathlib.Path | None:
  """The `cifar-10-batches-py` folder at or inside path, if there is one."""
  for folder in (path / CIFAR_BATCHES_FOLDER, path):
    if (folder / CIFAR_TRAIN_FILES[0]).is_file():
      return folder
  return None


def _load_cifar_batches(path: pathlib.Path) -> Loaded:
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
      raise UserError(f'{folder / "batches.meta"} is unreadable ({one_line(e)}); delete it '
                      '(the CIFAR-10 class names are then used) or re-extract the data') from None
  return Loaded(Split(np.concatenate([t[0] for t in train]),
                      np.concatenate([t[1] for t in train]),
                      str(folder / 'data_batch_[1-5]')),
                Split(test_images, test_labels, str(folder / 'test_batch')),
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
    raise UserError(f'cannot decode an image in {where} ({one_line(e)}); replace or remove the '
                    'file, or point config.data.data_dir at good data') from None
  return np.concatenate(decoded) if decoded else np.zeros((0, image_size, image_size, 3), np.uint8)


def resize_images(images: np.ndarray, image_size: int) -> np.ndarray:
  """uint8 NHWC images at image_size x image_size (bilinear; as they are where they already are)."""
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
    raise UserError(f'{path} is not a readable JPEG npz ({one_line(e)}); copy train.npz and '
                    'test.npz again (see their sha256 in the README), or set '
                    'config.data.data_dir to a good copy') from None
  order = _fixed_order(len(labels), order_seed, limit)
  files = [io.BytesIO(jpeg[offsets[i]:offsets[i + 1]]) for i in order]
  return Split(_decode_images(files, image_size, path), labels[order], str(path))


def _load_jpeg_npz(path: pathlib.Path, data_cfg) -> Loaded:
  missing = [f for f in JPEG_NPZ_FILES if not (path / f).is_file()]
  if missing:
    raise UserError(f'{path} lacks {", ".join(missing)}; set config.data.data_dir to the folder '
                    'holding train.npz and test.npz (e.g. ../shared/data/cifar10_jpeg)')
  train = _read_jpeg_npz(path / 'train.npz', 0, data_cfg.train_subset, data_cfg.image_size)
  test = _read_jpeg_npz(path / 'test.npz', 1, data_cfg.test_subset, data_cfg.image_size)
  return Loaded(train, test, CIFAR10_CLASSES, f'jpeg_npz {path}')


def _folder_split(root: pathlib.Path, class_names, order_seed, limit, image_size, *,
                  every_class: bool = False):
  """A split of class folders; every_class: each must hold images (a training split)."""
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
  empty = [name for label, name in enumerate(class_names) if label not in labels]
  if every_class and empty:
    raise UserError(f'{root / empty[0]} holds no image files ({", ".join(IMAGE_EXTENSIONS)}): '
                    'the model would have a class it never trains on; add its images, or remove '
                    'the folder')
  order = _fixed_order(len(files), order_seed, limit)
  images = _decode_images([files[i] for i in order], image_size, root)
  return Split(images, np.asarray(labels, np.int32)[order], str(root))


def _load_folder(path: pathlib.Path, data_cfg) -> Loaded:
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
  train = _folder_split(train_root, class_names, 0, data_cfg.train_subset, data_cfg.image_size,
                        every_class=True)
  test = _folder_split(test_root, class_names, 1, data_cfg.test_subset, data_cfg.image_size)
  return Loaded(train, test, class_names, f'folder {path}')


def _load_synthetic(data_cfg) -> Loaded:
  """Deterministic random images, learnable: half a fixed per-class template, half noise."""
  rng = random_stream(SYNTHETIC_STREAM)
  size, num_classes = data_cfg.image_size, len(CIFAR10_CLASSES)
  templates = rng.integers(0, 128, (num_classes, size, size, 3), dtype=np.uint8)

  def make(n, split):
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    images = templates[labels] + rng.integers(0, 128, (n, size, size, 3), dtype=np.uint8)
    return Split(images, labels, f'synthetic {split} split')

  n_train, n_test = (subset if subset > 0 else default for subset, default in
                     zip((data_cfg.train_subset, data_cfg.test_subset), SYNTHETIC_SIZES))
  return Loaded(make(n_train, 'train'), make(n_test, 'test'), CIFAR10_CLASSES,
                'synthetic (random images)')


def _auto_search_dirs(data_cfg) -> list[pathlib.Path]:
  """config.data.data_dir alone where it is set (used or refused), else the default places."""
  if data_cfg.data_dir:
    return [pathlib.Path(data_cfg.data_dir)]
  dirs = ('data', os.environ.get(DATA_ENV_VAR, ''), SHARED_DATA_DIR)
  return [pathlib.Path(d) for d in dirs if d]


def resolve_source(data_cfg):
  """config.data with `auto` resolved to the source it finds now (a copy); others as they are.

  `auto` is TFDS where it is installed and prepared, else the first local copy found.
  """
  if data_cfg.source != 'auto':
    return data_cfg
  resolved = data_cfg.copy_and_resolve_references()
  if tfds_prepared(data_cfg):
    resolved.source = 'tfds'
    return resolved
  search = _auto_search_dirs(data_cfg)
  for path in search:
    found = ('cifar_batches' if _cifar_batches_folder(path) is not None else
             'jpeg_npz' if all((path / f).is_file() for f in JPEG_NPZ_FILES) else None)
    if found:
      resolved.source, resolved.data_dir = found, str(path)
      return resolved
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


def load_source(data_cfg) -> Loaded:
  """Reads config.data's source: its train and test splits as read, unchecked (`validate_split`).

  Raises:
    UserError: data that is missing or unreadable (the source's name is checked before, by
      `input_pipeline.check_config`).
  """
  source = data_cfg.source
  if source == 'auto':
    data_cfg = resolve_source(data_cfg)
    source = data_cfg.source
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
