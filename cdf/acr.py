"""What one Rf ACR says (TS 32.299 6.2.2, 7.2.77 IMS-Information), read out of the Diameter message.

``parse_acr`` turns a received ACR into an :class:`Acr`, a plain value that the pure
assembly works on.  It reads only; it raises ``DiameterError`` with the Result-Code and
Failed-AVP that RFC 6733 7.5 asks for when the ACR cannot be an IMS record.

Two readers give the same Acr.  The fast one takes where each AVP is from the node's validator
(``Message.avp_index``, filled on its one pass over the message) and decodes only the AVPs it needs,
with the dictionary's decoders: no AVP objects, no second walk over AVP headers.  It reads well-formed
IMS ACRs only; anything else (no IMS-Information, a foreign Node-Functionality, a message the
validator has not seen) goes to the general reader, which gives the RFC 6733 answers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from charging.cdr import RECORD_TYPE_BY_NODE
from charging.diameter import DICTIONARY, Avp, DiameterError, Message
from charging.diameter.constants import ResultCode
from charging.diameter.dictionary import DECODERS
from charging.diameter.message import HEADER_LENGTH, PLACE_END, AvpContainer, AvpIndex, AvpPlaces


class AcrType(enum.IntEnum):
    """Accounting-Record-Type (RFC 6733 9.8.1)."""

    EVENT = 1
    START = 2
    INTERIM = 3
    STOP = 4


@dataclass(frozen=True, slots=True)
class MediaComponent:
    """One SDP-Media-Component (TS 32.299 7.2.180)."""

    name: str | None
    descriptions: tuple[str, ...]
    initiator_flag: str | None
    sdp_type: str | None


@dataclass(frozen=True, slots=True)
class ApplicationServer:
    """One Application-Server-Information (TS 32.299 7.2.24)."""

    address: str | None
    provided_called_parties: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Acr:
    """The facts of one ACR that a CDR is made of.  Times are Unix seconds."""

    session_id: str
    origin_host: str
    origin_realm: str
    record_type: AcrType
    record_number: int
    received_at: float  # CDF clock at arrival
    node_functionality: str  # Node-Functionality name, e.g. "S_CSCF"
    event_time: float | None = None  # Event-Timestamp: when the node saw what it reports
    interim_interval: int | None = None
    retransmitted: bool = False  # the T flag
    user_name: str | None = None
    service_context_id: str | None = None
    subscription_ids: tuple[tuple[str, str], ...] = ()
    role_of_node: str | None = None
    icid: str | None = None
    iois: tuple[tuple[str | None, str | None], ...] = ()  # (Originating-IOI, Terminating-IOI)
    sip_method: str | None = None
    event: str | None = None
    calling_parties: tuple[str, ...] = ()
    called_party: str | None = None
    requested_parties: tuple[str, ...] = ()
    sip_request_time: float | None = None
    sip_response_time: float | None = None
    sdp_session_descriptions: tuple[str, ...] = ()
    media: tuple[MediaComponent, ...] = ()
    cause_code: int | None = None
    application_servers: tuple[ApplicationServer, ...] = ()
    ims_communication_service_identifier: str | None = None
    access_network_information: tuple[str, ...] = ()
    extensions: dict[str, Any] = field(default_factory=dict)  # IMS-Information kept verbatim for the CDR

    @property
    def time(self) -> float:
        """When the reported event happened: the node's Event-Timestamp, else the arrival at the CDF."""
        return self.event_time if self.event_time is not None else self.received_at

    @property
    def key(self) -> tuple[str, str, int]:
        """What makes a retransmission a duplicate."""
        return (self.session_id, self.origin_host, self.record_number)


def _enum_name(avp_name: str, value: Any) -> str | None:
    if value is None:
        return None
    return DICTIONARY.enum_name(avp_name, int(value)) or str(value)


def _unix(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _example(name: str, value: Any) -> bytes:
    return Avp.build(name, value).to_bytes()


def _wrap_in_service_information(inner: bytes) -> bytes:
    """Failed-AVP for a member of IMS-Information, inside its parents (RFC 6733 7.5)."""
    ims = DICTIONARY.avp("IMS-Information")
    service = DICTIONARY.avp("Service-Information")
    group = Avp.from_raw(ims.code, inner, ims.vendor_id, ims.flags).to_bytes()
    return Avp.from_raw(service.code, group, service.vendor_id, service.flags).to_bytes()


def _time_stamps(stamps: AvpContainer) -> tuple[float | None, float | None]:
    request = _unix(stamps.get("SIP-Request-Timestamp"))
    response = _unix(stamps.get("SIP-Response-Timestamp"))
    request_ms = stamps.get("SIP-Request-Timestamp-Fraction")
    response_ms = stamps.get("SIP-Response-Timestamp-Fraction")
    if request is not None and request_ms is not None:
        request += min(int(request_ms), 999) / 1000
    if response is not None and response_ms is not None:
        response += min(int(response_ms), 999) / 1000
    return request, response


def _media(group: AvpContainer) -> MediaComponent:
    return MediaComponent(
        name=group.get("SDP-Media-Name"),
        descriptions=tuple(group.all("SDP-Media-Description")),
        initiator_flag=_enum_name("Media-Initiator-Flag", group.get("Media-Initiator-Flag")),
        sdp_type=_enum_name("SDP-Type", group.get("SDP-Type")),
    )


# IMS-Information members that the CDR schema has no field for, carried in Cdr.extensions.
_EXTENSION_MEMBERS = (
    "User-Session-Id",
    "Outgoing-Session-Id",
    "Called-Asserted-Identity",
    "Associated-URI",
    "Alternate-Charged-Party-Address",
    "Number-Portability-Routing-Information",
    "Carrier-Select-Routing-Information",
    "Service-Id",
    "IMS-Application-Reference-Identifier",
    "Initial-IMS-Charging-Identifier",
    "From-Address",
    "IMS-Visited-Network-Identifier",
    "Instance-Id",
    "Served-Party-IP-Address",
)
_READ_MEMBERS = (
    "Event-Type",
    "Role-Of-Node",
    "Node-Functionality",
    "Calling-Party-Address",
    "Called-Party-Address",
    "Requested-Party-Address",
    "Time-Stamps",
    "Application-Server-Information",
    "Inter-Operator-Identifier",
    "IMS-Charging-Identifier",
    "SDP-Session-Description",
    "SDP-Media-Component",
    "Cause-Code",
    "Access-Network-Information",
    "IMS-Communication-Service-Identifier",
    *_EXTENSION_MEMBERS,
)
# (code | vendor << 32) -> name, to read IMS-Information in one pass over its members.
_MEMBER_BY_KEY = {DICTIONARY.avp(n).key: n for n in _READ_MEMBERS}
_EXTENSION_KEYS = {name: name.lower().replace("-", "_") for name in _EXTENSION_MEMBERS}


def _members(group: AvpContainer) -> tuple[dict[str, list[Any]], dict[str, Avp]]:
    """The values of the IMS-Information members read here, by name (every instance), and each first AVP."""
    values: dict[str, list[Any]] = {}
    first: dict[str, Avp] = {}
    for avp in group:
        name = _MEMBER_BY_KEY.get(avp.key)
        if name is None:
            continue
        if name in values:
            values[name].append(avp.value)
        else:
            values[name] = [avp.value]
            first[name] = avp
    return values, first


_TOP_LEVEL = (
    "Session-Id",
    "Origin-Host",
    "Origin-Realm",
    "Accounting-Record-Type",
    "Accounting-Record-Number",
    "Event-Timestamp",
    "Acct-Interim-Interval",
    "User-Name",
    "Service-Context-Id",
    "Service-Information",
)
_TOP_BY_KEY = {DICTIONARY.avp(n).key: n for n in _TOP_LEVEL}


def parse_acr(msg: Message, received_at: float) -> Acr:
    """The facts of an ACR that the node has validated against the dictionary."""
    try:
        acr = _read_fast(msg, received_at)
    except Exception:  # anything unusual: the general reader knows the right answer
        acr = None
    return acr if acr is not None else read_acr(msg, received_at)


def read_acr(msg: Message, received_at: float) -> Acr:
    """The general reader: through the message's AVP objects; raises the RFC 6733 answers."""
    top: dict[str, Any] = {}
    for avp in msg:  # one pass; the first instance of each counts
        name = _TOP_BY_KEY.get(avp.key)
        if name is not None and name not in top:
            top[name] = avp.value
    record_type_value = top["Accounting-Record-Type"]
    try:
        record_type = AcrType(record_type_value)
    except ValueError:
        raise DiameterError(
            ResultCode.DIAMETER_INVALID_AVP_VALUE,
            f"Accounting-Record-Type {record_type_value} is not EVENT, START, INTERIM or STOP",
            msg.avp("Accounting-Record-Type").to_bytes(),  # type: ignore[union-attr]
        ) from None
    service = top.get("Service-Information")
    ims = service.get("IMS-Information") if service is not None else None
    if service is None or ims is None:
        raise DiameterError(
            ResultCode.DIAMETER_MISSING_AVP,
            "an IMS ACR needs Service-Information with IMS-Information (TS 32.299 6.2.2)",
            _wrap_in_service_information(_example("Node-Functionality", 0)),
        )
    members, first = _members(ims)
    functionality_avp = first.get("Node-Functionality")
    if functionality_avp is None:
        raise DiameterError(
            ResultCode.DIAMETER_MISSING_AVP,
            "IMS-Information needs Node-Functionality",
            _wrap_in_service_information(_example("Node-Functionality", 0)),
        )
    functionality = DICTIONARY.enum_name("Node-Functionality", functionality_avp.value)
    if functionality not in RECORD_TYPE_BY_NODE:
        raise DiameterError(
            ResultCode.DIAMETER_INVALID_AVP_VALUE,
            f"Node-Functionality {functionality or functionality_avp.value} is not an IMS node",
            _wrap_in_service_information(functionality_avp.to_bytes()),
        )

    def one(name: str) -> Any:
        found = members.get(name)
        return found[0] if found else None

    def every(name: str) -> list[Any]:
        return members.get(name, [])

    event_type = one("Event-Type")
    stamps = one("Time-Stamps")
    request_time, response_time = _time_stamps(stamps) if stamps is not None else (None, None)
    extensions: dict[str, Any] = {}
    for name, key in _EXTENSION_KEYS.items():
        values = members.get(name)
        if values:
            extensions[key] = [_text(v) for v in values] if len(values) > 1 else _text(values[0])
    return Acr(
        **_header_fields(msg, top, record_type, received_at, functionality),
        subscription_ids=tuple(
            (_enum_name("Subscription-Id-Type", s.get("Subscription-Id-Type")) or "", s.get("Subscription-Id-Data", ""))
            for s in service.all("Subscription-Id")
        ),
        role_of_node=_enum_name("Role-Of-Node", one("Role-Of-Node")),
        icid=one("IMS-Charging-Identifier"),
        iois=tuple((g.get("Originating-IOI"), g.get("Terminating-IOI")) for g in every("Inter-Operator-Identifier")),
        sip_method=event_type.get("SIP-Method") if event_type is not None else None,
        event=event_type.get("Event") if event_type is not None else None,
        calling_parties=tuple(every("Calling-Party-Address")),
        called_party=one("Called-Party-Address"),
        requested_parties=tuple(every("Requested-Party-Address")),
        sip_request_time=request_time,
        sip_response_time=response_time,
        sdp_session_descriptions=tuple(every("SDP-Session-Description")),
        media=tuple(_media(g) for g in every("SDP-Media-Component")),
        cause_code=one("Cause-Code"),
        application_servers=tuple(
            ApplicationServer(g.get("Application-Server"), tuple(g.all("Application-Provided-Called-Party-Address")))
            for g in every("Application-Server-Information")
        ),
        ims_communication_service_identifier=one("IMS-Communication-Service-Identifier"),
        access_network_information=tuple(_text(v) for v in every("Access-Network-Information")),
        extensions=extensions,
    )


def _header_fields(
    msg: Message, top: dict[str, Any], record_type: AcrType, received_at: float, functionality: str | None
) -> dict[str, Any]:
    """The fields of an Acr that its command-level AVPs give: both readers take them the same way."""
    interval = top.get("Acct-Interim-Interval")
    return {
        "session_id": top["Session-Id"],
        "origin_host": top["Origin-Host"],
        "origin_realm": top["Origin-Realm"],
        "record_type": record_type,
        "record_number": int(top["Accounting-Record-Number"]),
        "received_at": received_at,
        "node_functionality": functionality,
        "event_time": _unix(top.get("Event-Timestamp")),
        "interim_interval": int(interval) if interval is not None else None,
        "retransmitted": msg.is_retransmit,
        "user_name": top.get("User-Name"),
        "service_context_id": top.get("Service-Context-Id"),
    }


# -- the fast reader: AVPs where the validator found them (Message.avp_index) ----------------------------------
# One call per field: UTF8String decoded in place (invalid UTF-8 raises, and the general reader answers
# 5004), other types through the dictionary's decoder.
def _str(buf: bytes, found: list[int] | None) -> str | None:
    if not found:
        return None
    place = found[0]
    return buf[place >> 32 : place & PLACE_END].decode()


def _strs(buf: bytes, found: list[int] | None) -> tuple[str, ...]:
    if not found:
        return ()
    return tuple([buf[place >> 32 : place & PLACE_END].decode() for place in found])


def _value(buf: bytes, found: list[int] | None, key: int) -> Any:
    if not found:
        return None
    place = found[0]
    return DECODERS[key](buf, place >> 32, place & PLACE_END)


def _name(buf: bytes, found: list[int] | None, key: int) -> str | None:
    """An Enumerated value's name, as _enum_name gives it."""
    if not found:
        return None
    place = found[0]
    value = int(DECODERS[key](buf, place >> 32, place & PLACE_END))
    return _ENUM_NAMES[key].get(value) or str(value)


T = TypeVar("T")
_MEMO_SIZE = 4096


class _Groups(Generic[T]):
    """The values of every instance of a grouped AVP, each read once per distinct content.

    A group's value is a function of its bytes alone, and the same groups come back again and again: a
    subscriber's Subscription-Id, a pair of networks' Inter-Operator-Identifier, the SIP method, a call's
    SDP-Media-Component in each node's START, INTERIM and STOP.  The last ``_MEMO_SIZE`` distinct ones are
    remembered (all forgotten at once when full).
    """

    __slots__ = ("_known", "_read")

    def __init__(self, read: Callable[[bytes, AvpPlaces], T]) -> None:
        self._read = read  # the value, from the message's bytes and where the group's members are in them
        self._known: dict[bytes, T] = {}

    def __call__(self, buf: bytes, index: AvpIndex, found: list[int] | None) -> tuple[T, ...]:
        if not found:
            return ()
        known = self._known
        values = []
        for place in found:
            start = place >> 32
            raw = buf[start : place & PLACE_END]
            value = known.get(raw)
            if value is None:
                value = self._read(buf, index[start])
                if len(known) >= _MEMO_SIZE:
                    known.clear()
                known[raw] = value
            values.append(value)
        return tuple(values)


def _k(name: str) -> int:
    return DICTIONARY.avp(name).key


_ENUM_NAMES = {d.key: d.enum_by_value for d in DICTIONARY.by_key.values()}
_SERVICE_INFORMATION = _k("Service-Information")
_IMS_INFORMATION = _k("IMS-Information")
_SUBSCRIPTION_ID, _SUBSCRIPTION_ID_TYPE, _SUBSCRIPTION_ID_DATA = (
    _k("Subscription-Id"),
    _k("Subscription-Id-Type"),
    _k("Subscription-Id-Data"),
)
_EVENT_TYPE, _SIP_METHOD, _EVENT = _k("Event-Type"), _k("SIP-Method"), _k("Event")
_TIME_STAMPS, _REQUEST_TIME, _RESPONSE_TIME = (
    _k("Time-Stamps"),
    _k("SIP-Request-Timestamp"),
    _k("SIP-Response-Timestamp"),
)
_REQUEST_MS, _RESPONSE_MS = _k("SIP-Request-Timestamp-Fraction"), _k("SIP-Response-Timestamp-Fraction")
_IOI, _ORIGINATING_IOI, _TERMINATING_IOI = _k("Inter-Operator-Identifier"), _k("Originating-IOI"), _k("Terminating-IOI")
_MEDIA, _MEDIA_NAME, _MEDIA_DESCRIPTION = _k("SDP-Media-Component"), _k("SDP-Media-Name"), _k("SDP-Media-Description")
_INITIATOR, _SDP_TYPE = _k("Media-Initiator-Flag"), _k("SDP-Type")
_AS_INFO, _AS, _AS_CALLED = (
    _k("Application-Server-Information"),
    _k("Application-Server"),
    _k("Application-Provided-Called-Party-Address"),
)
_FUNCTIONALITY, _ROLE, _CAUSE = _k("Node-Functionality"), _k("Role-Of-Node"), _k("Cause-Code")
_ICID, _ICSI, _ACCESS = (
    _k("IMS-Charging-Identifier"),
    _k("IMS-Communication-Service-Identifier"),
    _k("Access-Network-Information"),
)
_CALLING, _CALLED, _REQUESTED = _k("Calling-Party-Address"), _k("Called-Party-Address"), _k("Requested-Party-Address")
_SDP_SESSION = _k("SDP-Session-Description")
_EXTENSION_FIELDS = [(_k(name), key) for name, key in _EXTENSION_KEYS.items()]
_RECORD_TYPES = {int(t): t for t in AcrType}

_subscription_ids = _Groups(
    lambda b, g: (
        _name(b, g.get(_SUBSCRIPTION_ID_TYPE), _SUBSCRIPTION_ID_TYPE) or "",
        _str(b, g.get(_SUBSCRIPTION_ID_DATA)) or "",
    )
)
_iois = _Groups(lambda b, g: (_str(b, g.get(_ORIGINATING_IOI)), _str(b, g.get(_TERMINATING_IOI))))
_event_types = _Groups(lambda b, g: (_str(b, g.get(_SIP_METHOD)), _str(b, g.get(_EVENT))))
_media_components = _Groups(
    lambda b, g: MediaComponent(
        name=_str(b, g.get(_MEDIA_NAME)),
        descriptions=_strs(b, g.get(_MEDIA_DESCRIPTION)),
        initiator_flag=_name(b, g.get(_INITIATOR), _INITIATOR),
        sdp_type=_name(b, g.get(_SDP_TYPE), _SDP_TYPE),
    )
)
_application_servers = _Groups(lambda b, g: ApplicationServer(_str(b, g.get(_AS)), _strs(b, g.get(_AS_CALLED))))


def _read_fast(msg: Message, received_at: float) -> Acr | None:
    """The Acr of a well-formed IMS ACR, or None for anything the general reader must look at (and for a
    message the node's validator has not seen)."""
    index = msg.avp_index
    if index is None:
        return None
    buf = msg.to_bytes()
    top: dict[str, Any] = {}
    service: AvpPlaces | None = None
    for key, places in index[HEADER_LENGTH].items():  # the first instance of each counts
        name = _TOP_BY_KEY.get(key)
        if name is None:
            continue
        if key == _SERVICE_INFORMATION:
            service = index[places[0] >> 32]
            top[name] = None
        else:
            top[name] = _value(buf, places, key)
    if service is None:
        return None
    record_type = _RECORD_TYPES.get(top["Accounting-Record-Type"])
    if record_type is None:
        return None
    ims_at = service.get(_IMS_INFORMATION)
    if not ims_at:
        return None
    ims = index[ims_at[0] >> 32]
    get = ims.get
    functionality_at = get(_FUNCTIONALITY)
    if not functionality_at:
        return None
    functionality = _ENUM_NAMES[_FUNCTIONALITY].get(_value(buf, functionality_at, _FUNCTIONALITY))
    if functionality not in RECORD_TYPE_BY_NODE:
        return None

    request_time = response_time = None
    stamps_at = get(_TIME_STAMPS)
    if stamps_at:
        stamps = index[stamps_at[0] >> 32]
        request_time = _unix(_value(buf, stamps.get(_REQUEST_TIME), _REQUEST_TIME))
        response_time = _unix(_value(buf, stamps.get(_RESPONSE_TIME), _RESPONSE_TIME))
        request_ms = _value(buf, stamps.get(_REQUEST_MS), _REQUEST_MS)
        response_ms = _value(buf, stamps.get(_RESPONSE_MS), _RESPONSE_MS)
        if request_time is not None and request_ms is not None:
            request_time += min(int(request_ms), 999) / 1000
        if response_time is not None and response_ms is not None:
            response_time += min(int(response_ms), 999) / 1000
    event_types = _event_types(buf, index, get(_EVENT_TYPE))
    sip_method, event = event_types[0] if event_types else (None, None)
    extensions: dict[str, Any] = {}
    for key, extension in _EXTENSION_FIELDS:
        found = get(key)
        if found:
            texts = [_text(DECODERS[key](buf, place >> 32, place & PLACE_END)) for place in found]
            extensions[extension] = texts if len(texts) > 1 else texts[0]
    return Acr(
        **_header_fields(msg, top, record_type, received_at, functionality),
        subscription_ids=_subscription_ids(buf, index, service.get(_SUBSCRIPTION_ID)),
        role_of_node=_name(buf, get(_ROLE), _ROLE),
        icid=_str(buf, get(_ICID)),
        iois=_iois(buf, index, get(_IOI)),
        sip_method=sip_method,
        event=event,
        calling_parties=_strs(buf, get(_CALLING)),
        called_party=_str(buf, get(_CALLED)),
        requested_parties=_strs(buf, get(_REQUESTED)),
        sip_request_time=request_time,
        sip_response_time=response_time,
        sdp_session_descriptions=_strs(buf, get(_SDP_SESSION)),
        media=_media_components(buf, index, get(_MEDIA)),
        cause_code=_value(buf, get(_CAUSE), _CAUSE),
        application_servers=_application_servers(buf, index, get(_AS_INFO)),
        ims_communication_service_identifier=_str(buf, get(_ICSI)),
        access_network_information=tuple(
            _text(DECODERS[_ACCESS](buf, place >> 32, place & PLACE_END)) for place in get(_ACCESS, ())
        ),
        extensions=extensions,
    )
