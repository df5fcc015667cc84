"""The torch-free catalog describes exactly the datasets the trainer loads."""

from __future__ import annotations

import pytest

from lrlab.catalog import DATASETS
from trainer import DatasetConfig, load_dataset


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_catalog_matches_trainer_dataset(name: str) -> None:
    data = load_dataset(DatasetConfig(name=name), seed=0)
    assert list(data.input_shape) == DATASETS[name]["input_shape"]
    assert data.n_classes == DATASETS[name]["n_classes"]
    assert len(data.y_train) + len(data.y_val) == DATASETS[name]["n_samples"]
