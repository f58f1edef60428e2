"""Builds the example traces of this folder: run it after a change that rightly changes their results.

    .venv/bin/python examples/traces/build.py

Each example is written as the requests its clients send, at the times they send
them, and the points at which CDRs and balances are checked.  The script replays
that draft against the in-process CDF/OCF (``charging replay --write-expected`` does
the same) and writes the trace with the answers, server requests, CDRs and balances
the run produced as its expectations.  The project's CI replays the results
(tests/trace/test_examples.py); ``git diff`` on this folder shows what a change did.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from charging.diameter import Message  # noqa: E402
from charging.trace.bless import blessed  # noqa: E402
from charging.trace.format import (  # noqa: E402
    CheckRecord,
    Endpoint,
    Expectation,
    Header,
    MessageRecord,
    Record,
    Trace,
    write_trace,
)
from charging.trace.replay import Replayer  # noqa: E402
from charging.trace.targets import in_process_target  # noqa: E402

HERE = Path(__file__).resolve().parent
START = 1_767_258_000.0  # 2026-01-01T09:00:00Z
CREATED = "2026-01-01T00:00:00Z"
REALM = "ims.example.net"
CHARGING = {"host": "charging.example.net", "realm": "example.net"}
ALICE_MSISDN = "34600000001"
ALICE_IMPU = f"sip:+{ALICE_MSISDN}@{REALM}"
BOB = "tel:+34911000002"
HOME_IOI = "ims.mnc001.mcc214.3gppnetwork.org"
CONTEXT = "32260@3gpp.org"


class Draft:
    """Requests at chosen times, server requests the clients must see, and checks."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._ids = 0
        self._connections: dict[str, int] = {}

    def _stamp(self, msg: Message) -> bytes:
        self._ids += 1
        msg.hop_by_hop = 0x1000 + self._ids
        msg.end_to_end = 0x5000 + self._ids
        return msg.to_bytes()

    def connection(self, host: str) -> int:
        return self._connections.setdefault(host, len(self._connections) + 1)

    def request(self, t: float, msg: Message) -> None:
        host = str(msg["Origin-Host"])
        self.records.append(MessageRecord(t, self.connection(host), "client", self._stamp(msg), Endpoint(host)))

    def server_request(self, t: float, msg: Message, client_answer: dict[str, Any]) -> None:
        """A request the server must send (its recorded form is replaced by the real one), and the client's answer."""
        host = str(msg["Destination-Host"])
        conn = self.connection(host)
        raw = self._stamp(msg)
        self.records.append(MessageRecord(t, conn, "server", raw, Endpoint(CHARGING["host"])))
        answer = Message.decode(raw).answer(client_answer)
        self.records.append(MessageRecord(t, conn, "client", answer.to_bytes(), Endpoint(host)))

    def check(self, t: float, name: str, cdrs: bool = False, balances: list[str] | None = None) -> None:
        expect = Expectation(None, [] if cdrs else None, {a: {} for a in balances} if balances else None)
        self.records.append(CheckRecord(t, expect, name))


def acr(
    node: str,
    functionality: str,
    kind: str,
    number: int,
    session: str,
    at: float,
    *,
    role: str = "ORIGINATING_ROLE",
    application_server: str | None = None,
) -> Message:
    """A Rf ACR (TS 32.299 6.2.2) of one IMS node for the example call."""
    ims: dict[str, Any] = {
        "Event-Type": {"SIP-Method": "INVITE"},
        "Role-Of-Node": role,
        "Node-Functionality": functionality,
        "User-Session-Id": "a84b4c76e66710@pc33.ims.example.net",
        "Calling-Party-Address": ALICE_IMPU,
        "Called-Party-Address": BOB,
        "Time-Stamps": {"SIP-Request-Timestamp": int(START), "SIP-Response-Timestamp": int(START) + 1},
        "Inter-Operator-Identifier": {"Originating-IOI": HOME_IOI},
        "IMS-Charging-Identifier": "icid-call-0001@pcscf.ims.example.net",
        "SDP-Media-Component": {
            "SDP-Media-Name": "audio 49170 RTP/AVP 0",
            "SDP-Media-Description": ["a=rtpmap:0 PCMU/8000"],
            "Media-Initiator-Flag": "CALLING_PARTY",
        },
    }
    if application_server:
        ims["Application-Server-Information"] = {"Application-Server": application_server}
    return Message.request(
        "ACR",
        3,
        {
            "Session-Id": session,
            "Origin-Host": node,
            "Origin-Realm": REALM,
            "Destination-Realm": CHARGING["realm"],
            "Accounting-Record-Type": kind,
            "Accounting-Record-Number": number,
            "Acct-Application-Id": 3,
            "Acct-Interim-Interval": 300,
            "Event-Timestamp": int(START + at),
            "Service-Context-Id": CONTEXT,
            "Service-Information": {
                "Subscription-Id": [
                    {"Subscription-Id-Type": "END_USER_E164", "Subscription-Id-Data": ALICE_MSISDN},
                    {"Subscription-Id-Type": "END_USER_SIP_URI", "Subscription-Id-Data": ALICE_IMPU},
                ],
                "IMS-Information": ims,
            },
        },
    )


def ims_call_rf() -> tuple[Trace, str]:
    draft = Draft()
    nodes = [
        ("pcscf.ims.example.net", "P_CSCF", None),
        ("scscf.ims.example.net", "S_CSCF", None),
        ("mmtel.ims.example.net", "AS", "sip:mmtel.ims.example.net"),
    ]
    for offset, (host, functionality, server) in enumerate(nodes):
        session = f"{host};1767258000;{offset + 1}"
        draft.request(
            1.0 + offset * 0.01, acr(host, functionality, "START_RECORD", 0, session, 1.0, application_server=server)
        )
    for offset, (host, functionality, server) in enumerate(nodes):
        session = f"{host};1767258000;{offset + 1}"
        draft.request(
            95.0 + offset * 0.01, acr(host, functionality, "STOP_RECORD", 1, session, 95.0, application_server=server)
        )
    draft.check(96.0, "the call's three CDRs", cdrs=True)
    return _trace(draft, {"server": CHARGING}), (
        "An IMS call of 94 s from alice to bob, reported over Rf (ACR START and STOP) by the P-CSCF, "
        "the S-CSCF and the MMTel AS, all with the same ICID; the CDF closes one CDR per node."
    )


def ccr(
    session: str, kind: str, number: int, *extra: tuple[str, Any], origin: str = "mmtel.ims.example.net"
) -> Message:
    avps: list[tuple[str, Any]] = [
        ("Session-Id", session),
        ("Origin-Host", origin),
        ("Origin-Realm", REALM),
        ("Destination-Realm", CHARGING["realm"]),
        ("Auth-Application-Id", 4),
        ("Service-Context-Id", CONTEXT),
        ("CC-Request-Type", kind),
        ("CC-Request-Number", number),
        ("Subscription-Id", {"Subscription-Id-Type": "END_USER_E164", "Subscription-Id-Data": ALICE_MSISDN}),
        *extra,
    ]
    return Message.request("CCR", 4, avps)


def mscc(requested: int | None = None, used: int | None = None, reason: str | None = None) -> tuple[str, Any]:
    group: dict[str, Any] = {"Rating-Group": 100}
    if requested is not None:
        group["Requested-Service-Unit"] = {"CC-Time": requested}
    if used is not None:
        group["Used-Service-Unit"] = {"CC-Time": used}
        if reason:
            group["Used-Service-Unit"]["Reporting-Reason"] = reason
    return ("Multiple-Services-Credit-Control", group)


def _alice(balance: int, tariffs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tariffs": tariffs,
        "accounts": [{"name": "alice", "balance": balance}],
        "subscribers": [
            {
                "account": "alice",
                "name": "alice",
                "subscription_ids": [
                    {"type": "END_USER_E164", "data": ALICE_MSISDN},
                    {"type": "END_USER_SIP_URI", "data": ALICE_IMPU},
                ],
            }
        ],
    }


def prepaid_scur() -> tuple[Trace, str]:
    draft = Draft()
    a = "mmtel.ims.example.net;1767258000;101"
    b = "mmtel.ims.example.net;1767258010;102"
    draft.request(0.0, ccr(a, "INITIAL_REQUEST", 0, mscc(requested=60)))
    draft.check(0.0, "60 s reserved for the first call", balances=["alice"])
    draft.request(10.0, ccr(b, "INITIAL_REQUEST", 0, mscc(requested=60)))
    draft.check(10.0, "the second call takes the last 40 s", balances=["alice"])
    draft.request(50.0, ccr(b, "TERMINATION_REQUEST", 1, mscc(used=40, reason="FINAL")))
    draft.request(60.0, ccr(a, "UPDATE_REQUEST", 1, mscc(requested=60, used=60, reason="QUOTA_EXHAUSTED")))
    asr = Message.request(
        "ASR",
        4,
        {
            "Session-Id": a,
            "Origin-Host": CHARGING["host"],
            "Origin-Realm": CHARGING["realm"],
            "Destination-Realm": REALM,
            "Destination-Host": "mmtel.ims.example.net",
            "Auth-Application-Id": 4,
        },
    )
    asa = {"Result-Code": 2001, "Origin-Host": "mmtel.ims.example.net", "Origin-Realm": REALM}
    draft.server_request(60.0, asr, asa)
    draft.request(60.5, ccr(a, "TERMINATION_REQUEST", 2, mscc(used=0, reason="FINAL")))
    draft.check(61.0, "the account is empty and nothing is held", balances=["alice"])
    voice = {"name": "voice", "unit": "time", "price": 1, "rating_group": 100, "effective_from": 0}
    return _trace(draft, {"server": CHARGING, "ocf": _alice(100, [voice])}), (
        "Prepaid voice (SCUR, rating group 100, 1 cent per second) for alice with 1 EUR: two calls share the "
        "balance; the second takes the last 40 s and ends; the first is refused more time (4012) and the OCF "
        "sends ASR to its AS."
    )


def iec_events() -> tuple[Trace, str]:
    draft = Draft()
    for n, t in enumerate((0.0, 5.0, 9.0)):
        session = f"mmtel.ims.example.net;1767258000;{200 + n}"
        draft.request(
            t,
            ccr(
                session,
                "EVENT_REQUEST",
                0,
                ("Requested-Action", "DIRECT_DEBITING"),
                ("Service-Identifier", 20),
                ("Requested-Service-Unit", {"CC-Service-Specific-Units": 1}),
                ("Event-Timestamp", int(START + t)),
            ),
        )
    draft.check(10.0, "two messages paid, the third refused", balances=["alice"])
    sms = {"name": "sms", "unit": "units", "price": 15, "service_identifier": 20, "effective_from": 0}
    return _trace(draft, {"server": CHARGING, "ocf": _alice(40, [sms])}), (
        "Immediate event charging (IEC, DIRECT_DEBITING) of three text messages at 15 cents each for alice "
        "with 40 cents: two are debited, the third is refused with 4012 and debits nothing."
    )


def _trace(draft: Draft, setup: dict[str, Any]) -> Trace:
    return Trace(Header(START, CREATED, {"kind": "examples/traces/build.py"}, setup), draft.records)


async def build(name: str, trace: Trace, description: str) -> None:
    trace.header.description = description
    target = in_process_target(trace, trace.header.setup)
    await target.start(trace.header.setup)
    try:
        replayer = Replayer(trace, target, name=name)
        result = await replayer.run()
    finally:
        await target.stop()
    errors = [c for c in result.cases if c.error]
    if errors:
        raise SystemExit(f"{name}: {errors[0].name}: {errors[0].error}")
    write_trace(HERE / name, blessed(replayer, result.cases))
    print(f"{name}: {len(result.cases)} steps written")


async def main() -> None:
    for name, (trace, description) in {
        "ims-call.jsonl": ims_call_rf(),
        "prepaid-scur-out-of-credit.jsonl": prepaid_scur(),
        "iec-events.jsonl": iec_events(),
    }.items():
        await build(name, trace, description)


if __name__ == "__main__":
    asyncio.run(main())
