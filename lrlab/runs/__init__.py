"""Runs and the work made of them: grids of runs (experiments.py), lr range test jobs (sweeps.py), and the
per-owner limits on what may be queued (quotas.py)."""
