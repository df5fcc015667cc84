"""The Celery worker: app.py (config, heartbeat, reconciler thread, warm-up, shutdown), tasks.py (thin: claim and
route), the paths a claimed run takes (run.py, pack.py, pbt.py, sweep.py) over the steps they share (steps.py),
the progress writer (progress.py), uploaded datasets unpacked (uploads.py), and one retry policy (retry.py)."""
