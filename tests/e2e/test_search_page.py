"""The search page in a real browser against an embedded `lrlab up`: trials over time, best so far, importances,
and the trials table with a link to each trial's run."""

from __future__ import annotations

from typing import Any

from tests.conftest import wait_for
from tests.e2e.test_dashboard import _http, browser, page, up  # noqa: F401 (fixtures)

SEARCH = {
    "name": "dashboard search",
    "base": {"dataset": "digits", "device": "cpu", "epochs": 2, "model": {"name": "mlp", "hidden": [32]}},
    "space": {"lr": {"log_uniform": [1e-3, 1e-1]}, "optimizer": {"choice": ["sgd", "adam"]}},
    "trials": 4,
    "parallel": 2,
    "sampler": "random",
}


def test_search_page_shows_trials_best_and_importances(up: str, page: Any) -> None:  # noqa: F811
    status, created = _http("POST", f"{up}/v1/searches", SEARCH)
    assert status == 202, created

    def done() -> Any:
        body = _http("GET", f"{up}/v1/searches/{created['id']}")[1]
        return body if body["status"] not in ("queued", "running") else None

    search = wait_for(done, 120, "the search", interval=0.3)
    assert search["status"] == "succeeded", search
    page.goto(f"{up}/")
    page.click(f"[data-role=searches] tr[data-search-id='{search['id']}'] a")  # listed on the home page
    page.wait_for_url(f"{up}/searches/{search['id']}")
    rows = page.locator("[data-role=trials] tbody tr")
    rows.first.wait_for()
    assert rows.count() == 4
    assert [rows.nth(i).get_attribute("data-state") for i in range(4)] == [t["state"] for t in search["trials"]]
    complete = [t for t in search["trials"] if t["state"] == "complete"]
    plotted = page.locator("[data-chart=trials] [data-role=series][data-series=complete]")
    assert int(plotted.get_attribute("data-points")) == len(complete)
    best_line = page.locator("[data-chart=best] [data-role=series][data-series=best]")
    assert int(best_line.get_attribute("data-points")) == len(complete)
    assert page.locator("[data-role=best-value]").inner_text() != ""
    if search["importances"]:
        keys = page.locator("[data-role=importances] li")
        assert {keys.nth(i).get_attribute("data-key") for i in range(keys.count())} == set(search["importances"])
    rows.first.locator("a").click()
    page.wait_for_url(f"{up}/runs/{search['trials'][0]['run_id']}")
