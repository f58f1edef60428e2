"""The CCR reader's fast way (from where the validator found the AVPs) reads every CCR as the general way
does, or steps aside; the answer encoder's cache gives the very bytes of a plain encoding."""

from __future__ import annotations

from typing import Any

import pytest

from charging.diameter import DiameterError, Message
from charging.diameter.dictionary import DICTIONARY, iter_encoded
from charging.diameter.message import FLAG_RETRANSMIT
from charging.diameter.validation import Validator
from ocf.control import CreditAnswer, CreditRequest, ServiceResult, Units
from ocf.rating import unit_value
from ocf.server import AnswerEncoder, CcrReader
from ocf.settings import OcfSettings

CONTEXT = "mnc001.mcc001.18.32260@3gpp.org"
E164 = {"Subscription-Id-Type": "END_USER_E164", "Subscription-Id-Data": "34600000001"}
IMS = {
    "IMS-Information": {
        "Event-Type": {"SIP-Method": "INVITE"},
        "Role-Of-Node": "ORIGINATING_ROLE",
        "Node-Functionality": "AS",
        "User-Session-Id": "abc@host",
        "Calling-Party-Address": "sip:+34600000001@ims.test",
        "Called-Party-Address": "tel:+34911234567",
        "IMS-Charging-Identifier": "icid-1",
    }
}


def ccr(kind: str, number: int, *extra: tuple[str, Any], context: str = CONTEXT, sub: Any = E164) -> Message:
    avps: list[tuple[str, Any]] = [
        ("Session-Id", "as.test;1;7"),
        ("Origin-Host", "as.test"),
        ("Origin-Realm", "test"),
        ("Destination-Realm", "test"),
        ("Auth-Application-Id", 4),
        ("Service-Context-Id", context),
        ("CC-Request-Type", kind),
        ("CC-Request-Number", number),
    ]
    if sub is not None:
        avps.append(("Subscription-Id", sub))
    avps.extend(extra)
    return Message.decode(Message.request("CCR", 4, avps).to_bytes())


def mscc(**members: Any) -> tuple[str, Any]:
    return ("Multiple-Services-Credit-Control", {k.replace("_", "-"): v for k, v in members.items()})


FAST = {
    "scur initial with IMS information": ccr(
        "INITIAL_REQUEST",
        0,
        ("Service-Information", IMS),
        mscc(Requested_Service_Unit={"CC-Time": 60}, Rating_Group=100),
    ),
    "update with reasons at both levels": ccr(
        "UPDATE_REQUEST",
        1,
        mscc(
            Requested_Service_Unit={"CC-Time": 60},
            Used_Service_Unit=[{"CC-Time": 60, "Reporting-Reason": "QUOTA_EXHAUSTED"}, {"CC-Time": 5}],
            Rating_Group=100,
            Reporting_Reason="VALIDITY_TIME",
        ),
        mscc(Used_Service_Unit={"CC-Total-Octets": 1000}, Rating_Group=200, Service_Identifier=7),
    ),
    "termination": ccr(
        "TERMINATION_REQUEST", 3, mscc(Used_Service_Unit={"CC-Time": 30, "Reporting-Reason": "FINAL"}, Rating_Group=1)
    ),
    "event direct debit at command level": ccr(
        "EVENT_REQUEST",
        0,
        ("Requested-Action", "DIRECT_DEBITING"),
        ("Service-Identifier", 20),
        ("Requested-Service-Unit", {"CC-Service-Specific-Units": 3}),
    ),
    "ecur initial without figures": ccr("INITIAL_REQUEST", 0, ("Requested-Service-Unit", {})),
    "ecur update in octets, in and out": ccr(
        "UPDATE_REQUEST",
        1,
        ("Requested-Service-Unit", {"CC-Total-Octets": 5000}),
        ("Used-Service-Unit", {"CC-Input-Octets": 10, "CC-Output-Octets": 20}),
        ("Used-Service-Unit", {"CC-Output-Octets": 7}),
    ),
    "two subscription ids, requested party only": ccr(
        "INITIAL_REQUEST",
        0,
        ("Subscription-Id", {"Subscription-Id-Type": "END_USER_SIP_URI", "Subscription-Id-Data": "sip:a@b"}),
        (
            "Service-Information",
            {"IMS-Information": {"Node-Functionality": "AS", "Requested-Party-Address": "sip:+3491555@x;user=phone"}},
        ),
        mscc(Requested_Service_Unit={}, Rating_Group=100),
    ),
    "no subscription id, price enquiry": ccr("EVENT_REQUEST", 0, ("Requested-Action", "PRICE_ENQUIRY"), sub=None),
    "proxied": ccr(
        "UPDATE_REQUEST",
        2,
        mscc(Used_Service_Unit={"CC-Time": 1}, Rating_Group=100),
        ("Proxy-Info", {"Proxy-Host": "relay.test", "Proxy-State": b"x"}),
    ),
}

GENERAL = {
    "subscription id extension": ccr(
        "INITIAL_REQUEST", 0, ("Subscription-Id-Extension", {"Subscription-Id-E164": "34600000002"}), sub=None
    ),
    "money": ccr(
        "EVENT_REQUEST",
        0,
        ("Requested-Action", "DIRECT_DEBITING"),
        ("Requested-Service-Unit", {"CC-Money": {"Unit-Value": {"Value-Digits": 125, "Exponent": -2}}}),
    ),
}

REFUSED = {
    "context not served": (ccr("INITIAL_REQUEST", 0, context="1.2.3.other@example.org"), 5031),
    "unknown request type": (ccr(5, 0), 5004),  # type: ignore[arg-type]
    "event without action": (ccr("EVENT_REQUEST", 0), 5005),
    "unknown action": (ccr("EVENT_REQUEST", 0, ("Requested-Action", 9)), 5004),
    "negative money": (
        ccr(
            "EVENT_REQUEST",
            0,
            ("Requested-Action", "DIRECT_DEBITING"),
            ("Requested-Service-Unit", {"CC-Money": {"Unit-Value": {"Value-Digits": -1}}}),
        ),
        5004,
    ),
}


def received(msg: Message) -> Message:
    """The message as the node hands it to the OCF: decoded from its bytes and validated."""
    got = Message.decode(msg.to_bytes())
    Validator().check(got)
    assert got.avp_index is not None
    return got


@pytest.fixture
def reader() -> CcrReader:
    return CcrReader(OcfSettings(not_applicable_contexts=["32274@3gpp.org"]))


@pytest.mark.parametrize("name", sorted(FAST))
def test_fast_way_reads_as_the_general_way(reader: CcrReader, name: str) -> None:
    msg = received(FAST[name])
    fast = reader._fast(msg)
    assert fast is not None
    req, proxied = fast
    assert req == reader._read(msg)
    assert proxied == bool(msg.all("Proxy-Info"))
    assert reader.read_with_proxies(msg) == fast


@pytest.mark.parametrize("name", sorted(GENERAL))
def test_unusual_requests_go_the_general_way(reader: CcrReader, name: str) -> None:
    msg = received(GENERAL[name])
    assert reader._fast(msg) is None
    assert reader.read(msg) == reader._read(msg)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusals_are_the_general_ways(reader: CcrReader, name: str) -> None:
    msg, code = REFUSED[name]
    msg = Message.decode(msg.to_bytes())
    try:
        Validator().check(msg)
    except DiameterError as refused:  # some the node's validator refuses already, with the same Result-Code
        assert refused.result_code == code
        return
    assert reader._fast(msg) is None
    with pytest.raises(DiameterError) as raised:
        reader.read(msg)
    assert raised.value.result_code == code


def test_not_applicable_context_and_retransmit_flag(reader: CcrReader) -> None:
    with pytest.raises(DiameterError) as raised:
        reader.read(ccr("INITIAL_REQUEST", 0, context="32274@3gpp.org"))
    assert raised.value.result_code == 4011
    msg = FAST["termination"]
    msg.flags |= FLAG_RETRANSMIT
    req = reader.read(Message.decode(msg.to_bytes()))
    assert req.retransmit


def test_a_message_the_validator_has_not_seen_goes_the_general_way(reader: CcrReader) -> None:
    msg = Message.decode(FAST["termination"].to_bytes())
    assert msg.avp_index is None
    assert reader._fast(msg) is None
    assert reader.read(msg) == reader._fast(received(msg))[0]  # type: ignore[index]


def test_truncated_avps_are_refused_before_the_reader(reader: CcrReader) -> None:
    raw = bytearray(FAST["termination"].to_bytes())
    raw[-7] = 0xFF  # the length of the last AVP now runs past the message
    with pytest.raises(DiameterError) as refused:
        Validator().check(Message.decode(bytes(raw)))
    assert refused.value.result_code == 5014


def plain_encoding(req: CreditRequest, ans: CreditAnswer) -> bytes:
    """The answer's AVPs encoded one by one, with no cache: what AnswerEncoder must give."""
    avps: list[tuple[str, Any]] = [
        ("Session-Id", req.session_id),
        ("Result-Code", ans.result_code),
        ("Origin-Host", "ocf.test"),
        ("Origin-Realm", "test"),
        ("Auth-Application-Id", 4),
        ("CC-Request-Type", req.request_type),
        ("CC-Request-Number", req.request_number),
    ]
    for r in ans.services:
        group: dict[str, Any] = {}
        if r.granted is not None:
            group["Granted-Service-Unit"] = {"CC-Time": r.granted.amount}
        group["Rating-Group"] = r.rating_group
        group["Validity-Time"] = r.validity_time
        group["Result-Code"] = r.result_code
        if r.final:
            group["Final-Unit-Indication"] = {"Final-Unit-Action": "TERMINATE"}
        avps.append(("Multiple-Services-Credit-Control", group))
    if ans.cost is not None:
        assert ans.currency is not None
        avps.append(("Cost-Information", {"Unit-Value": unit_value(ans.cost, ans.currency), "Currency-Code": 978}))
    return b"".join(iter_encoded(avps, DICTIONARY))


def test_cached_answer_encoding_is_the_plain_one() -> None:
    encode = AnswerEncoder(OcfSettings(), "ocf.test", "test")
    for n in range(3):
        for cost in (None, 0, 125, 10**9):
            for final in (False, True):
                req = CreditRequest("as.test;9;" + str(n), 2, n, multiple_services=True)
                granted = ServiceResult(100, None, 2001, Units("time", 60), 1800, final=final)
                ans = CreditAnswer(2001, [granted], True, cost=cost, currency=978 if cost is not None else None)
                assert encode(req, ans) == plain_encoding(req, ans)
