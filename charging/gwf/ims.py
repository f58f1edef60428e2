"""What Ro and Rf need from an initial INVITE: ICID, IOIs, parties, the served subscriber.  No I/O.

P-Charging-Vector (RFC 7315 section 4.6, TS 24.229 7.2A.5)::

    P-Charging-Vector = "P-Charging-Vector" HCOLON icid-value *(SEMI charge-params)
    icid-value        = "icid-value" EQUAL gen-value
    charge-params     = icid-gen-addr / orig-ioi / term-ioi / transit-ioi / related-icid / generic-param

The calling party is the P-Asserted-Identity (every value, a SIP and a tel URI may both be there), else
the From URI; the called party is the Request-URI (TS 32.299 7.2.29 and 7.2.30).  The served user, whose
account pays, comes from P-Served-User (RFC 5502) when the S-CSCF sent one, with its ``sescase`` giving
the role of node; otherwise the calling party for the originating role and the Request-URI for the
terminating role.
"""

from __future__ import annotations

from dataclasses import dataclass

from charging.gwf.sip.message import NameAddr, Request, SipParseError, Uri, parse_params, split_outside, unquote

ORIGINATING_ROLE = 0
TERMINATING_ROLE = 1

END_USER_E164 = 0
END_USER_SIP_URI = 2


@dataclass(slots=True, frozen=True)
class ChargingVector:
    icid: str | None = None
    icid_generated_at: str | None = None
    orig_ioi: str | None = None
    term_ioi: str | None = None


def parse_charging_vector(value: str | None) -> ChargingVector:
    if not value:
        return ChargingVector()
    params = parse_params(value)

    def get(name: str) -> str | None:
        found = params.get(name)
        return unquote(found) if found else None

    return ChargingVector(get("icid-value"), get("icid-generated-at"), get("orig-ioi"), get("term-ioi"))


@dataclass(slots=True, frozen=True)
class SessionData:
    call_id: str
    icid: str | None
    orig_ioi: str | None
    term_ioi: str | None
    calling_parties: tuple[str, ...]
    called_party: str
    subscriber: Uri
    role: int
    request_time: float

    def subscription_id(self) -> tuple[int, str]:
        return subscription_id(self.subscriber)


def subscription_id(uri: Uri) -> tuple[int, str]:
    """Subscription-Id-Type and -Data for a subscriber URI (RFC 4006 8.46, 8.47).

    tel URIs and SIP URIs with user=phone are END_USER_E164 with the digits alone (no '+', no visual
    separators); other SIP URIs are END_USER_SIP_URI as ``sip:user@host`` without port or parameters.
    """
    if uri.scheme == "tel" or (uri.is_sip and uri.params.get("user") == "phone" and uri.user):
        number = (uri.user or "").split(";", 1)[0]
        return END_USER_E164, "".join(ch for ch in number if ch.isdigit())
    return END_USER_SIP_URI, uri.address_of_record()


def session_data(invite: Request, default_role: int, now: float) -> SessionData:
    vector = parse_charging_vector(invite.headers.get("P-Charging-Vector"))
    asserted = _uris(invite, "P-Asserted-Identity")
    from_uri = invite.from_.uri
    calling = asserted or [from_uri]
    role = default_role
    served: Uri | None = None
    served_value = invite.headers.get("P-Served-User")
    if served_value:
        try:
            served_addr = NameAddr.parse(served_value)
        except SipParseError:
            served_addr = None
        if served_addr is not None:
            served = served_addr.uri
            sescase = served_addr.params.get("sescase")
            if sescase == "orig":
                role = ORIGINATING_ROLE
            elif sescase == "term":
                role = TERMINATING_ROLE
    if served is None:
        served = calling[0] if role == ORIGINATING_ROLE else invite.uri
    return SessionData(
        call_id=invite.call_id,
        icid=vector.icid,
        orig_ioi=vector.orig_ioi,
        term_ioi=vector.term_ioi,
        calling_parties=tuple(str(u) for u in calling),
        called_party=str(invite.uri),
        subscriber=served,
        role=role,
        request_time=now,
    )


def _uris(req: Request, name: str) -> list[Uri]:
    out = []
    for value in req.headers.get_all(name):
        for part in split_outside(value, ","):
            if part.strip():
                try:
                    out.append(NameAddr.parse(part).uri)
                except SipParseError:
                    continue
    return out
