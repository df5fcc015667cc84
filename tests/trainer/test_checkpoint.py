"""exploit: a population member's next start from its own checkpoint, a better member's and new hyperparameters."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import pytest
import torch

from trainer.checkpoint import Checkpoint, checkpoint_from_bytes, checkpoint_to_bytes, exploit
from trainer.config import ModelConfig, OptimizerConfig, RunConfig
from trainer.loop import train
from trainer.population import train_population

SMALL = ModelConfig("mlp", {"hidden": [16]})


def checkpoint_after(config: RunConfig, epoch: int) -> Checkpoint:
    saved: list[Checkpoint] = []
    train(config, on_checkpoint=saved.append, checkpoint_due=lambda e: e == epoch, should_stop=lambda: bool(saved))
    return checkpoint_from_bytes(checkpoint_to_bytes(saved[0]))  # through bytes, as the service stores it


def member(seed: int, lr: float, **params: Any) -> RunConfig:
    optimizer = OptimizerConfig("sgd", lr, {"momentum": 0.9, **params})
    return RunConfig(model=SMALL, optimizer=optimizer, epochs=4, batch_size=128, seed=seed, split_seed=0)


def test_exploit_takes_the_sources_weights_and_state_and_keeps_its_own_progress() -> None:
    own, source = checkpoint_after(member(1, 0.05), 2), checkpoint_after(member(2, 0.1, weight_decay=1e-3), 2)
    own_before, source_before = asdict(own), asdict(source)
    start = exploit(own, {"lr": 0.02, "momentum": 0.5}, source)

    assert start.model_state is source.model_state
    assert start.optimizer_state["state"] is source.optimizer_state["state"]
    assert start.optimizer_state["lr"] == 0.02
    # the source's numbers but those explored (its weight decay comes with its state)
    assert start.optimizer_state["hyperparameters"] == {
        "momentum": 0.5,
        "dampening": 0.0,
        "weight_decay": 1e-3,
        "nesterov": False,
    }
    for field in ("epoch", "data_generator_state", "torch_rng_state", "best_val_loss", "points", "divergence_state"):
        assert getattr(start, field) is getattr(own, field), field
    assert str(asdict(own)) == str(own_before) and str(asdict(source)) == str(source_before)  # inputs unchanged

    # resumed, alone or fused, the member trains on with the copied state and its new numbers
    config = member(1, 0.02, momentum=0.5)
    alone = train(config, start=start)
    by_hand = Checkpoint(
        **{
            **vars(own),
            "model_state": source.model_state,
            "optimizer_state": {
                **source.optimizer_state,
                "lr": 0.02,
                "hyperparameters": {**source.optimizer_state["hyperparameters"], "momentum": 0.5},
            },
        }
    )
    reference = train(config, start=by_hand)
    assert [asdict(p) | {"seconds": 0} for p in alone.points] == [asdict(p) | {"seconds": 0} for p in reference.points]
    assert [asdict(p) for p in alone.points[:2]] == own.points and len(alone.points) == 4
    (fused,) = train_population([config], starts=[start], dtype=torch.float32)
    assert [p.val_loss for p in fused.points] == pytest.approx([p.val_loss for p in alone.points], rel=1e-3)


def test_explore_alone_changes_only_the_hyperparameters() -> None:
    own = checkpoint_after(member(1, 0.05), 1)
    start = exploit(own, {"momentum": 0.8})
    assert start.model_state is own.model_state and start.optimizer_state["lr"] == own.optimizer_state["lr"]
    assert start.optimizer_state["hyperparameters"]["momentum"] == 0.8
    assert own.optimizer_state["hyperparameters"]["momentum"] == 0.9


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"momentum": 0.0}, "would change the sgd state kept per parameter"),  # the buffer would vanish
        ({"nesterov": True}, "would change the sgd state kept per parameter"),
        ({"momentum": -0.5}, "Invalid momentum value: -0.5"),
        ({"lr": float("nan")}, "Invalid learning rate: nan"),
        ({"betas": [0.9, 0.99]}, r"Unknown hyperparameter for sgd: \['betas'\]"),
    ],
)
def test_exploit_refuses_what_the_optimizer_would(hyperparameters: dict[str, Any], message: str) -> None:
    own = checkpoint_after(member(1, 0.05), 1)
    with pytest.raises(ValueError, match=message):
        exploit(own, hyperparameters)


def test_exploit_refuses_a_source_at_another_epoch() -> None:
    config = member(1, 0.05)
    with pytest.raises(ValueError, match="source at epoch 2, member at 1"):
        exploit(checkpoint_after(config, 1), {}, checkpoint_after(replace(config, seed=2), 2))
