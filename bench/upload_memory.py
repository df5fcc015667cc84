"""Peak memory of the API process while it takes a large dataset upload: the file must stream, never sit in RAM.

Generates an .npz of random float32 features (written to disk in chunks, never whole in this process either),
starts a real `lrlab api` (embedded SQLite, LRLAB_AUTH=disabled, a temporary data dir), POSTs the file with
httpx streaming it from disk, then reads the server's peak resident set (VmHWM in /proc/<pid>/status, Linux).

  python bench/upload_memory.py                 # 500 MiB
  python bench/upload_memory.py --mib 100
  python bench/upload_memory.py --storage s3    # into a bucket on a moto S3 server (started here): a multipart upload

Prints a Markdown row: file size, the server's RSS before and its peak during the upload, and the timings.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FEATURES = 256  # 1 KiB of float32 per sample


def write_npz(path: Path, mib: int, seed: int = 0) -> int:
    """x: (N, 256) float32 standard normal, y: (N,) int64 in 0..9; stored (not deflated), as np.savez does."""
    n = mib * 1024 * 1024 // (FEATURES * 4)
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, FEATURES)})
            for start in range(0, n, 8192):
                rows = min(8192, n - start)
                f.write(rng.standard_normal((rows, FEATURES), dtype=np.float32).tobytes())  # (rows, 256)
        with zf.open("y.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (n,)})
            f.write(rng.integers(0, 10, n, dtype=np.int64).tobytes())
    return n


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=500, help="size of x in MiB (default 500)")
    parser.add_argument("--storage", choices=["file", "s3"], default="file", help="LRLAB_STORAGE_URL's kind")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        storage_env: dict[str, str] = {}
        if args.storage == "s3":
            sys.path.insert(0, str(ROOT))
            from tests.storage_fixtures import MotoServer

            moto = MotoServer().start()
            stack.callback(moto.stop)
            storage_env = {**moto.env(), "LRLAB_STORAGE_URL": f"s3://{moto.create_bucket()}/bench"}
        return measure(args.mib, storage_env)


def measure(mib: int, storage_env: dict[str, str]) -> int:

    with tempfile.TemporaryDirectory(prefix="lrlab-upload-bench-") as tmp:
        data = Path(tmp) / "big.npz"
        t0 = time.perf_counter()
        n = write_npz(data, mib)
        size = data.stat().st_size
        generated = time.perf_counter() - t0

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LRLAB_", "AWS_"))}
        env.update(LRLAB_DATA_DIR=str(Path(tmp) / "data"), LRLAB_AUTH="disabled", LRLAB_LOG_LEVEL="WARNING")
        env.update(storage_env)
        cmd = [sys.executable, "-m", "lrlab.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
        server = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, timeout=httpx.Timeout(600.0)) as client:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit(
                            "the api did not start:\n" + (server.stderr.read().decode() if server.stderr else "")
                        )
                    time.sleep(0.2)
                client.get("/v1/datasets")  # every import and the database warm before the baseline
                before = status_kib(server.pid, "VmHWM")
                t0 = time.perf_counter()
                with data.open("rb") as f:  # httpx reads the file in chunks as it sends
                    resp = client.post("/v1/datasets", files={"file": ("big.npz", f)})
                seconds = time.perf_counter() - t0
                peak = status_kib(server.pid, "VmHWM")
            if resp.status_code != 201:
                raise SystemExit(f"upload failed: {resp.status_code} {resp.text}")
            body = resp.json()
            assert body["n_samples"] == n and body["size_bytes"] == size, body
            if storage_env:  # the api keeps no copy: nothing under its blobs or staging folders
                kept = [p for d in ("blobs", "staging") for p in (Path(tmp) / "data" / d).rglob("*") if p.is_file()]
                assert not kept, kept
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"generated {size / 2**20:.0f} MiB ({n} x {FEATURES} float32) in {generated:.1f} s")
    print()
    where = storage_env.get("LRLAB_STORAGE_URL", "file:// (the data dir)")
    print("| file | storage | server RSS before | server peak RSS (VmHWM) | upload + checks + store | throughput |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {size / 2**20:.0f} MiB .npz | {where.split(':')[0]} | {before / 1024:.0f} MiB | {peak / 1024:.0f} MiB"
        f" | {seconds:.1f} s | {size / 2**20 / seconds:.0f} MiB/s |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
