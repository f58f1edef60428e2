"""Realistic IMS charging requests built with the project's codec, for benchmarks.

Two messages an IMS application server sends in a voice call:

* a Ro (online, SCUR) CCR-Initial: ``ccr_initial(n)``;
* a Rf (offline) ACR-Interim: ``acr_interim(n)``.

``n`` is a counter: the Session-Id, end-to-end and hop-by-hop identifiers,
timestamps, SIP Call-ID, IMS Charging Identifier and (ACR) Accounting-Record-Number
all follow it, so that every call builds a message with fresh content.  The values
themselves come from ``call_values(n)``, which other benchmarks can use to build
the same messages with another library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from charging.diameter import Message

# Identities of the sending node and the call parties (test PLMN 001/01).
ORIGIN_HOST = "as1.ims.mnc001.mcc001.3gppnetwork.org"
ORIGIN_REALM = "ims.mnc001.mcc001.3gppnetwork.org"
OCS_REALM = "ocs.mnc001.mcc001.3gppnetwork.org"
CDF_REALM = "cdf.mnc001.mcc001.3gppnetwork.org"
SERVICE_CONTEXT_ID = "32260@3gpp.org"  # TS 32.260: IMS charging
CCA_APPLICATION_ID = 4  # Diameter Credit-Control (Ro)
ACCOUNTING_APPLICATION_ID = 3  # Diameter base accounting (Rf)

MSISDN = "34600123456"
IMPU = "sip:+34600123456@ims.mnc001.mcc001.3gppnetwork.org"
CALLED_PARTY = "tel:+34911234567"
ORIGINATING_IOI = "ims.mnc001.mcc001.3gppnetwork.org"
TERMINATING_IOI = "ims.mnc002.mcc001.3gppnetwork.org"

# What the CCR-I asks for, and where the benchmarks read it back.
RATING_GROUP = 100
SERVICE_IDENTIFIER = 1000
REQUESTED_CC_TIME = 300

# SDP of the audio stream (TS 32.299 SDP-Media-Component).
SDP_MEDIA_NAME = "audio 49152 RTP/AVP 96 97 8 101"
SDP_MEDIA_DESCRIPTIONS = (
    "c=IN IP6 2001:db8:10::15",
    "b=AS:49",
    "a=rtpmap:96 AMR-WB/16000/1",
    "a=rtpmap:97 AMR/8000/1",
    "a=rtpmap:101 telephone-event/16000",
    "a=sendrecv",
)

BOOT_TIME = 1_700_000_000  # Unix seconds; part of Session-Id, base of every timestamp
CALL_DURATION = 37  # seconds between the INVITE and an interim record


@dataclass(frozen=True, slots=True)
class CallValues:
    """The per-message values of call number ``n``."""

    session_id: str
    hop_by_hop: int
    end_to_end: int
    event_time: int  # Unix seconds
    invite_time: int  # Unix seconds of the SIP INVITE
    invite_fraction: int  # milliseconds
    answer_time: int  # Unix seconds of the 200 OK
    answer_fraction: int  # milliseconds
    user_session_id: str  # the SIP Call-ID
    icid: str  # IMS Charging Identifier
    record_number: int  # Accounting-Record-Number of the interim record


def call_values(n: int) -> CallValues:
    """The values that make call ``n``'s messages differ from every other call's."""
    invite = BOOT_TIME + n
    return CallValues(
        session_id=f"{ORIGIN_HOST};{BOOT_TIME};{n}",
        hop_by_hop=n & 0xFFFFFFFF,
        end_to_end=(n * 7919) & 0xFFFFFFFF,
        event_time=invite + CALL_DURATION,
        invite_time=invite,
        invite_fraction=n % 1000,
        answer_time=invite + 2,
        answer_fraction=(n * 13) % 1000,
        user_session_id=f"{n:08x}-5e2b-4c71-9a3f-0c1d2e3f4a5b@2001:db8:10::15",
        icid=icid(n),
        record_number=1 + n % 100,
    )


def icid(n: int) -> str:
    """The IMS Charging Identifier of call ``n``."""
    return f"as1-{BOOT_TIME:x}-{n:010d}"


def _ims_information(v: CallValues, *, answered: bool) -> dict[str, Any]:
    # Both timestamps, then both fractions: the order TS 32.299 7.2.197 gives (the fractions came later).
    if answered:
        time_stamps: dict[str, Any] = {
            "SIP-Request-Timestamp": v.invite_time,
            "SIP-Response-Timestamp": v.answer_time,
            "SIP-Request-Timestamp-Fraction": v.invite_fraction,
            "SIP-Response-Timestamp-Fraction": v.answer_fraction,
        }
    else:
        time_stamps = {"SIP-Request-Timestamp": v.invite_time, "SIP-Request-Timestamp-Fraction": v.invite_fraction}
    return {
        "Event-Type": {"SIP-Method": "INVITE"},
        "Role-Of-Node": "ORIGINATING_ROLE",
        "Node-Functionality": "AS",
        "User-Session-Id": v.user_session_id,
        "Calling-Party-Address": IMPU,
        "Called-Party-Address": CALLED_PARTY,
        "Time-Stamps": time_stamps,
        "Inter-Operator-Identifier": {
            "Originating-IOI": ORIGINATING_IOI,
            "Terminating-IOI": TERMINATING_IOI,
        },
        "IMS-Charging-Identifier": v.icid,
        "SDP-Media-Component": {
            "SDP-Media-Name": SDP_MEDIA_NAME,
            "SDP-Media-Description": list(SDP_MEDIA_DESCRIPTIONS),
            "Media-Initiator-Flag": "CALLING_PARTY",
            "SDP-Type": "SDP_ANSWER" if answered else "SDP_OFFER",
        },
    }


def ccr_initial_avps(v: CallValues) -> dict[str, Any]:
    """The AVPs of a Ro CCR-Initial (TS 32.299 6.4.2, SCUR) for an originating voice call."""
    return {
        "Session-Id": v.session_id,
        "Origin-Host": ORIGIN_HOST,
        "Origin-Realm": ORIGIN_REALM,
        "Destination-Realm": OCS_REALM,
        "Auth-Application-Id": CCA_APPLICATION_ID,
        "Service-Context-Id": SERVICE_CONTEXT_ID,
        "CC-Request-Type": "INITIAL_REQUEST",
        "CC-Request-Number": 0,  # RFC 4006 8.2: 0 in the initial request
        "Event-Timestamp": v.invite_time,
        "Subscription-Id": [
            {"Subscription-Id-Type": "END_USER_E164", "Subscription-Id-Data": MSISDN},
            {"Subscription-Id-Type": "END_USER_SIP_URI", "Subscription-Id-Data": IMPU},
        ],
        "Multiple-Services-Indicator": "MULTIPLE_SERVICES_SUPPORTED",
        "Multiple-Services-Credit-Control": {
            "Requested-Service-Unit": {"CC-Time": REQUESTED_CC_TIME},
            "Service-Identifier": SERVICE_IDENTIFIER,
            "Rating-Group": RATING_GROUP,
        },
        "Service-Information": {"IMS-Information": _ims_information(v, answered=False)},
    }


def acr_interim_avps(v: CallValues) -> dict[str, Any]:
    """The AVPs of a Rf ACR-Interim (TS 32.299 6.2.2) for the same call, once answered."""
    return {
        "Session-Id": v.session_id,
        "Origin-Host": ORIGIN_HOST,
        "Origin-Realm": ORIGIN_REALM,
        "Destination-Realm": CDF_REALM,
        "Accounting-Record-Type": "INTERIM_RECORD",
        "Accounting-Record-Number": v.record_number,
        "Acct-Application-Id": ACCOUNTING_APPLICATION_ID,
        "Event-Timestamp": v.event_time,
        "Service-Context-Id": SERVICE_CONTEXT_ID,
        "Service-Information": {
            "Subscription-Id": [
                {"Subscription-Id-Type": "END_USER_E164", "Subscription-Id-Data": MSISDN},
                {"Subscription-Id-Type": "END_USER_SIP_URI", "Subscription-Id-Data": IMPU},
            ],
            "IMS-Information": _ims_information(v, answered=True),
        },
    }


def ccr_initial(n: int) -> Message:
    """Call ``n``'s CCR-Initial, built with the project's codec."""
    v = call_values(n)
    msg = Message.request("CCR", CCA_APPLICATION_ID, ccr_initial_avps(v))
    msg.hop_by_hop = v.hop_by_hop
    msg.end_to_end = v.end_to_end
    return msg


def acr_interim(n: int) -> Message:
    """Call ``n``'s ACR-Interim, built with the project's codec."""
    v = call_values(n)
    msg = Message.request("ACR", ACCOUNTING_APPLICATION_ID, acr_interim_avps(v))
    msg.hop_by_hop = v.hop_by_hop
    msg.end_to_end = v.end_to_end
    return msg


# -- Rf ACRs of any IMS node, for the CDF tests and its load benchmark --------------------------------------

ACR_RECORD_TYPES = {
    "EVENT": "EVENT_RECORD",
    "START": "START_RECORD",
    "INTERIM": "INTERIM_RECORD",
    "STOP": "STOP_RECORD",
}
# A re-INVITE that adds video to the call: the media change an INTERIM reports.
VIDEO_MEDIA_NAME = "video 49154 RTP/AVP 98"
VIDEO_MEDIA_DESCRIPTIONS = ("b=AS:384", "a=rtpmap:98 H264/90000", "a=sendrecv")


def sdp_media(*, video: bool = False, sdp_type: str = "SDP_ANSWER") -> list[dict[str, Any]]:
    """SDP-Media-Component values: the audio stream, and the video stream when ``video``."""
    media: list[dict[str, Any]] = [
        {
            "SDP-Media-Name": SDP_MEDIA_NAME,
            "SDP-Media-Description": list(SDP_MEDIA_DESCRIPTIONS),
            "Media-Initiator-Flag": "CALLING_PARTY",
            "SDP-Type": sdp_type,
        }
    ]
    if video:
        media.append(
            {
                "SDP-Media-Name": VIDEO_MEDIA_NAME,
                "SDP-Media-Description": list(VIDEO_MEDIA_DESCRIPTIONS),
                "Media-Initiator-Flag": "CALLING_PARTY",
                "SDP-Type": sdp_type,
            }
        )
    return media


def ims_acr_avps(
    *,
    session_id: str,
    origin_host: str,
    record_type: str,
    record_number: int,
    node_functionality: str = "AS",
    role_of_node: str | None = "ORIGINATING_ROLE",
    icid: str | None = None,
    originating_ioi: str | None = ORIGINATING_IOI,
    terminating_ioi: str | None = TERMINATING_IOI,
    calling_party: str | None = IMPU,
    called_party: str | None = CALLED_PARTY,
    sip_method: str = "INVITE",
    event_time: int | None = None,
    request_time: int | None = None,
    response_time: int | None = None,
    media: list[dict[str, Any]] | None = None,
    interim_interval: int | None = None,
    cause_code: int | None = None,
    application_server: str | None = None,
    origin_realm: str = ORIGIN_REALM,
    destination_realm: str = CDF_REALM,
    extra_ims: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The AVPs of a Rf ACR (TS 32.299 6.2.2) from any IMS node; ``record_type`` is EVENT/START/INTERIM/STOP."""
    ims: dict[str, Any] = {"Event-Type": {"SIP-Method": sip_method}}
    if role_of_node is not None:
        ims["Role-Of-Node"] = role_of_node
    ims["Node-Functionality"] = node_functionality
    if calling_party is not None:
        ims["Calling-Party-Address"] = calling_party
    if called_party is not None:
        ims["Called-Party-Address"] = called_party
    stamps: dict[str, Any] = {}
    if request_time is not None:
        stamps["SIP-Request-Timestamp"] = request_time
    if response_time is not None:
        stamps["SIP-Response-Timestamp"] = response_time
    if stamps:
        ims["Time-Stamps"] = stamps
    if application_server is not None:
        ims["Application-Server-Information"] = {"Application-Server": application_server}
    if originating_ioi is not None or terminating_ioi is not None:
        ioi: dict[str, Any] = {}
        if originating_ioi is not None:
            ioi["Originating-IOI"] = originating_ioi
        if terminating_ioi is not None:
            ioi["Terminating-IOI"] = terminating_ioi
        ims["Inter-Operator-Identifier"] = ioi
    if icid is not None:
        ims["IMS-Charging-Identifier"] = icid
    if media:
        ims["SDP-Media-Component"] = media
    if cause_code is not None:
        ims["Cause-Code"] = cause_code
    if extra_ims:
        ims.update(extra_ims)
    avps: dict[str, Any] = {
        "Session-Id": session_id,
        "Origin-Host": origin_host,
        "Origin-Realm": origin_realm,
        "Destination-Realm": destination_realm,
        "Accounting-Record-Type": ACR_RECORD_TYPES.get(record_type, record_type),
        "Accounting-Record-Number": record_number,
        "Acct-Application-Id": ACCOUNTING_APPLICATION_ID,
    }
    if interim_interval is not None:
        avps["Acct-Interim-Interval"] = interim_interval
    if event_time is not None:
        avps["Event-Timestamp"] = event_time
    avps["Service-Context-Id"] = SERVICE_CONTEXT_ID
    avps["Service-Information"] = {
        "Subscription-Id": [
            {"Subscription-Id-Type": "END_USER_E164", "Subscription-Id-Data": MSISDN},
            {"Subscription-Id-Type": "END_USER_SIP_URI", "Subscription-Id-Data": IMPU},
        ],
        "IMS-Information": ims,
    }
    return avps


def ims_acr(**fields: Any) -> Message:
    """A Rf ACR built with the project's codec; see ``ims_acr_avps`` for the fields."""
    return Message.request("ACR", ACCOUNTING_APPLICATION_ID, ims_acr_avps(**fields))
