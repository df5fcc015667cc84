"""Service overhead: the same training through the service (POST -> done) and in one bare process.

Three timings of one spec, measured side by side, alternating, after a warm-up of each:
  bare     a plain PyTorch loop (torch.optim, nn.Sequential, tensors on the device) in this process
  trainer  trainer.train() in this process (our optimizers, per-epoch evaluation, divergence checks)
  service  POST /v1/runs to a real `lrlab api` -> queue -> a warm `lrlab worker` -> status finished

  python bench/overhead.py --epochs 400 --repeats 3            # Postgres + Redis on localhost
  python bench/overhead.py --embedded --epochs 400             # SQLite database and transport

Prints a Markdown table of seconds and ratios to bare.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import trainer  # noqa: E402

TORCH_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
}


def torch_optimizer(params: Any, spec: dict[str, Any]) -> torch.optim.Optimizer:
    """torch.optim's own optimizer for a spec's `optimizer` object (its fields keep torch's names)."""
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != "name"}
    return TORCH_OPTIMIZERS[spec["name"]](params, **kwargs)


def bare_loop(spec: dict[str, Any]) -> float:
    """What a person would write by hand: same data, model shape, optimizer and per-epoch validation."""
    t0 = time.perf_counter()
    data = trainer.load_dataset(trainer.RunConfig.from_spec(spec).dataset, spec["seed"])
    torch.manual_seed(spec["seed"])
    d_in = int(torch.tensor(data.input_shape).prod())
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(d_in, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, data.n_classes)
    )
    opt = torch_optimizer(model.parameters(), spec["optimizer"])
    gen = torch.Generator().manual_seed(spec["seed"])
    n, bs = len(data.y_train), spec["batch_size"]
    for _ in range(spec["epochs"]):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            logits = model(data.x_val)
            F.cross_entropy(logits, data.y_val).item(), (logits.argmax(1) == data.y_val).float().mean().item()
    return time.perf_counter() - t0


def trainer_loop(spec: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    trainer.train(trainer.RunConfig.from_spec(spec), device="cpu")
    return time.perf_counter() - t0


def _http(method: str, url: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def service_run(base: str, spec: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    run_id = _http("POST", f"{base}/v1/runs", spec)["id"]
    while True:
        status = _http("GET", f"{base}/v1/runs/{run_id}")["status"]
        if status not in ("queued", "running"):
            break
        time.sleep(POLL)
    elapsed = time.perf_counter() - t0
    if status != "succeeded":
        raise RuntimeError(f"service run ended {status}")
    run = _http("GET", f"{base}/v1/runs/{run_id}")
    EPOCH_SECONDS.append(run["summary"]["seconds"])
    return elapsed


POLL = float(os.environ.get("BENCH_POLL", "0.05"))
EPOCH_SECONDS: list[float] = []  # the worker's own sum of epoch times, to split overhead into in/out of epochs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLI = [sys.executable, "-m", "lrlab.cli"]


def _quiet(env: dict[str, str]) -> dict[str, Any]:
    return {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": ROOT, "env": env}


def start_worker(env: dict[str, str], base: str) -> subprocess.Popen[bytes]:
    """A worker (one process, concurrency 1) on the cpu queue; returns once it consumes (its heartbeat is in)."""
    before = _workers(base)
    proc = subprocess.Popen([*CLI, "worker", "--queues", "cpu", "--loglevel", "WARNING"], **_quiet(env))
    deadline = time.time() + 120
    while time.time() < deadline:  # worker_ready (after the warm-up) writes the heartbeat row /metrics counts
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        if _workers(base) > before:
            return proc
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError("worker did not start")


def _workers(base: str) -> int:
    req = urllib.request.Request(f"{base}/metrics")
    with urllib.request.urlopen(req, timeout=30) as resp:
        lines = resp.read().decode().splitlines()
    return sum(int(float(line.split()[-1])) for line in lines if line.startswith("lrlab_workers{"))


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # a warm shutdown: the worker removes its heartbeat row
    proc.wait(timeout=30)


def start_service(env: dict[str, str], port: int) -> list[subprocess.Popen[bytes]]:
    """`lrlab api` on the port and one warm `lrlab worker`; returns once both answer."""
    if env.get("LRLAB_DATABASE_URL"):
        subprocess.run([*CLI, "db", "upgrade"], check=True, **_quiet(env))
    api = subprocess.Popen([*CLI, "api", "--port", str(port), "--loglevel", "WARNING"], **_quiet(env))
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            _http("GET", f"{base}/healthz")
            break
        except OSError:
            if time.time() > deadline:
                stop(api)
                raise RuntimeError("api did not start") from None
            time.sleep(0.2)
    try:
        return [api, start_worker(env, base)]
    except BaseException:
        stop(api)
        raise


@contextlib.contextmanager
def private_services(embedded: bool) -> Iterator[dict[str, str]]:
    """The environment for an api and workers of our own: a temporary data dir and, unless embedded, a new
    Postgres database and a Redis db number claimed as tests/conftest.py claims one (dropped afterwards)."""
    tmp = Path(tempfile.mkdtemp(prefix="lrlab-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRLAB_")}
    env.update({"LRLAB_DATA_DIR": str(tmp), "LRLAB_TORCH_THREADS": "1", "LRLAB_AUTH": "disabled"})  # loopback only
    if embedded:
        yield env
        return
    import psycopg
    import redis

    admin_pg, redis_host = "postgresql://postgres@127.0.0.1:5432/postgres", "redis://127.0.0.1:6379"
    db_name, token = f"lrlab_bench_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    locks = redis.Redis.from_url(f"{redis_host}/0")
    redis_db = next((db for db in range(1, 16) if locks.set(f"lrlab-test-lock:{db}", token, nx=True, ex=3600)), None)
    if redis_db is None:
        raise RuntimeError("no free Redis db number (1..15)")
    redis.Redis.from_url(f"{redis_host}/{redis_db}").flushdb()
    with psycopg.connect(admin_pg, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    env["LRLAB_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}"
    env["LRLAB_BROKER_URL"] = f"{redis_host}/{redis_db}"
    try:
        yield env
    finally:
        with psycopg.connect(admin_pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        redis.Redis.from_url(f"{redis_host}/{redis_db}").flushdb()
        if locks.get(f"lrlab-test-lock:{redis_db}") == token.encode():
            locks.delete(f"lrlab-test-lock:{redis_db}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--embedded", action="store_true", help="SQLite database and transport, no servers")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the worker process gets the same (LRLAB_TORCH_THREADS=1)
    spec = {
        "dataset": args.dataset,
        "model": {"name": "mlp", "hidden": [128, 128]},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": 0,
        "device": "cpu",
        "divergence": {"enabled": True},
    }
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with private_services(args.embedded) as env:
        procs = start_service(env, port)
        try:
            warm = {**spec, "epochs": 2}
            bare_loop(warm), trainer_loop(warm), service_run(base, warm)
            times: dict[str, list[float]] = {"bare": [], "trainer": [], "service": []}
            for _ in range(args.repeats):
                times["bare"].append(bare_loop(spec))
                times["trainer"].append(trainer_loop(spec))
                times["service"].append(service_run(base, spec))
        finally:
            for p in procs:
                stop(p)
    shape = "embedded (SQLite + SQLite transport)" if args.embedded else "Postgres + Redis"
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{shape}; {args.dataset} MLP Adam, {args.epochs} epochs, batch {args.batch_size}, 1 torch thread\n"
    )
    print("| path | median s | min s | ratio to bare (median) |\n|---|---|---|---|")
    bare = statistics.median(times["bare"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.2f} | {min(ts):.2f} | {med / bare:.3f} |")
    inside = statistics.median(EPOCH_SECONDS[1:])
    print(
        f"\nservice: {inside:.2f} s inside the worker's epochs, {statistics.median(times['service']) - inside:.2f} s"
        " outside them (queueing, claiming, loading, recording, polling)"
    )


if __name__ == "__main__":
    main()
