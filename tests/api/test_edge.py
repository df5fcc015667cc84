"""The HTTP edge over a real uvicorn server: refusals arrive before the body is read, a refused body does not
cost the client its answer (urllib, requests, httpx), and a bad request leaves its keep-alive connection usable."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from tests.conftest import ROOT, stop_process, wait_for

pytestmark = pytest.mark.service

BIG = json.dumps({"dataset": "blobs", "pad": "x" * (2 << 20)}).encode()  # 2 MiB: over the 1 MiB cap


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`uvicorn api.main:app` in a process of its own, keys required, on the test database."""
    port = free_port()
    log: Path = tmp_path_factory.mktemp("edge") / "uvicorn.log"
    env = {**os.environ, **service_env, "LRLAB_AUTH": "required"}
    cmd = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail("uvicorn exited:\n" + log.read_text()[-4000:])
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, 60, "uvicorn to answer /healthz", interval=0.2)
        yield url
    finally:
        stop_process(proc)


def headers(key: str | None, content_type: str | None = "application/json") -> dict[str, str]:
    out = {"Authorization": f"Bearer {key}"} if key else {}
    return {**out, "Content-Type": content_type} if content_type else out


def urllib_post(url: str, body: bytes, hdrs: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """urllib sends `Connection: close` and the whole body before it reads: the case that saw BrokenPipeError."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=hdrs), timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_over_cap_body_reads_413_with_urllib_requests_and_httpx(server: str, api_key: str) -> None:
    status, body = urllib_post(f"{server}/v1/runs", BIG, headers(api_key))
    assert status == 413 and body["detail"][0]["type"] == "too_large"
    resp = requests.post(f"{server}/v1/runs", data=BIG, headers=headers(api_key), timeout=30)
    assert resp.status_code == 413
    resp = httpx.post(f"{server}/v1/runs", content=BIG, headers=headers(api_key), timeout=30)
    assert resp.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for i in range(0, len(BIG), 1 << 16):
            yield BIG[i : i + (1 << 16)]

    resp = requests.post(f"{server}/v1/runs", data=chunks(), headers=headers(api_key), timeout=30)
    assert resp.status_code == 413


def test_a_client_sending_at_its_own_pace_still_reads_the_413(server: str, api_key: str) -> None:
    """`Connection: close` and 2 MiB sent in 32 paced chunks, as a slow link would: the server reads (and drops)
    the rest before answering, so every chunk goes out and the 413 is read. It used to answer at once and
    close, and the next chunk met a reset (BrokenPipeError, what urllib users saw now and then)."""
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def paced() -> Iterator[bytes]:
        step = len(BIG) // 32 + 1
        for i in range(0, len(BIG), step):
            time.sleep(0.02)
            yield BIG[i : i + step]

    try:
        hdrs = {**headers(api_key), "Content-Length": str(len(BIG)), "Connection": "close"}
        conn.request("POST", "/v1/runs", body=paced(), headers=hdrs)
        resp = conn.getresponse()
        assert resp.status == 413 and json.loads(resp.read())["detail"][0]["type"] == "too_large"
    finally:
        conn.close()


def test_refusals_of_a_big_body_are_read_by_urllib(server: str, api_key: str) -> None:
    assert urllib_post(f"{server}/v1/runs", BIG, headers(None))[0] == 401
    assert urllib_post(f"{server}/v1/runs", BIG, headers("lrlab_unknown"))[0] == 401
    status, body = urllib_post(f"{server}/v1/runs", BIG, headers(api_key, "multipart/form-data; boundary=x"))
    assert status == 415 and body["detail"][0]["loc"] == ["header", "content-type"]
    status, body = urllib_post(f"{server}/v1/runs", BIG, headers(api_key, None))
    assert status == 415 and "application/json" in body["detail"][0]["msg"]


def raw_request(server: str, head: str, body_part: bytes, timeout: float = 10) -> bytes:
    """Send the head and only the start of a body, then read what comes back without sending the rest."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode() + b"\r\n" + body_part)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def head_of(method: str, path: str, length: int, *lines: str) -> str:
    return "".join(
        f"{line}\r\n" for line in (f"{method} {path} HTTP/1.1", "Host: x", f"Content-Length: {length}", *lines)
    )


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        ((), "401"),  # no key
        (("Authorization: Bearer lrlab_unknown",), "401"),
        (("Content-Type: multipart/form-data; boundary=x", "Authorization: Bearer {key}"), "415"),
        (("Content-Type: application/json", "Authorization: Bearer {key}"), "413"),
        (("Authorization: Bearer {key}",), "415"),  # a body without a Content-Type
    ],
)
def test_refused_before_the_body_is_read(server: str, api_key: str, lines: tuple[str, ...], status: str) -> None:
    """A 500 MB body is announced and 64 KiB of it sent: the answer comes without the rest (today's code read
    all of it first, so this timed out)."""
    start = time.monotonic()
    head = head_of("POST", "/v1/runs", 500 << 20, *(line.format(key=api_key) for line in lines))
    answer = raw_request(server, head, b'{"dataset": "blobs", "pad": "' + b" " * (64 << 10))
    assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer[:200]
    assert time.monotonic() - start < 5


def test_expect_continue_is_refused_without_inviting_the_body(server: str) -> None:
    answer = raw_request(server, head_of("POST", "/v1/runs", 2 << 20, "Expect: 100-continue"), b"")
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]  # not "100 Continue" first


def test_lone_surrogate_is_422_and_the_connection_lives_on(server: str, api_key: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for raw in (b'{"dataset": "\\ud800"}', b'{"dataset": "x\\u0000"}', b'{"optimizer": {"name": "\\udfff"}}'):
            conn.request("POST", "/v1/runs", body=raw, headers=headers(api_key))
            resp = conn.getresponse()
            body = json.loads(resp.read())
            assert resp.status == 422, body
            assert body["detail"][0]["loc"][:2] in (["body", "dataset"], ["body", "optimizer"])
            conn.request("GET", "/v1/runs?limit=1", headers=headers(api_key, None))  # the same connection
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            resp.read()
        conn.request("POST", "/v1/runs", body=BIG, headers=headers(api_key))  # drained whole: still usable
        resp = conn.getresponse()
        assert resp.status == 413
        resp.read()
        conn.request("GET", "/v1/runs/a%00b", headers=headers(api_key, None))
        resp = conn.getresponse()
        assert resp.status == 404 and json.loads(resp.read())["detail"][0]["loc"] == ["path", "run_id"]
    finally:
        conn.close()
