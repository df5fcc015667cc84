"""Runs and the work made of them: the run store and curves (store.py), claims and leases (leases.py), the
reconciler (reconciler.py), grids of runs (experiments.py) and which of them fuse (fusing.py), lr range test
jobs (sweeps.py), and the per-owner limits on what may be queued (quotas.py)."""
