"""The CDF's units of work on SQLite and PostgreSQL: batches, duplicates, a failing ACR, retention, leases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from bench.messages import sdp_media
from cdf.acr import Acr
from cdf.assembly import Assembler, AssemblyConfig, Outcome, RecordState
from cdf.models import acr_log, outbox, record
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


# -- batches prepared before their transaction ------------------------------------------------------------------
def write_prepared(database: Database, store: CdfStore, *acrs: Acr) -> WriteResult:
    prepared = store.prepare(list(acrs))
    assert prepared is not None
    with database.engine.begin() as conn:
        return store.write_acrs(conn, list(acrs), prepared)


def stored_rows(database: Database) -> tuple[list[Any], ...]:
    with database.engine.connect() as conn:
        records = conn.execute(select(record).order_by(record.c.origin_host, record.c.session_id)).all()
        cdrs = conn.execute(select(outbox.c.cdr_id, outbox.c.payload, outbox.c.created_at).order_by(outbox.c.id)).all()
        logged = conn.execute(
            select(acr_log).order_by(acr_log.c.session_id, acr_log.c.origin_host, acr_log.c.record_number)
        ).all()
    return [tuple(r) for r in records], [tuple(r) for r in cdrs], [tuple(r) for r in logged]


CALL_BATCHES = [
    [acr("START", 0, session="a"), acr("START", 0, session="b"), acr("EVENT", 0, session="e")],
    [
        acr("INTERIM", 1, session="a", at=T0 + 10, media=sdp_media(video=True)),  # closes a partial record
        acr("INTERIM", 1, session="a", at=T0 + 10, media=sdp_media(video=True)),  # its retransmission
        acr("EVENT", 7, session="f"),  # the assembly refuses it
        acr("STOP", 1, session="b", at=T0 + 12),
    ],
    [acr("STOP", 2, session="a", at=T0 + 20), acr("START", 5, session="b", at=T0 + 30)],
]


def test_a_prepared_batch_writes_what_its_transaction_would_have(database: Database, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = Database(database.kind, tmp_path / "other")
    try:
        prepared = CdfStore(RefusesNumberSeven(AssemblyConfig()), "cdf-1", tag="cdf-1/t")
        plain = CdfStore(RefusesNumberSeven(AssemblyConfig()), "cdf-1", tag="cdf-1/t")
        for batch in CALL_BATCHES:
            ahead = write_prepared(database, prepared, *batch)
            within = write(other, plain, *batch)
            assert ahead.verdicts == within.verdicts
            assert [c.to_json() for c in ahead.cdrs] == [c.to_json() for c in within.cdrs]
        assert stored_rows(database) == stored_rows(other)
        # The first batch's CDR could not be numbered ahead (no number taken yet); the others were, and the
        # second batch's retransmission and refused ACR were assembled ahead as the transaction would have.
        assert prepared.prepared_written == 3
        assert [
            c.local_record_sequence_number for c in write(database, prepared, acr("STOP", 6, session="b")).cdrs
        ] == [5]
    finally:
        other.drop()


def test_a_prepared_batch_is_assembled_again_when_another_instance_wrote_its_record(database: Database) -> None:
    config = AssemblyConfig(interim_closes_partial=False)
    a, b = CdfStore(Assembler(config), "cdf-a"), CdfStore(Assembler(config), "cdf-b")
    write(database, a, acr("START", 0))
    prepared = a.prepare([acr("INTERIM", 2, at=T0 + 20)])  # on the record as a wrote it ...
    write(database, b, acr("INTERIM", 1, at=T0 + 10))  # ... which b changes before a's transaction
    assert prepared is not None
    with database.engine.begin() as conn:
        assert a.write_acrs(conn, [acr("INTERIM", 2, at=T0 + 20)], prepared).verdicts == [Verdict.STORED]
    assert a.prepared_written == 0
    [cdr] = write(database, a, acr("STOP", 3, at=T0 + 30)).cdrs
    assert cdr.accounting_record_numbers == [0, 1, 2, 3]


def test_a_prepared_batch_with_an_acr_stored_before_is_assembled_again(database: Database) -> None:
    store = CdfStore(Assembler(AssemblyConfig(interim_closes_partial=False)), "cdf-1")
    write(database, store, acr("START", 0), acr("INTERIM", 1, at=T0 + 10))
    again = write_prepared(database, store, acr("INTERIM", 1, at=T0 + 10), acr("INTERIM", 2, at=T0 + 20))
    assert again.verdicts == [Verdict.DUPLICATE, Verdict.STORED]
    assert store.prepared_written == 0
    [cdr] = write_prepared(database, store, acr("STOP", 3, at=T0 + 30)).cdrs
    assert cdr.accounting_record_numbers == [0, 1, 2, 3]
    assert store.prepared_written == 1


def test_cdrs_numbered_ahead_are_numbered_again_when_another_process_took_numbers(database: Database) -> None:
    # Two processes of one CDF id share its counter: a's guess at its next number is wrong once b took one.
    a, b = CdfStore(Assembler(AssemblyConfig()), "cdf-1"), CdfStore(Assembler(AssemblyConfig()), "cdf-1")
    numbers = [c.local_record_sequence_number for c in write_prepared(database, a, acr("EVENT", 0, session="x")).cdrs]
    numbers += [c.local_record_sequence_number for c in write_prepared(database, b, acr("EVENT", 0, session="y")).cdrs]
    numbers += [c.local_record_sequence_number for c in write_prepared(database, a, acr("EVENT", 0, session="z")).cdrs]
    numbers += [c.local_record_sequence_number for c in write_prepared(database, a, acr("EVENT", 1, session="z")).cdrs]
    assert numbers == [1, 2, 3, 4]
    with database.engine.connect() as conn:
        stored = sorted(cdr.local_record_sequence_number for _, cdr in list_cdrs(conn, limit=10))
    assert stored == [1, 2, 3, 4]


def test_a_prepared_batch_whose_transaction_was_rolled_back_is_written_once_when_run_again(
    database: Database,
) -> None:
    store = CdfStore(Assembler(AssemblyConfig(interim_closes_partial=False)), "cdf-1")
    write(database, store, acr("EVENT", 0, session="e"), acr("START", 0))
    batch = [acr("INTERIM", 1, at=T0 + 10), acr("EVENT", 0, session="f")]
    prepared = store.prepare(batch)
    with database.engine.connect() as conn:
        transaction = conn.begin()
        store.write_acrs(conn, batch, prepared)
        transaction.rollback()  # as when another unit of its GroupCommitter batch failed
    with database.engine.begin() as conn:
        result = store.write_acrs(conn, batch, prepared)
    assert result.verdicts == [Verdict.STORED, Verdict.STORED]
    assert [c.local_record_sequence_number for c in result.cdrs] == [2]
    [cdr] = write(database, store, acr("STOP", 2, at=T0 + 20)).cdrs
    assert cdr.accounting_record_numbers == [0, 1, 2]
    assert cdr.local_record_sequence_number == 3
    assert count(database, acr_log) == 5
