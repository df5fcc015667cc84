"""trainer.plugins: entry points found in installed distributions, refused where they must be, factories checked."""

from __future__ import annotations

import importlib
import logging
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import trainer.plugins as plugins_module
from trainer.plugins import BUILTIN_DATASETS, BUILTIN_MODELS, Plugins, build_plugin_model, discover, load_plugin_dataset

FACTORIES = '''
import numpy as np
import torch
from torch import nn

CONSTANT = 3


def wide_mlp(input_shape, n_classes, width: int = 16, depth=2, *, activation: str = "relu", sizes=(1, 2)):
    """An MLP of `depth` layers of `width`.

    More text that is not the summary.
    """
    n_in = int(np.prod(input_shape))
    layers = [nn.Flatten()]
    for _ in range(depth):
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        n_in = width
    return nn.Sequential(*layers, nn.Linear(n_in, n_classes))


def loose(input_shape, n_classes, seed=0, /, scale: float = 1.0, **extra):
    return nn.Linear(input_shape[-1], n_classes)


def fixed_input(input_shape, n_classes):
    return nn.Linear(7, n_classes)


def one_argument(input_shape):
    return nn.Linear(2, 2)


def positional_only(input_shape, n_classes, hidden, /):
    return nn.Linear(2, 2)


def raises(input_shape, n_classes, width: int = 4):
    raise RuntimeError(f"width {width} is not supported")


def spins(input_shape, n_classes):
    while True:
        pass


def sleeps(input_shape, n_classes):
    import time

    time.sleep(3600)


class Stuck(nn.Module):
    def __init__(self, n_classes):
        super().__init__()
        self.linear = nn.Linear(2, n_classes)

    def forward(self, x):
        while True:
            pass


def stuck_forward(input_shape, n_classes):
    return Stuck(n_classes)


def slow_data():
    import time

    time.sleep(3600)


def not_a_module(input_shape, n_classes):
    return "a string"


def wrong_output(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), n_classes + 1))


def tuple_output(input_shape, n_classes):
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(int(np.prod(input_shape)), n_classes)

        def forward(self, x):
            return self.linear(x.flatten(1)), x
    return Pair()


def no_parameters(input_shape, n_classes):
    return nn.Flatten()


def required(input_shape, n_classes, width):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), n_classes))


def xor(n: int = 100, noise: float = 0.1, presplit: bool = False):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, size=(n, 2)).astype(np.float32)
    y = (x[:, 0] != x[:, 1]).astype(np.int64)
    x = x + noise * rng.standard_normal(x.shape).astype(np.float32)
    if presplit:
        return (x[: n // 2], y[: n // 2]), (torch.from_numpy(x[n // 2 :]), torch.from_numpy(y[n // 2 :]))
    return x, y


def bad_data(kind: str = "nan"):
    x, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    if kind == "nan":
        x[0, 0] = np.nan
    elif kind == "lengths":
        y = y[:3]
    elif kind == "labels":
        y = y + 0.5
    elif kind == "scalar":
        x = np.float32(1.0)
    elif kind == "triple":
        return x, y, y
    elif kind == "split-shapes":
        return (x, y), (np.zeros((4, 3)), y)
    elif kind == "strings":
        x = np.array([["a", "b"]] * 4)
    return x, y
'''


def _distribution(site: Path, name: str, version: str, entry_points: dict[str, dict[str, str]]) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, entries in entry_points.items():
        lines += [f"[{group}]", *(f"{k} = {v}" for k, v in entries.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path holding the factories' module and the distributions a test writes."""
    (tmp_path / "fake_plugin.py").write_text(textwrap.dedent(FACTORIES))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    sys.modules.pop("fake_plugin", None)


def _discover_only(site: Path) -> Plugins:
    """discover() over the distributions in `site` alone (the environment's own plugins left out)."""
    return discover([ep for dist in importlib.metadata.distributions(path=[str(site)]) for ep in dist.entry_points])


def test_discover_reads_parameters_defaults_distribution_and_version(site: Path) -> None:
    _distribution(
        site,
        "acme-models",
        "1.2.3",
        {
            "lrlab.models": {"wide-mlp": "fake_plugin:wide_mlp", "loose": "fake_plugin:loose"},
            "lrlab.datasets": {"xor": "fake_plugin:xor"},
        },
    )
    plugins = _discover_only(site)
    assert sorted(plugins.models) == ["loose", "wide-mlp"] and list(plugins.datasets) == ["xor"]
    assert not plugins.refused
    described = plugins.describe()
    wide = next(m for m in described["models"] if m["name"] == "wide-mlp")
    assert wide == {
        "name": "wide-mlp",
        "entry_point": "fake_plugin:wide_mlp",
        "distribution": "acme-models",
        "version": "1.2.3",
        "description": "An MLP of `depth` layers of `width`.",
        "parameters": [
            {"name": "width", "required": False, "default": 16, "annotation": "int"},
            {"name": "depth", "required": False, "default": 2},
            {"name": "activation", "required": False, "default": "relu", "annotation": "str"},
            {"name": "sizes", "required": False, "default": [1, 2]},  # a tuple, as JSON carries it
        ],
        "open_parameters": False,
    }
    loose = plugins.models["loose"]  # a positional-only parameter with a default stays at it; **extra: open
    assert loose.refused is None and loose.open_parameters
    assert [p.name for p in loose.parameters] == ["scale"]
    assert described["datasets"][0]["parameters"] == [
        {"name": "n", "required": False, "default": 100, "annotation": "int"},
        {"name": "noise", "required": False, "default": 0.1, "annotation": "float"},
        {"name": "presplit", "required": False, "default": False, "annotation": "bool"},
    ]


def test_discover_finds_the_distributions_on_the_path(site: Path) -> None:
    _distribution(site, "acme-models", "1.2.3", {"lrlab.models": {"wide-mlp": "fake_plugin:wide_mlp"}})
    plugin = discover().models["wide-mlp"]
    assert (plugin.distribution, plugin.version, plugin.entry_point) == ("acme-models", "1.2.3", "fake_plugin:wide_mlp")


def test_discover_refuses_shadows_bad_names_imports_and_signatures_with_a_warning(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _distribution(
        site,
        "shady",
        "0.1",
        {
            "lrlab.models": {
                "mlp": "fake_plugin:wide_mlp",
                "sequential": "fake_plugin:wide_mlp",
                "Wide_MLP": "fake_plugin:wide_mlp",
                "missing": "no_such_module:factory",
                "constant": "fake_plugin:CONSTANT",
                "narrow": "fake_plugin:one_argument",
                "positional": "fake_plugin:positional_only",
                "twice": "fake_plugin:wide_mlp",
            },
            "lrlab.datasets": {"digits": "fake_plugin:xor", "spirals": "fake_plugin:xor"},
        },
    )
    _distribution(site, "other", "2.0", {"lrlab.models": {"twice": "fake_plugin:wide_mlp"}})
    with caplog.at_level(logging.WARNING, logger="trainer.plugins"):
        plugins = _discover_only(site)
    assert not plugins.models and not plugins.datasets
    reasons = {(p["kind"], p["name"], p["distribution"]): p["refused"] for p in plugins.describe()["refused"]}
    assert reasons[("model", "mlp", "shady")] == "it shadows the built-in model 'mlp'"
    assert reasons[("model", "sequential", "shady")] == "it shadows the built-in model 'sequential'"
    assert reasons[("dataset", "digits", "shady")] == "it shadows the built-in dataset 'digits'"
    assert reasons[("dataset", "spirals", "shady")] == "it shadows the built-in dataset 'spirals'"
    assert "must match" in reasons[("model", "Wide_MLP", "shady")]
    assert "cannot import no_such_module:factory: ModuleNotFoundError" in reasons[("model", "missing", "shady")]
    assert "not a callable factory" in reasons[("model", "constant", "shady")]
    assert "(input_shape, n_classes, **params)" in reasons[("model", "narrow", "shady")]
    assert "'hidden' is positional-only" in reasons[("model", "positional", "shady")]
    for dist in ("shady", "other"):
        assert "more than one distribution: " in reasons[("model", "twice", dist)]
    assert len(reasons) == 11
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 11 and any("shadows the built-in model 'mlp'" in m for m in warned), warned


def test_builtin_names_are_the_trainers_own() -> None:
    from trainer.data import DATASETS
    from trainer.models import MODELS

    assert set(MODELS) == BUILTIN_MODELS
    assert set(DATASETS) == BUILTIN_DATASETS


@pytest.fixture
def acme(site: Path) -> Plugins:
    names = [
        "wide_mlp",
        "fixed_input",
        "raises",
        "not_a_module",
        "wrong_output",
        "tuple_output",
        "no_parameters",
        "required",
        "spins",
        "sleeps",
        "stuck_forward",
    ]
    _distribution(
        site,
        "acme",
        "1.0",
        {
            "lrlab.models": {name.replace("_", "-"): f"fake_plugin:{name}" for name in names},
            "lrlab.datasets": {
                "xor": "fake_plugin:xor",
                "bad": "fake_plugin:bad_data",
                "slow": "fake_plugin:slow_data",
            },
        },
    )
    return _discover_only(site)


def test_build_plugin_model_passes_params_and_leaves_the_random_stream_alone(acme: Plugins) -> None:
    torch.manual_seed(5)
    model = build_plugin_model(acme.models["wide-mlp"], {"width": 8, "depth": 3}, (1, 4, 4), 3)
    after = torch.rand(3)  # the output check drew nothing and changed nothing
    torch.manual_seed(5)
    by_hand = acme.models["wide-mlp"].factory((1, 4, 4), 3, width=8, depth=3)  # type: ignore[misc]
    assert torch.equal(torch.rand(3), after)
    assert [tuple(p.shape) for p in model.parameters()] == [(8, 16), (8,), (8, 8), (8,), (8, 8), (8,), (3, 8), (3,)]
    for a, b in zip(model.state_dict().values(), by_hand.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert model.training


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("wide-mlp", {"widht": 8}, r"Unknown parameter for model 'wide-mlp': \['widht'\]"),
        ("required", {}, r"needs parameter\(s\) \['width'\]"),
        ("raises", {"width": 7}, r"The model factory of 'raises' \(acme 1.0\) raised RuntimeError: width 7 is not"),
        ("not-a-module", {}, r"returned a str, not a torch.nn.Module"),
        ("wrong-output", {}, r"returns shape \(2, 4\) for a batch of shape \(2, 1, 4, 4\); .* must return \(2, 3\)"),
        ("tuple-output", {}, r"returns a tuple, not a tensor of logits"),
        ("no-parameters", {}, r"has no parameters to train"),
    ],
)
def test_build_plugin_model_fails_with_the_reason(acme: Plugins, name: str, params: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_plugin_model(acme.models[name], params, (1, 4, 4), 3)


def test_build_plugin_model_reports_a_forward_that_fails(acme: Plugins) -> None:
    with pytest.raises(
        ValueError, match=r"'fixed-input' \(acme 1.0\) fails on a batch of shape \(2, 5\): RuntimeError"
    ):
        build_plugin_model(acme.models["fixed-input"], {}, (5,), 3)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("spins", r"The model factory of 'spins' \(acme 1.0\) raised TimeLimitExceeded: did not return within 0.5 s"),
        ("sleeps", r"The model factory of 'sleeps' \(acme 1.0\) raised TimeLimitExceeded: did not return within"),
        ("stuck-forward", r"'stuck-forward' \(acme 1.0\) fails on a batch of shape \(2, 2\): TimeLimitExceeded"),
    ],
)
def test_a_factory_or_first_forward_that_never_returns_fails_the_run(
    acme: Plugins, monkeypatch: pytest.MonkeyPatch, name: str, match: str
) -> None:
    monkeypatch.setattr(plugins_module, "FACTORY_SECONDS", 0.5)
    started = time.monotonic()
    with pytest.raises(ValueError, match=match):
        build_plugin_model(acme.models[name], {}, (2,), 3)
    assert time.monotonic() - started < 5
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_dataset_factory_that_never_returns_fails_and_a_timer_outside_keeps_its_time(
    acme: Plugins, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plugins_module, "FACTORY_SECONDS", 0.3)
    outer = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.setitimer(signal.ITIMER_REAL, 100.0)
    try:
        with pytest.raises(ValueError, match=r"The dataset factory of 'slow' .* did not return within 0.3 s"):
            load_plugin_dataset(acme.datasets["slow"], {})
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 90 < left < 100 and signal.getsignal(signal.SIGALRM) is not signal.SIG_DFL
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, outer)


def test_off_the_main_thread_a_factory_runs_unlimited(acme: Plugins, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins_module, "FACTORY_SECONDS", 0.01)
    built: list[Any] = []
    thread = threading.Thread(target=lambda: built.append(build_plugin_model(acme.models["wide-mlp"], {}, (2,), 3)))
    thread.start()
    thread.join(60)
    assert len(built) == 1


def test_load_plugin_dataset_takes_both_forms(acme: Plugins) -> None:
    whole = load_plugin_dataset(acme.datasets["xor"], {"n": 40})
    assert whole.val is None and whole.train[0].shape == (40, 2) and whole.train[1].dtype == np.int64
    split = load_plugin_dataset(acme.datasets["xor"], {"n": 40, "presplit": True})
    assert split.val is not None and split.train[0].shape == (20, 2) and split.val[0].shape == (20, 2)
    assert split.val[1].dtype == np.int64  # tensors come back as arrays


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("nan", "x holds NaN or infinity"),
        ("lengths", "x has 4 samples, y 3"),
        ("labels", "y must hold integer labels"),
        ("scalar", "x must be numeric"),
        ("triple", r"must return \(x, y\) or"),
        ("split-shapes", r"x_train samples have shape \(2,\), x_val samples \(3,\)"),
        ("strings", "x must be numeric"),
    ],
)
def test_load_plugin_dataset_refuses_what_is_not_a_dataset(acme: Plugins, kind: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_plugin_dataset(acme.datasets["bad"], {"kind": kind})
