"""Successive halving on a worker (real Postgres): a group at a rung judged at once, and a resumed group (another
worker, a redelivered pack) given the decisions it had, whatever it scores the second time."""

from __future__ import annotations

import pytest

from lrlab.db import session_scope
from lrlab.models import LOCAL_OWNER
from lrlab.runs import experiments
from lrlab.schemas.experiments import ExperimentCreate
from worker.halving import halving_for

pytestmark = pytest.mark.service


def _experiment(early_stopping: dict | None) -> list[str]:
    body = {"name": "h", "base": {"epochs": 9}, "grid": {"lr": [1e-4, 1e-3, 1e-2]}}
    if early_stopping is not None:
        body["early_stopping"] = early_stopping
    request = ExperimentCreate.model_validate(body)
    with session_scope() as s:
        _, runs = experiments.create_experiment(s, request, experiments.expand(request), owner=LOCAL_OWNER)
        return [r.id for r in runs]


def _point(epoch: int, accuracy: float) -> dict[str, float]:
    return {"epoch": epoch, "val_accuracy": accuracy, "val_loss": 1 - accuracy}


def test_group_judged_at_once_and_resumed_with_its_decisions(service_env: dict[str, str]) -> None:
    ids = _experiment({"grace_epochs": 1, "reduction_factor": 3})
    first = halving_for(ids)
    assert first is not None and first.at_rung(ids[0], 1) and first.at_rung(ids[0], 3) and not first.at_rung(ids[0], 2)
    for run_id, accuracy in zip(ids, (0.2, 0.9, 0.5), strict=True):
        first.on_point(run_id, _point(1, accuracy))
    assert [first.should_stop(r) for r in ids] == [True, False, True]  # the three judged as one: keep one
    assert [first.stopped_at(r) for r in ids] == [1, None, 1]
    # the same runs again (resumed from a checkpoint before the rung), scoring the other way round
    again = halving_for(ids)
    assert again is not None
    for run_id, accuracy in zip(ids, (0.9, 0.2, 0.5), strict=True):
        again.on_point(run_id, _point(1, accuracy))
    assert [again.should_stop(r) for r in ids] == [True, False, True]
    # not a rung: nothing asked of the database, nobody stops
    again.on_point(ids[1], _point(2, 0.1))
    assert again.should_stop(ids[1]) is False


def test_no_early_stopping_no_halving(service_env: dict[str, str]) -> None:
    assert halving_for(_experiment(None)) is None
