"""lrlab.schemas.plugins: a plugin model in a spec, workers' advertisements gathered, specs checked against them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from lrlab.schemas.plugins import (
    MAX_PARAMS,
    PLUGIN_NAME,
    Advertisement,
    Offers,
    PluginModelSpec,
    Problem,
    check_plugin,
)
from tests.example_plugin import example_plugin  # noqa: F401  (fixture)

BUILTINS = ["mlp", "cnn", "resnet", "sequential"]


def ad(version: str = "0.1.0", params: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    model = {
        "name": "tiny-transformer",
        "entry_point": "lrlab_example_plugin.models:tiny_transformer",
        "distribution": "lrlab-example-plugin",
        "version": version,
        "description": "A transformer.",
        "parameters": params if params is not None else [{"name": "width", "required": False, "default": 32}],
        "open_parameters": False,
    }
    return {"models": [model], "datasets": [], "refused": [], **extra}


def test_the_trainers_advertisement_parses_here_unchanged(example_plugin: None) -> None:  # noqa: F811
    from trainer.plugins import MAX_PARAMETERS, NAME, installed

    described = installed().describe()
    assert described["models"] and described["datasets"]
    assert Advertisement.model_validate(described).model_dump(mode="json", exclude_unset=True) == described
    assert f"^{NAME.pattern}$" == PLUGIN_NAME and MAX_PARAMETERS == MAX_PARAMS


def test_plugin_model_spec_bounds_names_and_params() -> None:
    assert PluginModelSpec.model_validate({"name": "tiny-transformer"}).params == {}
    for body, loc in [
        ({"name": "Tiny"}, ("name",)),
        ({"name": "t", "params": {"w": float("nan")}}, ("params", "w")),
        ({"name": "t", "params": {"w": [1, {"deep": float("inf")}]}}, ("params", "w")),
        ({"name": "t", "params": {"not a name": 1}}, ("params", "not a name", "[key]")),
        ({"name": "t", "params": {f"p{i}": i for i in range(MAX_PARAMS + 1)}}, ("params",)),
        ({"name": "t", "extra": 1}, ("extra",)),
    ]:
        with pytest.raises(ValidationError) as caught:
            PluginModelSpec.model_validate(body)
        assert loc in [e["loc"] for e in caught.value.errors()], (body, caught.value.errors())


def test_offers_gather_workers_per_plugin_version_and_skip_what_does_not_parse() -> None:
    refused = {
        "kind": "model",
        "name": "mlp",
        "entry_point": "x:y",
        "distribution": "shady",
        "version": "1",
        "refused": "it shadows the built-in model 'mlp'",
    }
    offers = Offers.gather(
        [
            ("w1", ad()),
            ("w2", ad(refused=[refused])),
            ("w3", ad(version="0.2.0")),
            ("w4", None),
            ("w5", {"models": [{"name": "BAD NAME"}]}),  # a worker of another version, or a broken one
            ("w6", ad(refused=[refused])),
        ]
    )
    assert [(o.plugin.version, o.workers) for o in offers.models] == [("0.1.0", ("w1", "w2", "w6")), ("0.2.0", ("w3",))]
    assert offers.names("model") == ["tiny-transformer"] and offers.names("dataset") == []
    assert [(r.name, workers) for r, workers in offers.refused] == [("mlp", ("w2", "w6"))]


@pytest.mark.parametrize(
    ("name", "params", "problem"),
    [
        ("tiny-transformer", {"width": 16}, None),
        ("tiny-transformer", {}, None),
        (
            "transformer",
            {},
            Problem(
                ("name",),
                "no live worker offers the model 'transformer'; on offer: mlp, cnn, resnet, sequential,"
                " tiny-transformer",
            ),
        ),
        (
            "tiny-transformer",
            {"widht": 16},
            Problem(("params", "widht"), "the model 'tiny-transformer' takes no parameter 'widht' (it takes: width)"),
        ),
    ],
)
def test_check_plugin_names_the_field(name: str, params: dict[str, Any], problem: Problem | None) -> None:
    offers = Offers.gather([("w1", ad())])
    assert check_plugin(offers, "model", name, params, BUILTINS) == problem


def test_check_plugin_wants_required_params_and_takes_any_version_that_fits() -> None:
    required = [{"name": "depth", "required": True}]
    offers = Offers.gather([("w1", ad(params=required)), ("w2", ad(version="0.2.0", params=[]))])
    assert check_plugin(offers, "model", "tiny-transformer", {"depth": 2}, BUILTINS) is None  # 0.1.0 takes it
    assert check_plugin(offers, "model", "tiny-transformer", {}, BUILTINS) is None  # 0.2.0 takes it
    only_required = Offers.gather([("w1", ad(params=required))])
    assert check_plugin(only_required, "model", "tiny-transformer", {}, BUILTINS) == Problem(
        ("params", "depth"), "the model 'tiny-transformer' needs parameter 'depth'"
    )
    open_ended = Offers.gather([("w1", {**ad(), "models": [{**ad()["models"][0], "open_parameters": True}]})])
    assert check_plugin(open_ended, "model", "tiny-transformer", {"anything": [1]}, BUILTINS) is None


def test_plugin_name_pattern_is_anchored() -> None:
    assert re.fullmatch(PLUGIN_NAME.strip("^$"), "tiny-transformer")
    assert not re.match(PLUGIN_NAME, "tiny transformer")


@pytest.mark.parametrize(
    ("annotation", "good", "bad"),
    [
        ("int", [3, -1], [2.5, True, "3", None, [3]]),
        ("float", [0.5, 3], [True, "0.5", None]),
        ("bool", [True, False], [1, 0, "true"]),
        ("str", ["relu"], [1, None]),
        ("int | None", [3, None], [2.5]),
        ("Optional[float]", [0.5, None], ["x"]),
        ("typing.Optional[int]", [1, None], [1.5]),
        ("Union[int, str]", [1, "a"], [1.5, None]),
        ("list[int]", [[1, 2]], [1, {"a": 1}]),
        ("tuple[int, ...]", [[1]], [(1.5)]),
        ("dict[str, float]", [{"a": 1.0}], [[1]]),
        ("collections.abc.Sequence[int] | None", [[1], None], [1]),
    ],
)
def test_check_plugin_holds_a_value_to_its_parameters_annotation(
    annotation: str, good: list[Any], bad: list[Any]
) -> None:
    offers = Offers.gather(
        [("w1", ad(params=[{"name": "width", "required": False, "default": 32, "annotation": annotation}]))]
    )
    for value in good:
        assert check_plugin(offers, "model", "tiny-transformer", {"width": value}, BUILTINS) is None, value
    for value in bad:
        problem = check_plugin(offers, "model", "tiny-transformer", {"width": value}, BUILTINS)
        assert problem is not None and problem.loc == ("params", "width"), value
        assert f"takes width: {annotation}, not" in problem.msg


def test_an_annotation_json_cannot_meet_is_left_to_the_factory() -> None:
    for annotation in ("torch.dtype", "Literal['a', 'b']", "MyConfig", "int | torch.dtype", "Callable[[int], int]"):
        offers = Offers.gather([("w1", ad(params=[{"name": "width", "required": False, "annotation": annotation}]))])
        assert check_plugin(offers, "model", "tiny-transformer", {"width": "anything"}, BUILTINS) is None, annotation


def test_a_mistyped_parameter_names_the_value_and_its_type() -> None:
    offers = Offers.gather([("w1", ad(params=[{"name": "width", "required": False, "annotation": "int"}]))])
    assert check_plugin(offers, "model", "tiny-transformer", {"width": 2.5}, BUILTINS) == Problem(
        ("params", "width"), "the model 'tiny-transformer' takes width: int, not 2.5 (a number with a fraction)"
    )
    long = check_plugin(offers, "model", "tiny-transformer", {"width": "x" * 100}, BUILTINS)
    assert long is not None and long.msg.endswith("... (a string)") and len(long.msg) < 120
