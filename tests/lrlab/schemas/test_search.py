"""The search space: keys are paths into the run spec, checked against the base spec's own fields and bounds."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from lrlab.schemas.search import SearchCreate, apply_params, key_path


def _errors(body: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        SearchCreate.model_validate(body)
    return [(tuple(e["loc"]), e["msg"]) for e in info.value.errors()]


def test_issue_example_lr_and_optimizer() -> None:
    request = SearchCreate.model_validate(
        {"space": {"lr": {"log_uniform": [1e-5, 1]}, "optimizer": {"choice": ["sgd", "adam"]}}}
    )
    assert (request.sampler, request.trials, request.parallel, request.direction) == ("tpe", 20, 4, "maximize")
    spec = apply_params(request.base, {"lr": 0.03, "optimizer": "sgd"})
    assert spec.optimizer.name == "sgd" and spec.optimizer.lr == 0.03
    assert spec.optimizer.momentum == 0.0  # type: ignore[union-attr]  # the chosen optimizer's own defaults


def test_chosen_optimizer_starts_from_its_defaults() -> None:
    base = {"optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9, "nesterov": True}}
    request = SearchCreate.model_validate({"base": base, "space": {"optimizer": {"choice": ["sgd", "adamw"]}}})
    spec = apply_params(request.base, {"optimizer": "adamw"})
    assert spec.optimizer.model_dump() == {
        "name": "adamw",
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 1e-2,
        "amsgrad": False,
    }


def test_nested_paths_land_in_the_spec() -> None:
    base = {"model": {"name": "resnet"}, "optimizer": {"name": "sgd"}, "schedule": {"kind": "step", "step_size": 2}}
    space = {
        "model.width": {"int": [8, 64]},
        "optimizer.momentum": {"uniform": [0.5, 0.95]},
        "optimizer.nesterov": {"choice": [False]},
        "schedule.gamma": {"log_uniform": [0.01, 0.9]},
        "patience": {"choice": [None, 3]},
        "batch_size": {"choice": [32, 128]},
    }
    request = SearchCreate.model_validate({"base": base, "space": space})
    params = {"model.width": 17, "optimizer.momentum": 0.7, "optimizer.nesterov": False}
    spec = apply_params(request.base, {**params, "schedule.gamma": 0.2, "patience": 3, "batch_size": 128})
    assert (spec.model.width, spec.optimizer.momentum, spec.schedule.gamma) == (17, 0.7, 0.2)  # type: ignore[union-attr]
    assert (spec.patience, spec.batch_size) == (3, 128)
    assert key_path("lr") == ("optimizer", "lr") and key_path("model.width") == ("model", "width")


def test_a_plugin_models_arguments_are_searched_under_model_params() -> None:
    """The issue's `model.params.width`: any distribution (the schema cannot know the factory's types; the API
    checks names and annotations against what live workers offer), set in the spec's params, present in the base
    or not."""
    base = {"model": {"name": "tiny-transformer", "params": {"width": 16}}}
    space = {"model.params.width": {"int": [8, 32]}, "model.params.dropout": {"uniform": [0.0, 0.3]}}
    request = SearchCreate.model_validate({"base": base, "space": space})
    spec = apply_params(request.base, {"model.params.width": 24, "model.params.dropout": 0.1})
    assert spec.model.params == {"width": 24, "dropout": 0.1}  # type: ignore[union-attr]
    bare = SearchCreate.model_validate({"base": {"model": {"name": "tiny-transformer"}}, "space": space})
    assert apply_params(bare.base, {"model.params.width": 8}).model.params == {"width": 8}  # type: ignore[union-attr]
    assert request.plugin_keys() == ["model.params.width", "model.params.dropout"]
    variants = request.model_variants()  # the edges, every key's at once
    assert [v.model.params for v in variants] == [{"width": 8, "dropout": 0.0}, {"width": 32, "dropout": 0.3}]  # type: ignore[union-attr]
    plain = SearchCreate.model_validate({"space": {"lr": {"log_uniform": [1e-3, 1e-1]}}})
    assert plain.plugin_keys() == [] and plain.model_variants() == [plain.base]


@pytest.mark.parametrize(
    ("base", "space", "key", "words"),
    [
        ({}, {"lr": {"log_uniform": [1e-5, 2000]}}, "lr", "2000.0 is not a valid optimizer.lr"),
        ({}, {"lr": {"uniform": [0, 1]}}, "lr", "0 is not a valid optimizer.lr"),
        ({}, {"batch_size": {"int": [1, 100_000]}}, "batch_size", "less than or equal to 65536"),
        ({}, {"epochs": {"int": [1, 3]}}, "epochs", "set base.epochs"),
        ({}, {"device": {"choice": ["cpu", "cuda"]}}, "device", "set base.device"),
        ({}, {"dataset.name": {"choice": ["digits"]}}, "dataset.name", "one dataset"),
        ({}, {"split_seed": {"int": [0, 3]}}, "split_seed", "one validation split"),
        ({}, {"model.name": {"choice": ["mlp", "cnn"]}}, "model.name", "fixed by base.model"),
        ({}, {"optimizer.name": {"choice": ["sgd"]}}, "optimizer.name", "`optimizer` shorthand"),
        ({}, {"model.width": {"int": [4, 8]}}, "model.width", "not a field of model (mlp)"),
        ({}, {"nonsense": {"int": [4, 8]}}, "nonsense", "not a field of the run spec"),
        ({}, {"optimizer.lr.x": {"int": [4, 8]}}, "optimizer.lr.x", "not a field of optimizer.lr"),
        ({}, {"model.hidden": {"choice": [1]}}, "model.hidden", "not a number, flag or name"),
        ({}, {"model.params.width": {"int": [4, 8]}}, "model.params.width", "`params` is not a field of model"),
        (
            {"model": {"name": "tiny-transformer"}},
            {"model.params.width.x": {"int": [4, 8]}},
            "model.params.width.x",
            "not a field of model.params",
        ),
        ({}, {"optimizer.betas": {"choice": [0.9]}}, "optimizer.betas", "not a number, flag or name"),
        ({}, {"divergence": {"choice": [1]}}, "divergence", "not a number, flag or name"),
        ({}, {"lr": {"log_uniform": [1e-5, 1]}, "optimizer.lr": {"uniform": [0.1, 0.2]}}, "optimizer.lr", "`lr`"),
        ({}, {"optimizer": {"choice": ["sgd", "nadam"]}}, "optimizer", "'nadam' is not an optimizer"),
        ({}, {"optimizer": {"uniform": [0, 1]}}, "optimizer", "a choice of names"),
        ({}, {"seed": {"uniform": [0, 10]}}, "seed", "uniform draws numbers for a int field"),
        ({}, {"lr": {"int": [1, 3]}}, "lr", "int draws numbers for a float field"),
        ({"optimizer": {"name": "sgd"}}, {"optimizer.nesterov": {"int": [0, 1]}}, "optimizer.nesterov", "bool"),
        ({"optimizer": {"name": "sgd"}}, {"optimizer.momentum": {"uniform": [0.5, 1.0]}}, "optimizer.momentum", "1.0"),
        # nesterov needs momentum: the edge momentum 0 is refused with the base's nesterov
        (
            {"optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": True}},
            {"optimizer.momentum": {"uniform": [0, 0.9]}},
            "optimizer.momentum",
            "nesterov needs momentum",
        ),
        # a key must exist for every optimizer the search may choose
        (
            {},
            {"optimizer": {"choice": ["sgd", "adam"]}, "optimizer.momentum": {"uniform": [0.1, 0.9]}},
            "optimizer.momentum",
            "not a field of optimizer (adam)",
        ),
        # and its edges be valid for each: adadelta's default lr is 1.0, but the range is checked for it too
        (
            {},
            {"optimizer": {"choice": ["adam", "rmsprop"]}, "optimizer.eps": {"uniform": [0.5, 2]}},
            "optimizer.eps",
            "with adam",
        ),
        (
            {"epochs": 5},
            {"schedule.warmup_epochs": {"int": [0, 5]}},
            "schedule.warmup_epochs",
            "must be less than epochs",
        ),
        ({}, {"patience": {"choice": [True]}}, "patience", "True is not a valid patience"),
        ({}, {"lr": {"choice": [0.1, True]}}, "lr", "True is not a valid optimizer.lr"),
    ],
)
def test_space_refused_at_its_key(base: dict[str, Any], space: dict[str, Any], key: str, words: str) -> None:
    errors = _errors({"base": base, "space": space})
    assert len(errors) == 1, errors
    loc, msg = errors[0]
    assert loc == ("space", key), errors
    assert words in msg, msg


@pytest.mark.parametrize(
    ("distribution", "words"),
    [
        ({"log_uniform": [1, 0.1]}, "must be less than high"),
        ({"log_uniform": [0, 1]}, "greater than 0"),
        ({"uniform": [0.1]}, "Field required"),
        ({"int": [3, 3]}, "must be less than high"),
        ({"int": [1.5, 3]}, "valid integer"),
        ({"choice": []}, "at least 1"),
        ({"choice": [0.1, 0.1]}, "distinct"),
        ({"normal": [0, 1]}, "expected one of"),
        ({"uniform": [0, 1], "choice": [1]}, "expected one of"),
        ({"choice": [{"a": 1}]}, "valid"),
        ({"choice": ["x" * 101]}, "at most 100"),
    ],
)
def test_distribution_refused(distribution: dict[str, Any], words: str) -> None:
    errors = _errors({"space": {"lr": distribution}})
    assert errors and all(loc[:2] == ("space", "lr") for loc, _ in errors), errors
    assert any(words in msg for _, msg in errors), errors


@pytest.mark.parametrize("key", ["", "Lr", "optimizer..lr", ".lr", "lr\x00", "l\ud800r", "a" * 101])
def test_space_key_shape_refused(key: str) -> None:
    errors = _errors({"space": {key: {"uniform": [0.1, 0.2]}}})
    assert len(errors) == 1 and errors[0][0][0] == "space", errors  # a lone surrogate is shown replaced
    assert "tring" in errors[0][1], errors  # "String should ...", "... a valid string"


def test_cmaes_refuses_choices_at_sampler() -> None:
    space = {"lr": {"log_uniform": [1e-5, 1]}, "optimizer": {"choice": ["sgd", "adam"]}}
    assert _errors({"space": space, "sampler": "cmaes"}) == [
        (("sampler",), "CMA-ES samples numbers only and `optimizer` is a choice: use tpe or random")
    ]
    ok = SearchCreate.model_validate({"space": {"lr": {"log_uniform": [1e-5, 1]}}, "sampler": "cmaes"})
    assert ok.sampler == "cmaes"


def test_early_stopping_defaults_and_grace_below_epochs() -> None:
    request = SearchCreate.model_validate(
        {"base": {"epochs": 9}, "space": {"lr": {"log_uniform": [1e-5, 1]}}, "early_stopping": {}}
    )
    assert request.early_stopping is not None
    assert request.early_stopping.model_dump() == {
        "kind": "asha",
        "metric": "val_accuracy",
        "grace_epochs": 1,
        "reduction_factor": 3,
    }
    errors = _errors(
        {"base": {"epochs": 3}, "space": {"lr": {"uniform": [0.1, 1]}}, "early_stopping": {"grace_epochs": 3}}
    )
    assert errors[0][0] == ("early_stopping", "grace_epochs")
    errors = _errors({"space": {"lr": {"uniform": [0.1, 1]}}, "early_stopping": {"kind": "hyperband"}})
    assert errors[0][0] == ("early_stopping", "kind")
    errors = _errors({"space": {"lr": {"uniform": [0.1, 1]}}, "early_stopping": {"reduction_factor": 1}})
    assert errors[0][0] == ("early_stopping", "reduction_factor")


def test_request_bounds() -> None:
    space = {"lr": {"uniform": [0.1, 1]}}
    assert _errors({"space": {}})[0][0] == ("space",)
    assert _errors({"space": space, "trials": 0})[0][0] == ("trials",)
    assert _errors({"space": space, "parallel": 17})[0][0] == ("parallel",)
    assert _errors({"space": space, "sampler": "grid"})[0][0] == ("sampler",)
    assert _errors({"space": space, "extra": 1})[0][0] == ("extra",)
    too_many = {f"divergence.factor{i}": {"uniform": [2, 3]} for i in range(17)}
    assert _errors({"space": too_many})[0][0] == ("space",)
