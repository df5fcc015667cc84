"""Run and lr-finder charts: one line per series, stable bytes, y-limits that diverged runs cannot wreck."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lrlab.reports.charts import (
    CHART_METRICS,
    LABEL_CHARS,
    LOSS_CAP,
    TITLE_CHARS,
    Series,
    draw_lr_finder_chart,
    draw_pbt_chart,
    draw_runs_chart,
    elide,
    loss_limits,
    lr_finder_limits,
    render_lr_finder_chart,
    render_pbt_chart,
    render_runs_chart,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def curve(n: int, scale: float = 1.0, lr: float = 0.1) -> list[dict[str, Any]]:
    return [
        {
            "epoch": e,
            "train_loss": scale * 2.0 / e,
            "train_accuracy": 1 - 0.5 / e,
            "val_loss": scale * 2.2 / e,
            "val_accuracy": 1 - 0.6 / e,
            "lr": lr / e,
            "seconds": 0.5,
            "nonfinite": [],
        }
        for e in range(1, n + 1)
    ]


def diverged_curve() -> list[dict[str, Any]]:
    """Fine for three epochs, then losses of 1e12 and 1e30, then NaN (stored as None) at epoch 6."""
    pts = curve(5, lr=5.0)
    pts[3]["val_loss"] = pts[3]["train_loss"] = 1e12
    pts[4]["val_loss"] = pts[4]["train_loss"] = 1e30
    pts.append(dict(pts[4], epoch=6, val_loss=None, train_loss=None, val_accuracy=None, nonfinite=["val_loss"]))
    return pts


SERIES = [
    Series("adam lr=1e-3", "succeeded", curve(30)),
    Series("sgd lr=0.1", "succeeded", curve(25, scale=1.5)),
    Series("sgd lr=5", "diverged", diverged_curve(), diverged_at=6),
]


def series_ids(svg: bytes) -> list[str]:
    root = ET.fromstring(svg)
    return sorted(el.get("id", "") for el in root.iter() if re.fullmatch(r"series-\d+", el.get("id", "")))


def test_render_runs_chart_svg_has_one_group_per_series() -> None:
    svg = render_runs_chart(SERIES, "val_loss", fmt="svg")
    assert series_ids(svg) == ["series-0", "series-1", "series-2"]
    assert series_ids(render_runs_chart(SERIES[:1], "val_accuracy", fmt="svg")) == ["series-0"]


def test_render_runs_chart_png_opens_with_expected_size() -> None:
    png = render_runs_chart(SERIES, "train_loss", fmt="png", title="lr sweep")
    assert png.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        assert image.size == (800, 500)


@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_render_runs_chart_same_input_same_bytes(fmt: str) -> None:
    first = render_runs_chart(SERIES, "val_accuracy", fmt=fmt)  # type: ignore[arg-type]
    assert render_runs_chart(SERIES, "val_accuracy", fmt=fmt) == first  # type: ignore[arg-type]


def test_loss_limits_diverged_series_does_not_move_them() -> None:
    healthy = SERIES[:2]
    limits = loss_limits(healthy, "val_loss")
    assert limits is not None
    assert loss_limits(SERIES, "val_loss") == limits
    values = [p["val_loss"] for s in healthy for p in s.points]
    span = max(values) - min(values)
    # 5% of the range on each side, but a loss axis does not go below 0.
    assert limits == pytest.approx((max(min(values) - 0.05 * span, 0.0), max(values) + 0.05 * span))
    assert limits[1] < 4


def test_loss_limits_all_diverged_caps_blown_up_values() -> None:
    only = [SERIES[2]]
    limits = loss_limits(only, "val_loss")
    assert limits is not None
    first = only[0].points[0]["val_loss"]
    assert limits[1] <= 1.1 * LOSS_CAP * first  # not 1e30
    assert limits[0] < first


def test_loss_limits_no_finite_values_is_none() -> None:
    assert loss_limits([Series("empty", "queued", [])], "val_loss") is None


def test_draw_runs_chart_applies_loss_limits_and_marks_divergence() -> None:
    fig = draw_runs_chart(SERIES, "val_loss")
    ax = fig.axes[0]
    assert ax.get_ylim() == loss_limits(SERIES, "val_loss")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "validation loss")
    legend = ax.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == [
        "adam lr=1e-3",
        "sgd lr=0.1",
        "sgd lr=5 (diverged @ epoch 6)",
    ]
    (mark,) = [line for line in ax.get_lines() if line.get_gid() == "diverged-2"]
    assert mark.get_marker() == "x"
    # The last finite value (1e30 at epoch 5) is off the chart: its mark sits on the top edge.
    assert np.asarray(mark.get_xydata()).tolist() == [[5, ax.get_ylim()[1]]]


def test_draw_runs_chart_accuracy_spans_zero_to_one() -> None:
    ax = draw_runs_chart(SERIES, "train_accuracy").axes[0]
    assert ax.get_ylim() == (0.0, 1.0)
    assert ax.get_ylabel() == "training accuracy"


def test_draw_runs_chart_log_scale() -> None:
    ax = draw_runs_chart(SERIES, "val_loss", log_scale=True).axes[0]
    assert ax.get_yscale() == "log"
    bottom, top = ax.get_ylim()
    assert 0 < bottom < 2.2 / 30 and 2.2 * 1.5 < top < 10
    lr_ax = draw_runs_chart(SERIES, "lr", log_scale=True).axes[0]
    assert (lr_ax.get_yscale(), lr_ax.get_ylabel()) == ("log", "learning rate")
    assert render_runs_chart(SERIES, "train_loss", fmt="png", log_scale=True).startswith(PNG_SIGNATURE)


def test_render_runs_chart_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="Unknown chart metric: 'accuracy'"):
        render_runs_chart(SERIES, "accuracy", fmt="svg")
    with pytest.raises(ValueError, match="log scale"):
        render_runs_chart(SERIES, "val_accuracy", fmt="svg", log_scale=True)
    with pytest.raises(ValueError, match="format"):
        render_runs_chart(SERIES, "val_loss", fmt="jpeg")  # type: ignore[arg-type]
    assert "accuracy" not in CHART_METRICS


# --- lr finder ----------------------------------------------------------------------------------


def sweep() -> list[dict[str, Any]]:
    """Loss falls from 2.3 to ~1.5 as lr grows from 1e-5, then explodes past lr = 0.1."""
    pts: list[dict[str, Any]] = []
    for k in range(100):
        lr = 10 ** (-5 + 0.06 * k)
        loss = 2.3 - 0.01 * k if k < 70 else 1.6 * 1.5 ** (k - 70)
        pts.append({"lr": lr, "loss": loss, "smoothed_loss": 2.3 - 0.009 * k if k < 75 else 1.6 * 1.3 ** (k - 75)})
    pts.append({"lr": 1000.0, "loss": None, "smoothed_loss": None})
    return pts


def test_lr_finder_limits_cap_exploding_tail() -> None:
    limits = lr_finder_limits(sweep())
    assert limits is not None
    # Both curves bottom out at 1.6; the top is 4 x 1.6 (more than the first loss, 2.3), not 1.6 x 1.5^29.
    # 5% of the shown range, 6.4 - 1.6, pads each side.
    assert limits == pytest.approx((1.6 - 0.05 * 4.8, 6.4 + 0.05 * 4.8))


def test_render_lr_finder_chart_shows_loss_smoothed_and_suggestion() -> None:
    svg = render_lr_finder_chart(sweep(), 3e-3, fmt="svg")
    ids = {el.get("id") for el in ET.fromstring(svg).iter()}
    assert {"loss", "smoothed", "suggested-lr"} <= ids
    assert render_lr_finder_chart(sweep(), 3e-3, fmt="svg") == svg
    ax = draw_lr_finder_chart(sweep(), 3e-3).axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_ylim() == lr_finder_limits(sweep())
    legend = ax.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == ["loss", "smoothed loss", "suggested lr = 0.003"]
    png = render_lr_finder_chart(sweep(), None, fmt="png")
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (800, 500)


def test_import_charts_and_analysis_stays_light() -> None:
    code = (
        "import sys, lrlab.reports.charts, lrlab.reports.analysis, lrlab.schemas.compare; "
        "print(sorted(m for m in ('matplotlib', 'torch', 'trainer', 'fastapi', 'sqlalchemy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# Names users chose: matplotlib would read each as mathtext (an error, a recursion past the stack, a typeset "5 and").
USER_TEXT = [r"$\foo$", "$" + r"\sqrt{" * 22 + "x" + "}" * 22 + "$", "cost $5 and $6", r"a\$b $ c"]


def drawn_texts(fig: Any) -> list[str]:
    """Every text element of the figure as an SVG with real <text> (not glyph paths) would hold it."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    out = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(out, format="svg")
    root = ET.fromstring(out.getvalue())
    return ["".join(el.itertext()) for el in root.iter("{http://www.w3.org/2000/svg}text")]


@pytest.mark.parametrize("text", USER_TEXT)
def test_draw_charts_user_text_as_typed(text: str) -> None:
    title, label = elide(text, TITLE_CHARS), elide(text, LABEL_CHARS)  # the nest of roots is cut to fit
    runs = draw_runs_chart([Series(text, "succeeded", curve(4))], "val_loss", log_scale=True, title=text)
    assert title in drawn_texts(runs) and label in drawn_texts(runs)  # character for character
    pbt = draw_pbt_chart([Series(text, "succeeded", curve(4))], "val_accuracy", [(1, 0.1), (2, 0.01)], [], title=text)
    assert title in drawn_texts(pbt) and label in drawn_texts(pbt)
    finder = draw_lr_finder_chart(sweep(), 3e-3, title=text)
    assert title in drawn_texts(finder)


def test_elide_cuts_long_text_with_an_ellipsis() -> None:
    assert elide("short", 10) == "short" and elide("x" * 10, 10) == "x" * 10
    assert elide("abcdefghijk", 5) == "abcd\u2026"


@pytest.mark.parametrize("fmt", ["svg", "png"])
@pytest.mark.parametrize("text", USER_TEXT)
def test_render_charts_user_text_never_raises(text: str, fmt: str) -> None:
    series = [Series(text, "succeeded", curve(4)), Series(text, "diverged", diverged_curve(), diverged_at=6)]
    outputs = [
        render_runs_chart(series, "val_loss", fmt=fmt, title=text),  # type: ignore[arg-type]
        render_runs_chart(series, "lr", fmt=fmt, log_scale=True, title=text),  # type: ignore[arg-type]
        render_pbt_chart(series, "val_loss", [(1, 0.1), (3, 0.01)], [(2, 1)], fmt=fmt, title=text),  # type: ignore[arg-type]
        render_lr_finder_chart(sweep(), 3e-3, fmt=fmt, title=text),  # type: ignore[arg-type]
    ]
    for body in outputs:
        assert body.startswith(PNG_SIGNATURE) if fmt == "png" else ET.fromstring(body).tag.endswith("svg")


def test_many_series_get_a_legend_entry_per_configuration() -> None:
    """Past LEGEND_RUNS lines, one entry per configuration beside the axes (a run's entry each would be taller
    than the chart); past LEGEND_GROUPS configurations, the rest are counted."""
    from lrlab.reports.charts import LEGEND_GROUPS, LEGEND_RUNS

    def grid(configs: int) -> list[Series]:
        return [
            Series(
                f"cfg{i // 3} seed={i % 3}",
                "succeeded",
                curve(8),
                diverged_at=5 if i == 4 else None,
                group=f"cfg{i // 3}",
            )
            for i in range(configs * 3)
        ]

    assert len(grid(10)) > LEGEND_RUNS
    texts = [t.get_text() for t in draw_runs_chart(grid(10), "val_loss").axes[0].get_legend().get_texts()]
    assert texts[:3] == ["cfg0 (3 runs)", "cfg1 (3 runs, 1 diverged)", "cfg2 (3 runs)"] and len(texts) == 10
    texts = [t.get_text() for t in draw_runs_chart(grid(60), "val_loss").axes[0].get_legend().get_texts()]
    assert len(texts) == LEGEND_GROUPS and texts[-1] == f"\u2026 and {60 - LEGEND_GROUPS + 1} more configurations"
    few = [t.get_text() for t in draw_runs_chart(grid(10)[:LEGEND_RUNS], "val_loss").axes[0].get_legend().get_texts()]
    assert few[0] == "cfg0 seed=0" and len(few) == LEGEND_RUNS
