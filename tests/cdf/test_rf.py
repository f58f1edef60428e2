"""The Rf server end to end: IMS nodes send ACRs over real TCP to the CDF, on SQLite and on PostgreSQL."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from bench.messages import IMPU, ORIGINATING_IOI, TERMINATING_IOI, ims_acr, sdp_media
from cdf.models import acr_log
from cdf.queries import correlated_view
from charging.cdr import CauseForRecordClosing
from charging.clock import ManualClock
from charging.diameter import FLAG_ERROR, FLAG_RETRANSMIT, Message
from charging.diameter.constants import ResultCode
from tests.cdf.acrs import ICID, T0
from tests.cdf.harness import ims_node, running_cdf, send_acr
from tests.conftest import Database
from tests.support.diameter import RawClient
from tests.support.tcpproxy import TcpProxy

# (Origin-Host, Node-Functionality, Role-Of-Node, Session-Id) of every leg of one call.
CALL_LEGS = [
    ("pcscf.test", "P_CSCF", "ORIGINATING_ROLE", "pcscf.test;1;77"),
    ("scscf.test", "S_CSCF", "ORIGINATING_ROLE", "scscf.test;1;77"),
    ("as.test", "AS", "ORIGINATING_ROLE", "as.test;1;77"),
    ("scscf.test", "S_CSCF", "TERMINATING_ROLE", "scscf.test;1;78"),
]


async def test_a_call_reported_by_pcscf_scscf_and_as_is_correlated_by_icid(database: Database) -> None:
    clock = ManualClock(T0)
    async with running_cdf(database.engine, clock=clock, acct_interim_interval_seconds=30) as cdf:
        async with (
            ims_node(cdf.port, "pcscf.test") as pcscf,
            ims_node(cdf.port, "scscf.test") as scscf,
            ims_node(cdf.port, "as.test") as app_server,
        ):
            nodes = {"pcscf.test": pcscf, "scscf.test": scscf, "as.test": app_server}
            for number, kind in enumerate(["START", "INTERIM", "STOP"]):
                for host, functionality, role, session in CALL_LEGS:
                    aca = await send_acr(
                        nodes[host],
                        session_id=session,
                        record_type=kind,
                        record_number=number,
                        node_functionality=functionality,
                        role_of_node=role,
                        icid=ICID,
                        event_time=int(T0) + 30 * number,
                        media=sdp_media(video=number > 0) if kind != "STOP" else None,
                        application_server="sip:as.test" if host == "as.test" else None,
                    )
                    assert aca["Result-Code"] == ResultCode.DIAMETER_SUCCESS
                    assert aca["Accounting-Record-Type"] == number + 2
                    assert aca["Accounting-Record-Number"] == number
                    assert aca.get("Acct-Interim-Interval") == (30 if kind != "STOP" else None)
                    assert aca["Session-Id"] == session
        cdrs = cdf.cdrs()
        with cdf.engine.connect() as conn:
            view = correlated_view(conn, ICID)
    # Each leg: the INTERIM closed partial 1 (the video came in), the STOP closed partial 2.
    assert len(cdrs) == 2 * len(CALL_LEGS)
    for host, _functionality, role, session in CALL_LEGS:
        leg = sorted((c for c in cdrs if c.session_id == session), key=lambda c: c.record_sequence_number or 0)
        assert [c.record_sequence_number for c in leg] == [1, 2]
        assert [c.cause_for_record_closing for c in leg] == [
            CauseForRecordClosing.SERVICE_CHANGE,
            CauseForRecordClosing.SERVICE_DELIVERY_END_SUCCESSFULLY,
        ]
        assert all(c.node_address == host and c.role_of_node == role for c in leg)
        assert sum(c.duration_seconds for c in leg) == 60
        assert [n for c in leg for n in c.accounting_record_numbers] == [0, 1, 2]
    assert sorted(c.local_record_sequence_number for c in cdrs) == list(range(1, len(cdrs) + 1))
    assert view is not None
    assert view.complete, view.gaps
    assert view.nodes == ["as.test", "pcscf.test", "scscf.test"]
    assert {(leg.node_address, leg.role_of_node) for leg in view.legs} == {(h, r) for h, _, r, _ in CALL_LEGS}
    assert view.originating_iois == [ORIGINATING_IOI] and view.terminating_iois == [TERMINATING_IOI]
    assert view.total_duration_seconds == 60
    originating_as = next(c for c in cdrs if c.node_address == "as.test")
    assert originating_as.served_party == IMPU
    assert originating_as.application_servers_information[0].application_server == "sip:as.test"


async def test_a_retransmitted_acr_is_answered_again_but_counted_once(database: Database) -> None:
    async with running_cdf(database.engine, interim_closes_partial=False) as cdf:
        async with ims_node(cdf.port, "scscf.test") as scscf:
            session = "scscf.test;1;dup"
            await send_acr(scscf, session_id=session, record_type="START", record_number=0, icid=ICID)
            interim = ims_acr(
                session_id=session, origin_host="scscf.test", record_type="INTERIM", record_number=1, icid=ICID
            )
            first = await scscf.request(interim, peer="cdf.test")
            # The same ACR again, T flag set and a new End-to-End id (another path, or after the node's
            # duplicate window): only the stored ACR log can tell.
            again = Message.decode(interim.to_bytes())
            again.flags |= FLAG_RETRANSMIT
            again.end_to_end = 0
            second = await scscf.request(again, peer="cdf.test")
            # The same Session-Id and Accounting-Record-Number without the T flag is a duplicate too.
            third = await send_acr(scscf, session_id=session, record_type="INTERIM", record_number=1, icid=ICID)
            await send_acr(scscf, session_id=session, record_type="STOP", record_number=2, icid=ICID)
            answers = [first, second, third]
            assert [a["Result-Code"] for a in answers] == [2001, 2001, 2001]
            assert [a["Accounting-Record-Number"] for a in answers] == [1, 1, 1]
        assert cdf.service.server is not None and cdf.service.server.duplicates == 2
        assert cdf.acr_log_rows() == 3
        [cdr] = cdf.cdrs()
        assert cdr.accounting_record_numbers == [0, 1, 2]


async def test_a_silent_session_is_closed_as_incomplete_by_the_clock(database: Database) -> None:
    clock = ManualClock(T0)
    async with running_cdf(
        database.engine,
        clock=clock,
        acct_interim_interval_seconds=10,
        incomplete_interval_multiple=3,
        interim_closes_partial=False,
    ) as cdf:
        async with ims_node(cdf.port, "pcscf.test") as pcscf:
            session = "pcscf.test;1;silent"
            fields = {"session_id": session, "node_functionality": "P_CSCF", "icid": ICID}
            await send_acr(pcscf, record_type="START", record_number=0, event_time=int(T0), **fields)
            clock.advance(10)
            await send_acr(pcscf, record_type="INTERIM", record_number=1, event_time=int(T0) + 10, **fields)
            clock.advance(29.5)
            assert await cdf.service.sweep_now() == []
            clock.advance(0.5)  # 3 x 10 s after the INTERIM
            [incomplete] = await cdf.service.sweep_now()
            assert incomplete.cause_for_record_closing is CauseForRecordClosing.MANAGEMENT_INTERVENTION
            assert incomplete.incomplete_cdr_indication is not None
            assert incomplete.incomplete_cdr_indication.acr_stop_lost
            assert incomplete.duration_seconds == 10
            # The STOP arrives after all: a record of its own, flagged as missing its START, not a second count.
            clock.advance(5)
            aca = await send_acr(pcscf, record_type="STOP", record_number=2, event_time=int(T0) + 45, **fields)
            assert aca["Result-Code"] == 2001
        cdrs = cdf.cdrs()
        assert len(cdrs) == 2
        late = cdrs[1]
        assert late.incomplete_cdr_indication is not None and late.incomplete_cdr_indication.acr_start_lost
        assert late.accounting_record_numbers == [2]
        assert incomplete.cdr_id != late.cdr_id
        with cdf.engine.connect() as conn:
            view = correlated_view(conn, ICID)
        assert view is not None and {g.kind for g in view.gaps} == {"stop_lost", "start_lost", "no_terminating_leg"}


async def test_a_session_continues_on_another_instance_after_failover(database: Database) -> None:
    clock = ManualClock(T0)
    second_engine = database.new_engine()
    try:
        async with (
            running_cdf(database.engine, clock=clock, node_id="cdf-a", host="cdf-a.test") as cdf_a,
            running_cdf(second_engine, clock=clock, node_id="cdf-b", host="cdf-b.test") as cdf_b,
        ):
            async with (
                ims_node(cdf_a.port, "as.test", cdf_host="cdf-a.test") as to_a,
                ims_node(cdf_b.port, "as.test", cdf_host="cdf-b.test") as to_b,
            ):
                session = "as.test;1;failover"
                common = {"session_id": session, "node_functionality": "AS", "icid": ICID}
                await send_acr(to_a, "cdf-a.test", record_type="START", record_number=0, event_time=int(T0), **common)
                await send_acr(
                    to_a, "cdf-a.test", record_type="INTERIM", record_number=1, event_time=int(T0) + 20, **common
                )
                # cdf-a is gone for this node: the INTERIM is retransmitted to cdf-b, then the call goes on there.
                retransmitted = await send_acr(
                    to_b, "cdf-b.test", record_type="INTERIM", record_number=1, event_time=int(T0) + 20, **common
                )
                await send_acr(
                    to_b, "cdf-b.test", record_type="INTERIM", record_number=2, event_time=int(T0) + 40, **common
                )
                await send_acr(
                    to_b, "cdf-b.test", record_type="STOP", record_number=3, event_time=int(T0) + 50, **common
                )
                assert retransmitted["Result-Code"] == 2001
            cdrs = cdf_a.cdrs()
    finally:
        second_engine.dispose()
    assert [c.record_sequence_number for c in cdrs] == [1, 2, 3]
    assert [c.cdf_id for c in cdrs] == ["cdf-a", "cdf-b", "cdf-b"]
    assert [c.local_record_sequence_number for c in cdrs] == [1, 1, 2]  # each instance numbers its own
    assert [c.accounting_record_numbers for c in cdrs] == [[0, 1], [2], [3]]
    assert sum(c.duration_seconds for c in cdrs) == 50


async def test_an_acr_that_is_not_an_ims_record_gets_the_rfc_answer_and_is_logged(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_cdf(database.engine) as cdf:
        client = RawClient()
        await client.connect(cdf.port)
        try:
            await client.handshake("sgw.test", acct_apps=(3,), auth_apps=())
            no_ims = Message.request(
                "ACR",
                3,
                {
                    "Session-Id": "sgw.test;1;1",
                    "Origin-Host": "sgw.test",
                    "Origin-Realm": "test",
                    "Destination-Realm": "test",
                    "Accounting-Record-Type": "START_RECORD",
                    "Accounting-Record-Number": 0,
                    "Acct-Application-Id": 3,
                },
            )
            with caplog.at_level(logging.WARNING, logger="charging.cdf"):
                await client.send(no_ims)
                missing = await client.recv()
                await client.send(
                    ims_acr(
                        session_id="sgw.test;1;2",
                        origin_host="sgw.test",
                        origin_realm="test",
                        record_type="START",
                        record_number=0,
                        node_functionality="S_GW",
                    )
                )
                wrong_node = await client.recv()
        finally:
            await client.close()
        assert missing["Result-Code"] == ResultCode.DIAMETER_MISSING_AVP
        assert missing.find("Failed-AVP/Service-Information/IMS-Information/Node-Functionality") == 0
        assert missing["Accounting-Record-Number"] == 0  # the answer's own required AVPs are kept
        assert wrong_node["Result-Code"] == ResultCode.DIAMETER_INVALID_AVP_VALUE
        assert wrong_node.find("Failed-AVP/Service-Information/IMS-Information/Node-Functionality") == 8
        assert "not an IMS node" in caplog.text and "needs Service-Information" in caplog.text
        assert cdf.acr_log_rows() == 0


@pytest.mark.postgres
async def test_with_the_database_unreachable_acrs_get_too_busy_nothing_is_stored_and_it_is_not_ready(
    tmp_path: Path,
) -> None:
    db = Database("postgresql", tmp_path)
    proxy = TcpProxy("127.0.0.1", 5432)
    assert db.schema is not None
    from charging.db import make_engine

    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test", schema=db.schema)
    try:
        async with running_cdf(engine, interim_closes_partial=False) as cdf:
            async with ims_node(cdf.port, "scscf.test") as scscf:
                session = "scscf.test;1;outage"
                await send_acr(scscf, session_id=session, record_type="START", record_number=0, icid=ICID)
                proxy.cut()
                stop = ims_acr(session_id=session, origin_host="scscf.test", record_type="STOP", record_number=1)
                busy = await scscf.request(stop, peer="cdf.test", timeout=20)
                assert busy["Result-Code"] == ResultCode.DIAMETER_TOO_BUSY
                assert busy.flags & FLAG_ERROR
                assert not cdf.service.ready()
                proxy.restore()
                again = Message.decode(stop.to_bytes())
                again.flags |= FLAG_RETRANSMIT
                again.end_to_end = 0
                stored = await scscf.request(again, peer="cdf.test")
                assert stored["Result-Code"] == ResultCode.DIAMETER_SUCCESS
                assert cdf.service.ready()
            with db.engine.connect() as conn:
                numbers = sorted(r[0] for r in conn.execute(select(acr_log.c.record_number)))
            assert numbers == [0, 1]
            [cdr] = cdf.cdrs()
            assert cdr.accounting_record_numbers == [0, 1]
    finally:
        engine.dispose()
        proxy.close()
        db.drop()


@pytest.mark.parametrize(("remembered", "taken_from_memory", "read"), [(0, 0, 2), (20_000, 2, 0)])
async def test_remembered_records_spare_the_reads_and_give_the_same_cdrs(
    database: Database, remembered: int, taken_from_memory: int, read: int
) -> None:
    clock = ManualClock(T0)
    async with running_cdf(database.engine, clock=clock, publish=False, remembered_records=remembered) as cdf:
        async with ims_node(cdf.port, "scscf.test") as scscf:
            for number, kind in enumerate(["START", "INTERIM", "STOP"]):
                clock.advance(10)
                aca = await send_acr(scscf, session_id="r;1", record_type=kind, record_number=number, icid=ICID)
                assert aca["Result-Code"] == ResultCode.DIAMETER_SUCCESS
        store = cdf.service.store
        assert (store.records_remembered, store.records_read) == (taken_from_memory, read)  # INTERIM and STOP
        assert [c.record_sequence_number for c in cdf.cdrs()] == [1, 2]
