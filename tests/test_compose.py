"""docker-compose.yml and docker/*.Dockerfile, checked statically: no Docker engine and no services needed.

The commands compose runs are parsed by the real `lrlab` parser and the LRLAB_* variables it sets are
read by the real Settings, so a renamed flag or setting breaks here rather than in a container.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest
import yaml

from lrlab.cli import build_parser
from lrlab.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
API_DOCKERFILE = ROOT / "docker" / "api.Dockerfile"
WORKER_DOCKERFILE = ROOT / "docker" / "worker.Dockerfile"
LRLAB_SERVICES = ("migrate", "api", "worker", "worker-cpu")


@functools.cache
def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _service(name: str) -> dict[str, Any]:
    services = _services()
    assert name in services, f"docker-compose.yml has no service {name!r}"
    return services[name]


def _command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command")
    assert cmd, "service has no command"
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def _parse_lrlab(cmd: list[str]) -> Namespace:
    assert cmd[0] == "lrlab", f"{cmd} does not start with lrlab"
    try:
        return build_parser().parse_args(cmd[1:])
    except SystemExit as exc:  # argparse exits on an unknown subcommand or flag
        raise AssertionError(f"the lrlab CLI rejects {shlex.join(cmd)}") from exc


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # short form: started, not healthy
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _healthcheck(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    assert test, "service has no healthcheck"
    return test if isinstance(test, str) else " ".join(test)


def _volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source, for short ("src:/path[:ro]") and long ({source, target}) volume syntax."""
    mounts = {}
    for vol in service.get("volumes") or []:
        if isinstance(vol, str):
            source, target = vol.split(":")[:2]
        else:
            source, target = vol.get("source", ""), vol["target"]
        mounts[target] = source
    return mounts


def _queues(service: dict[str, Any]) -> set[str]:
    args = _parse_lrlab(_command(service))
    assert args.command == "worker" and args.queues, "a compose worker must name its queues"
    return set(args.queues.split(","))


@functools.cache
def _instructions(dockerfile: Path) -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, f"{dockerfile.name} ends inside a continued line"
    return tuple((line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in logical)


def _runs(dockerfile: Path) -> list[str]:
    return [args for inst, args in _instructions(dockerfile) if inst == "RUN"]


def _arg_default(dockerfile: Path, name: str) -> str | None:
    for inst, args in _instructions(dockerfile):
        if inst == "ARG" and args.split("=", 1)[0] == name:
            return args.split("=", 1)[1].strip("\"'") if "=" in args else None
    raise AssertionError(f"{dockerfile.name} has no ARG {name}")


def _exec_form(dockerfile: Path, instruction: str) -> list[str]:
    found = [args for inst, args in _instructions(dockerfile) if inst == instruction]
    assert found, f"{dockerfile.name} has no {instruction}"
    value = json.loads(found[-1])
    assert isinstance(value, list), f"{dockerfile.name}: {instruction} should use the exec (JSON) form"
    return value


def _copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for inst, args in _instructions(dockerfile):
        if inst not in ("COPY", "ADD"):
            continue
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue  # from another stage or image, not the build context
        sources.extend([w for w in words if not w.startswith("--")][:-1])
    return sources


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the context) out of the build context."""
    ignore_file = ROOT / ".dockerignore"
    patterns = [p.strip() for p in ignore_file.read_text().splitlines() if p.strip() and not p.startswith("#")]
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # an excluded folder excludes its files
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _dockerignore_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(p) for p in prefixes):
            ignored = not negated
    return ignored


@functools.cache
def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _worker_torch_pin() -> str:
    pins = [r for r in _pyproject()["project"]["optional-dependencies"]["worker"] if re.match(r"torch\s*==", r)]
    assert len(pins) == 1, "pyproject's [worker] extra should pin torch exactly once"
    return pins[0].split("==", 1)[1].strip()


def _top_level_packages() -> list[str]:
    includes = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(
        d.name
        for d in ROOT.iterdir()
        if (d / "__init__.py").is_file() and any(re.fullmatch(p.replace("*", ".*"), d.name) for p in includes)
    )


# --- compose services ---------------------------------------------------------------------------------


def test_services_define_image_or_build() -> None:
    for name, service in _services().items():
        assert service.get("image") or service.get("build"), f"service {name} has neither image nor build"
    assert set(LRLAB_SERVICES) <= set(_services())


def test_build_dockerfiles_exist() -> None:
    built = {name: s["build"] for name, s in _services().items() if "build" in s}
    assert set(built) == set(LRLAB_SERVICES)
    for name, build in built.items():
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
        assert context.is_dir(), f"{name}: build context {context} is missing"
        assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"


def test_commands_parse_with_lrlab_cli() -> None:
    for name in LRLAB_SERVICES:
        cmd = _command(_service(name))
        args = _parse_lrlab(cmd)
        assert args.command != "up", f"{name}: `lrlab up` is the embedded mode, not for compose"
    for dockerfile in (API_DOCKERFILE, WORKER_DOCKERFILE):
        _parse_lrlab(_exec_form(dockerfile, "CMD"))


def test_migrate_runs_db_upgrade_once() -> None:
    migrate = _service("migrate")
    args = _parse_lrlab(_command(migrate))
    assert (args.command, args.db_command, args.revision) == ("db", "upgrade", "head")
    assert migrate.get("restart") == "no"
    assert _depends_on(migrate).get("postgres") == "service_healthy"
    assert migrate["image"] == _service("api")["image"], "migrate should run the api image"


def test_api_waits_for_migrate_and_redis() -> None:
    deps = _depends_on(_service("api"))
    assert deps.get("migrate") == "service_completed_successfully"
    assert deps.get("redis") == "service_healthy"


def test_api_serves_port_with_healthcheck() -> None:
    api = _service("api")
    args = _parse_lrlab(_command(api))
    assert args.command == "api" and args.host == "0.0.0.0", "the api must listen beyond the container's loopback"
    container_ports = {str(p).split(":")[-1].split("/")[0] for p in api.get("ports", [])}
    assert str(args.port) in container_ports
    assert f":{args.port}/healthz" in _healthcheck(api)
    healthcheck = [args for inst, args in _instructions(API_DOCKERFILE) if inst == "HEALTHCHECK"]
    assert healthcheck and f":{args.port}/healthz" in healthcheck[0], "api image should carry the same healthcheck"


def test_workers_wait_for_migrate_and_redis() -> None:
    for name in ("worker", "worker-cpu"):
        deps = _depends_on(_service(name))
        assert deps.get("migrate") == "service_completed_successfully", name
        assert deps.get("redis") == "service_healthy", name


def test_redis_enables_appendonly() -> None:
    redis = _service("redis")
    assert "--appendonly yes" in " ".join(_command(redis))
    assert "/data" in _volume_mounts(redis)
    assert "redis-cli ping" in _healthcheck(redis)


def test_postgres_keeps_data_with_healthcheck() -> None:
    postgres = _service("postgres")
    assert re.fullmatch(r"postgres:\d+(\.\d+)?", postgres["image"]), "pin Postgres' major version"
    source = _volume_mounts(postgres).get("/var/lib/postgresql/data")
    assert source and source in (_compose().get("volumes") or {}), "Postgres' data needs a named volume"
    assert "pg_isready" in _healthcheck(postgres)


def test_database_url_matches_postgres_credentials() -> None:
    pg_env = _environment(_service("postgres"))
    user, password, db = pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"]
    for name in LRLAB_SERVICES:
        env = _environment(_service(name))
        assert env["LRLAB_DATABASE_URL"] == f"postgresql+psycopg://{user}:{password}@postgres:5432/{db}", name
        assert re.fullmatch(r"redis://redis:6379/\d+", env["LRLAB_BROKER_URL"]), name


def test_gpu_worker_reserves_nvidia_device() -> None:
    worker = _service("worker")
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert "gpu" in _queues(worker)
    assert not worker.get("profiles"), "the GPU worker starts with a plain `docker compose up`"


def test_cpu_worker_consumes_cpu_queue_only() -> None:
    cpu, gpu = _service("worker-cpu"), _service("worker")
    assert cpu.get("profiles") == ["cpu"]
    assert _queues(cpu) == {"cpu"}
    assert "deploy" not in cpu, "the CPU worker must start on machines without a GPU"
    assert cpu["build"]["args"]["TORCH_INDEX"].endswith("/whl/cpu")
    assert cpu["image"] != gpu["image"], "the CPU build needs its own tag, or it overwrites the CUDA image"


def test_environment_names_only_settings_fields() -> None:
    fields = {f"LRLAB_{name.upper()}" for name in Settings.model_fields}
    used = {(name, key) for name, s in _services().items() for key in _environment(s) if key.startswith("LRLAB_")}
    for dockerfile in (API_DOCKERFILE, WORKER_DOCKERFILE):
        for inst, args in _instructions(dockerfile):
            if inst == "ENV":
                used |= {(dockerfile.name, m) for m in re.findall(r"\b(LRLAB_[A-Z0-9_]+)=", args)}
    unknown = sorted(f"{where}: {key}" for where, key in used if key not in fields)
    assert used and not unknown, f"not fields of lrlab.settings.Settings: {unknown}"


def test_environment_validates_as_production(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LRLAB_SERVICES:
        env = _environment(_service(name))
        assert env.get("LRLAB_ENVIRONMENT") == "production", name
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()  # production refuses the embedded SQLite defaults
        assert not settings.is_embedded_db and not settings.is_embedded_broker, name


def test_api_and_workers_share_no_volume() -> None:
    """Everything they share lives in the object store: a worker on another host needs no shared filesystem."""
    api = set(_volume_mounts(_service("api")).values())
    for name in ("worker", "worker-cpu"):
        mounts = _volume_mounts(_service(name))
        assert not api & set(mounts.values()), f"{name} shares a volume with the api: {api & set(mounts.values())}"
        data_dir = _environment(_service(name))["LRLAB_DATA_DIR"]
        assert mounts.get(data_dir), f"{name} keeps its cache on a volume of its own at LRLAB_DATA_DIR={data_dir}"


def test_storage_is_the_minio_bucket_every_service_reaches() -> None:
    minio, init = _service("minio"), _service("minio-init")
    image = minio["image"]
    assert re.fullmatch(r"quay\.io/minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", image), image
    assert re.fullmatch(r"quay\.io/minio/mc:RELEASE\.[0-9TZ-]+", init["image"]), init["image"]
    assert "mc ready local" in _healthcheck(minio) and _volume_mounts(minio).get("/data")
    root = _environment(minio)
    address = "9000"  # minio's default S3 port; the command must not move it
    assert "--address" not in _command(minio)
    for name in LRLAB_SERVICES:
        env = _environment(_service(name))
        settings = Settings(**{k[6:].lower(): v for k, v in env.items() if k.startswith("LRLAB_")})
        assert settings.storage_url.startswith("s3://"), name
        bucket = settings.storage_url[5:].split("/")[0]
        assert env["AWS_ENDPOINT_URL"] == f"http://minio:{address}", name
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            root["MINIO_ROOT_USER"],
            root["MINIO_ROOT_PASSWORD"],
        ), name
        assert env.get("AWS_DEFAULT_REGION"), name
    init_env, script = _environment(init), " ".join(init["command"])
    assert init_env["AWS_ENDPOINT_URL"] == f"http://minio:{address}"
    assert re.search(rf"mc mb --ignore-existing \w+/{re.escape(bucket)}(\s|$)", script), script
    assert "$$AWS_ACCESS_KEY_ID" in script and "$$AWS_SECRET_ACCESS_KEY" in script  # $$: compose leaves $ to sh
    assert _depends_on(init) == {"minio": "service_healthy"} and init.get("restart") == "no"
    for name in ("api", "worker", "worker-cpu"):
        assert _depends_on(_service(name)).get("minio-init") == "service_completed_successfully", name


def test_worker_queues_are_the_brokers() -> None:
    """The queues compose's workers consume are the ones the api routes to (lrlab.broker), and only the GPU
    worker, the one with the device reservation, consumes the GPU queue (a worker on it counts as a GPU worker)."""
    from lrlab.broker import CPU_QUEUE, GPU_QUEUE

    for name in ("worker", "worker-cpu"):
        assert _queues(_service(name)) <= {GPU_QUEUE, CPU_QUEUE}, name
        reserves = bool(_service(name).get("deploy"))
        assert (GPU_QUEUE in _queues(_service(name))) == reserves, name
    assert set(_parse_lrlab(_exec_form(WORKER_DOCKERFILE, "CMD")).queues.split(",")) == {GPU_QUEUE, CPU_QUEUE}


def test_named_volumes_are_declared() -> None:
    declared = set(_compose().get("volumes") or {})
    for name, service in _services().items():
        for target, source in _volume_mounts(service).items():
            if source and not source.startswith((".", "/", "~", "$")):
                assert source in declared, f"{name}: volume {source} (at {target}) is not declared"


# --- Dockerfiles ---------------------------------------------------------------------------------------


def test_api_dockerfile_excludes_worker_extra_and_torch() -> None:
    text = " ".join(args for _, args in _instructions(API_DOCKERFILE))
    assert "torch" not in text.lower()
    assert "[worker]" not in text and "optional-dependencies" not in text
    assert any(re.search(r"pip install \.(\s|$)", run) for run in _runs(API_DOCKERFILE))


def test_worker_dockerfile_installs_pinned_cuda_torch() -> None:
    index = _arg_default(WORKER_DOCKERFILE, "TORCH_INDEX")
    assert index and re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index), f"default index {index}"
    pin = _worker_torch_pin()
    torch_runs = [r for r in _runs(WORKER_DOCKERFILE) if re.search(r"\btorch==", r)]
    assert len(torch_runs) == 1, "install torch in exactly one RUN"
    assert re.search(r'--index-url\s+"?\$\{?TORCH_INDEX\}?"?', torch_runs[0])
    assert re.search(rf"\btorch=={re.escape(pin)}(\s|$)", torch_runs[0]), f"pyproject pins torch=={pin}"
    later = _runs(WORKER_DOCKERFILE)[_runs(WORKER_DOCKERFILE).index(torch_runs[0]) + 1 :]
    assert any(re.search(r"""pip install ["']?\.\[worker\]""", r) for r in later), "install .[worker] after torch"


def test_dockerfiles_copy_existing_sources() -> None:
    for dockerfile in (API_DOCKERFILE, WORKER_DOCKERFILE):
        sources = _copy_sources(dockerfile)
        assert sources, dockerfile.name
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which is not in the repo"
            assert not _dockerignored(source), f"{dockerfile.name} copies {source}, which .dockerignore excludes"


def test_dockerfiles_copy_every_package() -> None:
    packages = _top_level_packages()
    assert "lrlab" in packages
    for dockerfile in (API_DOCKERFILE, WORKER_DOCKERFILE):
        copied = {Path(s).parts[0] for s in _copy_sources(dockerfile)}
        assert "pyproject.toml" in copied
        assert set(packages) <= copied, f"{dockerfile.name} misses {sorted(set(packages) - copied)}"


def test_dockerfiles_run_as_non_root() -> None:
    uids = set()
    for dockerfile in (API_DOCKERFILE, WORKER_DOCKERFILE):
        users = [args for inst, args in _instructions(dockerfile) if inst == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{dockerfile.name} runs as root"
        uids |= set(re.findall(r"useradd\b.*?--uid[ =](\d+)", " ".join(_runs(dockerfile))))
    assert len(uids) == 1, f"api and worker share the data volume, so they need one uid: {uids}"


def test_dockerignore_excludes_venv_and_git() -> None:
    for path in (".venv", ".venv/bin/python", ".git", "lrlab/__pycache__/cli.cpython-311.pyc"):
        assert _dockerignored(path), f".dockerignore lets {path} into the build context"
    assert not _dockerignored("lrlab/cli/__init__.py")


def _compose_cli() -> list[str] | None:
    """`docker compose` (the plugin), else a standalone Compose v2 `docker-compose`, else None."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cli in candidates:
        probe = subprocess.run([*cli, "version", "--short"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0 and not probe.stdout.strip().startswith("1."):
            return cli
    return None


def test_config_validates_with_docker_compose() -> None:
    if shutil.which("docker") is None and shutil.which("docker-compose") is None:
        pytest.skip("no docker client")
    cli = _compose_cli()
    if cli is None:
        pytest.skip("the docker client has no Compose v2 (docker compose plugin)")
    out = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "--profile", "cpu", "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr


def test_flower_watches_the_same_broker() -> None:
    flower = _services()["flower"]
    broker = _environment(_service("api"))["LRLAB_BROKER_URL"]
    assert f"--broker={broker}" in flower["command"] and "flower" in flower["command"]
    assert _depends_on(flower) == {"redis": "service_healthy"}
