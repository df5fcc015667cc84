"""lrlab.storage.cache: built once, bounded, least recently used evicted, never an entry in use; many processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import time
from pathlib import Path

import pytest

from lrlab.storage import open_storage
from lrlab.storage.cache import Cache

MIB = 1 << 20


def content(name: str, size: int) -> bytes:
    return (hashlib.sha256(name.encode()).digest() * (size // 32 + 1))[:size]


def writer(name: str, size: int, log: Path | None = None, delay: float = 0.0):
    """A build function writing `size` bytes that depend on the name; appends the name to `log` when it runs."""

    def build(dest: Path) -> None:
        if log is not None:
            with log.open("a") as f:
                f.write(f"{name}\n")
        time.sleep(delay)
        dest.write_bytes(content(name, size))

    return build


def builds(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_an_entry_is_built_once_then_reused(tmp_path: Path) -> None:
    cache, log = Cache(tmp_path / "c", 10 * MIB), tmp_path / "builds"
    with cache.use("npz-aa", writer("npz-aa", 1000, log)) as path:
        assert path == tmp_path / "c" / "npz-aa" and path.read_bytes() == content("npz-aa", 1000)
    with cache.use("npz-aa", writer("npz-aa", 1000, log)) as path:
        assert path.read_bytes() == content("npz-aa", 1000)
    assert builds(log) == ["npz-aa"]
    assert cache.total_bytes() == 1000


def test_folders_are_entries_too(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c", 10 * MIB)

    def build(dest: Path) -> None:
        (dest / "cat").mkdir(parents=True)
        (dest / "cat" / "a.png").write_bytes(b"x" * 300)
        (dest / "dog").mkdir()
        (dest / "dog" / "b.png").write_bytes(b"y" * 200)

    with cache.use("images-bb", build) as path:
        assert sorted(p.name for p in path.iterdir()) == ["cat", "dog"]
    assert cache.total_bytes() == 500


def test_least_recently_used_goes_first(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c", 3 * MIB)
    for name in ("a", "b", "c"):
        with cache.use(name, writer(name, MIB)):
            pass
        time.sleep(0.02)  # distinct last-use times
    with cache.use("a", writer("a", MIB)):  # a is now the most recent; b the least
        pass
    time.sleep(0.02)
    with cache.use("d", writer("d", MIB)):
        pass
    assert sorted(e.name for e in cache.entries()) == ["a", "c", "d"]
    assert not (tmp_path / "c" / "b").exists()
    assert cache.total_bytes() <= 3 * MIB


def test_size_hint_makes_room_before_the_build(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c", 2 * MIB)
    for name in ("a", "b"):
        with cache.use(name, writer(name, MIB)):
            pass
        time.sleep(0.02)
    seen_during_build: list[str] = []

    def build(dest: Path) -> None:
        seen_during_build.extend(sorted(p.name for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")))
        dest.write_bytes(content("c", MIB))

    with cache.use("c", build, size_hint=MIB):
        pass
    assert seen_during_build == ["b"]  # a went before c was downloaded, not after


def test_an_entry_in_use_is_never_evicted(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c", MIB)
    with cache.use("held", writer("held", MIB)) as held:
        for name in ("x", "y"):
            with cache.use(name, writer(name, MIB)):
                pass
        assert held.read_bytes() == content("held", MIB)  # over the bound, but in use: kept
    assert [e.name for e in cache.entries()] == ["held"]  # over the bound while in use; released, the others went
    with cache.use("z", writer("z", MIB)):
        pass
    assert [e.name for e in cache.entries()] == ["z"]
    assert cache.total_bytes() == MIB


def test_an_entry_bigger_than_the_bound_is_still_built(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c", MIB // 2)
    with cache.use("huge", writer("huge", MIB)) as path:
        assert path.stat().st_size == MIB
    assert cache.entries() == []  # kept while in use only
    with cache.use("small", writer("small", 1000)):
        pass
    assert [e.name for e in cache.entries()] == ["small"]


def test_a_failed_build_leaves_nothing_and_the_next_use_builds_again(tmp_path: Path) -> None:
    cache, log = Cache(tmp_path / "c", 10 * MIB), tmp_path / "builds"

    def broken(dest: Path) -> None:
        dest.write_bytes(b"half")
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"), cache.use("e", broken):
        pass
    assert not (tmp_path / "c" / "e").exists()
    assert list((tmp_path / "c" / ".lru" / "tmp").iterdir()) == []
    with cache.use("e", writer("e", 10, log)) as path:
        assert path.read_bytes() == content("e", 10)
    assert builds(log) == ["e"]


def test_a_build_that_writes_nothing_is_an_error(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c", MIB)
    with pytest.raises(RuntimeError, match="produced nothing"), cache.use("e", lambda dest: None):
        pass


def test_what_a_killed_builder_left_is_swept_or_adopted(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cache, log = Cache(root, 10 * MIB), tmp_path / "builds"
    (root / ".lru" / "tmp").mkdir(parents=True)
    (root / ".lru" / "tmp" / "a~build-dead").write_bytes(b"half")  # killed while building a
    (root / "b").write_bytes(content("b", 100))  # killed after the rename, before the record (or an older lrlab)
    with cache.use("a", writer("a", 100, log)) as a, cache.use("b", writer("b", 100, log)) as b:
        assert a.read_bytes() == content("a", 100) and b.read_bytes() == content("b", 100)
    assert builds(log) == ["a"]  # b was whole: adopted, not downloaded again
    assert list((root / ".lru" / "tmp").iterdir()) == []
    assert cache.total_bytes() == 200


@pytest.mark.parametrize("name", ["", ".lru", "../x", "a/b", "a~b", "x" * 201, "é"])
def test_invalid_entry_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="Invalid cache entry name"):
        Cache(tmp_path, MIB).path(name)


def test_fetch_downloads_an_object_once(storage_url: str, tmp_path: Path) -> None:
    store = open_storage(storage_url)
    store.put_bytes("blobs/ab/abc", b"dataset bytes")
    cache = Cache(tmp_path / "cache", MIB)
    with cache.fetch(store, "blobs/ab/abc", "npz-abc") as path:
        assert path.read_bytes() == b"dataset bytes"
    store.delete("blobs/ab/abc")
    with cache.use("npz-abc", _never) as path:
        assert path.read_bytes() == b"dataset bytes"  # from the cache: the store is not asked again


def _never(dest: Path) -> None:
    raise AssertionError("rebuilt an entry that was cached")


# --- many processes ---------------------------------------------------------------------------------------


def _race_for_one(root: str, log: str, barrier: multiprocessing.synchronize.Barrier, out: str) -> None:
    cache = Cache(Path(root), 10 * MIB)
    barrier.wait()
    with cache.use("shared", writer("shared", MIB, Path(log), delay=0.5)) as path:
        Path(out).write_bytes(hashlib.sha256(path.read_bytes()).digest())


def test_processes_asking_for_the_same_entry_build_it_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [
        ctx.Process(
            target=_race_for_one, args=(str(tmp_path / "c"), str(tmp_path / "log"), barrier, str(tmp_path / f"o{i}"))
        )
        for i in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert builds(tmp_path / "log") == ["shared"]
    expected = hashlib.sha256(content("shared", MIB)).digest()
    assert all((tmp_path / f"o{i}").read_bytes() == expected for i in range(4))


def _churn(root: str, seed: int, rounds: int, bound: int, errors: str) -> None:
    """Use random entries of a small cache and check each stays whole for as long as it is held."""
    cache, rng = Cache(Path(root), bound), random.Random(seed)
    problems = []
    for _ in range(rounds):
        name = f"e{rng.randrange(6)}"
        size = MIB // 4 * (1 + int(name[1:]) % 3)
        with cache.use(name, writer(name, size), size_hint=size if rng.random() < 0.5 else 0) as path:
            first = path.read_bytes()
            time.sleep(rng.random() * 0.02)
            if first != content(name, size) or path.read_bytes() != first:
                problems.append(f"{name} changed or was partial while in use")
    Path(errors).write_text("\n".join(problems))


def test_many_processes_share_a_small_cache_safely(tmp_path: Path) -> None:
    root, bound = tmp_path / "c", MIB  # room for two or three of the six entries
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_churn, args=(str(root), s, 40, bound, str(tmp_path / f"err{s}"))) for s in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert [(tmp_path / f"err{s}").read_text() for s in range(4)] == ["", "", "", ""]
    cache = Cache(root, bound)
    # Nothing is in use now: the bound holds, and everything recorded is really there, whole.
    assert cache.total_bytes() <= bound
    for e in cache.entries():
        assert (root / e.name).stat().st_size == e.size
    on_disk = {p.name for p in root.iterdir() if not p.name.startswith(".")}
    assert on_disk == {e.name for e in cache.entries()}
    assert os.listdir(root / ".lru" / "tmp") == []
