"""The worker's Celery app: shared config plus the tasks, a heartbeat that says which queues are served, and
the reconciler (lrlab.runs.reconciler) that requeues runs of dead workers and sends what the broker lost.

The heartbeat also says which plugins the worker offers (worker/plugins.py lists them at worker_init, in a
subprocess): the API validates specs against them and the catalog lists them.

Both threads start on worker_ready, which fires in the main process only: with the prefork pool that is the
parent, which never trains (so never imports torch), and each worker host reconciles once, not per child.

A warm shutdown (SIGTERM, or the first Ctrl-C) hands the runs in training back rather than waiting for them to
end: each stops at the end of its epoch, checkpointed, and is queued again at once (worker/progress.py).
Celery tells the main process, where the solo pool trains; prefork children hear it through an event they
inherit when forked.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import socket
import threading
from typing import Any

from celery import signals
from celery.apps.worker import Worker
from sqlalchemy import delete

from lrlab.broker import GPU_QUEUE, make_celery
from lrlab.db import session_scope
from lrlab.models import WorkerHeartbeat, utcnow
from lrlab.runs import reconciler
from lrlab.settings import get_settings
from worker import plugins, progress

log = logging.getLogger(__name__)

app = make_celery(name="lrlab-worker")
app.conf.include = ["worker.tasks"]
# A prefork child warms up (_warm_up: torch, digits, the population engine) before it reports ready:
# seconds on a busy machine, where Celery's default would SIGKILL a child silent for 4 s.
app.conf.worker_proc_alive_timeout = 60.0

_stop = threading.Event()
FIRST_BEAT_WAIT_SECONDS = 30.0
_children_shutting_down: Any = None  # a multiprocessing Event made before the prefork pool forks
_hand_back_begun = False  # _begin_hand_back has run (or is running) in this process


def _beat(hostname: str, queues: list[str]) -> None:
    has_gpu = GPU_QUEUE in queues
    offered = plugins.advertisement()  # None until this worker has listed its plugins
    with session_scope() as session:
        row = session.get(WorkerHeartbeat, hostname)
        if row is None:
            session.add(
                WorkerHeartbeat(
                    hostname=hostname,
                    queues=",".join(queues),
                    has_gpu=has_gpu,
                    device_name=None,
                    last_seen_at=utcnow(),
                    plugins=offered,
                )
            )
        else:
            row.queues, row.has_gpu, row.last_seen_at, row.plugins = ",".join(queues), has_gpu, utcnow(), offered


def _heartbeat_loop(hostname: str, queues: list[str]) -> None:
    interval = get_settings().heartbeat_seconds
    # the first beat carries the plugins (listed since worker_init, usually done before the worker is ready),
    # unless listing them takes longer than this: then a later beat does
    plugins.advertisement(wait=FIRST_BEAT_WAIT_SECONDS)
    while not _stop.is_set():
        try:
            _beat(hostname, queues)
        except Exception:  # the database may be briefly away; the next beat tries again
            log.warning("heartbeat failed", exc_info=True)
        _stop.wait(interval)


def _reconcile_loop() -> None:
    interval = get_settings().reconcile_seconds
    while not _stop.is_set():
        try:
            done = reconciler.reconcile()
            if done:
                log.info("reconciled: %s", done)
        except Exception:  # database or broker briefly away: the next pass tries again
            log.warning("reconcile pass failed", exc_info=True)
        # jitter, so the reconcilers of workers started together drift apart
        _stop.wait(interval * random.uniform(0.8, 1.2))


def _warm_up() -> None:
    """Load, before the worker consumes, what a first task would otherwise load inside its run.

    Importing torch takes seconds on a busy machine; done here, a task claims its run within milliseconds
    of receiving it (a worker killed between receiving a message and claiming the run loses that message
    until the reconciler sends it again, redispatch_seconds). Then what a fresh worker's first grid paid
    inside its first task: the tasks' own modules (pydantic schemas); the default dataset, digits
    (scikit-learn's import pulls in scipy.stats); and the population engine's first call of two members or
    more, whose memory estimate runs a forward on the meta device and so imports torch._dynamo and sympy. Two
    digits members for one epoch do the last two. What stays in a first task is SQL compilation; mnist1d and
    users' files load on first use. What each of these costs, measured: docs/benchmarks.md (bench/grid.py).
    """
    import trainer.loop  # noqa: F401  (torch)
    import worker.pack  # noqa: F401
    import worker.pbt  # noqa: F401
    import worker.run  # noqa: F401
    import worker.sweep  # noqa: F401
    from trainer import RunConfig
    from trainer.population import train_population
    from worker.steps import set_threads

    set_threads()  # as every task does first: torch's default would start an OpenMP thread per core
    try:
        train_population([RunConfig.from_spec({"dataset": "digits", "epochs": 1})] * 2, device="cpu")
    except Exception:  # the first run will pay for it (and report a real problem properly)
        log.warning("warming up the trainer failed", exc_info=True)


@signals.worker_init.connect
def _warm_main_process(sender: object, **_: object) -> None:
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool as PreforkPool

    pool = get_implementation(getattr(sender, "pool_cls", None) or "prefork")
    if not (isinstance(pool, type) and issubclass(pool, PreforkPool)):  # the prefork parent never imports torch
        _warm_up()


@signals.worker_init.connect
def _list_plugins(**_: object) -> None:
    plugins.start_discovery()  # in a subprocess: the prefork parent never imports torch


@signals.worker_init.connect
def _share_shutdown(**_: object) -> None:
    global _children_shutting_down
    _children_shutting_down = multiprocessing.get_context("fork").Event()


@signals.worker_shutting_down.connect
def _begin_hand_back(**_: object) -> None:
    # Sent from Celery's signal handler in the main process: only set events here, and once. A second signal
    # (Ctrl-C reaches the worker from the terminal and from `lrlab up`, a SIGTERM follows a SIGINT) runs its
    # handler on the same thread, inside this one wherever it stands: in Event.set, which holds the event's lock,
    # a second Event.set waits for that lock forever, and the worker hangs with its run unwritten until it is
    # killed. The flag is set before any lock is taken, so a handler nested in one that got that far returns.
    global _hand_back_begun
    if _hand_back_begun:
        return
    _hand_back_begun = True
    progress.shutting_down.set()
    _stop.set()  # no more reconciler passes: one would send the runs handed back here to this worker
    if _children_shutting_down is not None:
        _children_shutting_down.set()


def _child_hand_back() -> None:
    _children_shutting_down.wait()
    progress.shutting_down.set()
    progress.hand_back_on_shutdown()


@signals.worker_process_init.connect
def _warm_pool_process(**_: object) -> None:
    if _children_shutting_down is not None:
        threading.Thread(target=_child_hand_back, name="lrlab-hand-back", daemon=True).start()
    _warm_up()


@signals.worker_ready.connect
def _start_heartbeat(sender: object, **_: object) -> None:
    consumer = getattr(sender, "consumer", None) or sender
    queues = sorted(q.name for q in consumer.app.amqp.queues.consume_from.values())  # type: ignore[attr-defined,union-attr]
    hostname = getattr(sender, "hostname", None) or f"{socket.gethostname()}:{os.getpid()}"
    threading.Thread(target=_heartbeat_loop, args=(hostname, queues), name="lrlab-heartbeat", daemon=True).start()
    threading.Thread(target=_reconcile_loop, name="lrlab-reconciler", daemon=True).start()
    threading.Thread(target=progress.hand_back_on_shutdown, name="lrlab-hand-back", daemon=True).start()


@signals.worker_shutdown.connect
def _stop_heartbeat(sender: Worker | None = None, **_: object) -> None:
    _stop.set()
    hostname = getattr(sender, "hostname", None)
    if hostname:
        try:
            with session_scope() as session:
                session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.hostname == hostname))
        except Exception:
            log.warning("could not remove heartbeat of %s", hostname, exc_info=True)
