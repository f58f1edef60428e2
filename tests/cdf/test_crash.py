"""The CDF killed with SIGKILL mid-load and restarted: every acknowledged ACR is in exactly one CDR in Kafka.

The CDF runs in a process of its own (``charging serve --roles cdf``), with a real database and a real
Kafka-protocol broker.  An IMS node sends calls concurrently and retransmits (T flag, same
End-to-End id) every ACR that got no answer, as RFC 6733 asks; the CDF is killed while ACRs
are in flight and started again on the same port and database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from bench.messages import ims_acr, sdp_media
from cdf.models import acr_log
from cdf.queries import backlog
from charging.broker import EmbeddedBroker, free_port
from charging.diameter import FLAG_RETRANSMIT, DiameterError, Message
from charging.diameter.node import DiameterNode, RequestTimeout
from charging.diameter.peer import Timers
from tests.cdf.kafka_support import cdrs_in, read_topic
from tests.conftest import Database
from tests.support.diameter import client_node, wait_until

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
TOPIC = "charging.cdrs"
CALLS = 60
FAST = Timers(watchdog=1.0, cea_timeout=2.0, dpa_timeout=1.0, reconnect_min=0.05, reconnect_max=0.2, jitter=0.0)


class CdfProcess:
    """``charging serve --roles cdf`` in a process of its own, on a fixed Diameter port."""

    def __init__(self, database: Database, bootstrap: str, port: int, workdir: Path) -> None:
        url = database.url
        if database.schema:  # the test's own schema, as the database fixture's engines use it
            url += f"?options=-csearch_path%3D{database.schema}"
        self.env = {
            **os.environ,
            "CHARGING_DATABASE__URL": url,
            "CHARGING_KAFKA__BOOTSTRAP": bootstrap,
            "CHARGING_KAFKA__CDR_TOPIC": TOPIC,
            "CHARGING_DIAMETER__PORT": str(port),
            "CHARGING_DIAMETER__ORIGIN_HOST": "cdf.test",
            "CHARGING_HTTP__PORT": "0",
            "CHARGING_LOGGING__FORMAT": "text",
            "CHARGING_CDF__PUBLISH_POLL_SECONDS": "0.1",
            "CHARGING_CDF__PUBLISH_BACKOFF_MAX_SECONDS": "0.5",
            "CHARGING_CDF__LEASE_SECONDS": "2",  # the restarted process takes the publisher's lease over
        }
        self.ready_file = workdir / "ready.txt"
        self.log_path = workdir / "cdf.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "charging.cli",
            "serve",
            "--roles",
            "cdf",
            "--ready-file",
            str(self.ready_file),
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while not self.ready_file.exists():
            assert self.proc.poll() is None, f"the CDF exited:\n{self.log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the CDF did not start:\n{self.log_path.read_text()[-3000:]}"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def until_acknowledged(node: DiameterNode, acr: Message, retransmissions: list[int]) -> None:
    """Send ``acr`` until a 2001 ACA comes back; every resend is a retransmission (T flag, same End-to-End)."""
    while True:
        try:
            aca = await node.request(acr, peer="cdf.test", timeout=2.0)
            if aca["Result-Code"] == 2001:
                return
        except (RequestTimeout, DiameterError, ConnectionError):
            pass
        await asyncio.sleep(0.05)
        again = Message.decode(acr.to_bytes())
        again.flags |= FLAG_RETRANSMIT
        acr = again
        retransmissions.append(acr.end_to_end)


def unpublished(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(backlog(conn, 0.0)["unpublished"])


async def test_sigkill_mid_load_loses_no_acknowledged_acr_and_counts_none_twice(
    database: Database, tmp_path: Path
) -> None:
    port = free_port()
    with EmbeddedBroker() as broker:
        cdf = CdfProcess(database, broker.bootstrap, port, tmp_path)
        await asyncio.to_thread(cdf.start)
        node = client_node(
            port,
            host="pcscf.test",
            server_host="cdf.test",
            auth_apps=frozenset(),
            acct_apps=frozenset({3}),
            timers=FAST,
        )
        await node.start()
        acknowledged: list[tuple[str, int]] = []
        retransmissions: list[int] = []
        try:
            await wait_until(lambda: "cdf.test" in node.peers and node.peers["cdf.test"].available, 10, "connected")

            async def call(n: int) -> None:
                session = f"pcscf.test;1;{n}"
                for number, kind in enumerate(["START", "INTERIM", "STOP"]):
                    acr = ims_acr(
                        session_id=session,
                        origin_host="pcscf.test",
                        record_type=kind,
                        record_number=number,
                        node_functionality="P_CSCF",
                        icid=f"icid-{n}",
                        media=sdp_media(video=number == 1),
                    )
                    await until_acknowledged(node, acr, retransmissions)
                    acknowledged.append((session, number))

            load = asyncio.gather(*(call(n) for n in range(CALLS)))
            await wait_until(lambda: len(acknowledged) >= CALLS, 30, "a third of the ACRs acknowledged")
            cdf.kill()
            killed_at = len(acknowledged)
            await asyncio.to_thread(cdf.start)
            await asyncio.wait_for(load, 60)
            assert killed_at < 3 * CALLS
            await wait_until(lambda: unpublished(database.engine) == 0, 30, "outbox published")
            with database.engine.connect() as conn:
                acr_log_rows = conn.execute(select(func.count()).select_from(acr_log)).scalar_one()
        finally:
            await node.stop()
            cdf.stop()
        records = await asyncio.to_thread(read_topic, broker.bootstrap, TOPIC)
    cdrs = cdrs_in(records)
    by_id = {}
    for cdr in cdrs:
        assert by_id.setdefault(cdr.cdr_id, cdr) == cdr  # a copy published twice is the same CDR
    unique = list(by_id.values())
    holders = Counter((c.session_id, n) for c in unique for n in c.accounting_record_numbers)
    assert set(holders) == set(acknowledged)
    assert [acr for acr, count in holders.items() if count > 1] == []
    assert len(unique) == 2 * CALLS
    assert acr_log_rows == 3 * CALLS  # each ACR stored once, retransmissions included
    assert retransmissions, "the kill should have caught ACRs in flight"
