"""Service overhead: the same training through the service (POST -> done) and in one bare process.

Three timings of one spec, measured side by side, alternating, after a warm-up of each:
  bare     a plain PyTorch loop (torch.optim, nn.Sequential, tensors on the device) in this process
  trainer  trainer.train() in this process (our optimizers, per-epoch evaluation, divergence checks)
  service  POST /v1/runs to a real `lrlab api` -> queue -> a warm `lrlab worker` -> status finished

  python bench/overhead.py --epochs 400 --repeats 3            # Postgres + Redis on localhost
  python bench/overhead.py --embedded --epochs 400             # SQLite database and transport
  python bench/overhead.py --tree /tmp/lrlab-before --tree .   # two checkouts side by side, one invocation

With --tree, each checkout gets its own api and worker (and database), and its `trainer` path runs in a warm
process of its own started from that checkout; `bare` stays in this process. The service's end is read from
the run's event stream (one connection, woken by the database), not by polling, which loaded the api.

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
import urllib.error
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


def _wait_finished(base: str, run_id: str) -> str:
    """Until the run ends, from its event stream (its last `status` event); polls if there is no stream."""
    status = "queued"
    try:
        with urllib.request.urlopen(f"{base}/v1/runs/{run_id}/events", timeout=3600) as resp:
            kind = ""
            for raw in resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "status":
                    status = json.loads(line[6:])["status"]
    except urllib.error.HTTPError:
        pass
    while status in ("queued", "running"):
        time.sleep(POLL)
        status = _http("GET", f"{base}/v1/runs/{run_id}")["status"]
    return status


def service_run(base: str, spec: dict[str, Any], epoch_seconds: list[float] | None = None) -> float:
    t0 = time.perf_counter()
    run_id = _http("POST", f"{base}/v1/runs", spec)["id"]
    status = _wait_finished(base, run_id)
    elapsed = time.perf_counter() - t0
    if status != "succeeded":
        raise RuntimeError(f"service run ended {status}")
    run = _http("GET", f"{base}/v1/runs/{run_id}")
    (EPOCH_SECONDS if epoch_seconds is None else epoch_seconds).append(run["summary"]["seconds"])
    return elapsed


POLL = float(os.environ.get("BENCH_POLL", "0.05"))
EPOCH_SECONDS: list[float] = []  # the worker's own sum of epoch times, to split overhead into in/out of epochs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLI = [sys.executable, "-m", "lrlab.cli"]


def _quiet(env: dict[str, str]) -> dict[str, Any]:
    """Output discarded; run from the checkout BENCH_TREE names (its code first on PYTHONPATH), else this one."""
    return {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": env.get("BENCH_TREE", ROOT), "env": env}


def for_tree(env: dict[str, str], tree: Path) -> dict[str, str]:
    """`env` for processes of the checkout at `tree`."""
    return {**env, "BENCH_TREE": str(tree), "PYTHONPATH": str(tree)}


class TrainerProcess:
    """trainer.train of one checkout in a warm process of its own: a spec in on stdin, seconds out."""

    CODE = (
        "import json, sys, time, torch; torch.set_num_threads(1); import trainer\n"
        "for line in sys.stdin:\n"
        "    spec = json.loads(line); t = time.perf_counter()\n"
        "    trainer.train(trainer.RunConfig.from_spec(spec), device='cpu')\n"
        "    print(time.perf_counter() - t, flush=True)\n"
    )

    def __init__(self, tree: Path) -> None:
        env = for_tree({k: v for k, v in os.environ.items() if not k.startswith("LRLAB_")}, tree)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE],
            cwd=tree,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, spec: dict[str, Any]) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


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
    ap.add_argument("--tree", type=Path, action="append", help="checkouts to measure side by side (repeat)")
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
    trees = [t.resolve() for t in args.tree] if args.tree else None
    names = [str(t) for t in trees] if trees else ["this checkout"]
    times: dict[str, list[float]] = {"bare": []}
    inside: dict[str, list[float]] = {n: [] for n in names}
    load = [os.getloadavg()[0]]
    with contextlib.ExitStack() as stack:
        bases, trainers = {}, {}
        for i, name in enumerate(names):
            env = stack.enter_context(private_services(args.embedded))
            if trees:
                env = for_tree(env, trees[i])
                trainers[name] = TrainerProcess(trees[i])
                stack.callback(trainers[name].close)
            port = _free_port()
            procs = start_service(env, port)
            stack.callback(lambda procs=procs: [stop(p) for p in procs])
            bases[name] = f"http://127.0.0.1:{port}"
            times[f"trainer {name}" if trees else "trainer"] = []
            times[f"service {name}" if trees else "service"] = []
        warm = {**spec, "epochs": 2}
        bare_loop(warm)
        for name in names:
            trainers[name].run(warm) if trees else trainer_loop(warm)
            service_run(bases[name], warm, [])
        for r in range(args.repeats):
            times["bare"].append(bare_loop(spec))
            for name in names if r % 2 == 0 else names[::-1]:
                suffix = f" {name}" if trees else ""
                times["trainer" + suffix].append(trainers[name].run(spec) if trees else trainer_loop(spec))
                times["service" + suffix].append(service_run(bases[name], spec, inside[name]))
            load.append(os.getloadavg()[0])
    shape = "embedded (SQLite + SQLite transport)" if args.embedded else "Postgres + Redis"
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{shape}; {args.dataset} MLP Adam, {args.epochs} epochs, batch {args.batch_size}, 1 torch thread;"
        f" {args.repeats} repeats; 1-min load average {min(load):.2f}-{max(load):.2f}\n"
    )
    print("| path | median s | min s | ratio to bare (median) |\n|---|---|---|---|")
    bare = statistics.median(times["bare"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.2f} | {min(ts):.2f} | {med / bare:.3f} |")
    for name in names:
        service = statistics.median(times[f"service {name}" if trees else "service"])
        epochs = statistics.median(inside[name])
        print(
            f"\nservice ({name}): {epochs:.2f} s inside the worker's epochs, {service - epochs:.2f} s outside them"
            " (queueing, claiming, loading, recording, the client learning of the end)"
        )


if __name__ == "__main__":
    main()
