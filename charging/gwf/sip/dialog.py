"""The INVITE dialog as a record-routing proxy sees it (RFC 3261 section 12), no I/O.

A proxy on the path of a dialog is not a party to it, but to end a session on its own it must speak for
each side to the other: a BYE towards the callee as if from the caller, and one towards the caller as if
from the callee.  For that a ``Call`` keeps, per leg, what that user agent's peer keeps about it: its tag,
its remote target (Contact), the route set from this proxy towards it, and the highest CSeq it has used.

Route sets here are the part of the dialog's route set that lies beyond this proxy (RFC 3261 12.1.1 and
12.1.2): towards the caller, the Record-Route values the initial INVITE carried when it reached us (those
proxies sit between us and the caller, nearest first); towards the callee, the values the 2xx carries
above our own, reversed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from charging.gwf.sip.message import Headers, NameAddr, Request, Response, Uri
from charging.gwf.sip.transaction import Addr, InviteClientTransaction, InviteServerTransaction


class CallState(enum.Enum):
    OFFERED = "offered"  # initial INVITE held while the application decides (credit control)
    CALLING = "calling"  # forwarded, no provisional yet
    PROCEEDING = "proceeding"  # a provisional came back
    CONFIRMED = "confirmed"  # a 2xx passed through: the dialog exists
    ENDED = "ended"  # BYE, CANCEL, a failure response, or a teardown by this proxy


@dataclass(slots=True)
class Leg:
    """One user agent of the dialog, as the other one (and this proxy speaking for it) must address it."""

    tag: str | None = None
    target: Uri | None = None  # its Contact: the Request-URI of requests sent to it
    route: list[str] = field(default_factory=list)  # Route values from this proxy towards it, nearest first
    cseq: int | None = None  # highest CSeq number it has sent in the dialog
    name_addr: str = ""  # its From (caller) or To (callee) header value, tag included once known


@dataclass(slots=True)
class Call:
    """An initial INVITE that passes through, and the dialog it creates."""

    id: str
    call_id: str
    invite: Request  # as received (after Route pre-processing)
    source: Addr
    server_tx: InviteServerTransaction
    caller: Leg
    callee: Leg = field(default_factory=Leg)
    state: CallState = CallState.OFFERED
    forwarded: Request | None = None  # the INVITE as sent downstream
    client_tx: InviteClientTransaction | None = None
    outbound_transport: str = "UDP"
    provisional_received: bool = False
    cancel_pending: bool = False  # CANCEL to send as soon as a provisional arrives (RFC 3261 9.1)
    cancelled: bool = False
    timer_c: float | None = None  # RFC 3261 16.6 item 11
    ended_by: str | None = None  # caller | callee | proxy
    end_reason: str = ""
    teardown_sent: bool = False
    answered_at: float | None = None
    ended_at: float | None = None
    app: Any = None  # the application's state for this call (the credit-control session)

    @property
    def is_confirmed(self) -> bool:
        return self.state is CallState.CONFIRMED

    @property
    def is_over(self) -> bool:
        return self.state is CallState.ENDED

    def side_of(self, request: Request) -> str:
        """Which user agent sent an in-dialog request: the caller uses its own tag in From."""
        return "caller" if request.from_.tag == self.caller.tag else "callee"


def caller_leg(invite: Request) -> Leg:
    contact = invite.name_addrs("Contact")
    return Leg(
        tag=invite.from_.tag,
        target=contact[0].uri if contact else None,
        route=[v for v in invite.headers.get_all("Record-Route")],
        cseq=invite.cseq.number,
        name_addr=invite.headers.get("From") or "",
    )


def callee_leg(response: Response, is_mine: Callable[[Uri], bool]) -> Leg:
    """The callee's side from a 2xx: ``is_mine(uri)`` spots the Record-Route this proxy put in for the call."""
    contact = response.name_addrs("Contact")
    above: list[str] = []
    for value in response.headers.get_all("Record-Route"):
        if is_mine(NameAddr.parse(value).uri):
            break
        above.append(value)
    return Leg(
        tag=response.to.tag,
        target=contact[0].uri if contact else None,
        route=list(reversed(above)),
        cseq=None,
        name_addr=response.headers.get("To") or "",
    )


def note_cseq(call: Call, request: Request) -> None:
    """Keep each side's highest CSeq, so that a BYE this proxy sends for it comes after them."""
    leg = call.caller if call.side_of(request) == "caller" else call.callee
    number = request.cseq.number
    if request.method != "ACK" and (leg.cseq is None or number > leg.cseq):
        leg.cseq = number


def next_hop_of(route: list[str], target: Uri) -> tuple[Uri, list[str], Uri]:
    """Request-URI, Route values and the URI to send to, for a request sent within the dialog (12.2.1.1).

    With a loose router first (``lr``) the Request-URI is the remote target and the request goes to the
    first route; with a strict router first, that router becomes the Request-URI and the remote target is
    appended as the last route.
    """
    if not route:
        return target, [], target
    first = NameAddr.parse(route[0]).uri
    if "lr" in first.params:
        return target, list(route), first
    return first, [*route[1:], f"<{target}>"], first


def build_bye(call: Call, toward: str, via: str, reason: str | None = None) -> Request:
    """A BYE this proxy sends on its own, to the caller (as if from the callee) or to the callee (as if from
    the caller).  The CSeq follows the highest one the impersonated side has used (12.2.1.1)."""
    if toward == "callee":
        to_leg, from_leg = call.callee, call.caller
    else:
        to_leg, from_leg = call.caller, call.callee
    if to_leg.target is None:
        raise ValueError(f"no remote target for the {toward}")
    uri, routes, _ = next_hop_of(to_leg.route, to_leg.target)
    headers = Headers()
    headers.add("Via", via)
    for value in routes:
        headers.add("Route", value)
    headers.add("Max-Forwards", "70")
    headers.add("From", from_leg.name_addr)
    headers.add("To", to_leg.name_addr)
    headers.add("Call-ID", call.call_id)
    number = (from_leg.cseq or 0) + 1
    from_leg.cseq = number
    headers.add("CSeq", f"{number} BYE")
    if reason:
        headers.add("Reason", reason)  # RFC 3326
    return Request("BYE", uri, headers)


def build_ack_for_2xx(call: Call, via: str, to_value: str) -> Request:
    """The ACK of a 2xx this proxy will not forward (the caller's INVITE was already ended here)."""
    leg = call.callee
    assert leg.target is not None
    uri, routes, _ = next_hop_of(leg.route, leg.target)
    headers = Headers()
    headers.add("Via", via)
    for value in routes:
        headers.add("Route", value)
    headers.add("Max-Forwards", "70")
    headers.add("From", call.caller.name_addr)
    headers.add("To", to_value)
    headers.add("Call-ID", call.call_id)
    headers.add("CSeq", f"{call.invite.cseq.number} ACK")
    return Request("ACK", uri, headers)


def build_cancel(forwarded: Request) -> Request:
    """CANCEL of a forwarded INVITE (RFC 3261 9.1): same Request-URI, Call-ID, From, To, CSeq number and
    the INVITE's top Via, so that it matches the INVITE's transaction downstream."""
    headers = Headers()
    headers.add("Via", forwarded.headers.get("Via") or "")
    for route in forwarded.headers.get_all("Route"):
        headers.add("Route", route)
    headers.add("Max-Forwards", "70")
    headers.add("From", forwarded.headers.get("From") or "")
    headers.add("To", forwarded.headers.get("To") or "")
    headers.add("Call-ID", forwarded.call_id)
    headers.add("CSeq", f"{forwarded.cseq.number} CANCEL")
    return Request("CANCEL", forwarded.uri, headers)
