"""Hosts for multi-host tests: Linux network namespaces on a private bridge, one veth link each.

    with Cluster(hosts=3, forward={"postgres": ("127.0.0.1", 5432), "redis": ("127.0.0.1", 6379)}) as c:
        api = c.hosts[0]
        proc = api.popen([...], env=...)          # a process on that host (ip netns exec; its own hostname)
        c.address("postgres")                     # ("10.213.7.1", 5432): where the hosts reach Postgres
        c.hosts[1].cut(); ...; c.hosts[1].restore()   # its link down (packets dropped, no reset), then up

Each host is a namespace with its own loopback and one interface, `eth0`, whose other end is on a bridge in
the root namespace; the bridge holds the gateway address (`.1` of a free /24 in 10.213.0.0/16) and the hosts
`.2`, `.3`, ... Servers that listen on loopback only (Postgres, Redis, the moto S3 server) are bridged onto the
gateway address by a small TCP forwarder of our own (an asyncio process in the root namespace, `python -m
tests.cluster forward`), so a host reaches them as a machine on the network would; the root namespace (the
test itself) reaches every host directly. Cutting a host sets its link down on the bridge's side: its packets
are dropped without a reset, as when a machine loses its network, and its open connections stall until the
link comes back.

Teardown always runs (context manager, and an atexit hook): it kills every process left in the host
namespaces, then removes the namespaces, links, bridge and forwarder. A test process that is killed outright
cannot run it, so every cluster first writes what it is about to make to /run/lrlab-cluster/<id>.json with its
owner's pid, and each new cluster removes what any dead owner left behind (never what a live one holds: test
runs may share the machine). Names are unique per cluster: namespaces `lrlab-<id>-h<n>`, links `lrv<id><n>`,
the bridge `lrb<id>`.

`unavailable()` says why namespaces cannot be made here (not root, no `ip`, no permission: a container without
CAP_NET_ADMIN), for a clear pytest skip.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_DIR = Path("/run/lrlab-cluster")
POOL = ipaddress.ip_network("10.213.0.0/16")  # each cluster takes one free /24 of it
ROOT = Path(__file__).resolve().parent.parent


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def unavailable() -> str | None:
    """Why network namespaces cannot be made on this machine; None when they can."""
    if sys.platform != "linux":
        return f"network namespaces are Linux only (this is {sys.platform})"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return f"making network namespaces needs root (CAP_NET_ADMIN); this runs as uid {os.geteuid()}"
    probe = f"lrlab-probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is refused here: {made.stderr.strip()}"
    link = f"lrq{os.getpid()}"[:15]
    try:
        veth = _ip("link", "add", link, "type", "veth", "peer", "name", f"{link}p"[:15], check=False)
        if veth.returncode != 0:
            return f"veth links cannot be made here: {veth.stderr.strip()}"
        _ip("link", "del", link, check=False)
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_processes(netns: str) -> None:
    """SIGKILL everything still running in a namespace (deleting a namespace does not stop its processes)."""
    for _ in range(20):
        pids = [int(p) for p in _ip("netns", "pids", netns, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _remove(state: Mapping[str, Any]) -> None:
    """Undo one cluster from its state record: processes, namespaces, links, bridge, forwarder. Idempotent."""
    if pid := state.get("forwarder_pid"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for netns in state.get("namespaces", []):
        if Path(f"/run/netns/{netns}").exists():
            _kill_namespace_processes(netns)
            _ip("netns", "del", netns, check=False)
    for link in [*state.get("links", []), state.get("bridge")]:
        if link:
            _ip("link", "del", link, check=False)


def sweep_stale() -> list[str]:
    """Remove what clusters of dead test processes left behind; the ids removed."""
    removed = []
    for path in STATE_DIR.glob("*.json") if STATE_DIR.is_dir() else ():
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(state.get("owner_pid", 0))) and state.get("owner_start") == _start_time(state["owner_pid"]):
            continue
        _remove(state)
        path.unlink(missing_ok=True)
        removed.append(path.stem)
    return removed


def _start_time(pid: int) -> str | None:
    """A process's start time (field 22 of /proc/<pid>/stat): tells a live owner from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _free_subnet() -> ipaddress.IPv4Network:
    used = []
    for line in _ip("-o", "-4", "addr", "show").stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    taken = set()
    for path in STATE_DIR.glob("*.json") if STATE_DIR.is_dir() else ():
        with contextlib.suppress(OSError, ValueError, KeyError):
            taken.add(ipaddress.ip_network(json.loads(path.read_text())["subnet"]))
    candidates = list(POOL.subnets(new_prefix=24))
    start = secrets.randbelow(len(candidates))
    for subnet in candidates[start:] + candidates[:start]:
        if subnet not in taken and not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError(f"no free /24 left in {POOL}")


@dataclass
class Host:
    name: str
    netns: str
    address: str
    link: str  # the link's end on the bridge (in the root namespace)

    @property
    def hostname(self) -> str:
        return self.netns.removeprefix("lrlab-")

    def command(self, cmd: Sequence[str]) -> list[str]:
        """`cmd` on this host: in its network namespace, under a hostname of its own (a UTS namespace), so
        what names itself by hostname (Celery's node names, lrlab's heartbeats) tells the hosts apart."""
        set_name = 'hostname "$0" && exec "$@"'
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--", "sh", "-c", set_name, self.hostname, *cmd]

    def run(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command on this host and wait for it (subprocess.run's keywords)."""
        kwargs.setdefault("cwd", ROOT)
        return subprocess.run(self.command(cmd), **kwargs)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command on this host, in a session of its own (stop it with os.killpg, or teardown does)."""
        kwargs.setdefault("cwd", ROOT)
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(self.command(cmd), **kwargs)

    def cut(self) -> None:
        """Its link down: every packet to and from this host is dropped; open connections stall."""
        _ip("link", "set", self.link, "down")

    def restore(self) -> None:
        _ip("link", "set", self.link, "up")


class Cluster:
    """`hosts` namespaces on one bridge; `forward` maps a name to a loopback server (host, port) to bridge."""

    def __init__(self, hosts: int = 2, forward: Mapping[str, tuple[str, int]] | None = None) -> None:
        if not 1 <= hosts <= 200:
            raise ValueError(f"Invalid number of hosts: {hosts}")
        self.hosts_wanted = hosts
        self.forward = dict(forward or {})
        self.id = secrets.token_hex(3)
        self.hosts: list[Host] = []
        self.forwarder: subprocess.Popen[bytes] | None = None
        self.gateway = self.subnet = ""
        self._state_path: Path | None = None

    def __enter__(self) -> Cluster:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    @property
    def bridge(self) -> str:
        return f"lrb{self.id}"

    def address(self, service: str) -> tuple[str, int]:
        """Where the hosts reach a forwarded loopback server: (gateway address, its port)."""
        return self.gateway, self.forward[service][1]

    def url(self, service: str, scheme: str) -> str:
        host, port = self.address(service)
        return f"{scheme}://{host}:{port}"

    def _write_state(self) -> None:
        state = {
            "owner_pid": os.getpid(),
            "owner_start": _start_time(os.getpid()),
            "subnet": self.subnet,
            "bridge": self.bridge,
            "namespaces": [f"lrlab-{self.id}-h{i}" for i in range(self.hosts_wanted)],
            "links": [f"lrv{self.id}{i}" for i in range(self.hosts_wanted)],
            "forwarder_pid": self.forwarder.pid if self.forwarder else None,
        }
        assert self._state_path is not None
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self._state_path)

    def up(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        sweep_stale()
        with (STATE_DIR / "lock").open("w") as lock:  # two test runs starting together pick different subnets
            fcntl.flock(lock, fcntl.LOCK_EX)
            subnet = _free_subnet()
            self.subnet = str(subnet)
            addresses = list(subnet.hosts())
            self.gateway = str(addresses[0])
            self._state_path = STATE_DIR / f"{self.id}.json"
            self._write_state()  # before anything is made: a crash from here on is swept by the next cluster
            atexit.register(self.down)
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/{subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(self.hosts_wanted):
            netns, link, peer = f"lrlab-{self.id}-h{i}", f"lrv{self.id}{i}", f"lrp{self.id}{i}"
            address = str(addresses[1 + i])
            _ip("netns", "add", netns)
            _ip("link", "add", link, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", netns)
            _ip("link", "set", link, "master", self.bridge)
            _ip("link", "set", link, "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            _ip("-n", netns, "link", "set", peer, "name", "eth0")
            _ip("-n", netns, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            _ip("-n", netns, "route", "add", "default", "via", self.gateway)
            self.hosts.append(Host(f"h{i}", netns, address, link))
        if self.forward:
            self._start_forwarder()
        self._write_state()

    def _start_forwarder(self) -> None:
        routes = [f"{self.gateway}:{port}={host}:{port}" for host, port in self.forward.values()]
        cmd = [sys.executable, "-m", "tests.cluster", "forward", "--parent", str(os.getpid()), *routes]
        self.forwarder = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True)
        self._write_state()
        assert self.forwarder.stdout is not None
        line = self.forwarder.stdout.readline().decode().strip()
        if line != "ready":
            raise RuntimeError(f"the forwarder did not start (said {line!r}, exit {self.forwarder.poll()})")

    def down(self) -> None:
        if self._state_path is None:
            return
        with contextlib.suppress(FileNotFoundError, ValueError):
            state = json.loads(self._state_path.read_text())
            _remove(state)
        if self.forwarder is not None:
            with contextlib.suppress(ProcessLookupError):
                self.forwarder.kill()
            self.forwarder.wait()
            if self.forwarder.stdout:
                self.forwarder.stdout.close()
        self._state_path.unlink(missing_ok=True)
        self._state_path = None
        atexit.unregister(self.down)


# --- the forwarder: python -m tests.cluster forward [--parent PID] LISTEN_HOST:PORT=TARGET_HOST:PORT ... ------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # a half-close passes through (the other direction may still be talking)
    except OSError:
        writer.close()


async def _serve_one(target: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        up_reader, up_writer = await asyncio.open_connection(*target)
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        up_writer.close()
        writer.close()


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


async def _forward(routes: list[tuple[tuple[str, int], tuple[str, int]]], parent: int | None) -> None:
    servers = []
    for listen, target in routes:

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, target: tuple[str, int] = target) -> None:
            await _serve_one(target, r, w)

        servers.append(await asyncio.start_server(handle, *listen, reuse_address=True))
    print("ready", flush=True)
    while parent is None or _alive(parent):  # the test that started it is gone: so is the forwarder
        await asyncio.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    fwd = sub.add_parser("forward", help="forward TCP: LISTEN_HOST:PORT=TARGET_HOST:PORT ...")
    fwd.add_argument("--parent", type=int, help="exit when this process is gone")
    fwd.add_argument("routes", nargs="+")
    sub.add_parser("sweep", help="remove what clusters of dead test processes left behind")
    args = parser.parse_args(argv)
    if args.command == "sweep":
        print(" ".join(sweep_stale()) or "nothing stale")
        return 0
    routes = [(_split(a), _split(b)) for a, b in (r.split("=", 1) for r in args.routes)]
    asyncio.run(_forward(routes, args.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
