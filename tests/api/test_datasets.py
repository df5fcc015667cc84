"""Dataset uploads over the real stack: each kind described, bad files refused leaving nothing behind, dedupe by
hash, size caps (413) and the storage quota (429), owner scoping (404), delete (409 while in use), the catalog."""

from __future__ import annotations

import io
import random
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.api.test_access import auth, settings_env
from tests.conftest import make_key

pytestmark = pytest.mark.service


# --- files ---------------------------------------------------------------------------------------


def npz_bytes(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def toy_npz(n: int = 120, seed: int = 0) -> bytes:
    """Three separable gaussian blobs in 6-D."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, 6)).astype(np.float32) + 4 * np.eye(3, 6, dtype=np.float32)[y]
    return npz_bytes(x=x, y=y)


def toy_csv(n: int = 90) -> bytes:
    rng = np.random.default_rng(1)
    lines = ["f1,species,f2"]
    for i in range(n):
        name = ("setosa", "versicolor", "virginica")[i % 3]
        lines.append(f"{rng.normal() + 3 * (i % 3):.4f},{name},{rng.normal() - 2 * (i % 3):.4f}")
    return ("\n".join(lines) + "\n").encode()


def png(colour: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def targz_of(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buf.getvalue()


def image_folder(prefix: str = "", per_class: int = 4) -> dict[str, bytes]:
    return {
        f"{prefix}{cls}/{i}.png": png((40 * i, 200 if cls == "cats" else 20, 90))
        for cls in ("cats", "dogs")
        for i in range(per_class)
    }


def shapes_zip(per_class: int = 40, size: int = 16, seed: int = 0) -> bytes:
    """Circles, squares and triangles: random position, size and colours, plus pixel noise, under shapes/."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    members = {}
    for cls in ("circles", "squares", "triangles"):
        for i in range(per_class):
            image = Image.new("RGB", (size, size), tuple(rng.randint(0, 80) for _ in range(3)))
            draw, fg = ImageDraw.Draw(image), tuple(rng.randint(150, 255) for _ in range(3))
            r = rng.uniform(3.5, 6.5)
            cx, cy = rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)
            if cls == "circles":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
            elif cls == "squares":
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
            pixels = np.asarray(image, dtype=np.int16) + noise.integers(-12, 13, (size, size, 3))
            buf = io.BytesIO()
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "PNG")
            members[f"shapes/{cls}/{i:03d}.png"] = buf.getvalue()
    return zip_of(members)


def upload(client: Any, filename: str, data: bytes, headers: dict[str, str] | None = None, **fields: str) -> Any:
    return client.post("/v1/datasets", files={"file": (filename, data)}, data=fields, headers=headers or {})


# --- what is on disk -----------------------------------------------------------------------------


def stored_files() -> set[Path]:
    """Every file under the blob store and the api's staging folder."""
    from lrlab.settings import get_settings

    roots = (get_settings().blob_dir, get_settings().staging_dir)
    return {p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}


def blob_path(sha256: str) -> Path:
    from lrlab.settings import get_settings

    return get_settings().blob_dir / sha256[:2] / sha256


def dataset_count() -> int:
    from sqlalchemy import func, select

    from lrlab.db import session_scope
    from lrlab.models import Dataset

    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(Dataset)) or 0)


# --- good uploads --------------------------------------------------------------------------------


def test_upload_each_kind_is_described(api_client: Any) -> None:
    key = auth(make_key("uploader"))  # an owner of its own: other tests upload the same files
    npz = upload(api_client, "blobs.npz", toy_npz(), headers=key, name="my blobs")
    assert npz.status_code == 201, npz.text
    body = npz.json()
    assert npz.headers["location"] == f"/v1/datasets/{body['id']}"
    assert {k: body[k] for k in ("name", "kind", "n_samples", "n_classes", "input_shape", "class_names")} == {
        "name": "my blobs",
        "kind": "npz",
        "n_samples": 120,
        "n_classes": 3,
        "input_shape": [6],
        "class_names": None,
    }
    assert body["size_bytes"] == len(toy_npz()) and len(body["sha256"]) == 64 and body["created_at"]
    assert blob_path(body["sha256"]).read_bytes() == toy_npz()

    csv = upload(api_client, "iris-ish.csv", toy_csv(), headers=key, label_column="species").json()
    assert (csv["kind"], csv["name"], csv["n_samples"], csv["input_shape"]) == ("csv", "iris-ish", 90, [2])
    assert csv["class_names"] == ["setosa", "versicolor", "virginica"] and csv["label_column"] == "species"

    zipped = upload(api_client, "pets.zip", zip_of(image_folder()), headers=key).json()  # classes at the root
    tarred = upload(api_client, "pets.tar.gz", targz_of(image_folder("pets/")), headers=key).json()  # in pets/
    for images in (zipped, tarred):
        assert images["kind"] == "images" and images["n_samples"] == 8 and images["n_classes"] == 2
        assert images["class_names"] == ["cats", "dogs"] and images["input_shape"] == [3, 32, 32]

    assert api_client.get(f"/v1/datasets/{body['id']}", headers=key).json() == body
    listed = [d["id"] for d in api_client.get("/v1/datasets", headers=key).json()["data"]]
    assert listed == [tarred["id"], zipped["id"], csv["id"], body["id"]]  # newest first
    uploads = {d["id"]: d for d in api_client.get("/v1/catalog", headers=key).json()["uploads"]}
    assert uploads[body["id"]]["spec"] == {"dataset": {"id": body["id"]}} and uploads[body["id"]]["n_samples"] == 120


def test_same_bytes_twice_are_one_dataset(api_client: Any) -> None:
    data = toy_npz(seed=7)
    first = upload(api_client, "a.npz", data)
    files = stored_files()
    again = upload(api_client, "renamed.npz", data, name="other name")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    assert stored_files() == files  # no second copy, no leftover
    # the same CSV read with another label column is another dataset
    table = b"a,b,label\n1,0,10\n2,1,2\n3,0,10\n"
    by_label = upload(api_client, "t.csv", table).json()
    by_b = upload(api_client, "t.csv", table, label_column="b").json()
    assert by_label["id"] != by_b["id"] and by_label["sha256"] == by_b["sha256"]
    assert (by_label["class_names"], by_b["class_names"]) == (["2", "10"], ["0", "1"])  # numbers in numeric order


# --- bad uploads: a 4xx naming the problem, and nothing left behind -------------------------------

FILE = ["body", "file"]


def _symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in image_folder().items():
            zf.writestr(name, data)
        link = zipfile.ZipInfo("cats/evil.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    return buf.getvalue()


def _bomb_zip() -> bytes:
    return zip_of({**image_folder(), "cats/bomb.png": bytes(16 << 20)})  # 16 MiB of zeros deflate ~1000x


BAD: list[tuple[str, str, bytes, dict[str, str], int, list[str], str]] = [
    ("truncated npz", "x.npz", toy_npz()[:2000], {}, 422, FILE, "not a readable .npz"),
    ("not an archive", "x.npz", b"hello, world" * 100, {}, 422, FILE, "not a readable .npz"),
    ("missing y", "x.npz", npz_bytes(x=np.zeros((4, 2)), labels=np.arange(4)), {}, 422, FILE, "lacks array(s) ['y']"),
    ("label count", "x.npz", npz_bytes(x=np.zeros((5, 2)), y=np.arange(4) % 2), {}, 422, FILE, "5 samples but y has 4"),
    ("nan", "x.npz", npz_bytes(x=np.array([[0.0], [np.nan]]), y=np.array([0, 1])), {}, 422, FILE, "NaN"),
    (
        "one class",
        "x.npz",
        npz_bytes(x=np.zeros((6, 2)), y=np.zeros(6, dtype=int)),
        {},
        422,
        FILE,
        "at least 2 classes",
    ),
    ("pickle", "x.npz", npz_bytes(x=np.array([{}, {}], dtype=object), y=np.arange(2)), {}, 422, FILE, "pickles"),
    ("float labels", "x.npz", npz_bytes(x=np.zeros((2, 1)), y=np.array([0.5, 1.0])), {}, 422, FILE, "integer labels"),
    ("csv no label", "t.csv", b"a,b\n1,2\n3,4\n", {}, 422, ["body", "label_column"], "no column 'label'"),
    ("csv text feature", "t.csv", b"a,label\n1,x\nfoo,y\n", {}, 422, FILE, "line 3, column 'a': 'foo' is not a number"),
    ("csv inf", "t.csv", b"a,label\n1,x\ninf,y\n", {}, 422, FILE, "not a finite number"),
    ("csv ragged", "t.csv", b"a,label\n1,x\n2\n", {}, 422, FILE, "line 3 has 1 fields"),
    ("csv one class", "t.csv", b"a,label\n1,x\n2,x\n", {}, 422, FILE, "at least 2 classes"),
    ("csv not utf-8", "t.csv", b"a,label\n1,\xff\xfe\n", {}, 422, FILE, "not UTF-8"),
    (
        "bad image",
        "p.zip",
        zip_of({**image_folder(), "dogs/bad.png": b"\x89PNG not really"}),
        {},
        422,
        FILE,
        "dogs/bad.png",
    ),
    (
        "cut image",
        "p.zip",
        zip_of({**image_folder(), "dogs/cut.png": png(size=64)[:120]}),
        {},
        422,
        FILE,
        "does not decode",
    ),
    ("dotdot zip", "p.zip", zip_of({**image_folder(), "../escape.png": png()}), {}, 422, FILE, "'..'"),
    ("absolute zip", "p.zip", zip_of({**image_folder(), "/etc/cats/x.png": png()}), {}, 422, FILE, "absolute path"),
    ("symlink zip", "p.zip", _symlink_zip(), {}, 422, FILE, "symbolic link"),
    ("symlink tar", "p.tar.gz", targz_of(image_folder(), {"cats/l.png": "/etc/passwd"}), {}, 422, FILE, "is a link"),
    ("dotdot tar", "p.tar.gz", targz_of({**image_folder(), "cats/../../x.png": png()}), {}, 422, FILE, "'..'"),
    ("truncated tar", "p.tar.gz", targz_of(image_folder())[:300], {}, 422, FILE, "not a readable .tar.gz"),
    ("zip bomb", "p.zip", _bomb_zip(), {}, 422, FILE, "compression-ratio cap"),
    ("gzip bomb", "p.tar.gz", targz_of({**image_folder(), "cats/z.bmp": bytes(16 << 20)}), {}, 422, FILE, "gzip bomb"),
    ("one class folder", "p.zip", zip_of({"cats/1.png": png(), "cats/2.png": png()}), {}, 422, FILE, "2 classes"),
    (
        "mixed depths",
        "p.zip",
        zip_of({**image_folder(), "x/cats/y.png": png()}),
        {},
        422,
        FILE,
        "one sub-folder per class",
    ),
    ("no images", "p.zip", zip_of({"readme.txt": b"hi"}), {}, 422, FILE, "holds no images"),
    ("unknown suffix", "data.parquet", b"PAR1", {}, 422, FILE, "upload a .npz, .csv, .zip or .tar.gz"),
    ("empty", "x.npz", b"", {}, 422, FILE, "empty"),
    ("label_column on npz", "x.npz", toy_npz(seed=3), {"label_column": "y"}, 422, ["body", "label_column"], "CSV"),
    ("unknown field", "x.npz", toy_npz(seed=4), {"labels": "y"}, 422, ["body", "labels"], "unknown form field"),
]


@pytest.mark.parametrize(
    ("filename", "data", "fields", "code", "loc", "msg"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_bad_upload_is_refused_leaving_nothing(
    api_client: Any, filename: str, data: bytes, fields: dict[str, str], code: int, loc: list[str], msg: str
) -> None:
    rows, files = dataset_count(), stored_files()
    resp = upload(api_client, filename, data, **fields)
    assert resp.status_code == code, resp.text
    (error,) = resp.json()["detail"]
    assert error["loc"] == loc and msg in error["msg"], error
    assert dataset_count() == rows and stored_files() == files


def test_upload_without_a_file_or_as_json_is_refused(api_client: Any) -> None:
    rows, files = dataset_count(), stored_files()
    resp = api_client.post("/v1/datasets", data={"name": "no file"}, files={"other": ("x.npz", b"")})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["body", "other"]
    resp = api_client.post("/v1/datasets", data={"name": "no file"})
    assert resp.status_code in (415, 422)  # a form without files is sent urlencoded
    resp = api_client.post("/v1/datasets", files={"name": (None, "x")})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["body", "file"]
    resp = api_client.post("/v1/datasets", json={"file": "x"})
    assert resp.status_code == 415 and resp.json()["detail"][0]["loc"] == ["header", "content-type"]
    assert dataset_count() == rows and stored_files() == files


# --- caps and quotas -----------------------------------------------------------------------------


def _multipart(filename: str, data: bytes, boundary: str = "lrlab-test-boundary") -> bytes:
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n\r\n'
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode()


def test_upload_over_the_size_cap_is_413(api_client: Any) -> None:
    rows, files = dataset_count(), stored_files()
    data = np.random.default_rng(0).normal(size=(4000, 10)).astype(np.float32)
    big = npz_bytes(x=data, y=np.arange(4000) % 2)  # ~160 kB
    with settings_env(LRLAB_MAX_UPLOAD_BYTES="100000"):
        resp = upload(api_client, "big.npz", big)  # refused on its Content-Length, before the body is read
        assert resp.status_code == 413 and resp.json()["detail"][0]["loc"] == FILE
        assert "LRLAB_MAX_UPLOAD_BYTES" in resp.json()["detail"][0]["msg"]
        body = _multipart("big.npz", big)

        def chunks() -> Any:  # no Content-Length: counted as it streams
            for i in range(0, len(body), 16384):
                yield body[i : i + 16384]

        headers = {"content-type": "multipart/form-data; boundary=lrlab-test-boundary"}
        resp = api_client.post("/v1/datasets", content=chunks(), headers=headers)
        assert resp.status_code == 413 and resp.json()["detail"][0]["loc"] == FILE
    with settings_env(LRLAB_MAX_EXTRACTED_BYTES="300"):  # the archive's declared expanded size
        resp = upload(api_client, "pets.zip", zip_of(image_folder(per_class=5)))
        assert resp.status_code == 413 and "LRLAB_MAX_EXTRACTED_BYTES" in resp.json()["detail"][0]["msg"]
        resp = upload(api_client, "pets.tar.gz", targz_of(image_folder(per_class=5)))  # counted while reading
        assert resp.status_code == 413 and "LRLAB_MAX_EXTRACTED_BYTES" in resp.json()["detail"][0]["msg"]
    assert dataset_count() == rows and stored_files() == files


def test_storage_quota_per_key_is_429(api_client: Any) -> None:
    key = auth(make_key("storage quota"))
    first, second = toy_npz(seed=11), toy_npz(seed=12)
    with settings_env(LRLAB_MAX_STORAGE_BYTES_PER_KEY=str(len(first) + len(second) // 2)):
        assert upload(api_client, "a.npz", first, headers=key).status_code == 201
        over = upload(api_client, "b.npz", second, headers=key)
        assert over.status_code == 429 and int(over.headers["retry-after"]) > 0
        assert over.json()["detail"][0]["loc"] == FILE
        assert "LRLAB_MAX_STORAGE_BYTES_PER_KEY" in over.json()["detail"][0]["msg"]
        assert upload(api_client, "a.npz", first, headers=key).status_code == 200  # already stored: no new bytes


def test_work_quota_counts_the_uploaded_samples(api_client: Any) -> None:
    key = auth(make_key("work quota"))
    dataset = upload(api_client, "small.npz", toy_npz(n=100, seed=21), headers=key).json()
    spec = {"dataset": {"id": dataset["id"]}, "device": "cuda"}  # the gpu queue: nothing trains it here
    with settings_env(LRLAB_MAX_REQUEST_WORK="6000"):
        fits = api_client.post("/v1/runs", json={**spec, "epochs": 60}, headers=key)  # 6000 sample-epochs
        assert fits.status_code == 202, fits.text  # a nominal 10000-sample file would be 600000
        over = api_client.post("/v1/runs", json={**spec, "epochs": 61}, headers=key)
        assert over.status_code == 429 and "LRLAB_MAX_REQUEST_WORK" in over.json()["detail"][0]["msg"]
    api_client.post(f"/v1/runs/{fits.json()['id']}/cancel", headers=key)


# --- owners, delete ------------------------------------------------------------------------------


def test_other_owner_gets_404_everywhere(api_client: Any) -> None:
    mine = upload(api_client, "mine.npz", toy_npz(seed=31)).json()
    other = auth(make_key("dataset snoop"))
    assert api_client.get(f"/v1/datasets/{mine['id']}", headers=other).status_code == 404
    gone = api_client.delete(f"/v1/datasets/{mine['id']}", headers=other)
    assert gone.status_code == 404 and gone.json()["detail"][0]["loc"] == ["path", "dataset_id"]
    assert api_client.get("/v1/datasets", headers=other).json()["data"] == []
    assert api_client.get("/v1/catalog", headers=other).json()["uploads"] == []
    ref = {"dataset": {"id": mine["id"]}, "device": "cuda"}
    for path, body, loc in (
        ("/v1/runs", ref, ["body", "dataset", "id"]),
        ("/v1/experiments", {"name": "x", "base": ref, "grid": {"seed": [0, 1]}}, ["body", "base", "dataset", "id"]),
        ("/v1/lr-finder", {"dataset": {"id": mine["id"]}, "steps": 10}, ["body", "dataset", "id"]),
    ):
        resp = api_client.post(path, json=body, headers=other)
        assert resp.status_code == 404 and resp.json()["detail"][0]["loc"] == loc, (path, resp.text)
    assert api_client.get(f"/v1/datasets/{mine['id']}").status_code == 200  # still there for its owner


def test_dataset_ref_takes_exactly_one_of_name_path_id(api_client: Any) -> None:
    resp = api_client.post("/v1/runs", json={"dataset": {"name": "digits", "id": "x"}})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["body", "dataset"]


def test_delete_is_409_while_in_use_and_frees_the_blob_last(api_client: Any) -> None:
    data = toy_npz(seed=41)
    other = auth(make_key("dataset sharer"))
    mine = upload(api_client, "shared.npz", data).json()
    theirs = upload(api_client, "shared.npz", data, headers=other).json()
    assert mine["id"] != theirs["id"] and mine["sha256"] == theirs["sha256"]  # one blob, two owners' rows
    run = api_client.post("/v1/runs", json={"dataset": {"id": mine["id"]}, "device": "cuda"}).json()
    assert api_client.get(f"/v1/runs/{run['id']}").json()["spec"]["dataset"]["id"] == mine["id"]
    busy = api_client.delete(f"/v1/datasets/{mine['id']}")
    assert busy.status_code == 409 and busy.json()["detail"][0]["loc"] == ["path", "dataset_id"]
    assert api_client.post(f"/v1/runs/{run['id']}/cancel").json()["status"] == "cancelled"
    assert api_client.delete(f"/v1/datasets/{mine['id']}").status_code == 204
    assert api_client.get(f"/v1/datasets/{mine['id']}").status_code == 404
    assert blob_path(mine["sha256"]).exists()  # the other owner's dataset still names these bytes
    assert api_client.delete(f"/v1/datasets/{theirs['id']}", headers=other).status_code == 204
    assert not blob_path(mine["sha256"]).exists()
    assert upload(api_client, "shared.npz", data).status_code == 201  # and it can come back


def test_checks_match_what_the_trainer_reads() -> None:
    from lrlab.uploads import validation
    from trainer import data

    assert validation.IMAGE_SUFFIXES == data.IMAGE_SUFFIXES


def test_openapi_documents_the_upload_form_and_limits(api_client: Any) -> None:
    schema = api_client.get("/openapi.json").json()
    post = schema["paths"]["/v1/datasets"]["post"]
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file"] and set(form["properties"]) == {"file", "name", "label_column"}
    assert {"200", "201", "413", "429"} <= set(post["responses"])
    for setting in ("LRLAB_MAX_UPLOAD_BYTES", "LRLAB_MAX_STORAGE_BYTES_PER_KEY", "LRLAB_MAX_EXTRACTED_BYTES"):
        assert setting in schema["info"]["description"]
