"""The advice's page in headless Chromium, over `lrlab up` (SQLite database and transport: the pipeline's embedded
path): every stage as the API tells it, the verdict, and the button that trains the recommendation as a run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import stop_process, wait_for
from tests.e2e.test_dashboard import RUN_PATH, _env, _http, _serve, browser, page  # noqa: F401 (fixtures)

REQUEST = {
    "name": "dashboard advice",
    "base": {"dataset": "digits", "model": {"name": "mlp", "hidden": [16]}, "epochs": 3, "device": "cpu"},
    "optimizers": ["adam", "sgd"],
    "seeds": 2,
}


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("advice-dashboard")
    proc, base = _serve(["up"], _env(data_dir), data_dir / "up.log")
    try:
        yield base
    finally:
        stop_process(proc)


def test_advice_page_tells_the_story_and_trains_the_recommendation(up: str, page: Any) -> None:  # noqa: F811
    status, created = _http("POST", f"{up}/v1/advice", REQUEST)
    assert status == 202, created

    def done() -> Any:
        body = _http("GET", f"{up}/v1/advice/{created['id']}")[1]
        return body if body["status"] not in ("queued", "running") else None

    advice = wait_for(done, 300, "the advice", interval=0.5)
    assert advice["status"] == "succeeded", advice
    page.goto(f"{up}/")
    page.click(f"[data-role=advice] tr[data-advice-id='{advice['id']}'] a")  # listed on the home page
    page.wait_for_url(f"{up}/advice/{advice['id']}")
    page.wait_for_selector("[data-role=recommended]")
    assert page.locator("h1 [data-role=status]").inner_text() == "succeeded"
    stages = page.locator("[data-role=stages] li")
    assert [stages.nth(i).get_attribute("class") for i in range(4)] == ["done"] * 4

    # 1. the range tests: a sweep per optimizer, each suggestion marked, each job linked
    tests = advice["range_tests"]
    rows = page.locator("[data-role=range-tests] tbody tr")
    assert [rows.nth(i).get_attribute("data-job-id") for i in range(rows.count())] == [t["job_id"] for t in tests]
    for i, test in enumerate(tests):
        assert rows.nth(i).locator(f"a[href='/lr-finder/{test['job_id']}']").count() == 1
        job = _http("GET", f"{up}/v1/lr-finder/{test['job_id']}")[1]
        sweep = page.locator(f"[data-chart=range-tests] [data-role=series][data-series=sweep-{i}]")
        assert int(sweep.get_attribute("data-points")) == sum(p["smoothed_loss"] is not None for p in job["points"])
    markers = page.locator("[data-chart=range-tests] [data-role=marker]")
    assert sorted(float(markers.nth(i).get_attribute("data-value")) for i in range(markers.count())) == pytest.approx(
        sorted(t["suggested_lr"] for t in tests)
    )

    # 2. the search: its experiment, every candidate best first, the finalists marked
    search = advice["search"]
    link = page.locator("[data-role=search-experiment]")
    assert link.get_attribute("href") == f"/experiments/{search['experiment_id']}"
    candidates = page.locator("[data-role=candidates] tbody tr")
    assert [candidates.nth(i).get_attribute("data-run-id") for i in range(candidates.count())] == [
        c["run_id"] for c in search["candidates"]
    ]
    assert page.locator("[data-role=candidates] tr[data-finalist=yes]").count() == len(search["finalists"])
    drawn = page.locator("[data-chart=search] [data-role=series]")
    assert sum(int(drawn.nth(i).get_attribute("data-points")) for i in range(drawn.count())) == sum(
        c["best_val_accuracy"] is not None for c in search["candidates"]
    )

    # 3. the replicates, winner and runner-up marked; 4. the verdict in words, their comparison linked
    configurations = page.locator("[data-role=configurations] tbody tr")
    labels = [configurations.nth(i).get_attribute("data-label") for i in range(configurations.count())]
    assert labels == [c["label"] for c in advice["replicates"]["configurations"]]
    winner, runner_up = advice["recommendation"], advice["runner_up"]
    assert (
        page.locator("[data-role=configurations] tr[data-role=winner]").get_attribute("data-label") == winner["label"]
    )
    assert (
        page.locator("[data-role=configurations] tr[data-role=runner-up]").get_attribute("data-label")
        == (runner_up["label"])
    )
    assert page.locator("[data-role=statement]").inner_text() == advice["verdict"]["statement"]
    compare = page.locator("[data-role=compare]").get_attribute("href")
    assert compare == "/compare?" + advice["compare_url"].split("?", 1)[1]
    assert page.locator("[data-role=recommended]").inner_text() == winner["label"]
    assert float(page.locator("[data-role=epochs-trained]").inner_text()) == pytest.approx(
        advice["compute"]["epochs_trained"], rel=1e-3
    )

    # the recommendation trains as a run of its own
    page.click("[data-role=train]")
    page.wait_for_url(RUN_PATH)
    run = _http("GET", f"{up}/v1/runs/{page.url.rsplit('/', 1)[1]}")[1]
    assert run["spec"] == winner["spec"]
    page.goto("about:blank")  # close the run page's stream
