"""The dashboard in headless Chromium: the form, live curves, experiment charts, the lr finder, API keys.

Drives Debian's /usr/bin/chromium through Playwright (no browser download). Without it the tests skip,
except under CI (CI=true), where a missing browser fails them.

The live tests hold training still at a chosen point instead of racing to catch it half-way: `lrlab up` runs over
a Postgres database of its own, its worker is paused (SIGSTOP) while the work is submitted, and a transaction of
the test's blocks the write that would go past that point (an uncommitted curve point a run's writer must wait
for, or a population's member rows that the round's decision must update) until the page has shown the state
before it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ROOT, private_database, spare_redis_db, stop_process, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_PATH = re.compile(r".*/runs/[0-9a-f-]{36}$")
EXPERIMENT_PATH = re.compile(r".*/experiments/[0-9a-f-]{36}$")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRLAB_")}
    return {**env, "LRLAB_DATA_DIR": str(data_dir), **extra}


def _http(method: str, url: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
    except OSError:
        return 0, None


def _serve(args: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lrlab.cli", *args, "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _http("GET", f"{base}/healthz")[0] == 200 or proc.poll() is not None, 60, "the api")
    except AssertionError:
        stop_process(proc)
        raise
    if proc.poll() is not None:
        pytest.fail(f"lrlab {args[0]} exited:\n{log.read_text()[-3000:]}")
    return proc, base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    problem = None if CHROMIUM.exists() else f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "the playwright package is missing (pip install -e '.[dev]')"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs a browser for the dashboard tests: {problem}")
        pytest.skip(problem)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (its own localStorage); an uncaught script error fails the test."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`lrlab up` on loopback (no keys) with its own data dir; yields the base URL."""
    data_dir = tmp_path_factory.mktemp("dashboard-data")
    log = data_dir / "up.log"
    proc, base = _serve(["up"], _env(data_dir), log)
    try:
        yield base
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def up_pg(services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, int]]:
    """`lrlab up` over a Postgres database and a Redis db of its own (no other worker near them), each epoch's
    progress committed as it ends; yields its base URL, its database URL and its worker's pid."""
    with private_database() as database, spare_redis_db() as broker:
        data_dir = tmp_path_factory.mktemp("dashboard-live")
        env = _env(data_dir, LRLAB_DATABASE_URL=database, LRLAB_BROKER_URL=broker, LRLAB_PROGRESS_FLUSH_SECONDS="0")
        proc, base = _serve(["up"], env, data_dir / "up.log")
        try:
            yield base, database.replace("+psycopg", ""), _child_of(proc.pid)
        finally:
            stop_process(proc)


def _child_of(parent: int) -> int:
    """The one child process of `parent` (`lrlab up`'s worker)."""

    def children() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == parent:
                    found.append(int(stat.parent.name))
        return found

    (child,) = wait_for(children, 30, "lrlab up's worker process")
    return child


@contextlib.contextmanager
def _paused(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# A run's writer upserts each epoch's point: an uncommitted row for epoch 8 makes it wait there.
HOLD_EPOCH_8 = "INSERT INTO curve_point (run_id, epoch, lr, seconds, nonfinite) VALUES (%s, 8, 0, 0, '[]')"
# A round is decided in the transaction that records the last member's epoch (lrlab.pbt.rounds.reach).
HOLD_MEMBERS = "SELECT 1 FROM pbt_member WHERE pbt_id = %s FOR UPDATE"


@contextlib.contextmanager
def _holding(database: str, statement: str, *args: Any) -> Iterator[psycopg.Connection[Any]]:
    """`statement` in a transaction left open (its row locks held) until the block ends, then rolled back."""
    with psycopg.connect(database) as conn:
        conn.execute(statement, args)
        try:
            yield conn
        finally:
            conn.rollback()


def _waiting_on(database: str, holder: psycopg.Connection[Any]) -> bool:
    """Whether some session waits for a lock `holder` holds."""
    with psycopg.connect(database, autocommit=True) as conn:
        pid = holder.info.backend_pid
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (pid,))
        return bool(row.fetchone()[0])  # type: ignore[index]


def _points(page: Any, chart: str, series: str) -> int:
    path = page.locator(f"[data-chart={chart}] [data-role=series][data-series={series}]")
    return int(path.get_attribute("data-points")) if path.count() else 0


def _status(page: Any) -> str:
    return str(page.locator("h1 [data-role=status]").inner_text())


def test_pages_and_assets_are_served_outside_the_api_schema(up: str) -> None:
    for path in ("/", "/runs/x", "/experiments/x", "/compare?runs=a,b", "/lr-finder/x", "/pbt/x"):
        with urllib.request.urlopen(f"{up}{path}", timeout=10) as resp:
            assert resp.headers["content-type"].startswith("text/html")
            assert b'src="/static/dashboard.js"' in resp.read()
    with urllib.request.urlopen(f"{up}/static/chart.js", timeout=10) as resp:
        assert resp.headers["content-type"].startswith("text/javascript")
        assert b"export class LineChart" in resp.read()
    for name in ("nope.js", "index.html", "..%2Fmain.py"):
        status, body = _http("GET", f"{up}/static/{name}")
        assert status in (404, 422) and "detail" in body, (name, body)  # never the file, never a 500
    paths = _http("GET", f"{up}/openapi.json")[1]["paths"]
    assert not [p for p in paths if p == "/" or p.startswith(("/runs", "/experiments", "/compare", "/pbt", "/static"))]


def test_submit_run_from_form_streams_curves_until_succeeded(up_pg: tuple[str, str, int], page: Any) -> None:
    base, database, worker = up_pg
    page.goto(f"{base}/")
    page.select_option("#f-dataset", "spirals")
    page.fill("#f-epochs", "15")
    page.fill("#f-batch_size", "8")
    with contextlib.ExitStack() as held:
        with _paused(worker):  # nothing trains until epoch 8's row is held
            page.click("button[data-action=run]")
            page.wait_for_url(RUN_PATH)
            run_id = page.url.rsplit("/", 1)[1]
            holder = held.enter_context(_holding(database, HOLD_EPOCH_8, run_id))
        wait_for(lambda: _waiting_on(database, holder), 90, "the run's writer to wait at epoch 8")
        stored = len(_http("GET", f"{base}/v1/runs/{run_id}/curves")[1]["points"])
        assert 0 < stored < 8  # its epochs before 8, less any written in one transaction with epoch 8
        wait_for(lambda: _points(page, "accuracy", "val") == stored, 30, f"the page to draw {stored} points")
        assert _status(page) == "running"
        assert page.locator("[data-role=epochs]").inner_text() == f"epoch {stored} / 15"

    seen: list[int] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and _status(page) in ("queued", "running"):
        seen.append(_points(page, "accuracy", "val"))
        time.sleep(0.05)
    seen.append(_points(page, "accuracy", "val"))
    assert _status(page) == "succeeded", _http("GET", f"{base}/v1/runs/{run_id}")
    assert seen == sorted(seen) and seen[0] >= stored, seen  # points only ever arrive
    assert seen[-1] == 15
    for chart, series in (("accuracy", "train"), ("loss", "train"), ("loss", "val")):
        assert _points(page, chart, series) == 15
    assert page.locator("[data-role=epochs]").inner_text() == "epoch 15 / 15"
    assert "best val accuracy" in page.locator(".side").inner_text()


def test_grid_from_form_overlays_one_series_per_run(up: str, page: Any) -> None:
    page.goto(f"{up}/")
    page.select_option("#f-dataset", "spirals")
    page.fill("#f-epochs", "4")
    page.fill("#f-name", "dashboard grid")
    page.fill("#f-grid_lr", "0.001, 0.01, 0.1")
    page.click("button[data-action=grid]")
    page.wait_for_url(EXPERIMENT_PATH)
    experiment_id = page.url.rsplit("/", 1)[1]
    page.wait_for_function(
        "document.querySelector('h1 [data-role=status]')?.textContent === 'finished'", timeout=90_000
    )

    run_ids = {r["id"] for r in _http("GET", f"{up}/v1/experiments/{experiment_id}")[1]["runs"]}
    acc = page.locator("[data-chart=accuracy]")
    series = acc.locator("[data-role=series]")
    assert series.count() == 3
    assert {series.nth(i).get_attribute("data-series") for i in range(3)} == run_ids
    assert all(int(series.nth(i).get_attribute("data-points")) == 4 for i in range(3))
    assert page.locator("[data-role=compare] tbody tr").count() == 3

    # a legend entry toggles its series off and on again
    first = sorted(run_ids)[0]
    entry = acc.locator(f"[data-role=legend][data-series='{first}']")
    entry.click()
    assert series.count() == 2 and acc.locator(f"[data-role=series][data-series='{first}']").count() == 0
    assert entry.get_attribute("aria-pressed") == "false"
    entry.click()
    assert series.count() == 3 and entry.get_attribute("aria-pressed") == "true"

    # the log-scale toggle changes the loss axis
    loss = page.locator("[data-chart=loss]")
    linear_ticks = loss.locator("[data-role=y-tick]").all_inner_texts()
    loss.locator("[data-role=log-toggle]").check()
    assert loss.get_attribute("data-scale") == "log"
    assert loss.locator("[data-role=y-tick]").all_inner_texts() != linear_ticks
    assert loss.locator("[data-role=series]").count() == 3

    # hovering shows the nearest point: its run, epoch and value
    tooltip = loss.locator("[data-role=tooltip]")
    assert tooltip.is_hidden()
    loss.locator(".overlay").hover()
    assert tooltip.is_visible()
    text = tooltip.inner_text()
    assert re.search(r"lr=0\.0?\d+", text) and re.search(r"epoch [1-4]", text), text
    assert re.search(r"val_loss \d+(\.\d+)?", text), text

    # the same view for any runs by id
    two = sorted(run_ids)[:2]
    page.goto(f"{up}/compare?runs={','.join(two)}")
    page.wait_for_selector("[data-role=compare] tbody tr")
    assert page.locator("[data-chart=accuracy] [data-role=series]").count() == 2


def test_lr_finder_page_marks_the_suggestion(up: str, page: Any) -> None:
    status, job = _http("POST", f"{up}/v1/lr-finder", {"dataset": "digits", "optimizer": {"name": "sgd"}, "steps": 30})
    assert status == 202, job

    def done() -> Any:
        body = _http("GET", f"{up}/v1/lr-finder/{job['id']}")[1]
        return body if body["status"] not in ("queued", "running") else None

    job = wait_for(done, 90, "the lr finder", interval=0.3)
    assert job["status"] == "succeeded" and job["suggested_lr"] is not None, job
    page.goto(f"{up}/lr-finder/{job['id']}")
    marker = page.locator("[data-chart=lr-finder] [data-role=marker]")
    marker.wait_for()
    assert float(marker.get_attribute("data-value")) == pytest.approx(job["suggested_lr"])
    assert "suggested lr" in (marker.text_content() or "")
    paths = page.locator("[data-chart=lr-finder] [data-role=series]")
    assert paths.count() == 2
    assert int(paths.first.get_attribute("data-points")) == sum(p["loss"] is not None for p in job["points"])
    assert page.locator("[data-role=suggested-grid] li").count() == len(job["suggested_grid"]) > 0
    # every rule's pick, the default first
    rows = page.locator("[data-role=suggestions] tr")
    assert [rows.nth(i).get_attribute("data-name") for i in range(rows.count())] == ["minimum", "valley", "steepest"]
    assert [s["name"] for s in job["suggestions"]] == ["minimum", "valley", "steepest"]
    assert "(default)" in (rows.first.text_content() or "")


# Four members, two intervals, one exploit round: a few seconds on the embedded worker.
PBT: dict[str, Any] = {
    "name": "dashboard pbt",
    "base": {"dataset": "digits", "device": "cpu", "model": {"name": "mlp", "hidden": [32]}},
    "population": 4,
    "epochs": 4,
    "interval": 2,
    "mutations": {"lr": {"log_uniform": [1e-4, 1e-1]}},
    "execution": "fused",
}


def _submit_pbt(base: str, body: dict[str, Any]) -> str:
    status, created = _http("POST", f"{base}/v1/pbt", body)
    assert status == 202, created
    return str(created["id"])


def _wait_pbt(base: str, pbt_id: str) -> dict[str, Any]:
    def done() -> Any:
        body = _http("GET", f"{base}/v1/pbt/{pbt_id}")[1]
        return body if body["status"] not in ("queued", "running") else None

    found: dict[str, Any] = wait_for(done, 120, f"population {pbt_id}", interval=0.3)
    return found


def test_pbt_page_shows_members_exploits_lineage_and_schedule(up: str, page: Any) -> None:
    pbt = _wait_pbt(up, _submit_pbt(up, PBT))
    assert pbt["status"] == "succeeded" and pbt["best"] is not None, pbt
    lineage, best = pbt["lineage"], pbt["best"]
    assert [e["epoch"] for e in lineage] == [2]
    page.goto(f"{up}/")
    page.click(f"[data-role=pbts] tr[data-pbt-id='{pbt['id']}'] a")  # listed on the home page
    page.wait_for_url(f"{up}/pbt/{pbt['id']}")
    page.wait_for_function("document.querySelector('[data-role=schedule-json]')?.textContent.startsWith('{')")
    assert _status(page) == "succeeded"
    assert page.locator("[data-role=epochs]").inner_text() == "epoch 4 / 4 · round 2 / 2"

    curves = page.locator("[data-chart=members]")
    lines = curves.locator("[data-role=series]")
    assert [lines.nth(k).get_attribute("data-series") for k in range(lines.count())] == [f"member-{k}" for k in "0123"]
    assert [int(lines.nth(k).get_attribute("data-points")) for k in range(4)] == [4, 4, 4, 4]
    marker = curves.locator("[data-role=marker]")
    assert marker.count() == 1 and float(marker.get_attribute("data-value")) == 2
    (event,) = lineage
    assert f"exploit {event['target']}←{event['source']}" in (marker.text_content() or "")

    row = page.locator("[data-role=lineage] tbody tr")
    assert row.count() == 1
    assert (row.get_attribute("data-target"), row.get_attribute("data-source")) == (
        str(event["target"]),
        str(event["source"]),
    )
    text = row.inner_text()
    assert f"member {event['target']} ← member {event['source']}" in text and "lr " in text and " → " in text
    assert ("resampled" if "lr" in event["resampled"] else "perturbed") in text

    members = page.locator("[data-role=members] tbody tr")
    assert members.count() == 4
    for k, member in enumerate(pbt["members"]):
        cells = members.nth(k)
        assert cells.locator(f"a[href='/runs/{member['run_id']}']").count() == 1
        assert "succeeded" in cells.inner_text() and "4/4" in cells.inner_text()
        assert ("best" in cells.inner_text()) == (k == best["member"])

    schedule = page.locator("[data-chart=schedule]")
    assert schedule.get_attribute("data-scale") == "log"
    step = schedule.locator("[data-role=series]")
    assert step.count() == 1 and int(step.get_attribute("data-points")) == 2 * 4  # a step: each epoch's start and end
    followed = [f["member"] for f in best["schedule"]]
    handovers = sum(a != b for a, b in zip(followed, followed[1:], strict=False))
    assert schedule.locator("[data-role=marker]").count() == handovers
    trained_as = page.locator("[data-role=schedule] tbody tr td:last-child").all_inner_texts()
    runs_of = [m for i, m in enumerate(followed) if i == 0 or followed[i - 1] != m]  # a table row per run of epochs
    assert [t.strip() for t in trained_as] == [f"member {m}" for m in runs_of]
    found = _http("GET", f"{up}/v1/pbt/{pbt['id']}/schedule")[1]
    assert json.loads(page.locator("[data-role=schedule-json]").text_content() or "") == found
    assert page.locator("[data-role=schedule-link]").get_attribute("href") == f"/v1/pbt/{pbt['id']}/schedule"

    # the curve picker redraws every member with another metric
    page.select_option("[data-role=metric]", "val_loss")
    assert curves.locator("[data-role=series]").count() == 4
    assert "val_loss" in curves.locator(".axis-label").all_text_contents()

    # the discovered schedule trains from scratch as a run of its own
    page.click("[data-role=replay]")
    page.wait_for_url(RUN_PATH)
    run = _http("GET", f"{up}/v1/runs/{page.url.rsplit('/', 1)[1]}")[1]
    assert run["spec"]["schedule"] == found["schedule"] and run["spec"]["epochs"] == 4
    page.goto("about:blank")  # close the run page's stream


def test_pbt_page_updates_live_until_finished(up_pg: tuple[str, str, int], page: Any) -> None:
    base, database, worker = up_pg
    live = {**PBT, "name": "live pbt", "epochs": 12, "interval": 4}
    with contextlib.ExitStack() as held:
        with _paused(worker):  # the first round waits until its decision is held
            pbt_id = _submit_pbt(base, live)
            holder = held.enter_context(_holding(database, HOLD_MEMBERS, pbt_id))
        page.goto(f"{base}/pbt/{pbt_id}")
        page.wait_for_selector("[data-role=epochs]")
        assert _status(page) in ("queued", "running")
        assert page.get_by_role("button", name="Cancel population").is_visible()

        # the first interval trained, its decision waiting on the held rows: the page shows it half-way
        def interval_stored() -> bool:
            members = _http("GET", f"{base}/v1/pbt/{pbt_id}")[1]["members"]
            return _waiting_on(database, holder) and all(len(m["points"]) == 4 for m in members)

        wait_for(interval_stored, 90, "the first interval, its round waiting")
        epochs = page.locator("[data-role=epochs]")
        wait_for(lambda: epochs.inner_text() == "epoch 4 / 12 · round 0 / 3", 30, "the page to show the interval")
        assert _status(page) == "running"
        lines = page.locator("[data-chart=members] [data-role=series]")
        assert [int(lines.nth(k).get_attribute("data-points")) for k in range(4)] == [4, 4, 4, 4]
        assert page.locator("[data-role=lineage] tbody tr").count() == 0

    seen: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _status(page) in ("queued", "running"):
        seen.append(int(epochs.inner_text().split()[1]))
        time.sleep(0.05)
    seen.append(int(epochs.inner_text().split()[1]))
    assert _status(page) == "succeeded", _http("GET", f"{base}/v1/pbt/{pbt_id}")
    assert seen == sorted(seen) and seen[0] >= 4 and seen[-1] == 12, seen
    lineage = _http("GET", f"{base}/v1/pbt/{pbt_id}")[1]["lineage"]
    assert [e["epoch"] for e in lineage] == [4, 8]
    assert page.locator("[data-role=lineage] tbody tr").count() == 2
    assert page.locator("[data-chart=members] [data-role=marker]").count() == 2
    assert page.get_by_role("button", name="Cancel population").count() == 0


def test_key_prompt_stores_the_key_and_sends_it_on_every_call(tmp_path: Path, page: Any) -> None:
    env = _env(tmp_path / "data", LRLAB_AUTH="required")
    created = subprocess.run(
        [sys.executable, "-m", "lrlab.cli", "keys", "create", "--name", "ui"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    proc, base = _serve(["api"], env, tmp_path / "api.log")
    try:
        assert _http("GET", f"{base}/v1/runs")[0] == 401
        status, run = _http("POST", f"{base}/v1/runs", {"dataset": "digits", "epochs": 2}, key=key)
        assert status == 202, run  # no worker here: it stays queued

        page.goto(f"{base}/")
        prompt = page.locator("#key-prompt")
        prompt.wait_for(state="visible")
        page.fill("#key-input", "not-a-key")
        page.click("#key-submit")
        page.wait_for_function("document.getElementById('key-message').textContent.includes('refused')")
        assert prompt.is_visible()
        page.fill("#key-input", key)
        page.click("#key-submit")
        row = page.locator(f"[data-role=runs] tr[data-run-id='{run['id']}']")
        row.wait_for()
        assert run["id"][:8] in row.inner_text() and "queued" in row.inner_text()
        assert prompt.is_hidden()
        assert page.evaluate("localStorage.getItem('lrlab.apiKey')") == key

        # the next page asks nothing, and its event stream (fetch, not EventSource) carries the key
        with page.expect_request(lambda r: r.url.endswith(f"/v1/runs/{run['id']}/events")) as stream:
            page.click(f"a[href='/runs/{run['id']}']")
        assert stream.value.headers.get("authorization") == f"Bearer {key}"
        page.wait_for_selector("h1 [data-role=status]")
        assert _status(page) == "queued" and prompt.is_hidden()
        # no worker at all here: the page says so rather than waiting silently
        assert "no live worker serves the cpu queue" in page.locator("[data-role=waiting]").inner_text()
    finally:
        page.goto("about:blank")  # close the open stream first: uvicorn waits for it before exiting
        stop_process(proc)


def _offline(page: Any) -> list[str]:
    """Abort every request that leaves this machine, as on a cluster without internet; returns what was tried."""
    tried: list[str] = []

    def handle(route: Any) -> None:
        host = urllib.parse.urlsplit(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            tried.append(route.request.url)
            route.abort()

    page.context.route("**/*", handle)
    return tried


def test_api_docs_render_offline(up: str, page: Any) -> None:
    tried = _offline(page)
    page.goto(f"{up}/docs")
    operations = page.locator(".opblock-summary-path")
    operations.first.wait_for(timeout=30_000)
    paths = {p.strip().replace("\u200b", "") for p in operations.all_inner_texts()}
    assert {"/v1/runs", "/v1/runs/{run_id}", "/v1/experiments", "/metrics"} <= paths, sorted(paths)
    page.locator(".opblock-summary", has_text="/v1/runs/{run_id}/curves").first.click()  # an operation opens
    page.locator(".opblock-body .parameters").first.wait_for()
    assert tried == []  # Swagger UI asked nothing of a CDN or a validator

    page.goto(f"{up}/redoc")
    page.get_by_role("heading", name=re.compile(r"^lrlab")).first.wait_for(timeout=30_000)
    menu = page.locator("[role=menuitem]")
    assert menu.count() > 10
    assert page.get_by_text("/v1/runs/{run_id}/curves").count() >= 1
    # ReDoc asked no CDN or font host; its bundle hard-codes only the "API docs by Redocly" footer logo, an
    # <img> that removes itself when it cannot load.
    assert set(tried) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}, tried


def _upload(base: str, name: str, data: bytes) -> dict[str, Any]:
    import httpx

    resp = httpx.post(f"{base}/v1/datasets", files={"file": ("toy.npz", data)}, data={"name": name}, timeout=30)
    assert resp.status_code in (200, 201), resp.text
    found: dict[str, Any] = resp.json()
    return found


def test_upload_dataset_shown_by_name_and_linked(up: str, page: Any) -> None:
    from tests.api.test_datasets import toy_npz

    name = "toy <b>blobs</b> $5"  # shown as typed: text, never HTML
    dataset = _upload(up, name, toy_npz(seed=7))
    status, run = _http("POST", f"{up}/v1/runs", {"dataset": {"id": dataset["id"]}, "epochs": 1})
    assert status == 202, run
    page.goto(f"{up}/runs/{run['id']}")
    link = page.locator(".side [data-role=dataset]")
    page.wait_for_function(
        "name => document.querySelector('.side [data-role=dataset]')?.textContent === name", arg=name
    )
    assert link.get_attribute("href") == f"/datasets/{dataset['id']}"
    assert page.locator(".page-head [data-role=dataset]").inner_text() == name  # the subtitle names it too
    assert "file:null" not in page.locator("#app").inner_text()

    page.goto(f"{up}/")
    row = page.locator(f"[data-role=runs] tr[data-run-id='{run['id']}']")
    row.wait_for()
    page.wait_for_function(
        "([id, name]) => document.querySelector(`tr[data-run-id='${id}'] [data-role=dataset]`)?.textContent === name",
        arg=[run["id"], name],
    )
    row.locator("[data-role=dataset]").click()  # the link opens the dataset's page: what it holds, runs on it
    page.wait_for_url(f"{up}/datasets/{dataset['id']}")
    assert page.locator("[data-role=dataset-name]").inner_text() == name
    page.locator(f"[data-role=runs] tr[data-run-id='{run['id']}']").wait_for()
    assert "120" in page.locator(".side").inner_text()  # samples
    assert page.locator("[data-role=dataset-json]").get_attribute("href") == f"/v1/datasets/{dataset['id']}"

    pbt_id = _submit_pbt(up, {**PBT, "population": 2, "base": {**PBT["base"], "dataset": {"id": dataset["id"]}}})
    try:
        page.goto(f"{up}/pbt/{pbt_id}")
        page.wait_for_function(
            "name => [...document.querySelectorAll('[data-role=dataset]')].filter((a) => a.textContent === name)"
            ".length === 2",
            arg=name,
        )  # in the subtitle and the settings
        assert "file:null" not in page.locator("#app").inner_text()
    finally:
        _http("POST", f"{up}/v1/pbt/{pbt_id}/cancel")

    status, job = _http("POST", f"{up}/v1/lr-finder", {"dataset": {"id": dataset["id"]}, "steps": 10})
    assert status == 202, job
    page.goto(f"{up}/lr-finder/{job['id']}")
    page.wait_for_function(
        "name => document.querySelector('.page-head [data-role=dataset]')?.textContent === name", arg=name
    )
    page.goto("about:blank")


def test_cuda_run_without_gpu_worker_says_why_it_waits(up: str, page: Any) -> None:
    status, created = _http("POST", f"{up}/v1/runs", {"dataset": "blobs", "epochs": 1, "device": "cuda"})
    assert status == 202, created
    run = _http("GET", f"{up}/v1/runs/{created['id']}")[1]
    if run["waiting_reason"] is None:
        _http("POST", f"{up}/v1/runs/{created['id']}/cancel")
        pytest.skip("this machine has a GPU: `lrlab up` serves the gpu queue")
    page.goto(f"{up}/runs/{created['id']}")
    waiting = page.locator("[data-role=waiting]")
    waiting.wait_for()
    assert _status(page) == "queued"
    assert "no live GPU worker" in waiting.inner_text() and run["waiting_reason"] in waiting.inner_text()
    page.get_by_role("button", name="Cancel run").click()
    page.wait_for_function("document.querySelector('h1 [data-role=status]')?.textContent === 'cancelled'")
    assert waiting.count() == 0
    page.goto("about:blank")


def test_run_page_shows_a_plugins_model_and_why_it_trained_on_its_own(up: str, page: Any) -> None:
    # the example plugin (installed by tests/conftest.py before a worker starts; `lrlab up`'s worker lists it)
    tiny = {"name": "tiny-transformer", "params": {"width": 8, "heads": 2, "depth": 1, "dropout": 0.1}}
    base = {"model": tiny, "dataset": {"name": "motifs", "params": {"n_samples": 200, "length": 8}}, "epochs": 1}
    body = {"name": "plugin", "base": base, "grid": {"seed": [0, 1]}, "execution": "fused"}
    offered = lambda: any(m["name"] == "tiny-transformer" for m in _http("GET", f"{up}/v1/catalog")[1]["models"])  # noqa: E731
    wait_for(offered, 60, "the worker's first heartbeat, with its plugins")
    status, created = _http("POST", f"{up}/v1/experiments", body)
    assert status == 202, created

    def finished() -> Any:
        run = _http("GET", f"{up}/v1/runs/{created['runs'][0]}")[1]
        return run if run["status"] == "succeeded" else None

    run = wait_for(finished, 120, "the first member")
    page.goto(f"{up}/runs/{run['id']}")
    reason = page.locator("[data-role=not-fused]")
    reason.wait_for()
    assert "on its own" in reason.inner_text() and "draws random numbers" in reason.inner_text()
    facts = "\n".join(page.locator(".facts").all_inner_texts())  # the summary and the spec
    assert "tiny-transformer (plugin) width=8 heads=2 depth=1 dropout=0.1" in facts, facts
    assert "motifs n_samples=200 length=8" in facts, facts
    page.goto("about:blank")


def test_run_page_shows_a_layer_list(up: str, page: Any) -> None:
    layers = [{"type": "conv2d", "out_channels": 4, "kernel_size": 3}, "relu", "flatten", "linear"]
    model = {"name": "sequential", "layers": layers}
    status, created = _http("POST", f"{up}/v1/runs", {"dataset": "digits", "model": model, "epochs": 1})
    assert status == 202, created
    page.goto(f"{up}/runs/{created['id']}")
    page.wait_for_function("document.querySelector('h1 [data-role=status]')?.textContent === 'succeeded'")
    facts = "\n".join(page.locator(".facts").all_inner_texts())  # the summary and the spec
    expected = "sequential: conv2d(out_channels=4 kernel_size=3 stride=1 padding=0 bias=true) → relu → flatten"
    assert expected in facts and "linear(bias=true)" in facts, facts
    page.goto("about:blank")
