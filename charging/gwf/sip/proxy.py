"""A transaction-stateful, record-routing SIP proxy core (RFC 3261 section 16), no I/O.

``Proxy`` takes parsed messages with their source address and the time, and returns what must happen:
``Transmit`` actions for the transport, and call events for the application (``CallOffered`` when an
initial INVITE waits for a decision, ``CallAnswered``, ``CallFailed``, ``CallEnded``, ``InDialog``,
``TeardownAnswered``).  The application answers a ``CallOffered`` with ``forward_call`` or
``reject_call`` and may end any call with ``end_call`` (BYE to both legs, or CANCEL before an answer).

What it does, by RFC 3261 section: request validation (16.3: URI scheme, Max-Forwards with 483, loop
detection with 482, Proxy-Require with 420), Route pre-processing (16.4, including a strict-routing
previous hop that put us in the Request-URI), target and next hop (16.5, 16.6: the top Route, else a
configured static next hop for initial requests, else the Request-URI), forwarding (16.6: Max-Forwards
decrement, Record-Route on dialog-creating INVITEs, a Via whose branch carries a loop-detection hash,
Timer C), response processing (16.7: the proxy's Via popped, 100 absorbed, 503 turned into 500, every
2xx forwarded), timeouts and transport errors (16.8, 16.9), CANCEL (16.10) and stateless forwarding of
ACKs for 2xx and of stray responses (16.11).  It forwards to one target; it does not fork, and it does
not resolve names with RFC 3263 (a hostname target is looked up as an A/AAAA record by the transport).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from charging.gwf.sip.dialog import (
    Call,
    CallState,
    build_ack_for_2xx,
    build_bye,
    build_cancel,
    callee_leg,
    caller_leg,
    next_hop_of,
    note_cseq,
)
from charging.gwf.sip.message import (
    BRANCH_COOKIE,
    NameAddr,
    Request,
    Response,
    SipParseError,
    Uri,
    Via,
    make_response,
    parse_message,
    refusal,
)
from charging.gwf.sip.transaction import (
    Addr,
    ClientTransaction,
    Deliver,
    Event,
    InviteClientTransaction,
    InviteServerTransaction,
    NewRequest,
    ServerTransaction,
    StrayResponse,
    Timeout,
    TimerValues,
    TransactionLayer,
    Transmit,
    TransportFailure,
    client_key,
)

log = logging.getLogger("charging.gwf.sip")

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, PRACK, INFO, MESSAGE, REFER, NOTIFY, SUBSCRIBE"


@dataclass(slots=True)
class ProxyConfig:
    host: str  # the address put in Via and Record-Route
    ports: dict[str, int]  # transport (UDP, TCP) -> the port listening for it
    next_hop: Uri | None = None  # where initial requests without a Route go (a static S-CSCF route)
    aliases: tuple[tuple[str, int], ...] = ()  # other host:port values that name this proxy
    timer_c: float = 180.0  # RFC 3261 16.6 item 11: more than 3 minutes
    timers: TimerValues = field(default_factory=TimerValues)
    linger: float = 32.0  # how long an ended call is kept to absorb late messages


# -- events for the application -------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class CallOffered:
    """An initial INVITE: the application must call ``forward_call`` or ``reject_call``."""

    call: Call


@dataclass(slots=True, frozen=True)
class CallAnswered:
    call: Call
    response: Response


@dataclass(slots=True, frozen=True)
class CallFailed:
    """The INVITE got a final non-2xx response (the caller was sent ``status``)."""

    call: Call
    status: int


@dataclass(slots=True, frozen=True)
class CallEnded:
    """BYE or CANCEL from ``by`` (caller or callee)."""

    call: Call
    by: str
    method: str


@dataclass(slots=True, frozen=True)
class InDialog:
    """A request within the dialog that does not end it (re-INVITE, UPDATE, INFO...), being forwarded."""

    call: Call
    request: Request
    side: str


@dataclass(slots=True, frozen=True)
class TeardownAnswered:
    """The final outcome of a BYE or CANCEL this proxy sent on its own (408 on timeout, 503 on failure)."""

    call: Call
    toward: str
    method: str
    status: int


AppEvent = CallOffered | CallAnswered | CallFailed | CallEnded | InDialog | TeardownAnswered
Output = Transmit | AppEvent


@dataclass(slots=True)
class _Relay:
    server: ServerTransaction | None  # None for requests this proxy originates
    call: Call | None
    own: str = ""  # for requests of our own: "bye-caller", "bye-callee", "cancel", "ack"
    initial: bool = False  # the call's initial INVITE


def _random_id() -> str:
    return secrets.token_hex(8)


class Proxy:
    def __init__(self, config: ProxyConfig, ids: Callable[[], str] = _random_id) -> None:
        self.config = config
        self.ids = ids
        self.layer = TransactionLayer(config.timers)
        # Calls by their own id, which our Record-Route carries (``;gwf=``): the same dialog may pass this
        # AS twice (an S-CSCF spiral serving both the originating and the terminating user), so the Call-ID
        # alone does not say which passage an in-dialog request is on.
        self.calls: dict[str, Call] = {}
        self._by_call_id: dict[str, list[Call]] = {}
        self._relays: dict[str, _Relay] = {}  # by client transaction key
        self._by_server: dict[str, Call] = {}  # by INVITE server transaction key
        self._me = {(config.host.lower(), port) for port in config.ports.values()}
        self._me |= {(h.lower(), p) for h, p in config.aliases}
        self.dropped = 0  # messages discarded as unparseable or misrouted
        self.refused = 0  # requests answered 400/505/513 because they could not be parsed

    # -- identity --------------------------------------------------------------------------------
    def is_me(self, uri: Uri) -> bool:
        if not uri.is_sip:
            return False
        port = uri.port or (5061 if uri.scheme == "sips" else 5060)
        return (uri.host.lower(), port) in self._me

    def _mine(self, call: Call) -> Callable[[Uri], bool]:
        """Whether a Record-Route URI is the one this proxy put there for ``call``."""
        return lambda uri: self.is_me(uri) and uri.params.get("gwf") == call.id

    def _via_is_me(self, via: Via) -> bool:
        return via.sent_by in self._me or (via.sent_by[0].lower(), via.sent_by[1]) in self._me

    def _port(self, transport: str) -> int:
        return self.config.ports.get(transport, next(iter(self.config.ports.values())))

    def _via(self, transport: str, branch: str) -> str:
        return f"SIP/2.0/{transport} {self.config.host}:{self._port(transport)};branch={branch}"

    def _record_route(self, transport: str, call: Call | None) -> str:
        param = "" if transport == "UDP" else f";transport={transport.lower()}"
        token = f";gwf={call.id}" if call is not None else ""
        return f"<sip:{self.config.host}:{self._port(transport)}{param};lr{token}>"

    def new_tag(self) -> str:
        return self.ids()

    def _branch(self, loop: str = "") -> str:
        return f"{BRANCH_COOKIE}-gwf-{self.ids()}" + (f".{loop}" if loop else "")

    # -- input -----------------------------------------------------------------------------------
    def receive_data(self, data: bytes, source: Addr, now: float) -> list[Output]:
        try:
            msg = parse_message(data)
        except SipParseError as error:
            return self._refuse(data, error, source)
        return self.receive(msg, source, now)

    def _refuse(self, data: bytes, error: SipParseError, source: Addr) -> list[Output]:
        """Answer a request the parser refused with 400/505/513 when a response can be built; else drop it."""
        refused = refusal(data, error)
        if refused is None:
            self.dropped += 1  # not a request, an ACK, or no Via/From/To/Call-ID/CSeq to answer with
            log.warning("SIP message from %s:%s dropped: %s", source.host, source.port, error)
            return []
        response, top = refused
        self.refused += 1
        log.warning("SIP request from %s:%s refused with %d: %s", source.host, source.port, response.status, error)
        # RFC 3261 18.2.2 (and RFC 3581): over UDP to the port the top Via names unless it asked for rport;
        # over a stream back on the connection the request came on.
        port = source.port
        if not source.reliable and top is not None and "rport" not in top.params:
            port = top.port or 5060
        return [Transmit(response, Addr(source.transport, source.host, port))]

    def receive(self, msg: Request | Response, source: Addr, now: float) -> list[Output]:
        if isinstance(msg, Request):
            _mark_source(msg, source)
        return self._events(self.layer.receive(msg, source, now), now)

    def timer(self, now: float) -> list[Output]:
        out = self._events(self.layer.timer(now), now)
        for key in [k for k in self._relays if k not in self.layer.transactions]:
            del self._relays[key]
        for call in list(self.calls.values()):
            if call.timer_c is not None and call.timer_c <= now:
                call.timer_c = None
                out += self._timer_c(call, now)
            if call.is_over and call.ended_at is not None and now - call.ended_at >= self.config.linger:
                self._forget(call)
        return out

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.layer.next_deadline(),) if d is not None]
        for call in self.calls.values():
            if call.timer_c is not None:
                deadlines.append(call.timer_c)
            if call.is_over and call.ended_at is not None:
                deadlines.append(call.ended_at + self.config.linger)
        return min(deadlines) if deadlines else None

    def transport_error(self, message: Request | Response, now: float) -> list[Output]:
        """The transport could not send ``message``: its client transaction fails (RFC 3261 16.9)."""
        if not isinstance(message, Request) or message.method == "ACK":
            return []
        tx = self.layer.transactions.get(client_key(message.top_via.branch or "", message.method))
        if tx is None:
            return []
        return self._events(self.layer.transport_error(tx), now)

    def _events(self, events: list[Event], now: float) -> list[Output]:
        out: list[Output] = []
        for event in events:
            if isinstance(event, Transmit):
                out.append(event)
            elif isinstance(event, NewRequest):
                out += self._on_request(event.transaction, event.request, event.source, now)
            elif isinstance(event, Deliver):
                if isinstance(event.message, Response) and isinstance(event.transaction, ClientTransaction):
                    out += self._on_response(event.transaction, event.message, now)
                elif isinstance(event.message, Request):  # an ACK for a 2xx that matched the INVITE (RFC 6026)
                    out += self._forward_ack(event.message, event.transaction.peer, now)
            elif isinstance(event, StrayResponse):
                out += self._stray_response(event.response)
            elif isinstance(event, Timeout):
                if isinstance(event.transaction, ClientTransaction):
                    out += self._client_failed(event.transaction, 408, now)
            elif isinstance(event, TransportFailure) and isinstance(event.transaction, ClientTransaction):
                out += self._client_failed(event.transaction, 503, now)
        return out

    def _respond(self, stx: ServerTransaction, status: int, now: float, reason: str = "", **extra: str) -> list[Output]:
        response = make_response(stx.request, status, reason, to_tag=self.new_tag())
        for name, value in extra.items():
            response.headers.add(name.replace("_", "-"), value)
        return self._events(self.layer.respond(stx, response, now), now)

    # -- requests --------------------------------------------------------------------------------
    def _on_request(self, stx: ServerTransaction | None, req: Request, source: Addr, now: float) -> list[Output]:
        if stx is None:
            return self._forward_ack(req, source, now)
        stx.loop = loop_hash(req)
        refusal = self._validate(req, stx.loop)
        if refusal is not None:
            status, extra = refusal
            if status == 200:
                return self._respond(stx, 200, now, Allow=ALLOW)
            return self._respond(stx, status, now, **extra)
        ours = self._preprocess_route(req)
        if req.method == "CANCEL":
            return self._on_cancel(stx, req, now)
        out: list[Output] = []
        if req.method == "INVITE":
            out += self._events(self.layer.respond(stx, make_response(req, 100), now), now)  # 16.2: at once
        in_dialog = req.to.tag is not None
        call = self._call_of(req, ours) if in_dialog else None
        if in_dialog and call is not None and req.from_.tag in (call.caller.tag, call.callee.tag):
            side = call.side_of(req)
            note_cseq(call, req)
            if req.method == "BYE":
                if not call.is_over:
                    self._end(call, side, "BYE", now)
                    out.append(CallEnded(call, side, "BYE"))
            else:
                out.append(InDialog(call, req, side))
            return out + self._forward(stx, req, now, call=call, toward=_other(side))
        if req.method == "INVITE" and not in_dialog:
            assert isinstance(stx, InviteServerTransaction)
            call = Call(self.ids(), req.call_id, req, source, stx, caller_leg(req))
            self.calls[call.id] = call
            self._by_call_id.setdefault(call.call_id, []).append(call)
            self._by_server[stx.key] = call
            return [*out, CallOffered(call)]
        if not req.headers.get("Route") and self.is_me(req.uri) and (in_dialog or self.config.next_hop is None):
            if req.method == "OPTIONS":
                return self._respond(stx, 200, now, Allow=ALLOW)
            return out + self._respond(stx, 481 if in_dialog else 404, now)
        return out + self._forward(stx, req, now)

    def _call_of(self, req: Request, ours: list[Uri]) -> Call | None:
        """The call an in-dialog request belongs to: by the token in our Route, else by Call-ID and tags."""
        for uri in ours:
            token = uri.params.get("gwf")
            if token and (call := self.calls.get(token)) is not None:
                return call
        tag = req.from_.tag
        for call in reversed(self._by_call_id.get(req.call_id, [])):
            if tag is not None and tag in (call.caller.tag, call.callee.tag):
                return call
        return None

    def _validate(self, req: Request, digest: str) -> tuple[int, dict[str, str]] | None:
        """RFC 3261 16.3; a status to answer with, or None to go on."""
        if req.uri.scheme not in ("sip", "sips", "tel"):
            return 416, {}
        try:
            max_forwards = req.max_forwards
        except SipParseError:
            return 400, {}
        if max_forwards == 0:
            if req.method == "OPTIONS" and self.is_me(req.uri) and not req.headers.get("Route"):
                return 200, {}  # 16.3 item 3: the proxy may answer an OPTIONS itself
            return 483, {}
        if self._looped(req, digest):
            return 482, {}
        required = [t.strip() for v in req.headers.get_all("Proxy-Require") for t in v.split(",") if t.strip()]
        if required:
            return 420, {"Unsupported": ", ".join(required)}  # this proxy supports no extensions
        return None

    def _looped(self, req: Request, digest: str) -> bool:
        """16.3 item 4: a Via of ours whose loop hash equals this request's is a loop; otherwise a spiral."""
        return any(self._via_is_me(v) and (v.branch or "").rsplit(".", 1)[-1] == digest for v in req.vias)

    def _preprocess_route(self, req: Request) -> list[Uri]:
        """16.4: a strict router before us put our Record-Route in the Request-URI; our own Routes go.
        Returns the URIs of ours that were removed."""
        ours: list[Uri] = []
        routes = req.headers.get_all("Route")
        if routes and self.is_me(req.uri) and "lr" in req.uri.params and req.uri.user is None:
            ours.append(req.uri)
            req.uri = NameAddr.parse(routes[-1]).uri
            req.headers.remove("Route")
            for value in routes[:-1]:
                req.headers.add("Route", value)
        while (top := req.headers.get("Route")) is not None and self.is_me(uri := NameAddr.parse(top).uri):
            if ours and ours[0].params.get("gwf") != uri.params.get("gwf"):
                break  # our entry for another passage of the same dialog: that one is for later
            ours.append(uri)
            req.headers.pop("Route")
        return ours

    def _next_hop(self, req: Request, initial: bool, via_hint: Addr | None = None) -> Addr | None:
        """16.6 items 6 and 7: where the request goes, and Route rewritten for a strict router."""
        top = req.headers.get("Route")
        if top is not None:
            uri = NameAddr.parse(top).uri
            if "lr" not in uri.params:
                req.headers.pop("Route")
                req.headers.add("Route", f"<{req.uri}>")
                req.uri = uri
        elif initial and self.config.next_hop is not None:
            uri = self.config.next_hop
        elif via_hint is not None:
            return via_hint
        else:
            uri = req.uri
        if not uri.is_sip:
            return None
        transport = uri.transport
        if transport not in self.config.ports:
            return None
        port = uri.port or 5060
        if uri.params.get("maddr"):
            return Addr(transport, uri.params["maddr"] or uri.host, port)
        return Addr(transport, uri.host, port)

    def _forward(
        self, stx: ServerTransaction, req: Request, now: float, call: Call | None = None, toward: str = ""
    ) -> list[Output]:
        """Forward statefully (16.6); the response comes back through ``_on_response``."""
        initial = req.to.tag is None
        fwd = req.copy()
        hint = None
        if call is not None and toward == "caller" and call.source.reliable and not call.caller.route:
            hint = call.source  # back over the caller's own connection
        dest = self._next_hop(fwd, initial, hint)
        if dest is None:
            return self._respond(stx, 416 if not fwd.uri.is_sip else 503, now)
        max_forwards = fwd.max_forwards
        fwd.headers.set("Max-Forwards", str(70 if max_forwards is None else max_forwards - 1))
        record = initial and req.method == "INVITE"
        if record:
            inbound = stx.peer.transport
            if inbound != dest.transport:
                fwd.headers.push("Record-Route", self._record_route(inbound, call))  # RFC 5658 double route
            fwd.headers.push("Record-Route", self._record_route(dest.transport, call))
        fwd.headers.push("Via", self._via(dest.transport, self._branch(stx.loop)))
        ctx, events = self.layer.send_request(fwd, dest, now)
        relay = _Relay(stx, call, initial=record and call is not None)
        self._relays[ctx.key] = relay
        if record and call is not None:
            call.forwarded = fwd
            assert isinstance(ctx, InviteClientTransaction)
            call.client_tx = ctx
            call.outbound_transport = dest.transport
        return self._events(events, now)

    def _forward_ack(self, ack: Request, source: Addr, now: float) -> list[Output]:
        """16.11: the ACK of a 2xx goes on statelessly, its branch derived from the incoming one."""
        max_forwards = ack.max_forwards
        if max_forwards == 0:
            return []
        call = self._call_of(ack, self._preprocess_route(ack))
        hint = None
        if call is not None and call.side_of(ack) == "callee" and call.source.reliable and not call.caller.route:
            hint = call.source
        dest = self._next_hop(ack, False, hint)
        if dest is None:
            return []
        ack.headers.set("Max-Forwards", str(70 if max_forwards is None else max_forwards - 1))
        incoming = ack.top_via.branch or ""
        branch = f"{BRANCH_COOKIE}-gwf-{hashlib.sha1(incoming.encode()).hexdigest()[:16]}"
        ack.headers.push("Via", self._via(dest.transport, branch))
        return [Transmit(ack, dest)]

    def _on_cancel(self, stx: ServerTransaction, cancel: Request, now: float) -> list[Output]:
        """16.10: answer the CANCEL, then cancel what the INVITE started."""
        invite_tx = self.layer.find_invite(cancel)
        call = self._by_server.get(invite_tx.key) if invite_tx is not None else None
        if invite_tx is None:
            return self._forward(stx, cancel, now)  # no context: forwarded statelessly in effect
        out = self._respond(stx, 200, now)
        if call is None or invite_tx.state.value != "Proceeding":
            return out  # a final response went already: the CANCEL has no effect (9.2)
        if not call.is_over:
            self._end(call, "caller", "CANCEL", now)
            out.append(CallEnded(call, "caller", "CANCEL"))
        call.cancelled = True
        if call.forwarded is None:
            out += self._respond(call.server_tx, 487, now)  # never forwarded: this proxy ends the INVITE
        else:
            out += self._cancel_downstream(call, now)
        return out

    def _cancel_downstream(self, call: Call, now: float) -> list[Output]:
        if call.forwarded is None or call.client_tx is None or call.client_tx.terminated:
            return []
        if not call.provisional_received:
            call.cancel_pending = True  # RFC 3261 9.1: not before a provisional response
            return []
        call.cancel_pending = False
        cancel = build_cancel(call.forwarded)
        ctx, events = self.layer.send_request(cancel, call.client_tx.peer, now)
        self._relays[ctx.key] = _Relay(None, call, own="cancel")
        return self._events(events, now)

    # -- responses -------------------------------------------------------------------------------
    def _on_response(self, ctx: ClientTransaction, resp: Response, now: float) -> list[Output]:
        relay = self._relays.get(ctx.key)
        if relay is None:
            return []
        if ctx.terminated or (resp.status >= 200 and not isinstance(ctx, InviteClientTransaction)):
            self._relays.pop(ctx.key, None)
        if relay.server is None:
            return self._own_response(relay, ctx, resp, now)
        out: list[Output] = []
        call = relay.call if relay.initial else None
        if call is not None:
            stop, extra = self._call_response(call, resp, now)
            out += extra
            if stop:
                return out
            if resp.is_success and call.answered_at is None:
                call.answered_at = now
                call.callee = callee_leg(resp, self._mine(call))
                call.state = CallState.CONFIRMED
                out.append(CallAnswered(call, resp))
            elif resp.status >= 300 and not call.is_over:
                self._end(call, "callee", str(resp.status), now)
        if resp.status == 100:
            return out  # 16.7 item 5: a 100 is not forwarded
        fwd = resp.copy()
        fwd.headers.pop("Via")  # 16.7 item 3: our own Via
        if fwd.status == 503:
            fwd = _with_status(fwd, 500)  # 16.7 item 6: a lone 503 goes upstream as 500
        if call is not None and fwd.status >= 300:
            out.append(CallFailed(call, fwd.status))
        server = relay.server
        if server.terminated and fwd.is_success:
            return out + self._stateless_response(fwd)  # 2xx retransmission after Timer L
        return out + self._events(self.layer.respond(server, fwd, now), now)

    def _call_response(self, call: Call, resp: Response, now: float) -> tuple[bool, list[Output]]:
        """Call bookkeeping for a response to its INVITE: whether it goes no further, and what to send."""
        if resp.is_provisional:
            call.provisional_received = True  # any provisional, a 100 too, allows the CANCEL (9.1)
            if resp.status > 100:
                if call.state is CallState.CALLING:
                    call.state = CallState.PROCEEDING
                if call.timer_c is not None:
                    call.timer_c = now + self.config.timer_c  # 16.7 item 2: reset on a provisional
            return False, self._cancel_downstream(call, now) if call.cancel_pending else []
        call.timer_c = None
        if resp.is_success and call.is_over and call.answered_at is None:
            # Answered after the caller cancelled or this proxy ended the call: the callee gets ACK and BYE,
            # the caller its 487 (if its INVITE is still open), and the answer goes no further.
            call.callee = callee_leg(resp, self._mine(call))
            call.answered_at = now
            out = self._ack_and_bye_callee(call, resp, now)
            if call.server_tx.state.value == "Proceeding":
                out += self._respond(call.server_tx, 487, now)
            return True, out
        return False, []

    def _ack_and_bye_callee(self, call: Call, resp: Response, now: float) -> list[Output]:
        if call.callee.target is None:
            return []
        _, _, send_to = next_hop_of(call.callee.route, call.callee.target)
        dest = Addr(call.outbound_transport, send_to.host, send_to.port or 5060)
        ack = build_ack_for_2xx(call, self._via(dest.transport, self._branch()), resp.headers.get("To") or "")
        out: list[Output] = [Transmit(ack, dest)]
        call.teardown_sent = True
        return out + self._send_bye(call, "callee", now, None)

    def _own_response(self, relay: _Relay, ctx: ClientTransaction, resp: Response, now: float) -> list[Output]:
        if resp.status < 200 or relay.call is None:
            return []
        toward = relay.own.removeprefix("bye-") if relay.own.startswith("bye-") else "callee"
        return [TeardownAnswered(relay.call, toward, ctx.request.method, resp.status)]

    def _client_failed(self, ctx: ClientTransaction, status: int, now: float) -> list[Output]:
        """16.8 (timeout: 408) and 16.9 (transport error: as a 503, which goes upstream as 500)."""
        relay = self._relays.pop(ctx.key, None)
        if relay is None:
            return []
        if relay.server is None:
            if relay.call is None:
                return []
            toward = relay.own.removeprefix("bye-") if relay.own.startswith("bye-") else "callee"
            return [TeardownAnswered(relay.call, toward, ctx.request.method, status)]
        out: list[Output] = []
        upstream = 500 if status == 503 else status
        if not isinstance(ctx, InviteClientTransaction) and status == 408:
            self.layer.discard(relay.server)  # RFC 4320 4.2: no 408 to a non-INVITE; the request just dies
            return out
        call = relay.call if relay.initial else None
        if call is not None:
            call.timer_c = None
            if not call.is_over:
                self._end(call, "callee", str(upstream), now)
            out.append(CallFailed(call, upstream))
        return out + self._respond(relay.server, upstream, now)

    def _timer_c(self, call: Call, now: float) -> list[Output]:
        """16.8: Timer C fired: CANCEL what is ringing, else act as if a 408 had come back."""
        if call.client_tx is None or call.client_tx.terminated or call.server_tx.state.value != "Proceeding":
            return []
        if call.provisional_received:
            return self._cancel_downstream(call, now)
        return self._client_failed(call.client_tx, 408, now)

    def _stray_response(self, resp: Response) -> list[Output]:
        """16.11 / 18.1.2: a response with no transaction (a late 2xx) is forwarded statelessly."""
        vias = resp.vias
        if len(vias) < 2 or not self._via_is_me(vias[0]):
            self.dropped += 1
            return []
        fwd = resp.copy()
        fwd.headers.pop("Via")
        return self._stateless_response(fwd)

    def _stateless_response(self, resp: Response) -> list[Output]:
        via = resp.top_via
        host, port = via.response_target()
        return [Transmit(resp, Addr(via.transport, host, port))]

    # -- the application's side ------------------------------------------------------------------
    def forward_call(self, call: Call, now: float) -> list[Output]:
        """Let an offered INVITE go on (credit granted)."""
        if call.state is not CallState.OFFERED or call.is_over:
            return []
        call.state = CallState.CALLING
        call.timer_c = now + self.config.timer_c
        return self._forward(call.server_tx, call.invite, now, call=call)

    def reject_call(self, call: Call, status: int, now: float, reason: str = "", warning: str = "") -> list[Output]:
        """Answer an offered INVITE with a final response of this proxy (402, 403, 503...)."""
        if call.server_tx.state.value != "Proceeding":
            return []
        if not call.is_over:
            self._end(call, "proxy", str(status), now)
        extra = {"Warning": warning} if warning else {}
        return self._respond(call.server_tx, status, now, reason, **extra)

    def end_call(self, call: Call, now: float, reason: str | None = None) -> list[Output]:
        """End a call on this proxy's own initiative: BYE to both legs once answered, else CANCEL downstream
        and 487 to the caller.  ``reason`` is a Reason header value (RFC 3326)."""
        if call.teardown_sent:
            return []
        was_confirmed = call.state is CallState.CONFIRMED
        if not call.is_over:
            self._end(call, "proxy", reason or "teardown", now)
        out: list[Output] = []
        if was_confirmed:
            call.teardown_sent = True
            out += self._send_bye(call, "callee", now, reason)
            out += self._send_bye(call, "caller", now, reason)
            return out
        if call.forwarded is None:
            return out + self.reject_call(call, 487, now)
        call.teardown_sent = True
        out += self._cancel_downstream(call, now)
        if call.server_tx.state.value == "Proceeding":
            out += self._respond(call.server_tx, 487, now)
        return out

    def _send_bye(self, call: Call, toward: str, now: float, reason: str | None) -> list[Output]:
        leg = call.callee if toward == "callee" else call.caller
        if leg.target is None:
            return []
        _, _, send_to = next_hop_of(leg.route, leg.target)
        if toward == "caller" and call.source.reliable and not leg.route:
            dest = call.source
        else:
            transport = send_to.params.get("transport")
            if transport:
                transport = transport.upper()
            elif toward == "callee":
                transport = call.outbound_transport
            else:
                transport = call.source.transport
            dest = Addr(transport, send_to.host, send_to.port or 5060)
        bye = build_bye(call, toward, self._via(dest.transport, self._branch()), reason)
        ctx, events = self.layer.send_request(bye, dest, now)
        self._relays[ctx.key] = _Relay(None, call, own=f"bye-{toward}")
        return self._events(events, now)

    # -- bookkeeping -----------------------------------------------------------------------------
    def _end(self, call: Call, by: str, reason: str, now: float) -> None:
        call.state = CallState.ENDED
        call.ended_by = call.ended_by or by
        call.end_reason = call.end_reason or reason
        call.ended_at = now

    def _forget(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        same = [c for c in self._by_call_id.get(call.call_id, []) if c is not call]
        if same:
            self._by_call_id[call.call_id] = same
        else:
            self._by_call_id.pop(call.call_id, None)
        self._by_server.pop(call.server_tx.key, None)


def loop_hash(req: Request) -> str:
    """The loop-detection part of our branch (16.6 item 8 lists the fields).  The topmost Via is left out:
    in a looped request it is necessarily another hop's, so including it would hide every loop."""
    parts = [
        str(req.uri),
        req.from_.tag or "",
        req.to.tag or "",
        req.call_id,
        str(req.cseq.number),
        *req.headers.get_all("Route"),
        *req.headers.get_all("Proxy-Require"),
        *req.headers.get_all("Proxy-Authorization"),
    ]
    return hashlib.sha1("\x00".join(parts).encode()).hexdigest()[:12]


def _mark_source(req: Request, source: Addr) -> None:
    """RFC 3261 18.2.1 and RFC 3581: note where the request really came from in its top Via."""
    via = req.top_via
    changed = False
    if via.host != source.host:
        via.params["received"] = source.host
        changed = True
    if "rport" in via.params and not via.params["rport"]:
        via.params["rport"] = str(source.port)
        if "received" not in via.params:
            via.params["received"] = source.host
        changed = True
    if changed:
        req.headers.pop("Via")
        req.headers.push("Via", str(via))


def _with_status(resp: Response, status: int) -> Response:
    return Response(status, "", resp.headers.copy(), resp.body)


def _other(side: str) -> str:
    return "callee" if side == "caller" else "caller"
