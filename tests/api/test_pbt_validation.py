"""POST /v1/pbt refuses what a population cannot train with a 422 naming the field; other owners get 404."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import make_key

pytestmark = pytest.mark.service

LR = {"lr": {"log_uniform": [1e-4, 1e-1]}}
# nothing trains the `cuda` queue in these tests: a population created here waits until it is cancelled
WAITING = {"base": {"device": "cuda"}, "population": 2, "epochs": 4, "mutations": LR}
LOG_UNIFORM = ["mutations", "lr", "log_uniform", "log_uniform"]  # the kind's tag, then its field
NOT_ADAM = "not a searchable hyperparameter of adam"


def detail(resp: Any) -> list[dict[str, Any]]:
    assert resp.status_code == 422, resp.text
    return list(resp.json()["detail"])


def error_at(resp: Any, loc: list[Any]) -> dict[str, Any]:
    """The one error at `loc` (FastAPI prefixes "body"): a cross-field check must name its field too."""
    found = [d for d in detail(resp) if d["loc"] == ["body", *loc]]
    assert found, resp.json()
    return found[0]


@pytest.fixture
def created(api_client: Any) -> Iterator[list[str]]:
    """Ids of populations a test created; cancelled afterwards so they count against no quota."""
    ids: list[str] = []
    yield ids
    for pbt_id in ids:
        api_client.post(f"/v1/pbt/{pbt_id}/cancel")


@pytest.mark.parametrize(
    ("body", "loc", "reason"),
    [
        ({"base": {"epochs": 3}, "mutations": LR}, ["base", "epochs"], "top level"),
        ({"base": {"schedule": {"kind": "cosine"}}, "mutations": LR}, ["base", "schedule"], "constant"),
        (
            {"base": {"schedule": {"kind": "constant", "warmup_epochs": 2}}, "mutations": LR},
            ["base", "schedule"],
            "without warmup",
        ),
        (  # past the base's default epochs (5): still the population's rule, not RunSpec's
            {"base": {"schedule": {"kind": "constant", "warmup_epochs": 7}}, "mutations": LR},
            ["base", "schedule"],
            "without warmup",
        ),
        ({"base": {"patience": 3}, "mutations": LR}, ["base", "patience"], "early stopping"),
        ({"mutations": {"betas": {"uniform": [0.8, 0.9]}}}, ["mutations", "betas"], NOT_ADAM),
        ({"mutations": {"momentum": {"uniform": [0.8, 0.9]}}}, ["mutations", "momentum"], NOT_ADAM),
        (
            {"base": {"optimizer": {"name": "sgd", "lr": 0.1}}, "mutations": {"momentum": {"uniform": [0, 0.9]}}},
            ["mutations", "momentum"],
            "keep 0 out of the range",
        ),
        ({"mutations": {"lr": {"log_uniform": [1e-4, 5000]}}}, ["mutations", "lr"], "5000 is not a valid lr for adam"),
        ({"mutations": {"lr": {"uniform": [0, 0.1]}}}, ["mutations", "lr"], "0 is not a valid lr for adam"),
        ({"mutations": {"eps": {"log_uniform": [1e-9, 2]}}}, ["mutations", "eps"], "2 is not a valid eps"),
        ({"mutations": {"lr": {"log_uniform": [0, 0.1]}}}, [*LOG_UNIFORM, 0], "greater than 0"),
        ({"mutations": {"lr": {"log_uniform": [-1, 0.1]}}}, [*LOG_UNIFORM, 0], "greater than 0"),
        ({"mutations": {"lr": {"log_uniform": [0.1, 0.01]}}}, LOG_UNIFORM, "low (0.1) must be less than high (0.01)"),
        (
            {"mutations": {"lr": {"uniform": [0.1, 0.1]}}},
            ["mutations", "lr", "uniform", "uniform"],
            "must be less than high",
        ),
        (
            {"mutations": {"lr": {"log_uniform": [1e-3, 0.1], "uniform": [1e-3, 0.1]}}},
            ["mutations", "lr"],
            "expected one of",
        ),
        ({"mutations": {"lr": 0.1}}, ["mutations", "lr"], "expected one of"),
        ({"mutations": {}}, ["mutations"], "at least 1 item"),
        ({}, ["mutations"], "required"),
        ({"epochs": 4, "interval": 5, "mutations": LR}, ["interval"], "at most epochs (4)"),
        ({"quantile": 0.6, "mutations": LR}, ["quantile"], "less than or equal to 0.5"),
        ({"quantile": 0, "mutations": LR}, ["quantile"], "greater than 0"),
        ({"population": 1, "mutations": LR}, ["population"], "greater than or equal to 2"),
        ({"population": 33, "mutations": LR}, ["population"], "less than or equal to 32"),
        ({"perturbation_factors": [], "mutations": LR}, ["perturbation_factors"], "at least 1 item"),
        ({"perturbation_factors": [-0.8, 1.2], "mutations": LR}, ["perturbation_factors", 0], "greater than 0"),
        ({"resample_probability": 1.5, "mutations": LR}, ["resample_probability"], "less than or equal to 1"),
        ({"metric": "accuracy", "mutations": LR}, ["metric"], "'val_accuracy'"),
        ({"mode": "best", "mutations": LR}, ["mode"], "'max' or 'min'"),
    ],
)
def test_create_pbt_rejects_bad_field(api_client: Any, body: dict[str, Any], loc: list[Any], reason: str) -> None:
    error = error_at(api_client.post("/v1/pbt", json=body), loc)
    assert reason in error["msg"], error


def test_create_pbt_reports_one_error_for_a_bad_mutation_not_one_per_kind(api_client: Any) -> None:
    errors = detail(api_client.post("/v1/pbt", json={"mutations": {"lr": {"log_uniform": [0.1, 0.01]}}}))
    assert len(errors) == 1, errors


def test_create_pbt_fused_with_dropout_is_422_on_execution(api_client: Any) -> None:
    body = {"base": {"model": {"name": "mlp", "dropout": 0.2}}, "execution": "fused", "mutations": LR}
    error = error_at(api_client.post("/v1/pbt", json=body), ["execution"])
    assert "dropout" in error["msg"]
    before = api_client.get("/v1/pbt", params={"limit": 100}).json()["data"]
    assert not any(p["spec"]["base"]["model"].get("dropout") for p in before if p["execution"] == "fused")


def test_other_owner_gets_404_and_lists_only_their_own(api_client: Any, created: list[str]) -> None:
    created.append(api_client.post("/v1/pbt", json=WAITING).json()["id"])
    pbt_id = created[0]
    other = {"Authorization": f"Bearer {make_key('pbt stranger')}"}
    for path in (f"/v1/pbt/{pbt_id}", f"/v1/pbt/{pbt_id}/schedule", f"/v1/pbt/{pbt_id}/charts/val_accuracy.svg"):
        resp = api_client.get(path, headers=other)
        assert resp.status_code == 404, path
        assert resp.json()["detail"][0]["loc"] == ["path", "pbt_id"]
    assert api_client.post(f"/v1/pbt/{pbt_id}/cancel", headers=other).status_code == 404
    assert api_client.get(f"/v1/pbt/{pbt_id}").json()["status"] == "queued"  # the stranger's cancel did nothing
    assert api_client.get("/v1/pbt", headers=other).json()["data"] == []
    theirs = api_client.post("/v1/pbt", json=WAITING, headers=other).json()["id"]
    try:
        assert [p["id"] for p in api_client.get("/v1/pbt", headers=other).json()["data"]] == [theirs]
        mine = [p["id"] for p in api_client.get("/v1/pbt", params={"limit": 100}).json()["data"]]
        assert pbt_id in mine and theirs not in mine
    finally:
        api_client.post(f"/v1/pbt/{theirs}/cancel", headers=other)


def test_unknown_pbt_is_404(api_client: Any) -> None:
    for path in ("/v1/pbt/00000000-0000-0000-0000-000000000000", "/v1/pbt/not-an-id/schedule"):
        resp = api_client.get(path)
        assert resp.status_code == 404, path
        assert resp.json()["detail"][0]["loc"] == ["path", "pbt_id"]


def test_schedule_is_409_until_a_member_finishes_an_interval(api_client: Any, created: list[str]) -> None:
    # a long first interval on the CPU queue: even with a worker live, no member reaches a boundary in time
    body = {"base": {"device": "cpu"}, "population": 2, "epochs": 5000, "interval": 5000, "mutations": LR}
    resp = api_client.post("/v1/pbt", json=body)
    assert resp.status_code == 202, resp.text
    created.append(resp.json()["id"])
    schedule = api_client.get(f"/v1/pbt/{created[0]}/schedule")
    assert schedule.status_code == 409, schedule.text
    assert schedule.json()["detail"][0]["loc"] == ["path", "pbt_id"]
    assert "no schedule yet" in schedule.json()["detail"][0]["msg"]
    cancelled = api_client.post(f"/v1/pbt/{created[0]}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert api_client.get(f"/v1/pbt/{created[0]}/schedule").status_code == 409


def test_openapi_shows_the_bounds(api_client: Any) -> None:
    schemas = api_client.get("/openapi.json").json()["components"]["schemas"]
    fields = schemas["PbtCreate"]["properties"]
    assert fields["population"]["minimum"] == 2 and fields["population"]["maximum"] == 32
    assert fields["quantile"]["exclusiveMinimum"] == 0 and fields["quantile"]["maximum"] == 0.5
    assert fields["resample_probability"]["maximum"] == 1
    assert fields["perturbation_factors"]["minItems"] == 1
    kinds = fields["mutations"]["additionalProperties"]["oneOf"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in kinds} == {"LogUniform", "Uniform", "Choices"}
    log_uniform = schemas["LogUniform"]["properties"]["log_uniform"]["prefixItems"]
    assert all(bound["exclusiveMinimum"] == 0 for bound in log_uniform)
