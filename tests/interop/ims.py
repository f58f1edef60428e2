"""Realistic Ro and Rf traffic of one IMS call, built with ``Message.request`` for interop tests.

An S-CSCF acting as IMS-GWF / CTF (``gwf.ims.test``) charges a voice call online against an OCS and
offline against a CDF, both at ``ocs.charging.test``: SCUR CCR-I/U/T with the call's IMS-Information,
an IEC CCR-Event for a page-mode MESSAGE, ACR START/INTERIM/STOP for the call and ACR EVENT for the
MESSAGE, and from the OCS a RAR and an ASR. The values follow TS 32.299 and TS 32.260; the addresses
inside SIP and SDP strings are documentation addresses.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from charging.diameter import Message

GWF, GWF_REALM = "gwf.ims.test", "ims.test"
OCS, OCS_REALM = "ocs.charging.test", "charging.test"
CONTEXT_IMS = "32260@3gpp.org"
CALL_START = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)
ICID = "icid-value-7f0c3a2b.ims.test-1773480413"

# TS 32.299 enumerations used below
ORIGINATING_ROLE = 0
S_CSCF = 0
END_USER_E164, END_USER_SIP_URI = 0, 2
INITIAL, UPDATE, TERMINATION, EVENT = 1, 2, 3, 4
EVENT_RECORD, START_RECORD, INTERIM_RECORD, STOP_RECORD = 1, 2, 3, 4
QUOTA_EXHAUSTED, FINAL = 3, 2
DIAMETER_LOGOUT = 1


def subscription_ids() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("Subscription-Id", {"Subscription-Id-Type": END_USER_E164, "Subscription-Id-Data": "4915112345678"}),
        ("Subscription-Id", {"Subscription-Id-Type": END_USER_SIP_URI, "Subscription-Id-Data": "sip:alice@ims.test"}),
    ]


def call_ims_information(record: str) -> list[tuple[str, Any]]:
    """IMS-Information of the originating S-CSCF for the INVITE dialogue; ``record`` picks what is known."""
    avps: list[tuple[str, Any]] = [
        ("Event-Type", {"SIP-Method": "INVITE" if record != "stop" else "BYE", "Expires": 3600}),
        ("Role-Of-Node", ORIGINATING_ROLE),
        ("Node-Functionality", S_CSCF),
        ("User-Session-Id", "a84b4c76e66710@pc33.ims.test"),
        ("Outgoing-Session-Id", "b95c5d87f77821@scscf.ims.test"),
        ("Session-Priority", 2),
        ("Calling-Party-Address", "sip:alice@ims.test"),
        ("Calling-Party-Address", "tel:+4915112345678"),
        ("Called-Party-Address", "tel:+4930123456"),
        ("Called-Asserted-Identity", "sip:+4930123456@visited.test;user=phone"),
        ("Requested-Party-Address", "tel:+4930123456"),
        ("Associated-URI", "sip:alice.home@ims.test"),
        (
            "Time-Stamps",
            {
                "SIP-Request-Timestamp": CALL_START,
                "SIP-Response-Timestamp": CALL_START + timedelta(seconds=4),
                "SIP-Request-Timestamp-Fraction": 250,
                "SIP-Response-Timestamp-Fraction": 875,
            },
        ),
        (
            "Application-Server-Information",
            {
                "Application-Server": "sip:mmtel-as.ims.test",
                "Application-Provided-Called-Party-Address": ["tel:+4930123456"],
            },
        ),
        ("Inter-Operator-Identifier", {"Originating-IOI": "ims.test", "Terminating-IOI": "visited.test"}),
        ("Transit-IOI-List", "transit.test"),
        ("IMS-Charging-Identifier", ICID),
        ("SDP-Session-Description", "v=0"),
        ("SDP-Session-Description", "o=alice 2890844526 2890844526 IN IP4 192.0.2.10"),
        (
            "SDP-Media-Component",
            {
                "SDP-Media-Name": "audio 49170 RTP/AVP 0 96",
                "SDP-Media-Description": ["c=IN IP4 192.0.2.10", "a=rtpmap:96 AMR-WB/16000"],
                "Local-GW-Inserted-Indication": 0,
                "Media-Initiator-Flag": 0,
                "Access-Network-Charging-Identifier-Value": b"\x00\x00\x30\x39",
                "SDP-Type": 0,
            },
        ),
        ("Served-Party-IP-Address", "192.0.2.10"),
        ("Server-Capabilities", {"Mandatory-Capability": [1], "Server-Name": ["sip:scscf.ims.test"]}),
        ("Trunk-Group-Id", {"Incoming-Trunk-Group-Id": "tg-in-17", "Outgoing-Trunk-Group-Id": "tg-out-4"}),
        ("Bearer-Service", b"\x80\x90\xa3"),
        ("Service-Id", "mmtel-voice"),
        (
            "Message-Body",
            {
                "Content-Type": "application/sdp",
                "Content-Length": 214,
                "Content-Disposition": "session",
                "Originator": 0,
            },
        ),
    ]
    if record == "stop":
        avps += [
            ("Cause-Code", 0),  # TS 32.299 7.2.35: normal end of session
            ("Reason-Header", 'Q.850;cause=16;text="Normal call clearing"'),
        ]
    avps += [
        ("Access-Network-Information", b"3GPP-E-UTRAN-FDD; utran-cell-id-3gpp=262011234567890a"),
        ("IMS-Communication-Service-Identifier", "urn:urn-7:3gpp-service.ims.icsi.mmtel"),
        ("IMS-Application-Reference-Identifier", "urn:alice-app-ref-1"),
        ("Online-Charging-Flag", 1),
        ("Account-Expiration", datetime(2027, 1, 1, tzinfo=UTC)),
        ("Initial-IMS-Charging-Identifier", ICID),
        (
            "NNI-Information",
            {"Session-Direction": 1, "NNI-Type": 0, "Relationship-Mode": 0, "Neighbour-Node-Address": "192.0.2.20"},
        ),
        ("IMS-Emergency-Indicator", 0),
        ("IMS-Visited-Network-Identifier", "visited.test"),
        (
            "Access-Network-Info-Change",
            {
                "Access-Network-Information": [b"3GPP-E-UTRAN-FDD; utran-cell-id-3gpp=262011234567890b"],
                "Change-Time": CALL_START + timedelta(seconds=61),
            },
        ),
        ("Related-IMS-Charging-Identifier", "icid-value-previous.ims.test"),
        ("Related-IMS-Charging-Identifier-Node", "192.0.2.30"),
        ("Route-Header-Received", "<sip:pcscf.ims.test;lr>"),
        ("Route-Header-Transmitted", "<sip:mmtel-as.ims.test;lr>"),
        ("Instance-Id", "<urn:gsma:imei:35209900-176148-1>"),
    ]
    return avps


def message_ims_information() -> list[tuple[str, Any]]:
    """IMS-Information of a page-mode MESSAGE, charged as an event."""
    return [
        ("Event-Type", {"SIP-Method": "MESSAGE"}),
        ("Role-Of-Node", ORIGINATING_ROLE),
        ("Node-Functionality", S_CSCF),
        ("Calling-Party-Address", "sip:alice@ims.test"),
        ("Called-Party-Address", "sip:bob@visited.test"),
        ("Time-Stamps", {"SIP-Request-Timestamp": CALL_START + timedelta(minutes=5)}),
        ("Inter-Operator-Identifier", {"Originating-IOI": "ims.test", "Terminating-IOI": "visited.test"}),
        ("IMS-Charging-Identifier", "icid-value-message-0001.ims.test"),
        ("Message-Body", {"Content-Type": "text/plain", "Content-Length": 11, "Originator": 0}),
        ("Cause-Code", 486),  # TS 32.299 7.2.35: a SIP 4xx final response is its own cause code
    ]


def service_information(ims: list[tuple[str, Any]]) -> tuple[str, list[tuple[str, Any]]]:
    return ("Service-Information", [*subscription_ids(), ("IMS-Information", ims)])


def ccr(session_id: str, request_type: int, number: int) -> Message:
    """A session-based (SCUR) CCR of the call: I reserves, U reports and reserves again, T reports the rest."""
    avps: list[tuple[str, Any]] = [
        ("Session-Id", session_id),
        ("Origin-Host", GWF),
        ("Origin-Realm", GWF_REALM),
        ("Destination-Realm", OCS_REALM),
        ("Auth-Application-Id", 4),
        ("Service-Context-Id", CONTEXT_IMS),
        ("CC-Request-Type", request_type),
        ("CC-Request-Number", number),
        ("Origin-State-Id", 1),
        ("Event-Timestamp", CALL_START + timedelta(seconds=60 * number)),
        *subscription_ids(),
        ("Multiple-Services-Indicator", 1),
    ]
    if request_type == TERMINATION:
        avps.append(("Termination-Cause", DIAMETER_LOGOUT))
    mscc: dict[str, Any] = {"Service-Identifier": [1000], "Rating-Group": 100}
    if request_type != TERMINATION:
        mscc["Requested-Service-Unit"] = {"CC-Time": 60}
    if request_type != INITIAL:
        mscc["Used-Service-Unit"] = [
            {
                "Reporting-Reason": FINAL if request_type == TERMINATION else QUOTA_EXHAUSTED,
                "CC-Time": 60 if request_type == UPDATE else 17,
                "CC-Input-Octets": 5_000_000_000,  # past 2**32: an Unsigned64 that needs its high word
                "CC-Output-Octets": 12_345,
                "Event-Charging-TimeStamp": [CALL_START + timedelta(seconds=60 * number)],
            }
        ]
    avps += [
        ("Multiple-Services-Credit-Control", mscc),
        ("User-Equipment-Info", {"User-Equipment-Info-Type": 0, "User-Equipment-Info-Value": b"3520990017614823"}),
        service_information(call_ims_information("stop" if request_type == TERMINATION else "start")),
    ]
    return Message.request("CCR", 4, avps)


def cca(request: Message, origin_host: str, origin_realm: str) -> Message:
    request_type = request["CC-Request-Type"]
    avps: list[tuple[str, Any]] = [
        ("Result-Code", 2001),
        ("Origin-Host", origin_host),
        ("Origin-Realm", origin_realm),
        ("Auth-Application-Id", 4),
        ("CC-Request-Type", request_type),
        ("CC-Request-Number", request["CC-Request-Number"]),
    ]
    if request_type in (INITIAL, UPDATE):
        mscc: dict[str, Any] = {
            "Granted-Service-Unit": {"CC-Time": 60},
            "Service-Identifier": [1000],
            "Rating-Group": 100,
            "Validity-Time": 3600,
            "Result-Code": 2001,
            "Time-Quota-Threshold": 10,
        }
        if request_type == UPDATE:
            mscc["Final-Unit-Indication"] = {"Final-Unit-Action": 0}  # TERMINATE
        avps.append(("Multiple-Services-Credit-Control", mscc))
    elif request_type == EVENT:
        avps += [
            ("Granted-Service-Unit", {"CC-Service-Specific-Units": 1}),
            ("Cost-Information", {"Unit-Value": {"Value-Digits": 19, "Exponent": -2}, "Currency-Code": 978,
                                  "Cost-Unit": "EUR"}),
            ("Low-Balance-Indication", 0),
            ("Remaining-Balance", {"Unit-Value": {"Value-Digits": 123_456_789_012, "Exponent": -3},
                                   "Currency-Code": 978}),
        ]  # fmt: skip
    return request.answer(avps)


def ccr_event(session_id: str) -> Message:
    """Immediate event charging (IEC) of the MESSAGE: debit one unit straight away."""
    return Message.request(
        "CCR",
        4,
        [
            ("Session-Id", session_id),
            ("Origin-Host", GWF),
            ("Origin-Realm", GWF_REALM),
            ("Destination-Realm", OCS_REALM),
            ("Auth-Application-Id", 4),
            ("Service-Context-Id", CONTEXT_IMS),
            ("CC-Request-Type", EVENT),
            ("CC-Request-Number", 0),
            ("Event-Timestamp", CALL_START + timedelta(minutes=5)),
            *subscription_ids(),
            ("Service-Identifier", 2000),
            ("Requested-Service-Unit", {"CC-Service-Specific-Units": 1}),
            ("Requested-Action", 0),  # DIRECT_DEBITING
            service_information(message_ims_information()),
        ],
    )


def acr(session_id: str, record_type: int, number: int) -> Message:
    ims = (
        message_ims_information()
        if record_type == EVENT_RECORD
        else call_ims_information("stop" if record_type == STOP_RECORD else "start")
    )
    return Message.request(
        "ACR",
        3,
        [
            ("Session-Id", session_id),
            ("Origin-Host", GWF),
            ("Origin-Realm", GWF_REALM),
            ("Destination-Realm", OCS_REALM),
            ("Accounting-Record-Type", record_type),
            ("Accounting-Record-Number", number),
            ("Acct-Application-Id", 3),
            ("User-Name", "alice@ims.test"),
            ("Origin-State-Id", 1),
            ("Event-Timestamp", CALL_START + timedelta(seconds=30 * number)),
            ("Service-Context-Id", CONTEXT_IMS),
            service_information(ims),
        ],
    )


def aca(request: Message, origin_host: str, origin_realm: str) -> Message:
    avps: list[tuple[str, Any]] = [
        ("Result-Code", 2001),
        ("Origin-Host", origin_host),
        ("Origin-Realm", origin_realm),
        ("Accounting-Record-Type", request["Accounting-Record-Type"]),
        ("Accounting-Record-Number", request["Accounting-Record-Number"]),
        ("Acct-Application-Id", 3),
    ]
    if request["Accounting-Record-Type"] == START_RECORD:
        avps.append(("Acct-Interim-Interval", 300))
    return request.answer(avps)


def rar(session_id: str) -> Message:
    return Message.request(
        "RAR",
        4,
        [
            ("Session-Id", session_id),
            ("Origin-Host", OCS),
            ("Origin-Realm", OCS_REALM),
            ("Destination-Realm", GWF_REALM),
            ("Destination-Host", GWF),
            ("Auth-Application-Id", 4),
            ("Re-Auth-Request-Type", 0),  # AUTHORIZE_ONLY
        ],
    )


def asr(session_id: str) -> Message:
    return Message.request(
        "ASR",
        4,
        [
            ("Session-Id", session_id),
            ("Origin-Host", OCS),
            ("Origin-Realm", OCS_REALM),
            ("Destination-Realm", GWF_REALM),
            ("Destination-Host", GWF),
            ("Auth-Application-Id", 4),
        ],
    )


def str_(session_id: str) -> Message:
    return Message.request(
        "STR",
        4,
        [
            ("Session-Id", session_id),
            ("Origin-Host", GWF),
            ("Origin-Realm", GWF_REALM),
            ("Destination-Realm", OCS_REALM),
            ("Auth-Application-Id", 4),
            ("Termination-Cause", DIAMETER_LOGOUT),
        ],
    )


def plain_answer(request: Message, origin_host: str, origin_realm: str) -> Message:
    """RAA, ASA and STA: success and who answers."""
    return request.answer([("Result-Code", 2001), ("Origin-Host", origin_host), ("Origin-Realm", origin_realm)])
