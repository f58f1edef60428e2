"""The CDF's units of work on SQLite and PostgreSQL: batches, duplicates, a failing ACR, retention, leases."""

from __future__ import annotations

from sqlalchemy import func, select, update

from cdf.acr import Acr
from cdf.assembly import Assembler, AssemblyConfig, Outcome, RecordState
from cdf.models import acr_log, outbox
from cdf.store import CdfStore, Verdict, hold_lease
from tests.cdf.acrs import T0, acr
from tests.conftest import Database


def count(database: Database, table: object) -> int:
    with database.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def test_a_batch_counts_each_acr_once_against_itself_and_earlier_batches(database: Database) -> None:
    store = CdfStore(Assembler(AssemblyConfig(interim_closes_partial=False)), "cdf-1")
    start, interim, stop = acr("START", 0), acr("INTERIM", 1, at=T0 + 5), acr("STOP", 2, at=T0 + 9)
    with database.engine.begin() as conn:
        first = store.write_acrs(conn, [start, interim, start, interim])
    with database.engine.begin() as conn:
        second = store.write_acrs(conn, [interim, stop, stop])
    assert first.verdicts == [Verdict.STORED, Verdict.STORED, Verdict.DUPLICATE, Verdict.DUPLICATE]
    assert second.verdicts == [Verdict.DUPLICATE, Verdict.STORED, Verdict.DUPLICATE]
    [cdr] = second.cdrs
    assert cdr.accounting_record_numbers == [0, 1, 2]
    assert count(database, acr_log) == 3


class RefusesNumberSeven(Assembler):
    def apply(self, state: RecordState | None, item: Acr) -> Outcome:
        if item.record_number == 7:
            raise RuntimeError("a defect")
        return super().apply(state, item)


def test_an_acr_the_assembly_cannot_take_fails_alone_and_leaves_no_trace(database: Database) -> None:
    store = CdfStore(RefusesNumberSeven(AssemblyConfig()), "cdf-1")
    batch = [acr("START", 0, session="a"), acr("EVENT", 7, session="b"), acr("EVENT", 8, session="b")]
    with database.engine.begin() as conn:
        result = store.write_acrs(conn, batch)
    assert result.verdicts == [Verdict.STORED, Verdict.FAILED, Verdict.STORED]
    with database.engine.connect() as conn:
        logged = sorted(conn.execute(select(acr_log.c.session_id, acr_log.c.record_number)).all())
    assert logged == [("a", 0), ("b", 8)]  # a retransmission of number 7 would be tried afresh


def test_purge_deletes_old_acr_log_rows_and_only_cdrs_every_sink_delivered(database: Database) -> None:
    store = CdfStore(Assembler(AssemblyConfig()), "cdf-1")
    for n in range(4):  # one CDR per second
        with database.engine.begin() as conn:
            store.write_acrs(conn, [acr("EVENT", n, session=f"e{n}", received=T0 + n)])
    with database.engine.begin() as conn:
        ids = [r[0] for r in conn.execute(select(outbox.c.id).order_by(outbox.c.id))]
        conn.execute(update(outbox).where(outbox.c.id.in_(ids[:3])).values(published_at=T0 + 10))
        conn.execute(update(outbox).where(outbox.c.id.in_(ids[1:])).values(jsonl_written_at=T0 + 10))
    with database.engine.begin() as conn:
        assert store.purge(conn, T0 + 2, marks=["published_at", "jsonl_written_at"]) == (2, 1)
    with database.engine.begin() as conn:
        assert store.purge(conn, T0 + 100, marks=["published_at", "jsonl_written_at"]) == (2, 1)
    with database.engine.connect() as conn:
        left = [r[0] for r in conn.execute(select(outbox.c.id).order_by(outbox.c.id))]
    assert left == [ids[0], ids[3]]  # never published, never written to a file


def test_a_lease_is_held_by_one_instance_until_it_expires(database: Database) -> None:
    with database.engine.begin() as conn:
        assert hold_lease(conn, "publisher", "cdf-a", T0, 10)
        assert not hold_lease(conn, "publisher", "cdf-b", T0 + 5, 10)
        assert hold_lease(conn, "publisher", "cdf-a", T0 + 5, 10)  # renewed until T0 + 15
        assert not hold_lease(conn, "publisher", "cdf-b", T0 + 14, 10)
        assert hold_lease(conn, "publisher", "cdf-b", T0 + 16, 10)
        assert not hold_lease(conn, "publisher", "cdf-a", T0 + 17, 10)  # fenced: its marks are refused
