"""Datasets as in-memory tensors: the built-ins, user data (.npz or image folders) and plugins' datasets (entry
points of the group lrlab.datasets), split and standardised."""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from trainer.config import DatasetConfig
from trainer.plugins import PluginData, installed, load_plugin_dataset

logger = logging.getLogger(__name__)

DATASETS: dict[str, str] = {
    "digits": "8x8 handwritten digits from scikit-learn: 1797 images, 10 classes, input (1, 8, 8)",
    "mnist1d": "MNIST-1D (Greydanus 2020), generated locally: 5000 signals, 10 classes, input (1, 40)",
    "spirals": "three interleaved 2-D spirals with noise: 1500 points, 3 classes, input (2,)",
    "blobs": "overlapping gaussian blobs: 1200 points in 8-D, 4 classes, input (8,)",
}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# The built-ins are fixed datasets: the run seed picks the split and the data order, not the data.
GENERATION_SEED = 0


@dataclass
class Dataset:
    """Read-only once built: loaded datasets are cached and shared between runs of a process."""

    x_train: Tensor  # (N_train, *input_shape) float32, standardised with train statistics
    y_train: Tensor  # (N_train,) int64 in [0, n_classes)
    x_val: Tensor  # (N_val, *input_shape)
    y_val: Tensor  # (N_val,)
    input_shape: tuple[int, ...]
    n_classes: int
    name: str


@functools.cache  # parsed once per process, not once per seed of a population (docs/benchmarks.md)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.images[:, None], digits.target  # (1797, 1, 8, 8), (1797,)
    x.flags.writeable = y.flags.writeable = False  # shared by every split: they index copies out of it
    return x, y


@functools.cache
def _mnist1d() -> tuple[np.ndarray, np.ndarray]:
    # make_dataset, never mnist1d.get_dataset (which downloads); generation takes about a second
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()  # the canonical dataset: 5000 samples, seed 42
    # make_dataset reseeds numpy's and random's global generators; leave them as we found them
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = np.concatenate([data["x"], data["x_test"]])[:, None]  # (5000, 1, 40)
    return x, np.concatenate([data["y"], data["y_test"]])


def _spirals(n_per_class: int = 500, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(GENERATION_SEED)
    xs, ys = [], []
    for k in range(n_classes):
        radius = np.linspace(0.05, 1.0, n_per_class)
        # each arm turns 1.5 times around, offset by 1/n_classes of a turn; noise on the angle
        angle = 2 * math.pi * (k / n_classes + 1.5 * radius) + rng.normal(0.0, 0.25, n_per_class)
        xs.append(np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1))
        ys.append(np.full(n_per_class, k))
    return np.concatenate(xs), np.concatenate(ys)  # (1500, 2), (1500,)


def _blobs() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_blobs

    # centres close enough, relative to the spread, that the classes overlap a little
    x, y = make_blobs(
        n_samples=1200, n_features=8, centers=4, cluster_std=2.0, center_box=(-3, 3), random_state=GENERATION_SEED
    )
    return x, y  # (1200, 8), (1200,)


_BUILTINS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _digits,
    "mnist1d": _mnist1d,
    "spirals": _spirals,
    "blobs": _blobs,
}


def resolve_user_path(path: str, data_root: Path | None) -> Path:
    """The user's dataset under data_root; anything that could reach outside it is refused."""
    if data_root is None:
        raise ValueError(f"Dataset path {path!r} needs a data root")
    relative = Path(path)
    if not path.strip() or relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"Invalid dataset path: {path!r} (must be relative to the data root, without '..')")
    root = Path(data_root).resolve()
    full = (root / relative).resolve()  # follows symlinks, so a link out of the root is caught too
    if full == root or not full.is_relative_to(root):
        raise ValueError(f"Invalid dataset path: {path!r} (outside the data root)")
    if not full.exists():
        raise ValueError(f"Dataset not found: {path!r}")
    if full.is_file() and full.suffix.lower() != ".npz":
        raise ValueError(f"Unsupported dataset file: {path!r} (need a .npz file or an image folder)")
    return full


def _read_npz(file: Path, path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        arrays = np.load(file, allow_pickle=False)
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with arrays:
            files = sorted(arrays.files)
            x = arrays["x"] if "x" in files else None
            y = arrays["y"] if "y" in files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:  # e.g. object arrays, a truncated file
        raise ValueError(f"Cannot read dataset {path!r}: {e}") from e
    if x is None or y is None:
        missing = [name for name, array in (("x", x), ("y", y)) if array is None]
        raise ValueError(f"Dataset {path!r} lacks array(s) {missing} (has {files})")
    if x.ndim == 0:
        raise ValueError(f"Dataset {path!r}: x must have shape (N, ...), got a scalar")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"Dataset {path!r}: x must be numeric, got dtype {x.dtype}")
    if y.ndim != 1:
        raise ValueError(f"Dataset {path!r}: y must have shape (N,), got {y.shape}")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)  # integral floats, as numpy writes labels that went through float math
    if y.dtype.kind not in "iu":
        raise ValueError(f"Dataset {path!r}: y must hold integer labels, got dtype {y.dtype}")
    if len(x) != len(y):
        raise ValueError(f"Dataset {path!r}: x has {len(x)} samples but y has {len(y)}")
    return (x[:, None] if x.ndim == 1 else x), y


def _read_image_folder(folder: Path, path: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(f"Dataset {path!r} needs one sub-folder per class, at least 2; found {len(classes)}")
    xs, ys = [], []
    for label, class_dir in enumerate(classes):
        files = sorted(f for f in class_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not files:
            raise ValueError(f"Dataset {path!r}: class folder {class_dir.name!r} holds no images")
        for file in files:
            if not file.resolve().is_relative_to(folder.resolve()):
                raise ValueError(f"Dataset {path!r}: {file.relative_to(folder)} links outside the dataset")
            try:
                with Image.open(file) as opened:
                    image = opened.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise ValueError(f"Dataset {path!r}: cannot read image {file.relative_to(folder)}: {e}") from e
            xs.append(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0)  # (3, S, S)
            ys.append(label)
    return np.stack(xs), np.array(ys)


def _signature(full: Path) -> tuple[int, ...]:
    """Modification times that change when the user replaces their data, so the cache reloads it."""
    if full.is_file():
        return (full.stat().st_mtime_ns, full.stat().st_size)
    return tuple(d.stat().st_mtime_ns for d in [full, *sorted(full.iterdir())] if d.is_dir())


def _features(x: np.ndarray, name: str) -> np.ndarray:
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"Dataset {name!r}: features must be finite (found NaN or infinity)")
    return x


def _split(x: np.ndarray, y: np.ndarray, cfg: DatasetConfig, seed: int, name: str) -> Dataset:
    x = _features(x, name)
    n = len(y)
    n_val = min(max(round(n * cfg.val_fraction), 1), n - 1)
    # the split depends on the seed alone, so runs with the same seed see the same train/val sets
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    train, val = order[n_val:], order[:n_val]
    return _standardised(x[train], y[train], x[val], y[val], name)


def _standardised(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, name: str) -> Dataset:
    """Features standardised with the training statistics; any integer labels as 0..K-1, K over both parts."""
    labels, codes = np.unique(np.concatenate([y_train, y_val]), return_inverse=True)
    if len(labels) < 2:
        raise ValueError(f"Dataset {name!r} needs at least 2 classes, found {len(labels)}")
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std < 1e-6] = 1.0  # constant features (e.g. digits' blank corners) stay at zero

    def to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(np.ascontiguousarray((x - mean) / std)), torch.from_numpy(y.astype(np.int64))

    (xt, yt), (xv, yv) = to_tensors(x_train, codes[: len(y_train)]), to_tensors(x_val, codes[len(y_train) :])
    return Dataset(xt, yt, xv, yv, tuple(x_train.shape[1:]), len(labels), name)


@functools.lru_cache(maxsize=4)
def _plugin_data(name: str, params_json: str) -> PluginData:
    """A plugin dataset's arrays, made once per process for each parameter set (whatever the seed)."""
    return load_plugin_dataset(installed().dataset(name), json.loads(params_json))


@functools.lru_cache(maxsize=16)
def _load(cfg: DatasetConfig, seed: int, full: Path | None, signature: tuple[int, ...]) -> Dataset:
    if full is not None:
        assert cfg.path is not None
        name = cfg.path
        x, y = _read_npz(full, name) if full.is_file() else _read_image_folder(full, name, cfg.image_size)
        dataset = _split(x, y, cfg, seed, name)
    elif cfg.name in _BUILTINS:
        name = cfg.name
        dataset = _split(*_BUILTINS[cfg.name](), cfg, seed, name)
    else:
        assert cfg.name is not None
        name = cfg.name
        made = _plugin_data(name, json.dumps(cfg.params, sort_keys=True))
        if made.val is None:  # (x, y): split here, by the seed, as an uploaded file is
            dataset = _split(*made.train, cfg, seed, name)
        else:  # the plugin's own split: the seed does not change it
            (x_train, y_train), (x_val, y_val) = made.train, made.val
            dataset = _standardised(_features(x_train, name), y_train, _features(x_val, name), y_val, name)
    logger.info(
        "loaded %s: %d train / %d val, input %s, %d classes",
        name,
        len(dataset.y_train),
        len(dataset.y_val),
        dataset.input_shape,
        dataset.n_classes,
    )
    return dataset


def load_dataset(cfg: DatasetConfig, seed: int, data_root: Path | None = None) -> Dataset:
    """Load (or fetch from this process's cache) a dataset split for `seed`; user paths resolve under data_root."""
    if cfg.path is not None:  # a user file wins over the (default) built-in name
        full = resolve_user_path(cfg.path, data_root)
        return _load(cfg, seed, full, _signature(full))
    if cfg.name in _BUILTINS:
        if cfg.params:
            raise ValueError(f"The built-in dataset {cfg.name!r} takes no params (got {sorted(cfg.params)})")
        return _load(cfg, seed, None, ())
    plugins = installed()
    if cfg.name not in plugins.datasets:
        raise ValueError(f"Unknown dataset: {cfg.name!r} (choose from {sorted(_BUILTINS) + sorted(plugins.datasets)})")
    plugins.datasets[cfg.name].check_params(cfg.params)
    return _load(cfg, seed, None, ())
