"""Built-in datasets, user .npz files and image folders: shapes, seeded splits, standardisation, rejections."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer import data as data_module
from trainer.config import DatasetConfig
from trainer.data import DATASETS, Dataset, load_dataset

BUILTIN_SHAPES = {
    "digits": (1797, (1, 8, 8), 10),
    "mnist1d": (5000, (1, 40), 10),
    "spirals": (1500, (2,), 3),
    "blobs": (1200, (8,), 4),
}


def split_ids(ds: Dataset) -> torch.Tensor:
    """A fingerprint of which samples went to validation: their (standardised) first feature."""
    return ds.x_val.flatten(1)[:, :3]


@pytest.mark.parametrize("name", sorted(BUILTIN_SHAPES))
def test_load_dataset_builtin_shapes_and_split(name: str) -> None:
    n, shape, n_classes = BUILTIN_SHAPES[name]
    ds = load_dataset(DatasetConfig(name), seed=0)
    assert name in DATASETS
    assert (ds.name, ds.input_shape, ds.n_classes) == (name, shape, n_classes)
    assert len(ds.y_val) == round(0.2 * n) and len(ds.y_train) + len(ds.y_val) == n
    assert ds.x_train.shape == (len(ds.y_train), *shape) and ds.x_val.shape == (len(ds.y_val), *shape)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert set(ds.y_train.tolist()) == set(range(n_classes))
    # standardised with the training statistics: every non-constant train feature has mean 0, std 1
    flat = ds.x_train.flatten(1)
    varying = flat.std(dim=0) > 0
    assert flat.mean(dim=0).abs().max() < 1e-4
    assert torch.allclose(flat.std(dim=0, correction=0)[varying], torch.ones(int(varying.sum())), atol=1e-3)

    same = load_dataset(DatasetConfig(name), seed=0)
    other = load_dataset(DatasetConfig(name), seed=1)
    assert torch.equal(split_ids(same), split_ids(ds))
    assert not torch.equal(split_ids(other), split_ids(ds))


def test_load_dataset_mnist1d_leaves_global_rngs_alone() -> None:
    data_module._mnist1d.cache_clear()
    data_module._load.cache_clear()
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    load_dataset(DatasetConfig("mnist1d"), seed=3)
    assert np.random.rand() == expected


def test_load_dataset_val_fraction() -> None:
    ds = load_dataset(DatasetConfig("spirals", val_fraction=0.5), seed=0)
    assert len(ds.y_val) == 750


def test_load_dataset_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="Unknown dataset: 'cifar10'"):
        load_dataset(DatasetConfig("cifar10"), seed=0)


def write_npz(path: Path, n: int = 60, labels: tuple[int, ...] = (3, 7, 9), **arrays: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    content = {"x": rng.normal(size=(n, 5)), "y": np.array([labels[i % len(labels)] for i in range(n)])}
    content.update(arrays)
    np.savez(path, **content)


def test_load_dataset_npz(tmp_path: Path) -> None:
    write_npz(tmp_path / "mine.npz")
    ds = load_dataset(DatasetConfig(name=None, path="mine.npz"), seed=0, data_root=tmp_path)
    assert (ds.name, ds.input_shape, ds.n_classes) == ("mine.npz", (5,), 3)
    assert sorted(set(ds.y_train.tolist()) | set(ds.y_val.tolist())) == [0, 1, 2]  # 3, 7, 9 -> 0, 1, 2
    assert len(ds.y_val) == 12


def test_load_dataset_path_wins_over_default_name(tmp_path: Path) -> None:
    write_npz(tmp_path / "mine.npz")
    ds = load_dataset(DatasetConfig(path="mine.npz"), seed=0, data_root=tmp_path)
    assert ds.input_shape == (5,)


def test_load_dataset_npz_reloads_when_replaced(tmp_path: Path) -> None:
    write_npz(tmp_path / "mine.npz")
    first = load_dataset(DatasetConfig(path="mine.npz"), seed=0, data_root=tmp_path)
    write_npz(tmp_path / "mine.npz", n=80, x=np.ones((80, 2)) * np.arange(80)[:, None])
    os.utime(tmp_path / "mine.npz", ns=(1, 10**18))  # a distinct mtime even on coarse clocks
    second = load_dataset(DatasetConfig(path="mine.npz"), seed=0, data_root=tmp_path)
    assert first.input_shape == (5,) and second.input_shape == (2,)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((60, 5)), "y": np.zeros(59, dtype=int)}, "x has 60 samples but y has 59"),
        ({"x": np.full((60, 5), np.nan)}, "features must be finite"),
        ({"y": np.zeros(60, dtype=int)}, "at least 2 classes, found 1"),
        ({"y": np.linspace(0, 1, 60)}, "integer labels"),
        ({"y": np.zeros((60, 2), dtype=int)}, r"y must have shape \(N,\)"),
        ({"x": np.array(["a"] * 60)}, "x must be numeric"),
    ],
    ids=["count-mismatch", "non-finite", "one-class", "float-labels", "2d-labels", "string-features"],
)
def test_load_dataset_npz_rejects_bad_arrays(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_dataset(DatasetConfig(path="bad.npz"), seed=0, data_root=tmp_path)


def test_load_dataset_npz_rejects_missing_array_and_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((10, 2)))
    with pytest.raises(ValueError, match=r"lacks array\(s\) \['y'\]"):
        load_dataset(DatasetConfig(path="nolabels.npz"), seed=0, data_root=tmp_path)
    with pytest.raises(ValueError, match="Dataset not found: 'absent.npz'"):
        load_dataset(DatasetConfig(path="absent.npz"), seed=0, data_root=tmp_path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="Cannot read dataset 'junk.npz'"):
        load_dataset(DatasetConfig(path="junk.npz"), seed=0, data_root=tmp_path)


def write_image_folder(root: Path, classes: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(10 + i, 12, 3), dtype=np.uint8)  # sizes differ on purpose
            mode = ["RGB", "L", "RGBA"][i % 3]
            Image.fromarray(pixels).convert(mode).save(root / name / f"{i}.png")
    (root / next(iter(classes)) / "notes.txt").write_text("not an image")


def test_load_dataset_image_folder(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "pets", {"cats": 6, "dogs": 4})
    ds = load_dataset(DatasetConfig(path="pets", image_size=8), seed=0, data_root=tmp_path)
    assert (ds.name, ds.input_shape, ds.n_classes) == ("pets", (3, 8, 8), 2)
    assert len(ds.y_train) + len(ds.y_val) == 10 and len(ds.y_val) == 2
    labels = torch.cat([ds.y_train, ds.y_val])
    assert (labels == 0).sum() == 6 and (labels == 1).sum() == 4  # classes in sorted folder order


def test_load_dataset_image_folder_rejects_bad_layouts(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "one", {"cats": 3})
    with pytest.raises(ValueError, match="at least 2; found 1"):
        load_dataset(DatasetConfig(path="one"), seed=0, data_root=tmp_path)
    write_image_folder(tmp_path / "empty", {"cats": 3, "dogs": 0})
    with pytest.raises(ValueError, match="class folder 'dogs' holds no images"):
        load_dataset(DatasetConfig(path="empty"), seed=0, data_root=tmp_path)
    write_image_folder(tmp_path / "broken", {"cats": 2, "dogs": 2})
    (tmp_path / "broken" / "dogs" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"cannot read image dogs/bad.png"):
        load_dataset(DatasetConfig(path="broken"), seed=0, data_root=tmp_path)


@pytest.mark.parametrize("path", ["../outside.npz", "sub/../../outside.npz", "/etc/passwd", "link.npz", "", "."])
def test_load_dataset_rejects_path_outside_root(tmp_path: Path, path: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write_npz(tmp_path / "outside.npz")
    (root / "link.npz").symlink_to(tmp_path / "outside.npz")
    with pytest.raises(ValueError, match="Invalid dataset path"):
        load_dataset(DatasetConfig(path=path), seed=0, data_root=root)


def test_load_dataset_path_needs_data_root() -> None:
    with pytest.raises(ValueError, match="needs a data root"):
        load_dataset(DatasetConfig(path="mine.npz"), seed=0)
