"""A population's member run specs: what an exploit between two members may assume they share."""

from __future__ import annotations

import torch

from lrlab.schemas.pbt import PbtCreate
from trainer.config import RunConfig
from trainer.data import load_dataset


def test_members_share_one_train_validation_split() -> None:
    # an exploit hands member 0's weights to member 3: had they trained on different splits, member 3's
    # validation set would hold samples those weights were trained on, and the rounds would reward memorising
    request = PbtCreate.model_validate(
        {"base": {"dataset": "spirals", "seed": 5}, "population": 4, "mutations": {"lr": {"log_uniform": [1e-3, 1]}}}
    )
    splits = []
    for k in (0, 3):
        config = RunConfig.from_spec(request.member_spec(k, {"lr": 0.01 * (k + 1)}).to_json())
        assert (config.seed, config.data_seed) == (5 + k, 5)  # its own init and data order, everyone's split
        splits.append(load_dataset(config.dataset, config.data_seed))
    first, other = splits
    assert torch.equal(first.x_val, other.x_val) and torch.equal(first.y_val, other.y_val)
    assert torch.equal(first.x_train, other.x_train)


def test_member_spec_carries_its_hyperparameters_and_never_stops_early() -> None:
    request = PbtCreate.model_validate(
        {
            "base": {"optimizer": {"name": "sgd", "momentum": 0.5}},
            "epochs": 12,
            "mutations": {"lr": {"uniform": [0.01, 0.1]}},
        }
    )
    spec = request.member_spec(2, {"lr": 0.05, "momentum": 0.9})
    assert (spec.optimizer.lr, spec.optimizer.momentum, spec.epochs) == (0.05, 0.9, 12)  # type: ignore[union-attr]
    assert spec.divergence.enabled is False and spec.patience is None
