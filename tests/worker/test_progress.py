"""The progress writer's lease, over the real Postgres: renewed while it writes, and once the lease is lost (or the
database stays away) nothing more is written for the run."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import text

from lrlab.db import session_scope
from lrlab.runs import leases
from tests.conftest import wait_for
from tests.rows import epochs, new_run, pt, row, set_run
from worker.progress import ProgressWriter

pytestmark = pytest.mark.service


def test_writer_renews_lease_then_writes_nothing_once_it_is_stolen(q: Any) -> None:
    run_id = new_run(q[0])
    claim = leases.claim_run(run_id, "w1", lease_seconds=5)
    assert claim is not None
    writer = ProgressWriter(run_id, lease_token=claim.token, lease_seconds=5, flush_seconds=0, poll_seconds=0.05)
    writer.put_point(pt(1))
    wait_for(lambda: epochs(run_id) == [1], 5, "epoch 1 written")
    first = row(run_id).lease_expires_at
    wait_for(lambda: row(run_id).lease_expires_at > first, 5, "the lease renewed while idle")  # type: ignore[operator]

    set_run(run_id, lease_token="someone-else")  # expired and reclaimed by another worker
    ran: list[int] = []
    writer.put_point(pt(2))
    writer.put_action(lambda conn: ran.append(1))
    wait_for(writer.lost.is_set, 5, "the writer to notice")
    writer.put_point(pt(3))
    writer.close()  # a lost lease is not an error

    assert writer.should_stop() and "lease lost" in writer.lost_reason
    assert epochs(run_id) == [1] and ran == []
    assert leases.finish_run(run_id, claim.token, status="succeeded") is False
    assert (row(run_id).status, row(run_id).lease_token) == ("running", "someone-else")


def test_writer_gives_run_up_rather_than_failing_when_database_stays_away(q: Any) -> None:
    run_id = new_run(q[0])
    claim = leases.claim_run(run_id, "w1", lease_seconds=5)
    assert claim is not None
    writer = ProgressWriter(run_id, lease_token=claim.token, flush_seconds=0, poll_seconds=0.05, retry_seconds=0)
    writer.put_point(pt(1))
    wait_for(lambda: epochs(run_id) == [1], 5, "epoch 1 written")
    pid = writer.connection.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
    with session_scope() as s:  # the writer's connection dies as in a database restart
        s.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    wait_for(writer.lost.is_set, 5, "the writer to give up")
    writer.close()
    assert "database unreachable" in writer.lost_reason
    assert row(run_id).status == "running"  # left to the lease: requeued and resumed, never failed


def claimed(q: Any, n: int) -> list[leases.Claim]:
    out = []
    for _ in range(n):
        claim = leases.claim_run(new_run(q[0]), "w1", lease_seconds=30)
        assert claim is not None
        out.append(claim)
    return out


def test_writers_of_a_process_share_one_connection_and_transaction(q: Any) -> None:
    """Twenty runs' points go through one hub: one connection; a stolen lease or a failing action stops its own
    run only; a cancel reaches its own writer."""
    from worker.progress import close_all

    claims = claimed(q, 20)
    writers = [ProgressWriter(c.run_id, lease_token=c.token, flush_seconds=0.2, poll_seconds=0.05) for c in claims]
    set_run(claims[3].run_id, lease_token="someone-else")
    set_run(claims[4].run_id, cancel_requested=True)
    ran: list[str] = []
    for epoch in (1, 2, 3):
        for w in writers:
            w.put_point(pt(epoch))
    writers[5].put_action(lambda conn: (_ for _ in ()).throw(ValueError("bad checkpoint")))
    writers[6].put_action(lambda conn: ran.append("six"))
    wait_for(writers[4].cancel_requested.is_set, 5, "the cancel")
    close_all(writers)
    assert len({id(w.connection) for w in writers}) == 1
    for i, c in enumerate(claims):
        assert epochs(c.run_id) == ([] if i == 3 else [1, 2, 3]), i
    assert writers[3].lost.is_set() and not any(w.lost.is_set() for i, w in enumerate(writers) if i != 3)
    assert ran == ["six"] and writers[5].should_stop() is False
    with pytest.raises(RuntimeError, match="could not record progress"):
        writers[5].close()
    assert [w.cancel_requested.is_set() for w in writers].count(True) == 1


def test_points_wait_for_the_flush_interval_and_close_writes_them(q: Any) -> None:
    (claim,) = claimed(q, 1)
    writer = ProgressWriter(claim.run_id, lease_token=claim.token, flush_seconds=30, poll_seconds=30)
    writer.put_point(pt(1))  # the first point goes at once
    wait_for(lambda: epochs(claim.run_id) == [1], 5, "epoch 1 written")
    writer.put_point(pt(2))
    writer.put_point(pt(3))
    time.sleep(0.5)
    assert epochs(claim.run_id) == [1]  # not due for 30 s: the training thread did not wake the writer
    writer.close()
    assert epochs(claim.run_id) == [1, 2, 3]


def test_writer_is_not_held_up_by_another_transaction_referencing_the_run(q: Any) -> None:
    """The lease check locks the run's row as an UPDATE of the lease would (FOR NO KEY UPDATE), so a transaction
    that only references the run (inserting a row with a foreign key to it) does not hold the writer up."""
    import psycopg

    from lrlab.db import get_settings

    (claim,) = claimed(q, 1)
    dsn = get_settings().database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn) as other:  # holds a KEY SHARE lock on the run's row until it ends
        other.execute(
            "INSERT INTO checkpoint (run_id, epoch, data, created_at) VALUES (%s, 1, 'x', now())", (claim.run_id,)
        )
        writer = ProgressWriter(claim.run_id, lease_token=claim.token, flush_seconds=0, poll_seconds=0.05)
        writer.put_point(pt(1))
        wait_for(lambda: epochs(claim.run_id) == [1], 5, "epoch 1 written while the other transaction is open")
        other.rollback()
    writer.close()
