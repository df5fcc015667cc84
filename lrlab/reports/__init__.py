"""What is read out of curves: summaries and statistics (analysis.py, pure), comparisons of runs (compare.py)
and their charts (charts.py, matplotlib imported only when drawing)."""
