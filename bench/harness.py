"""What the scale benches share: private Postgres databases, `lrlab` processes from any checkout, /proc readings.

A bench measures one or more source trees side by side (`--tree /path`, e.g. a `git worktree add` of the commit
before a change): each tree migrates its own database and serves its own `lrlab api`, started with that tree
first on PYTHONPATH and as the working directory, so the same bench script times the old and the new code.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("LRLAB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile by the nearest-rank method (q=0.99: the value 99% of the sample is at or below)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_average() -> float:
    return os.getloadavg()[0]


def status_kib(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux: `5` into /proc/<pid>/clear_refs); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def tree_env(tree: Path, env: dict[str, str]) -> dict[str, str]:
    """`env` for a process that imports lrlab, api, worker and trainer from `tree`."""
    return {**env, "PYTHONPATH": os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def git_describe(tree: Path) -> str:
    """The commit a tree is at, with `+changes` when its working copy differs from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain"], capture_output=True, text=True)
        return head + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


@contextlib.contextmanager
def private_database(prefix: str = "lrlab_bench") -> Iterator[str]:
    """A new, empty Postgres database (dropped afterwards); yields its SQLAlchemy URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def plain_dsn(url: str) -> str:
    """A psycopg DSN from a SQLAlchemy URL."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1).split("?", 1)[0]


@dataclass
class Tree:
    """One checkout under measurement and the environment its processes get."""

    path: Path
    name: str
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 300) -> None:
        subprocess.run(
            [sys.executable, "-m", "lrlab.cli", *args],
            env=self.env,
            cwd=self.path,
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    @contextlib.contextmanager
    def api(self, log: Path | None = None) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
        """`lrlab api` of this tree on a free port, answering /healthz; stopped (SIGTERM, then SIGKILL) after."""
        port = free_port()
        out = log.open("ab") if log else subprocess.DEVNULL
        cmd = [sys.executable, "-m", "lrlab.cli", "api", "--port", str(port), "--loglevel", "WARNING"]
        proc = subprocess.Popen(cmd, env=self.env, cwd=self.path, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    status, _, _ = get(port, "/healthz", timeout=2)
                    if status == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: the api did not start (exit {proc.poll()})")
                time.sleep(0.1)
            yield proc, f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def make_tree(path: Path, database_url: str, extra: dict[str, str] | None = None) -> Tree:
    """A tree on its own database, with keys off (loopback) and a data dir of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRLAB_")}
    env.update(
        {
            "LRLAB_DATABASE_URL": database_url,
            "LRLAB_DATA_DIR": tempfile.mkdtemp(prefix="lrlab-bench-"),
            "LRLAB_AUTH": "disabled",
            **(extra or {}),
        }
    )
    path = path.resolve()
    return Tree(path=path, name=f"{path} ({git_describe(path)})", env=tree_env(path, env))


def get(port: int, path: str, timeout: float = 600) -> tuple[int, bytes, float]:
    """GET on a new connection: (status, body, seconds from sending the request to its last byte)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.connect()
        t0 = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, time.perf_counter() - t0
    finally:
        conn.close()
