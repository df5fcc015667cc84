"""lrlab: what the api and the worker share, importing neither.

At the top the shared infrastructure: settings.py, db.py, models.py (tables), schemas/, migrations/ (migrate.py),
broker.py (Celery config, task names, queue choice) and outbox.py (every message to the broker), logs, keys
(auth.py), idempotency, the torch-free catalog. Below it, by job: runs/ (the run store, leases, the reconciler,
grids, lr-finder jobs, fusing, quotas), uploads/ (archives, blob store, validation, records), reports/
(analysis, comparisons, charts), pbt/ (search policy, rounds, views, checkpoint store); client.py (the Python
client) and cli/ (the `lrlab` command). The map: docs/architecture.md.
"""

__version__ = "0.1.0"
