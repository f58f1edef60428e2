"""Offline reporting of the IMS-GWF as an AS: ACR START, INTERIM and STOP to the project's own CDF, which
builds AS records with the same ICID as the Ro session (real sipp call, OCF and CDF over TCP)."""

from __future__ import annotations

from pathlib import Path

from cdf.queries import list_cdrs
from cdf.service import create_service as create_cdf
from cdf.settings import CdfSettings
from charging.cdr import CauseForRecordClosing, Cdr, RecordType
from charging.clock import SystemClock
from charging.config import Settings
from charging.gwf.settings import DiameterPeer, RfSettings
from charging.service import ServiceContext
from tests.gwf.conftest import ALICE, GWF_HOST, REALM, GwfFactory, Ocf, Sipp, free_port, gwf_settings, requires_sipp
from tests.support.diameter import server_node, wait_until

pytestmark = requires_sipp

CDF_HOST = "cdf.test"


async def test_the_session_is_reported_over_rf_with_the_icid_of_the_call(
    ocf_sqlite: Ocf, start_gwf: GwfFactory, tmp_path: Path
) -> None:
    node = server_node(host=CDF_HOST, realm=REALM)
    ctx = ServiceContext(
        Settings(roles=["cdf"], cdf=CdfSettings(publish=False)), ocf_sqlite.engine, node, None, clock=SystemClock()
    )
    cdf = create_cdf(ctx)
    await node.start()
    await cdf.start()
    try:
        ocf_sqlite.subscriber(balance=1000)
        callee_port = free_port()
        rf = RfSettings(
            cdf=DiameterPeer(host=CDF_HOST, realm=REALM, address="127.0.0.1", port=node.port),
            interim_interval_seconds=1,
        )
        gwf = await start_gwf(gwf_settings(ocf_sqlite.port, callee_port, rf=rf))
        await wait_until(lambda: CDF_HOST in gwf.node.peers and gwf.node.peers[CDF_HOST].available, 5.0, "the CDF")
        callee = await Sipp("callee", tmp_path, "callee.xml", callee_port, "-timeout", "20s").start()
        caller = Sipp(
            "caller",
            tmp_path,
            "caller_hangs_up.xml",
            free_port(),
            f"127.0.0.1:{gwf.udp_port}",
            "-d",
            "2500",
            "-timeout",
            "20s",
        )
        await caller.start()
        assert await caller.wait() == 0, caller.report()
        assert await callee.wait() == 0, callee.report()
        await wait_until(lambda: any("STOP" in r[2] for r in gwf.rf_log), 5.0, "the ACR STOP")
        kinds = [r[2] for r in gwf.rf_log]
        assert kinds[0] == "START 2001" and kinds[-1] == "STOP 2001" and "INTERIM 2001" in kinds
        assert [r[1] for r in gwf.rf_log] == list(range(len(kinds)))  # Accounting-Record-Number 0, 1, ...
        icid = f"icid-{gwf.ro_log[0].call_id}"

        def cdrs() -> list[Cdr]:
            with ocf_sqlite.engine.connect() as conn:
                return [cdr for _, cdr in list_cdrs(conn, icid=icid)]

        await wait_until(
            lambda: any(
                c.cause_for_record_closing is CauseForRecordClosing.SERVICE_DELIVERY_END_SUCCESSFULLY for c in cdrs()
            ),
            5.0,
            "the final AS record",
        )
        records = cdrs()
        assert {(c.record_type, c.node_functionality, c.node_address) for c in records} == {
            (RecordType.AS, "AS", GWF_HOST)
        }
        last = records[-1]
        assert last.inter_operator_identifiers[0].originating_ioi == "orig.example.net"
        assert [(s.subscription_id_type, s.subscription_id_data) for s in last.list_of_subscription_id] == [
            ("END_USER_SIP_URI", ALICE)
        ]
        assert last.service_delivery_start_time_stamp is not None and last.service_delivery_end_time_stamp is not None
        span = (last.service_delivery_end_time_stamp - last.service_delivery_start_time_stamp).total_seconds()
        talk = caller.sent("BYE")[0].at - caller.received("SIP/2.0 200")[0].at
        assert abs(span - talk) <= 1.0  # Time AVPs carry whole seconds
    finally:
        await cdf.stop()
        await node.stop()
