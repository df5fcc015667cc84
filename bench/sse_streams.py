"""Many open event streams on one API process: does the rest of the API keep answering?

Starts one real `lrlab api` (one uvicorn process) over a private Postgres database (keys required), makes
`--keys` keys with one run each (runs that ask for a GPU, so no worker takes them), and writes a point to every
run each `--point-interval` seconds from this process, with the upsert a worker uses (so the same NOTIFY
wakes the streams). Then, side by side in one invocation:
  idle     no streams open: `--pollers` clients call GET /v1/runs?limit=50 back to back for `--seconds`
  streams  `--streams` GET /v1/runs/{id}/events open, spread over the keys' runs, each reading every point,
           while the same pollers call GET /v1/runs for `--seconds`
and reports each phase's GET latency (p50, p99, max), how the streams were answered (200, 429, 5xx, none),
how late points reached the streams (commit -> event read here), and the Postgres connections the API
process held at the end (its connections carry application_name=lrlab-bench-api).

  python bench/sse_streams.py                          # 200 streams, 4 keys, 20 s per phase
  python bench/sse_streams.py --tree /tmp/lrlab-old    # the same against another checkout (before a fix)

Prints Markdown rows for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import _free_port, private_services  # noqa: E402

APP_NAME = "lrlab-bench-api"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def request(method: str, url: str, key: str, body: Any = None, timeout: float = 120) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, None


def start_api(env: dict[str, str], tree: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "lrlab.cli", "api", "--port", str(port), "--loglevel", "WARNING"]
    proc = subprocess.Popen(cmd, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
            return proc
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the api did not start") from None
            time.sleep(0.2)


def write_points(runs: list[str], interval: float, stop: Any, out: Any) -> None:
    """A process of its own: one point per run every `interval` seconds, one commit each (as a worker's writer),
    until `stop`; then puts {(run, epoch): commit time} on `out`."""
    from lrlab.db import get_engine, session_scope
    from lrlab.runs import store

    get_engine().dispose(close=False)  # forked: the parent's pooled connections are not ours
    committed: dict[tuple[str, int], float] = {}
    epoch = 0
    while not stop.wait(interval):
        epoch += 1
        for run_id in runs:
            with session_scope() as s:
                store.upsert_points(s, run_id, [{"epoch": epoch, "train_loss": 1 / epoch, "lr": 0.1, "seconds": 0}])
            committed[(run_id, epoch)] = time.monotonic()
    out.put(committed)


def read_streams(port: int, targets: list[tuple[str, str]], started: Any, stop: Any, out: Any) -> None:
    """A process of its own (in the benchmark's, the GIL would delay its reads behind the pollers' threads): one
    asyncio loop reading every stream as a browser does (raw HTTP/1.1, chunked). `started[i]` is set once
    stream i has answered and read its first event (or answered other than 200); when `stop` is set, hangs up
    and puts (statuses, [(run, epoch, time read)], errors) on `out`."""
    statuses: list[int | None] = [None] * len(targets)
    received: list[tuple[str, int, float]] = []
    errors: Counter[str] = Counter()

    async def read(i: int, key: str, run_id: str) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            errors[type(exc).__name__] += 1
            return
        try:
            head = f"GET /v1/runs/{run_id}/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n\r\n"
            writer.write(head.encode())
            status_line = await reader.readline()
            statuses[i] = int(status_line.split()[1]) if status_line else 0
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            if statuses[i] != 200:
                started[i] = 1
                return
            buffer, kind = b"", ""
            while size := int((await reader.readline()).strip() or b"0", 16):
                buffer += (await reader.readexactly(size + 2))[:-2]
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.startswith(b"event: "):
                        kind = line[7:].decode()
                    elif line.startswith(b"data: "):
                        started[i] = 1
                        if kind == "point":
                            received.append((run_id, json.loads(line[6:])["epoch"], time.monotonic()))
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            errors[type(exc).__name__] += 1
        finally:
            writer.close()

    async def main() -> None:
        tasks = [asyncio.create_task(read(i, key, run_id)) for i, (key, run_id) in enumerate(targets)]
        while not stop.is_set():
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    out.put((statuses, received, dict(errors)))


def poll_runs(base: str, key: str, pollers: int, seconds: float) -> tuple[list[float], Counter[int]]:
    """`pollers` threads calling GET /v1/runs?limit=50 back to back: every latency, and the statuses."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds

    def poll() -> None:
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            status, _ = request("GET", f"{base}/v1/runs?limit=50", key)
            latencies.append(time.monotonic() - t0)
            statuses[status] += 1

    threads = [threading.Thread(target=poll) for _ in range(pollers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, statuses


def api_connections(env: dict[str, str]) -> int:
    import psycopg

    db_name = env["LRLAB_DATABASE_URL"].rsplit("/", 1)[1]
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres") as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s", [db_name, APP_NAME]
        ).fetchone()
    return int(row[0]) if row else 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency_cells(latencies: list[float]) -> str:
    ms = [1000 * x for x in latencies]
    return f"{percentile(ms, 0.5):.0f} / {percentile(ms, 0.99):.0f} / {max(ms):.0f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--keys", type=int, default=4, help="streams are spread over this many keys, one run each")
    ap.add_argument("--pollers", type=int, default=4, help="concurrent GET /v1/runs clients")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    ap.add_argument("--point-interval", type=float, default=0.5, help="seconds between two points of a run")
    ap.add_argument("--open-timeout", type=float, default=60.0, help="how long streams may take to start")
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose `lrlab api` is measured")
    args = ap.parse_args()

    with private_services(embedded=False) as env:
        env["LRLAB_AUTH"] = "required"
        os.environ.update({k: v for k, v in env.items() if k.startswith("LRLAB_")})
        from lrlab import auth
        from lrlab.db import reset_caches, session_scope
        from lrlab.migrate import upgrade

        reset_caches()
        upgrade()
        with session_scope() as s:
            keys = [auth.create_key(s, f"bench {i}")[1] for i in range(args.keys)]
        port = _free_port()
        api_env = {**env, "LRLAB_DATABASE_URL": env["LRLAB_DATABASE_URL"] + f"?application_name={APP_NAME}"}
        api = start_api(api_env, args.tree.resolve(), port)
        base = f"http://127.0.0.1:{port}"
        try:
            runs = []
            for key in keys:
                spec = {"dataset": "blobs", "epochs": 1000, "device": "cuda"}  # waits for a GPU worker: never runs
                status, body = request("POST", f"{base}/v1/runs", key, spec)
                assert status == 202, status
                runs.append(body["id"])
            for _ in range(5):  # warm up
                request("GET", f"{base}/v1/runs?limit=50", keys[0])
            mp = multiprocessing.get_context("fork")
            stop_writing, stop_reading = mp.Event(), mp.Event()
            written, read_out = mp.Queue(), mp.Queue()
            writer = mp.Process(target=write_points, args=(runs, args.point_interval, stop_writing, written))
            writer.start()

            cpu0 = cpu_seconds(api.pid)
            idle, idle_statuses = poll_runs(base, keys[0], args.pollers, args.seconds)
            cpu_idle = (cpu_seconds(api.pid) - cpu0) / args.seconds

            targets = [(keys[i % args.keys], runs[i % args.keys]) for i in range(args.streams)]
            started = mp.Array("b", args.streams, lock=False)
            reader = mp.Process(target=read_streams, args=(port, targets, started, stop_reading, read_out))
            t_open = time.monotonic()
            reader.start()
            while time.monotonic() - t_open < args.open_timeout and not all(started):
                time.sleep(0.1)
            opened_in, first = time.monotonic() - t_open, sum(started)
            busy_from = time.monotonic()
            cpu0 = cpu_seconds(api.pid)
            busy, busy_statuses = poll_runs(base, keys[0], args.pollers, args.seconds)
            cpu_busy = (cpu_seconds(api.pid) - cpu0) / args.seconds
            busy_until = time.monotonic()
            connections = api_connections(env)
            stop_writing.set()
            committed = written.get(timeout=60)
            time.sleep(1.0)  # the last points reach the streams
            stop_reading.set()
            statuses, received, errors = read_out.get(timeout=60)
            writer.join()
            reader.join()
            lags = [
                when - committed[(run_id, epoch)]
                for run_id, epoch, when in received
                if (run_id, epoch) in committed and busy_from <= committed[(run_id, epoch)] <= busy_until
            ]
            expected = sum(  # the points committed in the window, times the streams on their run
                sum(1 for _key, run in targets if run == run_id)
                for (run_id, _epoch), t in committed.items()
                if busy_from <= t <= busy_until
            )
            answered = Counter(statuses)
        finally:
            api.terminate()
            try:
                api.wait(15)
            except subprocess.TimeoutExpired:
                api.kill()
                api.wait()

    print(
        f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {sys.version.split()[0]}"
    )
    print(
        f"tree: {args.tree.resolve()}; {args.streams} streams over {args.keys} keys; a point per run every "
        f"{args.point_interval} s; {args.pollers} pollers; {args.seconds:.0f} s per phase"
    )
    print(
        f"streams answered {dict(answered)}; {first} read their first event within {opened_in:.1f} s; "
        f"client errors {errors}"
    )
    print(f"GET statuses: idle {dict(idle_statuses)}, streams {dict(busy_statuses)}")
    print()
    print(
        "| phase | GET /v1/runs p50 / p99 / max | GETs | API CPU | point lag p50 / p99 | API's Postgres connections |"
    )
    print("|---|---|---|---|---|---|")
    print(f"| no streams | {latency_cells(idle)} | {len(idle)} | {100 * cpu_idle:.0f}% | – | – |")
    lag_ms = [1000 * x for x in lags]
    print(
        f"| {args.streams} streams asked, {answered.get(200, 0)} open | {latency_cells(busy)} | {len(busy)} | "
        f"{100 * cpu_busy:.0f}% | "
        f"{percentile(lag_ms, 0.5):.0f} / {percentile(lag_ms, 0.99):.0f} ms ({len(lags)} of {expected} events) | "
        f"{connections} |"
    )
    ratio = percentile(busy, 0.99) / percentile(idle, 0.99)
    print(
        f"\np99 with streams / p99 without: {ratio:.2f}; stream answers 5xx: "
        f"{sum(n for s, n in answered.items() if s and s >= 500)}"
    )


if __name__ == "__main__":
    main()
