"""Reading ACRs: the fast reader gives exactly what the general one gives, and leaves the odd ones to it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.messages import ims_acr, sdp_media
from cdf.acr import _read_fast, parse_acr, read_acr
from charging.diameter import DiameterError, Message
from charging.diameter.validation import Validator

REPO = Path(__file__).resolve().parents[2]

VARIANTS: list[dict[str, Any]] = [
    {"record_type": "START", "record_number": 0, "media": sdp_media()},
    {"record_type": "INTERIM", "record_number": 1, "media": sdp_media(video=True), "interim_interval": 30},
    {"record_type": "STOP", "record_number": 2, "cause_code": 1, "request_time": 1_767_225_700},
    {"record_type": "EVENT", "record_number": 0, "sip_method": "MESSAGE", "role_of_node": None, "icid": None},
    {
        "record_type": "START",
        "record_number": 0,
        "node_functionality": "S_CSCF",
        "role_of_node": "TERMINATING_ROLE",
        "application_server": "sip:as.test",
        "request_time": 1_767_225_600,
        "response_time": 1_767_225_601,
        "originating_ioi": None,
        "calling_party": None,
        "extra_ims": {
            "Requested-Party-Address": ["tel:+1", "tel:+2"],
            "SDP-Session-Description": ["v=0", "o=- 1 1 IN IP4 192.0.2.1"],
            "Access-Network-Information": [b"3GPP-E-UTRAN-FDD; utran-cell-id-3gpp=00101"],
            "IMS-Communication-Service-Identifier": "urn:urn-7:3gpp-service.ims.icsi.mmtel",
            "User-Session-Id": "abc",
            "Associated-URI": ["sip:a@x", "sip:b@x"],
            "Time-Stamps": {
                "SIP-Request-Timestamp": 1_767_225_600,
                "SIP-Request-Timestamp-Fraction": 250,
                "SIP-Response-Timestamp": 1_767_225_601,
                "SIP-Response-Timestamp-Fraction": 2000,
            },
            "Inter-Operator-Identifier": [
                {"Originating-IOI": "a.example"},
                {"Terminating-IOI": "b.example"},
            ],
        },
    },
]


def received(msg: Message) -> Message:
    """As the server gets it: decoded from the wire and validated."""
    got = Message.decode(msg.to_bytes())
    Validator().check(got)
    return got


def trace_acrs() -> list[Message]:
    found = []
    for path in sorted((REPO / "examples" / "traces").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("type") == "message" and record.get("command") == "ACR" and record["direction"] == "request":
                found.append(Message.decode(bytes.fromhex(record["hex"])))
    return found


@pytest.mark.parametrize("fields", VARIANTS, ids=lambda f: f"{f['record_type']}-{len(f)}")
def test_the_fast_reader_reads_what_the_general_reader_reads(fields: dict[str, Any]) -> None:
    msg = ims_acr(session_id="pcscf.test;1;1", origin_host="pcscf.test", **{"node_functionality": "P_CSCF", **fields})
    fast = _read_fast(received(msg), 5.0)
    assert fast is not None
    assert fast == read_acr(received(msg), 5.0)


def test_the_fast_reader_reads_the_example_traces_as_the_general_reader() -> None:
    acrs = trace_acrs()
    assert acrs
    for msg in acrs:
        fast = _read_fast(received(msg), 1.0)
        assert fast is not None
        assert fast == read_acr(received(msg), 1.0)


def test_what_is_not_a_well_formed_ims_acr_gets_the_general_readers_answer() -> None:
    not_ims = ims_acr(session_id="sgw;1", origin_host="sgw.test", record_type="START", record_number=0)
    not_ims.set("Service-Information", {"Subscription-Id": [{"Subscription-Id-Type": 0, "Subscription-Id-Data": "1"}]})
    foreign = ims_acr(session_id="sgw;2", origin_host="sgw.test", record_type="START", record_number=0)
    foreign = received(foreign)
    foreign.set(
        "Service-Information", {"IMS-Information": {"Node-Functionality": "S_GW", "Role-Of-Node": "ORIGINATING_ROLE"}}
    )
    for msg in (not_ims, foreign):
        assert _read_fast(received(msg), 0.0) is None
        with pytest.raises(DiameterError) as fast:
            parse_acr(received(msg), 0.0)
        with pytest.raises(DiameterError) as general:
            read_acr(received(msg), 0.0)
        assert fast.value.result_code == general.value.result_code
        assert fast.value.failed_avp == general.value.failed_avp


def test_a_group_whose_lengths_do_not_fit_never_reaches_a_reader() -> None:
    msg = received(ims_acr(session_id="s;1", origin_host="pcscf.test", record_type="START", record_number=0))
    service = msg.avp("Service-Information")
    assert service is not None
    data = bytearray(service.data)
    data[5:8] = (0xFFFFFF).to_bytes(3, "big")  # the first member's length runs past the group
    header = service.to_bytes()[: service.length - len(service.data)]
    broken = Message(msg.code, msg.app_id, msg.flags, msg.hop_by_hop, msg.end_to_end)
    for avp in msg:
        if avp.code == service.code:
            broken.add_raw(header + bytes(data) + b"\x00" * (-len(data) % 4))
        else:
            broken.add_avp(avp)
    wire = Message.decode(broken.to_bytes())
    with pytest.raises(DiameterError) as refused:
        Validator().check(wire)  # the node answers 5014 with the broken AVP in Failed-AVP
    assert refused.value.result_code == 5014
    assert wire.avp_index is None
    assert _read_fast(wire, 0.0) is None  # and were it asked anyway, the fast reader steps aside
    with pytest.raises(Exception) as general:
        read_acr(wire, 0.0)
    with pytest.raises(type(general.value)):
        parse_acr(wire, 0.0)
