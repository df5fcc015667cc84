"""A run stopped by successive halving says so in the chart's legend, and its curve ends at the rung."""

from __future__ import annotations

from lrlab.reports import charts


def _points(n: int) -> list[dict[str, float]]:
    return [{"epoch": e, "val_accuracy": 0.1 * e, "val_loss": 1.0 / e} for e in range(1, n + 1)]


def test_stopped_run_labelled_with_its_rung() -> None:
    series = [
        charts.Series("lr=0.01", "succeeded", _points(9), None),
        charts.Series("lr=1e-05", "stopped", _points(3), None),
    ]
    fig = charts.draw_runs_chart(series, "val_accuracy")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["lr=0.01", "lr=1e-05 (stopped @ epoch 3)"]
