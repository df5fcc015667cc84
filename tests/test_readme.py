"""README's snippets run as written, against a real service: an embedded `lrlab up` in a temporary directory.

Every ```python block runs as written (the client finds the service through $LRLAB_URL, as README says). The
```bash blocks run in one bash session, in README order, with one substitution: `localhost:8000` is the test
service's address. curl fails on an HTTP error here (--fail-with-body), so a snippet that gets a 4xx fails the
test. The few blocks that cannot run here are listed in NOT_RUN with the reason; a new block is run unless it is
listed there.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, stop_process, wait_for
from tests.e2e.test_embedded import _free_port, _http, _start

# first line of a block -> why it is not run
NOT_RUN = {
    "python3 -m venv .venv && . .venv/bin/activate": "the setup itself: installs, starts the service, runs this suite",
    "pip install -e examples/lrlab-example-plugin     # into every worker's environment, then (re)start the workers": (
        "installs a package: tests/conftest.py installs the example plugin before a test session starts a worker"
    ),
    "docker compose up -d                       # postgres, redis (append-only), minio, migrate, api, GPU worker": (
        "needs a Docker engine; tests/test_compose.py checks the compose file"
    ),
}
FENCE = re.compile(r"^```(\w+)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)


def snippets(language: str) -> list[str]:
    blocks = [body for lang, body in FENCE.findall((ROOT / "README.md").read_text()) if lang == language]
    return [b for b in blocks if b.splitlines()[0].rstrip() not in NOT_RUN]


def test_not_run_names_blocks_that_exist() -> None:
    firsts = {body.splitlines()[0].rstrip() for _, body in FENCE.findall((ROOT / "README.md").read_text())}
    assert set(NOT_RUN) <= firsts  # a stale entry would hide nothing, but would rot
    assert snippets("python") and len(snippets("bash")) >= 5


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("readme")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    up = _start(["up", "--port", str(port)], tmp / "data", tmp / "up.log")
    try:
        wait_for(lambda: _http("GET", f"{url}/readyz")[0] == 200, 90, "lrlab up", interval=0.2)
        yield url, tmp / "data"
    finally:
        stop_process(up)


def _env(url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRLAB_")}
    # `lrlab` is the installed command, from this interpreter's environment; the keys commands use the data dir
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, "PATH": path, "LRLAB_URL": url, "LRLAB_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}


def test_python_snippets_run_as_written(service: tuple[str, Path], tmp_path: Path) -> None:
    url, data_dir = service
    for i, code in enumerate(snippets("python")):
        script = tmp_path / f"snippet{i}.py"
        script.write_text(code)
        out = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=_env(url, data_dir),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, f"{code}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr[-4000:]}"
        if "verdict" in code:  # the comparison's verdict, printed as a line, not None
            assert re.search(
                r"lr=0\.01 vs lr=0\.001: [+-]\d\.\d{4}, 95% CI \[[+-]\d\.\d{4}, [+-]\d\.\d{4}\], significant=",
                out.stdout,
            ), out.stdout
        if "save_chart" in code:
            assert (tmp_path / "acc.png").read_bytes().startswith(b"\x89PNG")


def _upload_files(where: Path) -> None:
    """The files the uploads snippet names: an image folder zipped (three classes), a CSV with a species column."""
    from PIL import Image

    with zipfile.ZipFile(where / "shapes.zip", "w") as zf:
        for k, name in enumerate(["circles", "squares", "triangles"]):
            for i in range(8):
                buf = io.BytesIO()
                Image.new("RGB", (12, 12), (40 * k + i, 200 - 30 * k, 10 * i)).save(buf, format="PNG")
                zf.writestr(f"shapes/{name}/{i}.png", buf.getvalue())
    with (where / "iris.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sepal_length", "sepal_width", "species"])
        for i in range(30):
            writer.writerow([4.5 + (i % 10) / 5, 3.0 + (i % 3) / 4, ["setosa", "versicolor", "virginica"][i % 3]])


@pytest.mark.skipif(shutil.which("jq") is None, reason="README's curl snippets use jq")
def test_bash_snippets_run_as_written(service: tuple[str, Path], tmp_path: Path) -> None:
    url, data_dir = service
    _upload_files(tmp_path)
    host = url.removeprefix("http://")
    script = "\n".join(
        [
            "set -euo pipefail -x",
            # an HTTP error fails the script (a snippet's own -f, polling, keeps its meaning)
            'curl() { case " $* " in *" -sf "*) command curl "$@";; *) command curl --fail-with-body -S "$@";; esac }',
            *(block.replace("localhost:8000", host) for block in snippets("bash")),
        ]
    )
    out = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=_env(url, data_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-6000:]}"
    assert (tmp_path / "acc.png").read_bytes().startswith(b"\x89PNG")
    assert "revoked 1 key(s)" in out.stdout
