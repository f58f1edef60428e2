"""A CDF ``Cdr`` as the TS 32.298 IMSRecord of its node type, and decoded records as readable values.

``to_record`` builds the value pycrate encodes (dicts, lists and ``(name, value)`` tuples, see asn1.py)
with the fields the CDF holds, each only where the node's record has it (the I-CSCF and BGCF records
have no record opening time, the MRFC record no role of node ...):

    recordType                      RecordType value of the record (sCSCFRecord 63 ...)
    retransmission                  NULL, when Cdr.extensions["retransmission"] is true
    sIP-Method, event               Cdr.sip_method, Cdr.event
    role-of-Node                    originating / terminating (ORIGINATING_ROLE / TERMINATING_ROLE)
    nodeAddress                     Cdr.node_address: an IP address as iPBinaryAddress, else domainName
    session-Id                      Cdr.session_id
    list-Of-Calling-Party-Address   InvolvedParty each: sip:/sips: sIP-URI, tel: tEL-URI, urn: uRN,
    called-Party-Address              digits iSDN-E164, anything else sIP-URI
    requested-Party-Address         first of Cdr.requested_party_address (list-of-... where the record has a list)
    privateUserID                   Cdr.user_name
    service... / record... times    TimeStamp: 9 octets, YYMMDDhhmmss BCD, sign "+"/"-" in ASCII, hhmm BCD
                                    of the offset from UTC; milliseconds in the ...Fraction fields
    interOperatorIdentifiers        every IOI pair (a list in S-CSCF and TF records, else the first pair)
    localRecordSequenceNumber       Cdr.local_record_sequence_number modulo 2^32 (LocalSequenceNumber range)
    recordSequenceNumber            Cdr.record_sequence_number (partial records)
    causeForRecordClosing           Cdr.cause_for_record_closing
    incomplete-CDR-Indication       Cdr.incomplete_cdr_indication
    iMS-Charging-Identifier         Cdr.ims_charging_identifier, UTF-8
    list-Of-SDP-Media-Components    Cdr.list_of_sdp_media_components; mediaInitiatorFlag when the called
                                    party initiated; sDP-Type
    serviceContextID, list-of-subscription-ID, applicationServersInformation,
    iMSCommunicationServiceIdentifier, accessNetworkInformation (the first)
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from cdf.bx import asn1
from charging.cdr import Cdr, MediaComponentsList

TIMESTAMP_OCTETS = 9
_E164 = re.compile(r"\+?[0-9]+")
_ROLES = {"ORIGINATING_ROLE": "originating", "TERMINATING_ROLE": "terminating"}
_SUBSCRIPTION_ID_TYPES = {
    "END_USER_E164": "eND-USER-E164",
    "END_USER_IMSI": "eND-USER-IMSI",
    "END_USER_SIP_URI": "eND-USER-SIP-URI",
    "END_USER_NAI": "eND-USER-NAI",
    "END_USER_PRIVATE": "eND-USER-PRIVATE",
}
_SDP_TYPES = {"SDP_OFFER": "sDP-offer", "SDP_ANSWER": "sDP-answer"}
# Components that are NULL: present or absent, pycrate's value is 0.
NULL_COMPONENTS = frozenset(
    {"retransmission", "mediaInitiatorFlag", "online-charging-flag", "iMSEmergencyIndicator", "inter-UE-Transfer"}
)


def _bcd(number: int) -> int:
    return (number // 10) << 4 | number % 10


def _from_bcd(octet: int) -> int:
    high, low = octet >> 4, octet & 0x0F
    if high > 9 or low > 9:
        raise ValueError(f"{octet:02x} is not two BCD digits")
    return high * 10 + low


def encode_timestamp(moment: datetime, utc_offset_minutes: int = 0) -> bytes:
    """TS 32.298 TimeStamp: the local time at ``utc_offset_minutes`` from UTC, to the second."""
    if moment.tzinfo is None:
        raise ValueError("time stamps must carry a time zone")
    local = moment.astimezone(timezone(timedelta(minutes=utc_offset_minutes)))
    offset = abs(utc_offset_minutes)
    digits = (local.year % 100, local.month, local.day, local.hour, local.minute, local.second)
    sign = b"-" if utc_offset_minutes < 0 else b"+"
    return bytes(_bcd(d) for d in digits) + sign + bytes((_bcd(offset // 60), _bcd(offset % 60)))


def decode_timestamp(data: bytes) -> datetime:
    """The aware datetime a TS 32.298 TimeStamp holds (years 2000 to 2099)."""
    if len(data) != TIMESTAMP_OCTETS or data[6:7] not in (b"+", b"-"):
        raise ValueError(f"{data.hex()} is not a 9-octet TimeStamp")
    year, month, day, hour, minute, second = (_from_bcd(o) for o in data[:6])
    offset = _from_bcd(data[7]) * 60 + _from_bcd(data[8])
    zone = timezone(timedelta(minutes=-offset if data[6:7] == b"-" else offset))
    return datetime(2000 + year, month, day, hour, minute, second, tzinfo=zone)


def involved_party(address: str) -> tuple[str, str]:
    """An address as the InvolvedParty CHOICE."""
    lowered = address.lower()
    if lowered.startswith(("sip:", "sips:")):
        return ("sIP-URI", address)
    if lowered.startswith("tel:"):
        return ("tEL-URI", address)
    if lowered.startswith("urn:"):
        return ("uRN", address)
    if _E164.fullmatch(address):
        return ("iSDN-E164", address)
    return ("sIP-URI", address)


def node_address(address: str) -> tuple[str, Any]:
    """A host as the NodeAddress CHOICE: binary IP address, else domain name."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ("domainName", address)
    if isinstance(ip, ipaddress.IPv4Address):
        return ("iPAddress", ("iPBinaryAddress", ("iPBinV4Address", ip.packed)))
    return ("iPAddress", ("iPBinaryAddress", ("iPBinV6Address", ("iPBinV6Address", ip.packed))))


def _media(entry: MediaComponentsList, offset: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    if entry.sip_request_timestamp is not None:
        value["sIP-Request-Timestamp"] = encode_timestamp(entry.sip_request_timestamp, offset)
        value["sIP-Request-Timestamp-Fraction"] = entry.sip_request_timestamp.microsecond // 1000
    if entry.sip_response_timestamp is not None:
        value["sIP-Response-Timestamp"] = encode_timestamp(entry.sip_response_timestamp, offset)
        value["sIP-Response-Timestamp-Fraction"] = entry.sip_response_timestamp.microsecond // 1000
    media = []
    for component in entry.sdp_media_components:
        item: dict[str, Any] = {}
        if component.sdp_media_name is not None:
            item["sDP-Media-Name"] = component.sdp_media_name
        if component.sdp_media_descriptions:
            item["sDP-Media-Descriptions"] = list(component.sdp_media_descriptions)
        media.append(item)
    if media:
        value["sDP-Media-Components"] = media
    flags = [entry.media_initiator_flag, *(c.media_initiator_flag for c in entry.sdp_media_components)]
    if "CALLED_PARTY" in flags:
        value["mediaInitiatorFlag"] = 0
    if entry.sdp_session_descriptions:
        value["sDP-Session-Description"] = list(entry.sdp_session_descriptions)
    sdp_type = next((c.sdp_type for c in entry.sdp_media_components if c.sdp_type in _SDP_TYPES), None)
    if sdp_type is not None:
        value["sDP-Type"] = _SDP_TYPES[sdp_type]
    return value


def to_record(cdr: Cdr, utc_offset_minutes: int = 0) -> tuple[str, dict[str, Any]]:
    """The IMSRecord CHOICE value of ``cdr``: (alternative name, record value)."""
    record_type = cdr.record_type.value
    has = asn1.record_components(record_type)
    offset = utc_offset_minutes
    value: dict[str, Any] = {"recordType": asn1.record_type_number(record_type)}

    def put(name: str, item: Any) -> None:
        if name in has and item is not None and item != [] and item != "":
            value[name] = item

    if cdr.extensions.get("retransmission") is True:
        put("retransmission", 0)
    put("sIP-Method", cdr.sip_method)
    put("role-of-Node", _ROLES.get(cdr.role_of_node or ""))
    put("nodeAddress", node_address(cdr.node_address))
    put("session-Id", cdr.session_id)
    put("list-Of-Calling-Party-Address", [involved_party(a) for a in cdr.list_of_calling_party_address])
    if cdr.called_party_address:
        put("called-Party-Address", involved_party(cdr.called_party_address))
    put("privateUserID", cdr.user_name)
    for name, moment in (
        ("serviceRequestTimeStamp", cdr.service_request_time_stamp),
        ("serviceDeliveryStartTimeStamp", cdr.service_delivery_start_time_stamp),
        ("serviceDeliveryEndTimeStamp", cdr.service_delivery_end_time_stamp),
    ):
        if moment is not None and name in has:
            value[name] = encode_timestamp(moment, offset)
            put(f"{name}Fraction", moment.microsecond // 1000)
    put("recordOpeningTime", encode_timestamp(cdr.record_opening_time, offset))
    put("recordClosureTime", encode_timestamp(cdr.record_closure_time, offset))
    iois = [
        {k: v for k, v in (("originatingIOI", i.originating_ioi), ("terminatingIOI", i.terminating_ioi)) if v}
        for i in cdr.inter_operator_identifiers
    ]
    if iois:
        put("interOperatorIdentifiers", iois if has.get("interOperatorIdentifiers") == "SEQUENCE OF" else iois[0])
    put("localRecordSequenceNumber", cdr.local_record_sequence_number % 2**32)
    put("recordSequenceNumber", cdr.record_sequence_number)
    put("causeForRecordClosing", cdr.cause_for_record_closing.value)
    if cdr.incomplete_cdr_indication is not None:
        indication = cdr.incomplete_cdr_indication
        put(
            "incomplete-CDR-Indication",
            {
                "aCRStartLost": indication.acr_start_lost,
                "aCRInterimLost": indication.acr_interim_lost,
                "aCRStopLost": indication.acr_stop_lost,
            },
        )
    if cdr.ims_charging_identifier:
        put("iMS-Charging-Identifier", cdr.ims_charging_identifier.encode())
    put("list-Of-SDP-Media-Components", [_media(m, offset) for m in cdr.list_of_sdp_media_components])
    put("event", cdr.event)
    if cdr.access_network_information:
        put("accessNetworkInformation", cdr.access_network_information[0].encode())
    put("serviceContextID", cdr.service_context_id)
    put(
        "list-of-subscription-ID",
        [
            {
                "subscriptionIDType": _SUBSCRIPTION_ID_TYPES[s.subscription_id_type],
                "subscriptionIDData": s.subscription_id_data,
            }
            for s in cdr.list_of_subscription_id
            if s.subscription_id_type in _SUBSCRIPTION_ID_TYPES
        ],
    )
    if cdr.ims_communication_service_identifier:
        put("iMSCommunicationServiceIdentifier", cdr.ims_communication_service_identifier.encode())
    servers = []
    for server in cdr.application_servers_information:
        entry: dict[str, Any] = {}
        if server.application_server:
            entry["applicationServersInvolved"] = node_address(server.application_server)
        if server.application_provided_called_parties:
            entry["applicationProvidedCalledParties"] = [
                involved_party(a) for a in server.application_provided_called_parties
            ]
        servers.append(entry)
    put("applicationServersInformation", servers)
    requested = [involved_party(a) for a in cdr.requested_party_address]
    if requested:
        put("requested-Party-Address", requested[0])
        put("list-of-Requested-Party-Address", requested)
    return record_type, value


def readable(value: Any, name: str = "") -> Any:
    """A decoded record value as JSON-ready data: CHOICEs as {alternative: value}, TimeStamps as ISO
    8601, IP addresses as text, other OCTET STRINGs as UTF-8 text where they are printable, else hex."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return {value[0]: readable(value[1], value[0])}
    if isinstance(value, dict):
        return {key: readable(item, key) for key, item in value.items()}
    if isinstance(value, list):
        return [readable(item, name) for item in value]
    if name in NULL_COMPONENTS:
        return True
    if isinstance(value, bytes):
        return _readable_octets(value, name)
    return value


def _readable_octets(data: bytes, name: str) -> str:
    lowered = name.lower()
    if len(data) == TIMESTAMP_OCTETS and ("time" in lowered or "timestamp" in lowered):
        try:
            return decode_timestamp(data).isoformat()
        except ValueError:
            pass
    if name in ("iPBinV4Address", "iPBinV6Address") and len(data) in (4, 16):
        return str(ipaddress.ip_address(data))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data.hex()
    return text if text.isprintable() else data.hex()
