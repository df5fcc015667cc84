"""A worker's local cache of what it fetched from storage: content-addressed, bounded, least recently used evicted.

An entry is a file or a folder named by its content (its name carries the SHA-256 of what it was built from),
so an entry never goes stale: it is only ever present, absent, or being built. Processes on one host share a
cache safely through `flock` on small lock files:

- `root/.lru/entries/<name>` is the entry's lock file. Its content is the entry's size in bytes, its mtime the entry's
  last use. A process using an entry holds a shared lock on it; building or evicting the entry takes the
  exclusive lock. Whoever holds a lock re-checks, once it has it, that the file it locked is still the one at
  that path (an evictor unlinks lock files), so no two processes ever believe they hold different locks.
- `root/.lru/evict.lock` serialises evictions, so two processes making room do not both throw entries away.

`use(name, build)` yields the entry's path, building it first (once, whatever the number of processes asking:
the others wait for the builder), and keeps it from eviction until the block ends. Entries are built under a
temporary name in `root/.lru/tmp` and renamed into place, so a reader never sees half of one and a builder
killed midway leaves only a temporary that the next builder of that name sweeps. Once the total is over
`max_bytes`, the least recently used entries not in use go; an entry bigger than the whole bound is still built
(the run needs it) and goes once nobody uses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lrlab.storage import Storage

log = logging.getLogger(__name__)

META = ".lru"
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")  # no "~": temporaries are "<name>~build-<random>"
STALE_TEMP_SECONDS = 24 * 3600  # a temporary this old has no live builder (a name's own builder sweeps sooner)


def _du(path: Path) -> int:
    """Bytes on disk an entry takes: a file's size, or a folder's files' sizes added up."""
    if not path.is_dir():
        return path.stat().st_size
    total = 0
    for parent, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Entry:
    name: str
    size: int
    last_used: float


class Cache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"Invalid cache bound: {max_bytes}")
        self.root = root
        self.max_bytes = max_bytes
        self.locks = root / META / "entries"
        self.tmp = root / META / "tmp"
        self.evict_lock = root / META / "evict.lock"

    def path(self, name: str) -> Path:
        if not NAME.match(name):
            raise ValueError(f"Invalid cache entry name: {name!r}")
        return self.root / name

    # locks -----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, lock_path: Path, mode: int) -> Iterator[int]:
        """flock on the file at `lock_path` (created if missing), retried until the locked file is the one there.

        With LOCK_NB in `mode`, yields -1 instead of waiting when another process holds a conflicting lock.
        """
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                os.close(fd)
                yield -1
                return
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, lock_path):
                break
            os.close(fd)  # an evictor unlinked it between our open and our lock: take the new one
        try:
            yield fd
        finally:
            os.close(fd)  # releases the lock

    # use -------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def use(self, name: str, build: Callable[[Path], None], size_hint: int | Callable[[], int] = 0) -> Iterator[Path]:
        """The entry's path, built by `build(temporary_path)` when absent; not evicted until the block ends.

        `build` writes a file or a folder at the path it is given (which does not exist yet). `size_hint` (a number,
        or a function asked only when a build is due), when known, makes room before the build, not only after.
        """
        entry = self.path(name)
        lock_path = self.locks / name
        used = False
        try:
            while True:
                # Shared: waits only while a builder or an evictor holds the entry, never for its other users.
                with self._locked(lock_path, fcntl.LOCK_SH) as fd:
                    if self._ready(entry, fd):
                        os.utime(lock_path)  # last use
                        used = True
                        yield entry
                        return
                # Absent: build it, unless another process holds the lock now (it builds; the loop waits for it).
                with self._locked(lock_path, fcntl.LOCK_EX | fcntl.LOCK_NB) as fd:
                    if fd < 0:
                        time.sleep(0.05)
                        continue
                    if not self._ready(entry, fd):
                        self._build(name, fd, build, size_hint)
                    # Keep it from eviction while we use it: exclusive to shared. Linux may drop the lock for an
                    # instant in between, so check that nobody evicted it then (if so, go round again).
                    fcntl.flock(fd, fcntl.LOCK_SH)
                    if _same_file(fd, lock_path) and self._ready(entry, fd):
                        os.utime(lock_path)
                        used = True
                        yield entry
                        return
        finally:
            # Entries kept over the bound only because they were in use go once nobody uses them.
            if used and self.total_bytes() > self.max_bytes:
                self._make_room(0, keep="")

    def _ready(self, entry: Path, fd: int) -> bool:
        """Built and recorded: the size its builder wrote in the lock file once the entry was in place."""
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).strip().isdigit() and entry.exists()

    def _record(self, fd: int, size: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(size).encode(), 0)
        os.fsync(fd)

    def _build(self, name: str, fd: int, build: Callable[[Path], None], size_hint: int | Callable[[], int]) -> None:
        entry = self.path(name)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.glob(f"{name}~build-*"):  # a builder of this name killed midway (we hold its lock)
            _remove(leftover)
        if entry.exists():
            # In place but not recorded: its builder was killed between the rename and the record (or an older
            # lrlab built it). Only whole builds are ever renamed into place, so it is adopted as it is.
            self._record(fd, _du(entry))
            return
        if incoming := size_hint() if callable(size_hint) else size_hint:
            self._make_room(incoming, keep=name)
        building = self.tmp / f"{name}~build-{uuid.uuid4().hex}"
        started = time.monotonic()
        try:
            build(building)
            if not building.exists():
                raise RuntimeError(f"building cache entry {name} produced nothing")
            size = _du(building)
            os.rename(building, entry)
        finally:
            if building.exists():
                _remove(building)
        self._record(fd, size)
        log.info("cache: built %s (%d bytes) in %.1fs", name, size, time.monotonic() - started)
        self._make_room(0, keep=name)

    # eviction --------------------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every finished entry, least recently used first."""
        found = []
        for lock_path in self.locks.iterdir() if self.locks.is_dir() else ():
            try:
                text = lock_path.read_text().strip()
                last_used = lock_path.stat().st_mtime
            except FileNotFoundError:
                continue
            if text.isdigit():
                found.append(Entry(lock_path.name, int(text), last_used))
        return sorted(found, key=lambda e: e.last_used)

    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries())

    def _make_room(self, incoming: int, keep: str) -> None:
        """Evict least recently used entries not in use until the total plus `incoming` fits the bound."""
        with self._locked(self.evict_lock, fcntl.LOCK_EX):
            entries = self.entries()
            total = sum(e.size for e in entries) + incoming
            for e in entries:
                if total <= self.max_bytes:
                    break
                if e.name != keep and self._evict(e.name):
                    total -= e.size
            self._sweep_temporaries()
        if total > self.max_bytes:
            log.warning("cache: %d bytes in use exceed LRLAB_CACHE_MAX_BYTES=%d", total, self.max_bytes)

    def discard(self, name: str) -> bool:
        """Remove one entry now unless a process uses or builds it; whether it went."""
        self.path(name)
        with self._locked(self.evict_lock, fcntl.LOCK_EX):
            return self._evict(name)

    def _evict(self, name: str) -> bool:
        """Remove one entry unless a process uses or builds it now; whether it went."""
        lock_path, entry = self.locks / name, self.path(name)
        if not lock_path.exists() and not entry.exists():
            return False
        self.locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)  # an entry an older lrlab built has none yet
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # in use, or being built
            if not _same_file(fd, lock_path):
                return False
            # Out of sight first (one rename), then removed: a reader never meets half an entry.
            if entry.exists():
                self.tmp.mkdir(parents=True, exist_ok=True)
                doomed = self.tmp / f"{name}~evicted-{uuid.uuid4().hex}"
                os.rename(entry, doomed)
                _remove(doomed)
            os.unlink(lock_path)  # before our lock goes: a waiter re-checks the inode and takes a fresh file
            log.info("cache: evicted %s", name)
            return True
        finally:
            os.close(fd)

    def _sweep_temporaries(self) -> None:
        cutoff = time.time() - STALE_TEMP_SECONDS
        for leftover in self.tmp.iterdir() if self.tmp.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                if leftover.lstat().st_mtime < cutoff:
                    _remove(leftover)

    def fetch(self, storage: Storage, key: str, name: str) -> contextlib.AbstractContextManager[Path]:
        """One stored object as a local file, downloaded once (the file backend's own file needs no copy)."""
        return self.use(name, lambda dest: storage.get_file(key, dest), size_hint=lambda: storage.size(key))
