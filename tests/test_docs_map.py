"""docs/architecture.md names the functions a run, a fused grid and a PBT round pass through: every one of them
exists. A file named (`api/routes/runs.py: create_run`) must be there and define the name; a dotted name
(`rounds.reach`, `worker/uploads.materialize`, `Idempotent.commit`) must resolve in some module of the project
whose path ends with it (or through a class of that name)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType

from lrlab import broker

ROOT = Path(__file__).resolve().parent.parent
MAP = ROOT / "docs" / "architecture.md"
PACKAGES = ("api", "lrlab", "worker", "trainer")
TASKS = {broker.TRAIN_RUN, broker.TRAIN_PACK, broker.TRAIN_PBT, broker.FIND_LR}
FILE_AND_NAME = re.compile(r"^([\w/]+\.py): ([\w.]+)$")
DOTTED = re.compile(r"^([A-Za-z_][\w/]*(?:\.[A-Za-z_]\w*)+)(?:\(.*\))?$")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(module: ModuleType, names: list[str]) -> bool:
    value: object = module
    for name in names:
        if not hasattr(value, name):
            return False
        value = getattr(value, name)
    return True


def _exists(dotted: str) -> bool:
    """Some module whose dotted path ends with a prefix of `dotted` defines the rest; or a class does."""
    parts = dotted.replace("/", ".").split(".")
    for cut in range(len(parts), 0, -1):
        tail = ".".join(parts[:cut])
        for name in MODULES:
            if (name == tail or name.endswith("." + tail)) and _resolve(importlib.import_module(name), parts[cut:]):
                return True
    # `Class.method`: a class of that name in any module
    return any(
        re.search(rf"^class {parts[0]}\b", path.read_text(), re.M) and _resolve(importlib.import_module(name), parts)
        for name, path in MODULES.items()
    )


def _named() -> list[str]:
    return re.findall(r"`([^`\n]+)`", MAP.read_text())


def test_every_file_and_function_the_map_names_exists() -> None:
    missing = []
    for token in _named():
        if m := FILE_AND_NAME.match(token):
            modules = [n for n, p in MODULES.items() if p.as_posix().endswith("/" + m.group(1))]
            if not any(_resolve(importlib.import_module(n), m.group(2).split(".")) for n in modules):
                missing.append(token)
        elif token.endswith((".py", ".md")) and "/" in token:
            if not (ROOT / token).exists() and not any(p.as_posix().endswith(token) for p in MODULES.values()):
                missing.append(token)
        elif (m := DOTTED.match(token)) and token.split("(")[0] not in TASKS and not _exists(m.group(1)):
            missing.append(token)
    assert missing == []


def test_the_checker_sees_a_name_that_is_gone() -> None:
    assert _exists("rounds.reach") and _exists("Idempotent.commit") and _exists("population/plan.plan_groups")
    assert not _exists("rounds.dispatch") and not _exists("leases.dispatch_runs")
