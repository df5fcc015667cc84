"""lrlab.storage against both backends: a folder (file://) and a bucket on a real S3-protocol server (moto)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lrlab.storage import NotFound, Storage, default_url, open_storage, shared_storage
from lrlab.storage.files import FileStorage
from tests.storage_fixtures import MotoServer

ROOT = Path(__file__).resolve().parents[3]
BIG = 12 << 20  # over two S3 parts of 5 MiB: the multipart path


@pytest.fixture
def store(storage_url: str) -> Storage:
    return open_storage(storage_url)


def _random_file(path: Path, size: int, seed: int = 0) -> bytes:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    data = data[:size]
    path.write_bytes(data)
    return data


def test_put_file_and_get_file_roundtrip_a_multipart_sized_file(store: Storage, tmp_path: Path) -> None:
    data = _random_file(tmp_path / "src", BIG)
    store.put_file("blobs/ab/big", tmp_path / "src")
    assert (tmp_path / "src").exists()  # not moved unless asked
    store.get_file("blobs/ab/big", tmp_path / "out" / "copy")
    assert (tmp_path / "out" / "copy").read_bytes() == data
    assert store.size("blobs/ab/big") == BIG
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["copy"]  # no temporary left beside it


def test_put_file_reads_a_file_object_from_its_position(store: Storage) -> None:
    source = io.BytesIO(b"header|" + b"payload" * 1000)
    source.seek(len(b"header|"))
    store.put_file("a/b", source)
    assert store.get_bytes("a/b") == b"payload" * 1000


def test_put_file_move_consumes_the_staged_file(store: Storage, tmp_path: Path) -> None:
    staged = tmp_path / "staging" / "upload.part"
    staged.parent.mkdir()
    data = _random_file(staged, 3 << 20)
    store.put_file("blobs/cd/x", staged, move=True)
    assert not staged.exists()
    assert store.get_bytes("blobs/cd/x") == data


def test_put_bytes_overwrites_whole(store: Storage) -> None:
    store.put_bytes("checkpoints/pbt/p/0/1", b"first version")
    store.put_bytes("checkpoints/pbt/p/0/1", b"second")
    assert store.get_bytes("checkpoints/pbt/p/0/1") == b"second"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b"" and store.exists("empty") and store.size("empty") == 0


def test_iter_chunks_streams_in_bounded_chunks(store: Storage, tmp_path: Path) -> None:
    data = _random_file(tmp_path / "src", BIG)
    store.put_file("k", tmp_path / "src")
    chunks = list(store.iter_chunks("k", chunk_bytes=1 << 20))
    assert b"".join(chunks) == data
    assert len(chunks) >= 6 and max(len(c) for c in chunks) <= 4 << 20


def test_read_range_returns_the_bytes_asked_for(store: Storage) -> None:
    store.put_bytes("r", bytes(range(256)))
    assert store.read_range("r", 10, 14) == bytes([10, 11, 12, 13])
    assert store.read_range("r", 250, 1000) == bytes(range(250, 256))  # past the end: what there is
    assert store.read_range("r", 300, 400) == b""
    assert store.read_range("r", 5, 5) == b""
    with pytest.raises(ValueError, match="byte range"):
        store.read_range("r", 5, 4)
    with pytest.raises(ValueError, match="byte range"):
        store.read_range("r", -1, 4)


@pytest.mark.parametrize("call", ["get_bytes", "get_file", "iter_chunks", "size", "read_range"])
def test_missing_key_is_not_found(store: Storage, tmp_path: Path, call: str) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(NotFound) as caught:
        if call == "get_file":
            store.get_file("no/such", dest)
        elif call == "iter_chunks":
            list(store.iter_chunks("no/such"))
        elif call == "read_range":
            store.read_range("no/such", 0, 1)
        else:
            getattr(store, call)("no/such")
    assert caught.value.key == "no/such" and isinstance(caught.value, KeyError)
    assert not dest.exists() and list(tmp_path.iterdir()) in ([], [tmp_path / "store"])


def test_exists_and_delete(store: Storage) -> None:
    assert not store.exists("d/x")
    store.put_bytes("d/x", b"1")
    assert store.exists("d/x")
    assert not store.exists("d")  # a folder is no object
    store.delete("d/x")
    store.delete("d/x")  # gone already: fine
    store.delete("never/was")
    assert not store.exists("d/x")


def test_list_covers_a_folder_recursively_and_only_it(store: Storage) -> None:
    for key in ("pbt/a/0/1", "pbt/a/0/2", "pbt/a/1/1", "pbt/ab/0/1", "pbt/b", "blobs/x"):
        store.put_bytes(key, key.encode())
    assert sorted(store.list("pbt/a")) == ["pbt/a/0/1", "pbt/a/0/2", "pbt/a/1/1"]
    assert sorted(store.list("pbt/a/")) == ["pbt/a/0/1", "pbt/a/0/2", "pbt/a/1/1"]
    assert sorted(store.list("pbt")) == ["pbt/a/0/1", "pbt/a/0/2", "pbt/a/1/1", "pbt/ab/0/1", "pbt/b"]
    assert list(store.list("nothing/here")) == []


def test_delete_prefix_removes_the_folder_and_nothing_else(store: Storage) -> None:
    for key in ("pbt/a/0/1", "pbt/a/1/1", "pbt/ab/0/1", "blobs/x"):
        store.put_bytes(key, b"x")
    assert store.delete_prefix("pbt/a") == 2
    assert sorted(store.list("pbt")) == ["pbt/ab/0/1"]
    assert store.exists("blobs/x")
    assert store.delete_prefix("pbt/a") == 0


def test_delete_prefix_handles_more_keys_than_one_batch_delete(store: Storage) -> None:
    for i in range(1100):  # DeleteObjects takes 1000 keys
        store.put_bytes(f"many/{i}", b"")
    assert store.delete_prefix("many") == 1100
    assert list(store.list("many")) == []


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs",
        "../up",
        "a/../b",
        "a/./b",
        "a//b",
        ".hidden",
        "a/.part",
        "a/",
        "sp ace",
        "nul\x00",
        "é",
        "\ud800",
        "a\\b",
        "x" * 901,
    ],
)
def test_invalid_keys_are_refused_before_any_request(store: Storage, key: str) -> None:
    with pytest.raises(ValueError, match="Invalid storage key"):
        store.put_bytes(key, b"x")
    with pytest.raises(ValueError, match="Invalid storage key"):
        store.exists(key)


def test_a_reader_never_sees_half_an_overwrite(store: Storage) -> None:
    """One thread overwrites an object with all-A then all-B bytes; another reads it meanwhile: whole or nothing."""
    a, b = b"A" * (1 << 20), b"B" * (1 << 20)
    store.put_bytes("atomic", a)
    stop = threading.Event()
    seen: list[bytes] = []

    def write() -> None:
        for i in range(20):
            store.put_bytes("atomic", b if i % 2 == 0 else a)
        stop.set()

    writer = threading.Thread(target=write)
    writer.start()
    while not stop.is_set():
        seen.append(store.get_bytes("atomic"))
    writer.join()
    assert seen and all(s in (a, b) for s in seen)


def test_file_storage_keeps_temporaries_out_of_listings(tmp_path: Path) -> None:
    store = FileStorage(tmp_path)
    store.put_bytes("pbt/p/0/1", b"x")
    stale = tmp_path / "pbt" / "p" / "0" / ".1.dead.part"  # what a writer killed midway leaves
    stale.write_bytes(b"half")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert list(store.list("pbt")) == ["pbt/p/0/1"]
    assert store.delete_prefix("pbt/p") == 1
    assert not (tmp_path / "pbt" / "p").exists()  # the stale temporary and the empty folders went too


def test_file_storage_keeps_todays_layout(tmp_path: Path) -> None:
    """The default store is the data dir: blobs and checkpoints stay where lrlab has always put them."""
    store = open_storage(default_url(tmp_path))
    sha = "ab" + "0" * 62
    store.put_bytes(f"blobs/{sha[:2]}/{sha}", b"npz")
    store.put_bytes("checkpoints/pbt/p1/0/3", b"ckpt")
    assert (tmp_path / "blobs" / "ab" / sha).read_bytes() == b"npz"
    assert (tmp_path / "checkpoints" / "pbt" / "p1" / "0" / "3").read_bytes() == b"ckpt"
    assert store.local_path("checkpoints/pbt/p1/0/3") == tmp_path / "checkpoints" / "pbt" / "p1" / "0" / "3"


@pytest.mark.parametrize(
    "url, reason",
    [
        ("ftp://host/x", "must start with file:// or s3://"),
        ("/plain/path", "must start with file:// or s3://"),
        ("file://host/x", "file:///absolute/path"),
        ("s3://", "s3://bucket/prefix"),
        ("s3://bucket/p?x=1", "no query"),
        ("s3://bucket/../x", "Invalid storage key"),
        ("s3://Not_A_Bucket/x", "not a valid S3 bucket name"),
    ],
)
def test_open_storage_refuses_bad_urls(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("?", r"\?").replace(".", r"\.")):
        open_storage(url)


def test_shared_storage_is_one_object_per_url_and_process(tmp_path: Path) -> None:
    url = tmp_path.as_uri()
    assert shared_storage(url) is shared_storage(url)
    assert shared_storage(url) is not shared_storage((tmp_path / "other").as_uri())


def test_s3_over_plain_http_needs_only_the_standard_variables(moto_server: MotoServer, tmp_path: Path) -> None:
    """A fresh process with nothing but PATH and the four AWS variables writes under the URL's prefix."""
    bucket = moto_server.create_bucket()
    script = (
        "import sys; from lrlab.storage import open_storage\n"
        f"s = open_storage('s3://{bucket}/team/lrlab')\n"
        "s.put_bytes('blobs/ab/x', b'hello'); print(s.get_bytes('blobs/ab/x').decode(), sorted(s.list('blobs')))\n"
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **moto_server.env()}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["hello", "['blobs/ab/x']"]
    assert moto_server.objects(bucket) == {"team/lrlab/blobs/ab/x": b"hello"}


def test_s3_unreachable_endpoint_is_a_storage_error(moto_server: MotoServer, tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], **moto_server.env(endpoint="http://127.0.0.1:9")}  # nothing listens there
    script = (
        "from lrlab.storage import open_storage, StorageError\n"
        "try:\n    open_storage('s3://some-bucket').get_bytes('k')\n"
        "except StorageError as exc:\n    print('StorageError', isinstance(exc, OSError))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["StorageError", "True"], out.stderr


UPLOAD_MEMORY = """
import json, resource, sys
from pathlib import Path
from lrlab.storage import open_storage
store = open_storage(sys.argv[1])
store.exists("warm-up")  # the client, its runtime and a connection, before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
store.put_file("big", Path(sys.argv[2]))
after_put = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
store.get_file("big", Path(sys.argv[2] + ".back"))
after_get = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before": before, "put": after_put - before, "get": after_get - after_put}))
"""


def test_big_objects_stream_through_bounded_memory(storage_url: str, tmp_path: Path) -> None:
    """A 200 MiB object goes in and comes back out without the process holding it: peak RSS grows far less."""
    size = 200 << 20
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(size >> 20):
            f.write(block)
    out = subprocess.run(
        [sys.executable, "-c", UPLOAD_MEMORY, storage_url, str(src)],
        env=os.environ.copy(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    grown = json.loads(out.stdout)
    assert grown["put"] < 48 << 10 and grown["get"] < 48 << 10, grown  # KiB; the object is 200 MiB
    assert Path(str(src) + ".back").stat().st_size == size
