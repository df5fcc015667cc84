"""The training loop end to end: learning, determinism, divergence, stopping, early stopping and exact resume."""

from __future__ import annotations

import io
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.checkpoint import Checkpoint, checkpoint_from_bytes, checkpoint_to_bytes
from trainer.config import (
    DatasetConfig,
    DivergenceConfig,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    ScheduleConfig,
)
from trainer.epochs import EpochPoint
from trainer.loop import train
from trainer.schedules import lr_at
from trainer.setup import resolve_device


def curve(points: list[EpochPoint]) -> list[dict[str, float]]:
    """Everything about an epoch except its wall time."""
    return [{k: v for k, v in asdict(p).items() if k != "seconds"} for p in points]


def test_train_default_digits_adam_learns() -> None:
    seen: list[EpochPoint] = []
    result = train(RunConfig(epochs=3), on_epoch=seen.append)
    assert result.status == "succeeded" and not result.early_stopped
    assert [p.epoch for p in result.points] == [1, 2, 3] and seen == result.points
    assert result.points[-1].val_accuracy >= 0.8
    assert result.points[-1].train_loss < result.points[0].train_loss
    assert result.n_parameters == 26122 and result.device == "cpu"
    assert all(p.seconds > 0 for p in result.points)


@pytest.mark.parametrize(
    ("dataset", "model"),
    [
        ("spirals", ModelConfig("mlp", {"hidden": [64, 64]})),
        ("digits", ModelConfig("cnn", {"channels": 8})),
        ("blobs", ModelConfig("resnet", {"width": 8, "blocks": 1})),
    ],
)
def test_train_each_model_beats_chance(dataset: str, model: ModelConfig) -> None:
    config = RunConfig(DatasetConfig(dataset), model, OptimizerConfig("adam", 1e-2), epochs=4, batch_size=16)
    result = train(config)
    chance = {"spirals": 1 / 3, "digits": 1 / 10, "blobs": 1 / 4}[dataset]
    assert result.status == "succeeded"
    assert result.points[-1].val_accuracy > 1.5 * chance


def test_train_same_seed_same_curve() -> None:
    config = RunConfig(model=ModelConfig("mlp", {"hidden": [32], "dropout": 0.3}), epochs=2, seed=5)
    first, second = train(config), train(config)
    assert curve(first.points) == curve(second.points)
    assert curve(train(replace(config, seed=6)).points) != curve(first.points)


def test_train_records_scheduled_lr() -> None:
    schedule = ScheduleConfig("step", {"step_size": 1, "gamma": 0.5}, warmup_epochs=2)
    config = RunConfig(optimizer=OptimizerConfig("sgd", 0.1), schedule=schedule, epochs=4)
    result = train(config)
    assert [p.lr for p in result.points] == [lr_at(schedule, 0.1, e, 4) for e in (1, 2, 3, 4)]
    assert [p.lr for p in result.points] == pytest.approx([0.05, 0.1, 0.1, 0.05])


def test_train_sgd_huge_lr_diverges_early() -> None:
    seen: list[EpochPoint] = []
    result = train(RunConfig(optimizer=OptimizerConfig("sgd", 1000.0), epochs=5), on_epoch=seen.append)
    assert result.status == "diverged"
    assert result.diverged_at in (1, 2)
    assert result.reason is not None and "loss" in result.reason and "step" in result.reason
    assert seen == result.points and seen[-1].epoch == result.diverged_at  # the partial epoch is reported


def test_train_nan_loss_reason() -> None:
    result = train(RunConfig(optimizer=OptimizerConfig("sgd", 1e30), epochs=3))
    assert (result.status, result.diverged_at) == ("diverged", 1)
    assert result.reason is not None and result.reason.startswith("loss became nan at step ")
    assert np.isnan(result.points[0].train_loss)


def test_train_divergence_check_can_be_disabled() -> None:
    config = RunConfig(optimizer=OptimizerConfig("sgd", 1000.0), epochs=2, divergence=DivergenceConfig(enabled=False))
    result = train(config)
    assert (result.status, len(result.points), result.reason) == ("succeeded", 2, None)


def test_train_should_stop_stops_after_epoch() -> None:
    calls: list[int] = []

    def should_stop() -> bool:  # asked once per epoch; says stop the second time
        calls.append(1)
        return len(calls) >= 2

    result = train(RunConfig(epochs=5), should_stop=should_stop)
    assert result.status == "stopped"
    assert [p.epoch for p in result.points] == [1, 2]


def test_train_early_stopping_on_flat_val_loss() -> None:
    # lr 0 leaves the weights alone, so val_loss never improves after the first epoch
    config = RunConfig(optimizer=OptimizerConfig("adam", 0.0), epochs=10, patience=2)
    saved: list[Checkpoint] = []
    result = train(config, on_checkpoint=saved.append)
    assert (result.status, result.early_stopped) == ("succeeded", True)
    assert [p.epoch for p in result.points] == [1, 2, 3]
    # resuming from the last checkpoint of a run that stopped early trains no further
    resumed = train(config, start=saved[-1])
    assert resumed.early_stopped and curve(resumed.points) == curve(result.points)


RESUME_CONFIGS = [
    RunConfig(
        model=ModelConfig("mlp", {"hidden": [32, 32], "dropout": 0.2}),  # dropout draws from the global RNG
        optimizer=OptimizerConfig("adam", 3e-3, {"amsgrad": True, "weight_decay": 1e-3}),
        schedule=ScheduleConfig("cosine"),
        epochs=4,
        seed=3,
    ),
    RunConfig(
        model=ModelConfig("cnn", {"channels": 4, "depth": 2}),  # BatchNorm running statistics
        optimizer=OptimizerConfig("sgd", 0.05, {"momentum": 0.9, "nesterov": True}),
        schedule=ScheduleConfig("multistep", {"milestones": [2, 3]}),
        epochs=4,
        batch_size=100,
        patience=10,
    ),
]


@pytest.mark.parametrize("config", RESUME_CONFIGS, ids=["mlp-dropout-adam", "cnn-sgd-multistep"])
def test_train_resume_matches_uninterrupted(config: RunConfig) -> None:
    saved: list[bytes] = []
    straight = train(config, on_checkpoint=lambda ckpt: saved.append(checkpoint_to_bytes(ckpt)))
    assert len(saved) == config.epochs

    torch.manual_seed(999)  # whatever the process did in between must not matter
    start = checkpoint_from_bytes(saved[1], "cpu")
    assert start.epoch == 2
    later: list[EpochPoint] = []
    resumed = train(config, start=start, on_epoch=later.append)
    assert [p.epoch for p in later] == [3, 4]
    assert curve(resumed.points) == curve(straight.points)
    assert resumed.status == straight.status


def test_checkpoint_roundtrip_is_plain_data() -> None:
    captured: list[Checkpoint] = []
    train(RunConfig(epochs=1), on_checkpoint=captured.append)
    data = checkpoint_to_bytes(captured[0])
    restored = checkpoint_from_bytes(data)
    assert restored.epoch == 1 and restored.points == captured[0].points
    assert all(torch.equal(restored.model_state[k], v) for k, v in captured[0].model_state.items())
    with pytest.raises(ValueError, match="Not a trainer checkpoint"):
        checkpoint_from_bytes(torch_bytes({"epoch": 1}))


def torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_train_user_npz_under_data_root(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    np.savez(tmp_path / "toy.npz", x=x, y=(x[:, 0] > 0).astype(int))
    config = RunConfig.from_spec({"dataset": {"path": "toy.npz"}, "optimizer": {"name": "adam", "lr": 0.01}})
    result = train(config, data_root=tmp_path)
    assert result.status == "succeeded" and result.points[-1].val_accuracy > 0.8


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="Invalid device: 'banana'"):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_train_builds_checkpoints_only_when_due() -> None:
    from trainer import DatasetConfig, ModelConfig, OptimizerConfig, RunConfig, ScheduleConfig, train

    config = RunConfig(
        dataset=DatasetConfig(name="blobs"),
        model=ModelConfig(name="mlp", params={"hidden": [16]}),
        optimizer=OptimizerConfig(name="sgd", lr=0.1),
        schedule=ScheduleConfig(),
        epochs=6,
        batch_size=128,
    )
    asked: list[int] = []
    built: list[int] = []

    def due(epoch: int) -> bool:
        asked.append(epoch)
        return epoch % 3 == 0

    train(config, on_checkpoint=lambda c: built.append(c.epoch), checkpoint_due=due)
    assert asked == [1, 2, 3, 4, 5, 6] and built == [3, 6]


def _epoch_as_it_was(run: object, batch_size: int, rules: object) -> tuple[float, float]:
    """The epoch's bookkeeping before issue 15 (loss and accuracy accumulated on the device every step)."""
    import torch.nn.functional as F

    model, x, y = run.model, run.data.x_train, run.data.y_train  # type: ignore[attr-defined]
    model.train()
    perm = torch.randperm(len(y), generator=run.order)  # type: ignore[attr-defined]
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    seen = 0
    for i in range(0, len(y), batch_size):
        idx = perm[i : i + batch_size]
        logits = model(x[idx])
        loss = F.cross_entropy(logits, y[idx])
        loss_sum += loss.detach().double() * len(idx)
        correct += (logits.argmax(dim=1) == y[idx]).sum()
        seen += len(idx)
        if rules.watches_steps and rules.step(loss.item()):  # type: ignore[attr-defined]
            break
        run.optimizer.zero_grad()  # type: ignore[attr-defined]
        loss.backward()
        run.optimizer.step()  # type: ignore[attr-defined]
    return loss_sum.item() / seen, correct.item() / seen


@pytest.mark.parametrize(
    ("lr", "divergence"), [(1e-2, True), (1e-2, False), (30.0, True)], ids=["watched", "unwatched", "diverging"]
)
def test_train_epoch_metrics_equal_the_per_step_accumulation(lr: float, divergence: bool) -> None:
    """Fewer ops per step (predictions into one buffer, the watched loss summed on the host) give the very
    same training loss and accuracy, bit for bit, the diverging step's loss included."""
    from trainer.divergence import chance_of
    from trainer.epochs import EpochRules
    from trainer.loop import _train_epoch
    from trainer.setup import set_up

    config = RunConfig(
        dataset=DatasetConfig("digits"),
        optimizer=OptimizerConfig("sgd", lr, {"momentum": 0.9}),
        epochs=3,
        batch_size=50,
        divergence=DivergenceConfig(enabled=divergence),
    )
    device = torch.device("cpu")
    ours, theirs = set_up(config, device), set_up(config, device)
    rules = [EpochRules.start(config, chance_of(r.data.y_train, r.data.n_classes), None) for r in (ours, theirs)]
    for _ in range(config.epochs):
        got = _train_epoch(ours, config.batch_size, rules[0], device)
        want = _epoch_as_it_was(theirs, config.batch_size, rules[1])
        assert got == want and rules[0].reason == rules[1].reason
        if rules[0].reason is not None:
            break
    assert (lr > 1) == (rules[0].reason is not None)
