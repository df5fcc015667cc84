"""A grid's axes: the named ones and dotted paths into the run spec (model.params.width), expanded into cells."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from lrlab.runs.experiments import CellError, expand
from lrlab.schemas.experiments import MAX_PATH_AXES, ExperimentCreate

TINY = {"name": "tiny-transformer", "params": {"heads": 2}}


def request(grid: dict[str, Any], base: dict[str, Any] | None = None) -> ExperimentCreate:
    return ExperimentCreate.model_validate({"name": "g", "base": base or {}, "grid": grid})


def test_dotted_axes_set_their_path_in_each_cell_after_the_named_ones() -> None:
    made = request(
        {"model.params.width": [8, 16], "lr": [0.1, 0.01], "optimizer.momentum": [0.9]},
        {"model": TINY, "dataset": {"name": "motifs"}, "optimizer": {"name": "sgd"}},
    )
    cells = expand(made)
    assert [c.spec.model.params for c in cells] == [{"heads": 2, "width": w} for w in (8, 16, 8, 16)]
    assert {c.spec.optimizer.momentum for c in cells} == {0.9}  # type: ignore[union-attr]
    assert cells[0].label == "lr=0.1 model.params.width=8"  # what varies; the single momentum is left out
    assert made.model_dump(mode="json")["grid"]["model.params.width"] == [8, 16]  # stored as sent


def test_a_dotted_axis_fills_a_plugins_params_left_out_and_names_a_model_given_by_name() -> None:
    cells = expand(request({"dataset.params.n_samples": [100, 200]}, {"dataset": {"name": "motifs"}}))
    assert [c.spec.dataset.params for c in cells] == [{"n_samples": 100}, {"n_samples": 200}]
    cells = expand(request({"model.hidden": [[8], [16, 16]]}, {"model": "mlp"}))
    assert [c.spec.model.hidden for c in cells] == [[8], [16, 16]]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("grid", "loc", "words"),
    [
        ({"lrr": [0.1]}, ("grid", "lrr"), "unknown grid axis 'lrr'"),
        ({"modle.params.width": [8]}, ("grid", "modle.params.width"), "unknown grid axis 'modle.params.width'"),
        ({"model..width": [8]}, ("grid", "model..width"), "unknown grid axis"),
        ({"model.params.width": []}, ("grid", "model.params.width"), "at least 1 item"),
        ({"model.params.width": [float("nan")]}, ("grid", "model.params.width", 0), "finite"),
        ({f"model.params.p{i}": [1] for i in range(MAX_PATH_AXES + 1)}, ("grid",), f"at most {MAX_PATH_AXES}"),
        ({"model.params.width": list(range(65))}, ("grid", "model.params.width"), "at most 64"),
        ({"model.params.width": list(range(20)), "seed": list(range(20))}, ("grid",), "400 cells"),
    ],
)
def test_bad_dotted_axes_are_refused_at_the_grid(grid: dict[str, Any], loc: tuple[Any, ...], words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        request(grid, {"model": TINY})
    assert any(e["loc"] == loc and words in e["msg"] for e in caught.value.errors()), caught.value.errors()


@pytest.mark.parametrize(
    ("grid", "words"),
    [
        ({"epochs.x": [1]}, "epochs is not an object: epochs.x cannot be set"),
        ({"model.hidden": [[0]]}, "model.mlp.hidden.0: Input should be greater than or equal to 1"),
        ({"model.widht": [4]}, "Extra inputs are not permitted"),
    ],
)
def test_a_cell_a_dotted_axis_makes_invalid_is_a_cell_error(grid: dict[str, Any], words: str) -> None:
    with pytest.raises(CellError, match="cell 0") as caught:
        expand(request(grid))
    assert words in str(caught.value)
