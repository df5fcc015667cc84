"""What is read out of finished curves: comparisons of runs (compare.py) and charts of them (charts.py)."""
