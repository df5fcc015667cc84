"""Charts of run curves and lr-finder sweeps as deterministic SVG or PNG bytes (matplotlib, imported when drawing)."""

from __future__ import annotations

import contextlib
import io
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lrlab.schemas.runs import RunStatus

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CHART_METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss", "lr")
METRIC_NAMES = {
    "val_accuracy": "validation accuracy",
    "val_loss": "validation loss",
    "train_accuracy": "training accuracy",
    "train_loss": "training loss",
    "lr": "learning rate",
}
ACCURACY_METRICS = ("val_accuracy", "train_accuracy")
LOSS_METRICS = ("val_loss", "train_loss")
LOG_METRICS = (*LOSS_METRICS, "lr")
Format = Literal["svg", "png"]
FIGSIZE = (8.0, 5.0)  # inches; PNGs are 800 x 500 pixels at DPI
DPI = 100
LINE_STYLES = ("-", "--", ":", "-.")
TITLE_CHARS = 90  # longer titles and legend labels are cut with an ellipsis
LABEL_CHARS = 60
LEGEND_RUNS = 20  # up to this many lines, a legend entry per run; more, an entry per configuration (group)
LEGEND_GROUPS = 24  # ... and at most this many of those (what fits beside the axes)
MARGIN = 0.05  # of the data range, above and below
LOSS_CAP = 10.0  # a loss axis stops at this many times the largest first-epoch loss
LR_FINDER_CAP = 4.0  # ... an lr-finder axis at this many times the minimum smoothed loss (or the first loss)
# matplotlib's global state (rcParams, font caches) is not thread-safe and the API renders from a thread pool.
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Series:
    """One run's curve on a chart: points are CurvePoint-shaped dicts, None values are gaps.

    Instead of points, `columns` may hold the curve as arrays ({"epoch": (n,), "<field>": (n,)}, NaN = missing,
    as lrlab.reports.curves reads them); the chart drawn is the same.
    """

    label: str
    status: str
    points: Sequence[Mapping[str, Any]]
    diverged_at: int | None = None
    group: str | None = None  # replicates of one configuration (seeds) share a colour, not a line style
    columns: Mapping[str, np.ndarray] | None = None

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None or self.status == RunStatus.diverged

    def xs(self) -> np.ndarray:
        """(n,) int64: the epochs."""
        if self.columns is not None:
            return np.asarray(self.columns["epoch"], dtype=np.int64)
        return np.array([int(p["epoch"]) for p in self.points], dtype=np.int64)

    def ys(self, metric: str, log_scale: bool) -> np.ndarray:
        """(n,) float64: the metric's values, NaN (a gap) where missing, not finite or not positive on a log axis."""
        if self.columns is None:
            return np.array([_plottable(p.get(metric), log_scale) for p in self.points], dtype=np.float64)
        ys = np.array(self.columns[metric], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            ys[~np.isfinite(ys) | ((ys <= 0) if log_scale else False)] = np.nan
        return ys


def _plottable(value: Any, log_scale: bool) -> float:
    """The value as a float, or NaN (a gap in the line) when missing, not finite or not positive on a log axis."""
    if value is None or not math.isfinite(value) or (log_scale and value <= 0):
        return math.nan
    return float(value)


def _positive(value: Any) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _pad(lo: float, hi: float, log_scale: bool) -> tuple[float, float]:
    """Limits MARGIN of the range wider than [lo, hi] (in decades on a log axis); never below 0 for data >= 0."""
    if log_scale:
        span = math.log10(hi / lo) or 1.0
        return lo / 10 ** (MARGIN * span), hi * 10 ** (MARGIN * span)
    span = (hi - lo) or abs(hi) or 1.0
    return (max(lo - MARGIN * span, 0.0) if lo >= 0 else lo - MARGIN * span), hi + MARGIN * span


def loss_limits(series: Sequence[Series], metric: str, *, log_scale: bool = False) -> tuple[float, float] | None:
    """y-limits of a loss chart that diverged runs cannot wreck; None when there is nothing finite to show.

    Limits come from the non-diverged series (all series when every one diverged), padded by MARGIN, and the
    top never exceeds LOSS_CAP times the largest first loss, so a blown-up value stays off the chart.
    """

    def finite(chosen: Sequence[Series]) -> list[np.ndarray]:
        return [ys[~np.isnan(ys)] for ys in (s.ys(metric, log_scale) for s in chosen)]

    curves = finite([s for s in series if not s.diverged])
    if not any(len(c) for c in curves):
        curves = finite(series)
    curves = [c for c in curves if len(c)]
    if not curves:
        return None
    values = np.concatenate(curves).tolist()  # min and max as Python takes them (the first of equals)
    cap = LOSS_CAP * max(abs(float(c[0])) for c in curves)
    lo, hi = min(values), min(max(values), cap)
    return _pad(lo, max(hi, lo), log_scale)


def lr_finder_limits(points: Sequence[Mapping[str, Any]]) -> tuple[float, float] | None:
    """y-limits of an lr-finder chart, robust to the exploding tail; None when no loss is finite."""
    losses = [v for p in points if not math.isnan(v := _plottable(p.get("loss"), False))]
    smoothed = [v for p in points if not math.isnan(v := _plottable(p.get("smoothed_loss"), False))]
    values = losses + smoothed
    if not values:
        return None
    caps = [LR_FINDER_CAP * min(smoothed)] if smoothed else []
    caps += [losses[0]] if losses else []
    lo, hi = min(values), min(max(values), max(caps))
    return _pad(lo, max(hi, lo), False)


def elide(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, the last one an ellipsis when anything was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _as_typed(*axes: Axes) -> None:
    """Draw the titles and legend entries (names users chose) as the characters they typed, cut to fit.

    matplotlib reads text between two `$` as mathtext: `$\\foo$` raises, a deep `\\sqrt{` nest recurses past
    the stack, and `cost $5 and $6` is silently typeset. Tick labels keep mathtext (log axes write 10^k with it).
    A 200-character name would squeeze the axes to nothing, so long ones are cut.
    """
    for ax in axes:
        texts = [(ax.title, TITLE_CHARS)]
        if (legend := ax.get_legend()) is not None:
            texts += [(t, LABEL_CHARS) for t in legend.get_texts()]
        for text, limit in texts:
            text.set_usetex(False)
            text.set_parse_math(False)
            text.set_text(elide(text.get_text(), limit))


def _check(metric: str | None, fmt: str | None, log_scale: bool = False) -> None:
    if metric is not None and metric not in CHART_METRICS:
        raise ValueError(f"Unknown chart metric: {metric!r} (expected one of {', '.join(CHART_METRICS)})")
    if log_scale and metric not in LOG_METRICS:
        raise ValueError(f"A log scale applies to {', '.join(LOG_METRICS)}, not {metric!r}")
    if fmt is not None and fmt not in ("svg", "png"):
        raise ValueError(f"Unknown chart format: {fmt!r} (expected svg or png)")


def draw_runs_chart(
    series: Sequence[Series], metric: str, *, log_scale: bool = False, title: str | None = None
) -> Figure:
    """One line per series (x = epoch); line i has gid "series-i", a diverged series' last finite point an "x"."""
    _check(metric, None, log_scale)
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ends: list[tuple[int, float, float, Any]] = []  # (series, epoch, value, colour) of diverged runs' last points
    cmap = matplotlib.colormaps["tab10" if len({s.group or s.label for s in series}) <= 10 else "tab20"]
    palette = [cmap(i) for i in range(cmap.N)]
    colours: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for i, s in enumerate(series):
        key = s.group or s.label
        colour = colours.setdefault(key, palette[len(colours) % len(palette)])
        style = LINE_STYLES[seen.get(key, 0) % len(LINE_STYLES)]
        seen[key] = seen.get(key, 0) + 1
        xs, ys = s.xs(), s.ys(metric, log_scale)
        label = s.label
        if s.diverged:
            label += f" (diverged @ epoch {s.diverged_at})" if s.diverged_at is not None else " (diverged)"
        elif s.status == RunStatus.stopped and len(xs):
            label += f" (stopped @ epoch {int(xs.max())})"  # successive halving: its curve ends at the rung
        # Markers keep a curve of one or a few epochs visible.
        marker = "o" if len(xs) <= 20 else None
        (line,) = ax.plot(
            xs,
            ys,
            label=label,
            gid=f"series-{i}",
            linewidth=1.5,
            marker=marker,
            markersize=3,
            color=colour,
            linestyle=style,
        )
        finite = np.flatnonzero(~np.isnan(ys))
        if s.diverged and len(finite):
            ends.append((i, int(xs[finite[-1]]), float(ys[finite[-1]]), line.get_color()))
    ax.set_xlabel("epoch")
    ax.set_ylabel(METRIC_NAMES[metric])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if log_scale:
        ax.set_yscale("log")
    if metric in ACCURACY_METRICS:
        ax.set_ylim(0.0, 1.0)
    elif metric in LOSS_METRICS and (limits := loss_limits(series, metric, log_scale=log_scale)) is not None:
        ax.set_ylim(*limits)
    bottom, top = ax.get_ylim()
    for i, x, y, color in ends:
        # A blown-up last value would be off the chart: pin its mark to the edge it left by.
        ax.plot(
            [x],
            [min(max(y, bottom), top)],
            linestyle="none",
            marker="x",
            markersize=10,
            markeredgewidth=2,
            color=color,
            clip_on=False,
            gid=f"diverged-{i}",
            label="_nolegend_",
        )
    ax.grid(True, alpha=0.3)
    if len(series) > LEGEND_RUNS:
        _legend_by_group(ax, series)
    elif series:
        ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title)
    _as_typed(ax)
    return fig


def _legend_by_group(ax: Axes, series: Sequence[Series]) -> None:
    """More lines than LEGEND_RUNS: a legend entry per configuration (its colour), beside the axes.

    One entry per run would be taller than the chart (the axes shrank to nothing at 256 runs), and placing it
    where it hides the fewest points ("best") tests every point of every line, for most of the drawing time.
    """
    from matplotlib.lines import Line2D

    lines = {line.get_gid(): line for line in ax.get_lines()}
    first: dict[str, Line2D] = {}
    runs: dict[str, int] = {}
    diverged: dict[str, int] = {}
    for i, s in enumerate(series):
        key = s.group or s.label
        first.setdefault(key, lines[f"series-{i}"])
        runs[key] = runs.get(key, 0) + 1
        diverged[key] = diverged.get(key, 0) + s.diverged
    handles, labels = [], []
    for key, line in first.items():
        handles.append(Line2D([], [], color=line.get_color(), linewidth=1.5))
        extra = f", {diverged[key]} diverged" if diverged[key] else ""
        labels.append(f"{key} ({runs[key]} run{'s' if runs[key] > 1 else ''}{extra})")
    if len(handles) > LEGEND_GROUPS:
        more = len(handles) - LEGEND_GROUPS + 1
        handles, labels = handles[: LEGEND_GROUPS - 1], labels[: LEGEND_GROUPS - 1]
        handles.append(Line2D([], [], linestyle="none"))
        labels.append(f"\u2026 and {more} more configurations")
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="x-small")


def draw_lr_finder_chart(
    points: Sequence[Mapping[str, Any]], suggested_lr: float | None, *, title: str | None = None
) -> Figure:
    """Loss and smoothed loss against lr on a log axis, with a dashed line at the suggested lr."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    shown = [p for p in points if _positive(p.get("lr"))]  # a log axis has no place for lr <= 0
    lrs = [float(p["lr"]) for p in shown]
    ax.plot(lrs, [_plottable(p.get("loss"), False) for p in shown], label="loss", gid="loss", alpha=0.4)
    ax.plot(lrs, [_plottable(p.get("smoothed_loss"), False) for p in shown], label="smoothed loss", gid="smoothed")
    if suggested_lr is not None and _positive(suggested_lr):
        ax.axvline(
            suggested_lr,
            color="tab:red",
            linestyle="--",
            gid="suggested-lr",
            label=f"suggested lr = {suggested_lr:.3g}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    if (limits := lr_finder_limits(shown)) is not None:
        ax.set_ylim(*limits)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title)
    _as_typed(ax)
    return fig


@contextlib.contextmanager
def _rendering() -> Iterator[None]:
    """Serialize drawing, from matplotlib's defaults (not a user's matplotlibrc), with fixed SVG ids and glyphs."""
    import matplotlib
    import matplotlib.style

    with (
        _LOCK,
        matplotlib.style.context("default"),
        matplotlib.rc_context({"svg.hashsalt": "lrlab", "svg.fonttype": "path"}),
    ):
        yield


def _to_bytes(fig: Figure, fmt: Format) -> bytes:
    """Same figure, same bytes: no dates or versions in the metadata."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    out = io.BytesIO()
    if fmt == "svg":
        fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    else:
        fig.savefig(out, format="png", dpi=DPI, metadata={"Software": None})
    return out.getvalue()


def render_runs_chart(
    series: Sequence[Series],
    metric: str,
    *,
    fmt: Format,
    log_scale: bool = False,
    title: str | None = None,
) -> bytes:
    """A chart of `metric` per epoch for each series, as SVG or PNG bytes; ValueError for an unknown metric."""
    _check(metric, fmt, log_scale)
    with _rendering():
        return _to_bytes(draw_runs_chart(series, metric, log_scale=log_scale, title=title), fmt)


def render_lr_finder_chart(
    points: Sequence[Mapping[str, Any]], suggested_lr: float | None, *, fmt: Format, title: str | None = None
) -> bytes:
    """An lr-finder sweep (points with lr, loss, smoothed_loss) as SVG or PNG bytes."""
    _check(None, fmt)
    with _rendering():
        return _to_bytes(draw_lr_finder_chart(points, suggested_lr, title=title), fmt)


def draw_pbt_chart(
    series: Sequence[Series],
    metric: str,
    schedule: Sequence[tuple[int, float]],
    exploits: Sequence[tuple[int, int]],
    *,
    title: str | None = None,
) -> Figure:
    """A population: `metric` per member (top; an exploit (epoch, member) marked where the member took another's
    weights) and the best member's discovered lr per epoch, inherited history included (bottom, log axis)."""
    _check(metric, None)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(FIGSIZE[0], FIGSIZE[1] * 1.4), dpi=DPI, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    for i, s in enumerate(series):
        xs = [int(p["epoch"]) for p in s.points]
        ys = [_plottable(p.get(metric), False) for p in s.points]
        (line,) = top.plot(xs, ys, label=s.label, gid=f"series-{i}", linewidth=1.2, marker="o", markersize=2)
        marks = [(e, ys[xs.index(e)]) for e, member in exploits if member == i and e in xs]
        if marks:
            top.plot(
                [e for e, _ in marks],
                [y for _, y in marks],
                linestyle="none",
                marker="v",
                markersize=7,
                color=line.get_color(),
                gid=f"exploit-{i}",
                label="_nolegend_",
            )
    top.set_ylabel(METRIC_NAMES[metric])
    if metric in ACCURACY_METRICS:
        top.set_ylim(0.0, 1.0)
    top.grid(True, alpha=0.3)
    if series:
        top.legend(loc="best", fontsize="x-small", ncol=2)
    top.set_title(title or "population")
    if schedule:
        epochs = [e for e, _ in schedule]
        lrs = [lr for _, lr in schedule]
        bottom.step(epochs, lrs, where="mid", gid="schedule", color="black", linewidth=1.5)
        bottom.plot(epochs, lrs, linestyle="none", marker="o", markersize=3, color="black")
        if all(lr > 0 for lr in lrs):
            bottom.set_yscale("log")
    bottom.set_ylabel("lr of the best member")
    bottom.set_xlabel("epoch")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.grid(True, alpha=0.3)
    _as_typed(top, bottom)
    return fig


def render_pbt_chart(
    series: Sequence[Series],
    metric: str,
    schedule: Sequence[tuple[int, float]],
    exploits: Sequence[tuple[int, int]],
    *,
    fmt: Format,
    title: str | None = None,
) -> bytes:
    _check(metric, fmt)
    with _rendering():
        return _to_bytes(draw_pbt_chart(series, metric, schedule, exploits, title=title), fmt)
