"""Reading results at scale: compare, charts, long curves and event replay over one real `lrlab api`.

Builds, in a private Postgres database per source tree, an experiment of `--runs` runs x `--epochs` epochs
(default 256 x 1000: 4 optimizers x 8 lrs x 8 seeds, some runs diverged, failed or stopped early) and one run
of `--long-epochs` epochs (default 10,000). Experiment and run rows are written with plain SQL from the grid
`lrlab.runs.experiments.expand` makes; curve rows with a plain `COPY curve_point` (so whatever a tree derives
from curve rows must come from the database itself, e.g. triggers, not from the worker's code path). Ids and
timestamps are deterministic, so every tree holds the same rows and must give the same answers.

Then, for each tree in turn (alternating per repeat), for each endpoint: a fresh `lrlab api` of that tree
(keys off, loopback), a warm-up request of the same kind on a small experiment (imports, first-use costs),
the peak-RSS counter reset, and the timed request: the first one for the big experiment, from sending it to
its last byte, with the API process's peak RSS (VmHWM) while serving it.

  experiment   GET /v1/experiments/{id}
  compare      GET /v1/experiments/{id}/compare                      (default parameters)
  compare_200  GET /v1/experiments/{id}/compare?max_points=200
  png          GET /v1/experiments/{id}/charts/val_accuracy.png
  svg          GET /v1/experiments/{id}/charts/val_loss.svg
  curves_long  GET /v1/runs/{long}/curves                            (the 10,000-epoch run)
  events_long  GET /v1/runs/{long}/events                            (SSE: the whole curve replayed, to the end)
  dashboard    /experiments/{id} in headless Chromium until both charts show every run and the table every row
               (--browser; Playwright driving /usr/bin/chromium; the page's scripts cached by a warm-up page)

  python bench/compare_scale.py --repeats 3                                      # this tree alone
  git worktree add /tmp/lrlab-before <commit>
  python bench/compare_scale.py --tree /tmp/lrlab-before --tree . --browser      # before and after, one run

Prints a Markdown table (median seconds, peak RSS, bytes, and the ratio of each tree to the first) and whether
every tree gave the same answer (JSON compared parsed, so numbers must match exactly; images byte for byte).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg.types.json import Json  # noqa: E402

from bench.harness import (  # noqa: E402
    Tree,
    get,
    load_average,
    make_tree,
    median,
    plain_dsn,
    private_database,
    reset_peak,
    status_kib,
)
from lrlab.schemas.experiments import ExperimentCreate  # noqa: E402

try:
    from lrlab.reports import analysis
    from lrlab.runs.experiments import expand
except ImportError:  # a checkout from before the restructure (issue 13)
    from lrlab.experiments import expand  # type: ignore[no-redef]

    from lrlab import analysis  # type: ignore[no-redef]

NAMESPACE = uuid.UUID("5b0c3c4e-1c35-4a51-9a3f-4f2b8d6b1e15")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
OPTIMIZERS = [{"name": "adam"}, {"name": "sgd", "momentum": 0.9}, {"name": "rmsprop"}, {"name": "adagrad"}]
LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
POINT_COLUMNS = ("run_id", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")


# --- data -----------------------------------------------------------------------------------------


def _id(kind: str, i: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{kind}-{i}"))


@dataclass
class Fate:
    status: str
    epochs: int
    diverged_at: int | None = None
    reason: str | None = None
    early_stopped: bool = False
    error: str | None = None


def fate(i: int, epochs: int, rng: random.Random) -> Fate:
    """Most runs succeed with every epoch; some diverge, fail part-way or stop early (deterministic in i)."""
    if i % 29 == 7:
        at = rng.randint(max(1, epochs // 20), max(1, epochs * 3 // 5))
        return Fate("diverged", at, diverged_at=at, reason="non-finite loss")
    if i % 53 == 11:
        return Fate("failed", rng.randint(1, max(1, epochs * 9 // 10)), error="RuntimeError: worker lost its data")
    if i % 37 == 5:
        at = rng.randint(max(1, epochs // 4), max(1, epochs - 1))
        return Fate("succeeded", at, early_stopped=True, reason=f"early stop: no improvement for {epochs // 10} epochs")
    return Fate("succeeded", epochs)


def curve(i: int, n: int, lr: float, f: Fate, rng: random.Random) -> list[dict[str, Any]]:
    """A plausible noisy training curve of n epochs; a diverged run's last epoch has non-finite losses."""
    ceiling, tau = 0.55 + 0.4 * rng.random(), 5.0 + 0.2 * n * rng.random()
    pts = []
    for e in range(1, n + 1):
        progress = 1.0 - math.exp(-e / tau)
        val_acc = min(1.0, max(0.0, ceiling * progress + rng.gauss(0.0, 0.01)))
        train_acc = min(1.0, max(0.0, (ceiling + 0.03) * progress + rng.gauss(0.0, 0.008)))
        val_loss = 2.3 * (1.0 - progress) + 0.25 + 1e-4 * e * rng.random() + abs(rng.gauss(0.0, 0.02))
        train_loss = 2.3 * (1.0 - progress) + 0.2 + abs(rng.gauss(0.0, 0.02))
        point = {
            "epoch": e,
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": lr,
            "seconds": 0.02 + 0.01 * rng.random(),
            "nonfinite": [],
        }
        if f.diverged_at == e:
            point.update(train_loss=None, val_loss=None, val_accuracy=0.1, nonfinite=["train_loss", "val_loss"])
        pts.append(point)
    return pts


def _copy_points(cur: psycopg.Cursor[Any], run_id: str, pts: list[dict[str, Any]]) -> None:
    cols = ", ".join((*POINT_COLUMNS, "nonfinite"))
    with cur.copy(f"COPY curve_point ({cols}) FROM STDIN") as copy:
        for p in pts:
            copy.write_row([run_id, *(p[c] for c in POINT_COLUMNS[1:]), json.dumps(p["nonfinite"])])


def _insert_run(cur: psycopg.Cursor[Any], row: dict[str, Any]) -> None:
    cols = ", ".join(row)
    marks = ", ".join(f"%({c})s" for c in row)
    cur.execute(f"INSERT INTO run ({cols}) VALUES ({marks})", row)


def _run_row(run_id: str, i: int, spec: dict[str, Any], f: Fate, pts: list[dict[str, Any]]) -> dict[str, Any]:
    created = T0 + timedelta(milliseconds=i)
    summary = None
    if f.status != "failed":
        summary = analysis.summarize(
            pts, diverged_at=f.diverged_at, reason=f.reason, early_stopped=f.early_stopped
        ).model_dump(mode="json")
    return {
        "id": run_id,
        "owner": "local",
        "status": f.status,
        "spec": Json(spec),
        "dataset": spec["dataset"]["name"] if isinstance(spec["dataset"], dict) else str(spec["dataset"]),
        "optimizer": spec["optimizer"]["name"],
        "queue": "cpu",
        "device": "cpu",
        "n_parameters": 25_000,
        "created_at": created,
        "started_at": created + timedelta(seconds=1),
        "finished_at": created + timedelta(seconds=1 + sum(p["seconds"] for p in pts)),
        "error": f.error,
        "summary": Json(summary) if summary is not None else None,
        "cancel_requested": False,
        "attempts": 1,
        "worker": "bench@host",
    }


def grid_request(name: str, epochs: int, seeds: int, lrs: list[float]) -> ExperimentCreate:
    return ExperimentCreate.model_validate(
        {
            "name": name,
            "execution": "separate",
            "base": {"dataset": "digits", "epochs": epochs, "device": "cpu"},
            "grid": {"optimizer": OPTIMIZERS, "lr": lrs, "seed": list(range(seeds))},
        }
    )


def seed_experiment(dsn: str, key: str, request: ExperimentCreate, limit: int) -> tuple[str, list[str]]:
    """The experiment row, its first `limit` cells as finished runs, their curves; returns (id, run ids)."""
    cells = expand(request)[:limit]
    exp_id = _id(f"{key}-experiment", 0)
    run_ids = []
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO experiment (id, owner, name, execution, base, grid, created_at)"
            " VALUES (%s, 'local', %s, 'separate', %s, %s, %s)",
            (exp_id, request.name, Json(request.base.to_json()), Json(request.model_dump(mode="json")["grid"]), T0),
        )
        for i, cell in enumerate(cells):
            rng = random.Random(f"{key}-{i}")
            spec = cell.spec.to_json()
            f = fate(i, spec["epochs"], rng)
            pts = curve(i, f.epochs, spec["optimizer"]["lr"], f, rng)
            run_id = _id(f"{key}-run", i)
            row = _run_row(run_id, i, spec, f, pts)
            row.update(experiment_id=exp_id, label=cell.label, params=Json({**cell.params, "config": cell.config}))
            _insert_run(cur, row)
            _copy_points(cur, run_id, pts)
            run_ids.append(run_id)
    return exp_id, run_ids


def seed_long_run(dsn: str, epochs: int) -> str:
    request = grid_request("long", epochs, 1, [1e-3])
    spec = expand(request)[0].spec.to_json()
    run_id = _id("long-run", epochs)
    f = Fate("succeeded", epochs)
    pts = curve(0, epochs, 1e-3, f, random.Random(f"long-{epochs}"))
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        _insert_run(cur, {**_run_row(run_id, 10_000_000, spec, f, pts), "label": "long run"})
        _copy_points(cur, run_id, pts)
    return run_id


@dataclass
class Data:
    big: str
    small: str
    small_run: str
    long_run: str
    n_runs: int
    seed_seconds: float


def seed(tree: Tree, args: argparse.Namespace) -> Data:
    tree.run("db", "upgrade")
    dsn = plain_dsn(tree.env["LRLAB_DATABASE_URL"])
    t0 = time.perf_counter()
    seeds = max(1, args.runs // (len(OPTIMIZERS) * len(LRS)))
    big, runs = seed_experiment(dsn, "big", grid_request("scale", args.epochs, seeds, LRS), args.runs)
    seed_seconds = time.perf_counter() - t0
    small, small_runs = seed_experiment(dsn, "small", grid_request("warm-up", 30, 2, LRS[:1]), 8)
    long_run = seed_long_run(dsn, args.long_epochs)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return Data(big, small, small_runs[0], long_run, len(runs), seed_seconds)


# --- measurements ---------------------------------------------------------------------------------


@dataclass
class Endpoint:
    name: str
    path: Callable[[Data, bool], str]  # (data, warm-up?) -> path
    kind: str = "json"  # json | bytes | sse


ENDPOINTS = [
    Endpoint("experiment", lambda d, w: f"/v1/experiments/{d.small if w else d.big}"),
    Endpoint("compare", lambda d, w: f"/v1/experiments/{d.small if w else d.big}/compare"),
    Endpoint("compare_200", lambda d, w: f"/v1/experiments/{d.small if w else d.big}/compare?max_points=200"),
    Endpoint("png", lambda d, w: f"/v1/experiments/{d.small if w else d.big}/charts/val_accuracy.png", "bytes"),
    Endpoint("svg", lambda d, w: f"/v1/experiments/{d.small if w else d.big}/charts/val_loss.svg", "bytes"),
    Endpoint("curves_long", lambda d, w: f"/v1/runs/{d.small_run if w else d.long_run}/curves"),
    Endpoint("events_long", lambda d, w: f"/v1/runs/{d.small_run if w else d.long_run}/events", "sse"),
]


def _leaves(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every non-null leaf of parsed JSON with its path: fields a tree added as null do not count."""
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, f"{path}[{i}]")]
    return [] if value is None else [(path, value)]


def fingerprint(kind: str, body: bytes) -> str:
    """What must match across trees: every non-null value of the parsed JSON (numbers exactly; a field another
    change added as null is no difference), the parsed events, or the bytes of an image."""
    if kind == "json":
        canonical = json.dumps(sorted(_leaves(json.loads(body))), default=str).encode()
    elif kind == "sse":
        events = [block for block in body.decode().split("\n\n") if block and not block.startswith(":")]
        parsed = []
        for block in events:
            lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            parsed.append([lines.get("event"), json.loads(lines["data"]) if "data" in lines else None])
        canonical = json.dumps(parsed, sort_keys=True).encode()
    else:
        canonical = body
    return hashlib.sha256(canonical).hexdigest()[:16]


@dataclass
class Sample:
    seconds: float
    peak_mb: float
    rss_before_mb: float
    size: int
    digest: str
    load: float


@dataclass
class Results:
    samples: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)  # tree -> endpoint -> samples

    def add(self, tree: str, endpoint: str, sample: Sample) -> None:
        self.samples.setdefault(tree, {}).setdefault(endpoint, []).append(sample)


def measure(tree: Tree, data: Data, ep: Endpoint, log: Path) -> Sample:
    with tree.api(log) as (proc, base):
        port = int(base.rsplit(":", 1)[1])
        status, _, _ = get(port, ep.path(data, True))
        if status != 200:
            raise RuntimeError(f"{tree.name}: warm-up {ep.name} answered {status}")
        reset_peak(proc.pid)
        before = status_kib(proc.pid, "VmRSS")
        load = load_average()
        status, body, seconds = get(port, ep.path(data, False))
        peak = status_kib(proc.pid, "VmHWM")
        if status != 200:
            raise RuntimeError(f"{tree.name}: {ep.name} answered {status}: {body[:300]!r}")
    return Sample(seconds, peak / 1024, before / 1024, len(body), fingerprint(ep.kind, body), load)


def measure_dashboard(tree: Tree, data: Data, browser: Any, log: Path) -> Sample:
    """Navigation to the experiment page -> both charts draw a line per run and the table holds every run."""
    drawn = (
        "(n) => document.querySelectorAll('[data-chart=accuracy] [data-role=series]').length === n"
        " && document.querySelectorAll('[data-chart=loss] [data-role=series]').length === n"
        " && document.querySelectorAll('[data-role=compare] tbody tr').length === n"
    )
    with tree.api(log) as (proc, base):
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{base}/experiments/{data.small}")
            page.wait_for_function(drawn, arg=8, timeout=180_000)  # the warm-up page: scripts cached
            reset_peak(proc.pid)
            before = status_kib(proc.pid, "VmRSS")
            load = load_average()
            t0 = time.perf_counter()
            page.goto(f"{base}/experiments/{data.big}")
            # drawn, or the page says why not (its notice box)
            page.wait_for_function(
                f"(n) => ({drawn})(n) || !!document.querySelector('.notice')?.innerText",
                arg=data.n_runs,
                timeout=300_000,
                polling=50,
            )
            seconds = time.perf_counter() - t0
            peak = status_kib(proc.pid, "VmHWM")
            failure = page.evaluate("document.querySelector('.notice')?.innerText || ''")
            if errors:
                raise RuntimeError(f"{tree.name}: the page raised {errors}")
        finally:
            context.close()
    if failure:
        return Sample(math.nan, peak / 1024, before / 1024, 0, f"page error: {failure.strip()[:60]}", load)
    return Sample(seconds, peak / 1024, before / 1024, 0, "drawn", load)


def wait_for_quiet(limit: float, most: float) -> float:
    """Wait (at most `most` seconds) for the 1-minute load average to fall below `limit`; returns it."""
    deadline = time.monotonic() + most
    while load_average() >= limit and time.monotonic() < deadline:
        time.sleep(5)
    return load_average()


# --- report ---------------------------------------------------------------------------------------


def report(trees: list[Tree], results: Results, names: list[str], args: argparse.Namespace, data: Data) -> str:
    first = trees[0].name
    lines = [
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Postgres;"
        f" {data.n_runs} runs x {args.epochs} epochs, a {args.long_epochs}-epoch run; {args.repeats} repeats,"
        " medians; each request the first for its experiment or run, on a fresh `lrlab api` warmed on a small one.",
        "",
        "Trees: " + "; ".join(f"[{i}] {t.name}" for i, t in enumerate(trees)),
        "",
    ]
    head = ["endpoint"]
    for i in range(len(trees)):
        head += [f"[{i}] s", f"[{i}] peak MB"]
        if i:
            head.append(f"[{i}]/[0] time")
    head += ["bytes", "same answer", "load"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        row = [name]
        base = median([s.seconds for s in results.samples[first].get(name, [])])
        digests, sizes, loads = set(), set(), []
        for i, t in enumerate(trees):
            ss = results.samples[t.name].get(name, [])
            sec = median([s.seconds for s in ss])
            row += [f"{sec:.3f}", f"{median([s.peak_mb for s in ss]):.0f}"]
            if i:
                row.append(f"{sec / base:.3f}")
            digests |= {s.digest for s in ss}
            sizes |= {s.size for s in ss}
            loads += [s.load for s in ss]
        row += [
            "/".join(str(s) for s in sorted(sizes)),
            ", ".join(sorted(digests))
            if name == "dashboard"
            else "yes"
            if len(digests) == 1
            else f"NO ({len(digests)} answers)",
            f"{min(loads):.1f}-{max(loads):.1f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", type=Path, action="append", help="a checkout to measure (repeat; default: this one)")
    ap.add_argument("--runs", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--long-epochs", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="+", help="endpoint names to measure (default: all)")
    ap.add_argument("--browser", action="store_true", help="also time the dashboard's experiment page in Chromium")
    ap.add_argument("--max-load", type=float, default=1.5, help="wait for the load average to fall below this")
    ap.add_argument("--max-wait", type=float, default=120, help="... for at most this many seconds per repeat")
    ap.add_argument("--json", type=Path, help="write every sample here")
    ap.add_argument("--log", type=Path, default=Path("/tmp/compare_scale_api.log"))
    args = ap.parse_args()
    paths = args.tree or [ROOT]
    endpoints = [e for e in ENDPOINTS if not args.only or e.name in args.only]
    names = [e.name for e in endpoints] + (["dashboard"] if args.browser else [])

    results = Results()
    with contextlib.ExitStack() as stack:
        trees = [make_tree(p, stack.enter_context(private_database())) for p in paths]
        datas = {}
        for t in trees:
            datas[t.name] = seed(t, args)
            print(f"seeded {t.name}: {datas[t.name].seed_seconds:.1f} s for the big experiment", flush=True)
        browser = pw = None
        if args.browser:
            from playwright.sync_api import sync_playwright

            pw = sync_playwright().start()
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for r in range(args.repeats):
                load = wait_for_quiet(args.max_load, args.max_wait)
                print(f"repeat {r + 1}/{args.repeats}, load {load:.2f}", flush=True)
                order = trees if r % 2 == 0 else trees[::-1]
                for ep in endpoints:
                    for t in order:
                        sample = measure(t, datas[t.name], ep, args.log)
                        results.add(t.name, ep.name, sample)
                        print(f"  {ep.name:12s} {sample.seconds:8.3f} s {sample.peak_mb:6.0f} MB  {t.name}", flush=True)
                if browser is not None:
                    for t in order:
                        sample = measure_dashboard(t, datas[t.name], browser, args.log)
                        results.add(t.name, "dashboard", sample)
                        print(f"  dashboard    {sample.seconds:8.3f} s {sample.peak_mb:6.0f} MB  {t.name}", flush=True)
        finally:
            if browser is not None:
                browser.close()
            if pw is not None:
                pw.stop()
    table = report(trees, results, names, args, datas[trees[0].name])
    print("\n" + table)
    if args.json:
        args.json.write_text(
            json.dumps(
                {t: {e: [s.__dict__ for s in ss] for e, ss in eps.items()} for t, eps in results.samples.items()},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
