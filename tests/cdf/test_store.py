"""The CDF's units of work on SQLite and PostgreSQL: batches, duplicates, a failing ACR, retention, leases."""

from __future__ import annotations

from sqlalchemy import func, select, update

from cdf.acr import Acr
from cdf.assembly import Assembler, AssemblyConfig, Outcome, RecordState
from cdf.models import acr_log, outbox
from cdf.queries import list_cdrs
from cdf.store import CdfStore, Verdict, WriteResult, hold_lease
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


# -- records remembered between batches ----------------------------------------------------------------------
def write(database: Database, store: CdfStore, *acrs: Acr) -> WriteResult:
    with database.engine.begin() as conn:
        return store.write_acrs(conn, list(acrs))


def test_a_record_another_instance_wrote_is_read_afresh(database: Database) -> None:
    config = AssemblyConfig(interim_closes_partial=False)
    a, b = CdfStore(Assembler(config), "cdf-a"), CdfStore(Assembler(config), "cdf-b")
    write(database, a, acr("START", 0), acr("INTERIM", 1, at=T0 + 10))  # a remembers the record
    write(database, b, acr("INTERIM", 2, at=T0 + 20))  # the session moved to b, and back:
    write(database, a, acr("INTERIM", 3, at=T0 + 30))
    [cdr] = write(database, b, acr("STOP", 4, at=T0 + 40)).cdrs
    assert cdr.accounting_record_numbers == [0, 1, 2, 3, 4]
    assert cdr.duration_seconds == 40
    assert a.records_read == 1 and b.records_read == 2


def test_a_record_closed_and_opened_again_elsewhere_at_the_same_version_is_read_afresh(database: Database) -> None:
    config = AssemblyConfig(interim_closes_partial=False)
    a, b = CdfStore(Assembler(config), "cdf-a"), CdfStore(Assembler(config), "cdf-b")
    write(database, a, acr("START", 0), acr("INTERIM", 1, at=T0 + 10))  # version 1, written by a
    write(database, b, acr("STOP", 2, at=T0 + 20))
    write(database, b, acr("START", 10, at=T0 + 30), acr("INTERIM", 11, at=T0 + 40))  # version 1 again, by b
    write(database, a, acr("INTERIM", 12, at=T0 + 50))
    write(database, b, acr("STOP", 13, at=T0 + 60))
    with database.engine.connect() as conn:
        stored = [cdr for _, cdr in list_cdrs(conn, limit=10)]
    first, second = stored
    assert first.accounting_record_numbers == [0, 1, 2]
    assert second.accounting_record_numbers == [10, 11, 12, 13]
    assert second.duration_seconds == 30


def test_a_batch_that_was_rolled_back_leaves_no_remembered_record_behind(database: Database) -> None:
    store = CdfStore(Assembler(AssemblyConfig(interim_closes_partial=False)), "cdf-1")
    write(database, store, acr("START", 0))
    with database.engine.connect() as conn:
        transaction = conn.begin()
        store.write_acrs(conn, [acr("INTERIM", 1, at=T0 + 10)])  # remembered as version 2 ...
        transaction.rollback()  # ... which never reached the database
    write(database, store, acr("INTERIM", 1, at=T0 + 10))  # the node's retransmission
    [cdr] = write(database, store, acr("STOP", 2, at=T0 + 20)).cdrs
    assert cdr.accounting_record_numbers == [0, 1, 2]
    assert store.records_read == 1


class CorruptsThenFails(Assembler):
    """A defect that changes the record before it raises."""

    def apply(self, state: RecordState | None, item: Acr) -> Outcome:
        if item.record_number == 7 and state is not None:
            state.acr_numbers = [*state.acr_numbers, 999]
            state.cause_code = 99
            raise RuntimeError("a defect")
        return super().apply(state, item)


def test_an_acr_that_fails_half_way_leaves_its_record_as_it_was(database: Database) -> None:
    store = CdfStore(CorruptsThenFails(AssemblyConfig(interim_closes_partial=False)), "cdf-1")
    write(database, store, acr("START", 0))
    result = write(database, store, acr("INTERIM", 1, at=T0 + 10), acr("INTERIM", 7), acr("INTERIM", 2, at=T0 + 20))
    assert result.verdicts == [Verdict.STORED, Verdict.FAILED, Verdict.STORED]
    [cdr] = write(database, store, acr("STOP", 3, at=T0 + 30)).cdrs
    assert cdr.accounting_record_numbers == [0, 1, 2, 3]
    assert cdr.cause_code is None
    other = CdfStore(Assembler(AssemblyConfig()), "cdf-2")  # what the database holds agrees
    write(database, other, acr("START", 0, session="s2"))
    assert count(database, acr_log) == 5  # number 7 was not logged: its retransmission is tried afresh


def test_only_the_most_recently_written_records_are_remembered(database: Database) -> None:
    store = CdfStore(Assembler(AssemblyConfig(interim_closes_partial=False)), "cdf-1", cache_size=2)
    write(database, store, *(acr("START", 0, session=f"s{n}") for n in range(4)))
    write(database, store, *(acr("INTERIM", 1, session=f"s{n}", at=T0 + 5) for n in range(4)))
    assert (store.records_remembered, store.records_read) == (2, 2)
    cdrs = write(database, store, *(acr("STOP", 2, session=f"s{n}", at=T0 + 9) for n in range(4))).cdrs
    assert [c.accounting_record_numbers for c in cdrs] == [[0, 1, 2]] * 4
