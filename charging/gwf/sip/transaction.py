"""SIP transactions (RFC 3261 section 17, amended by RFC 6026): state machines driven by ``now``, no I/O.

Four machines: INVITE client (ICT), non-INVITE client (NICT), INVITE server (IST) and non-INVITE server
(NIST).  Each takes what happens to it (a message from the wire, a response from the transaction user,
the time) and returns what must happen next as a list of actions: ``Transmit`` bytes to an address, or
tell the transaction user (``Deliver``, ``Timeout``, ``TransportFailure``).  ``next_deadline()`` says when
``timer(now)`` must be called next.

``TransactionLayer`` keeps the live transactions, matches incoming messages to them (RFC 3261 17.1.3 and
17.2.3; requests without the RFC 3261 magic cookie in their branch are not matched the RFC 2543 way) and
collects every transaction's timers into one deadline.

Timer values, with T1, T2 and T4 as configured (RFC 3261 Table 4)::

    A  INVITE request retransmit, unreliable transport    T1, doubling
    B  INVITE transaction timeout                         64*T1
    D  wait for response retransmits (ICT)                32 s unreliable, 0 reliable
    E  non-INVITE request retransmit, unreliable          T1, doubling up to T2 (T2 once proceeding)
    F  non-INVITE transaction timeout                     64*T1
    G  INVITE final response retransmit, unreliable       T1, doubling up to T2
    H  wait for ACK                                       64*T1
    I  wait for ACK retransmits                           T4 unreliable, 0 reliable
    J  wait for non-INVITE request retransmits            64*T1 unreliable, 0 reliable
    K  wait for non-INVITE response retransmits           T4 unreliable, 0 reliable
    L  (RFC 6026) wait for INVITE retransmits after 2xx   64*T1
    M  (RFC 6026) wait for 2xx retransmits (ICT)          64*T1
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from charging.gwf.sip.message import BRANCH_COOKIE, Headers, Request, Response, Via


class Addr(NamedTuple):
    """A transport address: ``transport`` is UDP, TCP or TLS."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "UDP"


@dataclass(slots=True, frozen=True)
class TimerValues:
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @property
    def timeout(self) -> float:
        return 64 * self.t1


# -- actions ------------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Transmit:
    message: Request | Response
    dest: Addr
    retransmission: bool = False


@dataclass(slots=True, frozen=True)
class Deliver:
    """A message for the transaction user: a response (client side) or a request/ACK (server side)."""

    transaction: Transaction
    message: Request | Response


@dataclass(slots=True, frozen=True)
class Timeout:
    """Timer B or F (client: no final response), or H (INVITE server: no ACK)."""

    transaction: Transaction


@dataclass(slots=True, frozen=True)
class TransportFailure:
    transaction: Transaction


Action = Transmit | Deliver | Timeout | TransportFailure


class State(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Transaction:
    """What the four machines share: the request, the peer address, the state and the running timers."""

    kind = "transaction"

    def __init__(self, request: Request, peer: Addr, timers: TimerValues) -> None:
        self.request = request
        self.peer = peer
        self.values = timers
        self.state = State.TRYING
        self._timers: dict[str, float] = {}
        self._interval: dict[str, float] = {}
        via = request.top_via
        self.branch = via.branch or ""
        self.key = ""

    @property
    def reliable(self) -> bool:
        return self.peer.reliable

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def next_deadline(self) -> float | None:
        return min(self._timers.values()) if self._timers else None

    def _start(self, name: str, now: float, interval: float) -> None:
        self._timers[name] = now + interval
        self._interval[name] = interval

    def _stop(self, *names: str) -> None:
        for name in names:
            self._timers.pop(name, None)

    def _terminate(self) -> None:
        self.state = State.TERMINATED
        self._timers.clear()

    def timer(self, now: float) -> list[Action]:
        """Fire every timer whose deadline has come, earliest first."""
        actions: list[Action] = []
        while self._timers:
            name, deadline = min(self._timers.items(), key=lambda item: item[1])
            if deadline > now:
                break
            del self._timers[name]
            actions += self._fire(name, now)
        return actions

    def _fire(self, name: str, now: float) -> list[Action]:
        raise NotImplementedError

    def transport_error(self) -> list[Action]:
        """The transport could not send (RFC 3261 17.1.4 / 17.2.4): the TU is told, the transaction ends."""
        if self.terminated:
            return []
        self._terminate()
        return [TransportFailure(self)]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.branch} {self.state.value}>"


# -- client transactions ------------------------------------------------------------------------------


class ClientTransaction(Transaction):
    def __init__(self, request: Request, dest: Addr, timers: TimerValues) -> None:
        super().__init__(request, dest, timers)
        self.key = client_key(self.branch, request.method)
        self.last_response: Response | None = None

    def start(self, now: float) -> list[Action]:
        raise NotImplementedError

    def receive(self, response: Response, now: float) -> list[Action]:
        raise NotImplementedError


class InviteClientTransaction(ClientTransaction):
    """RFC 3261 17.1.1 with the Accepted state of RFC 6026 7.2."""

    kind = "ICT"

    def start(self, now: float) -> list[Action]:
        self.state = State.CALLING
        if not self.reliable:
            self._start("A", now, self.values.t1)
        self._start("B", now, self.values.timeout)
        return [Transmit(self.request, self.peer)]

    def receive(self, response: Response, now: float) -> list[Action]:
        self.last_response = response
        state = self.state
        if state in (State.CALLING, State.PROCEEDING):
            if response.is_provisional:
                self.state = State.PROCEEDING
                self._stop("A", "B")  # Timer C of the proxy guards a proceeding INVITE (RFC 3261 16.6 item 11)
                return [Deliver(self, response)]
            if response.is_success:
                self.state = State.ACCEPTED
                self._stop("A", "B")
                self._start("M", now, self.values.timeout)
                return [Deliver(self, response)]
            self.state = State.COMPLETED
            self._stop("A", "B")
            self._start("D", now, 0.0 if self.reliable else max(32.0, self.values.timeout))
            return [Transmit(self.ack_for(response), self.peer), Deliver(self, response)]
        if state is State.COMPLETED and response.status >= 300:
            return [Transmit(self.ack_for(response), self.peer, retransmission=True)]  # 17.1.1.2
        if state is State.ACCEPTED and response.is_success:
            return [Deliver(self, response)]  # RFC 6026 7.2: each 2xx goes to the TU
        return []

    def ack_for(self, response: Response) -> Request:
        """The hop-by-hop ACK of a non-2xx final response (RFC 3261 17.1.1.3)."""
        req = self.request
        headers = Headers()
        headers.add("Via", req.headers.get("Via") or "")
        for route in req.headers.get_all("Route"):
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        headers.add("From", req.headers.get("From") or "")
        headers.add("To", response.headers.get("To") or "")
        headers.add("Call-ID", req.call_id)
        headers.add("CSeq", f"{req.cseq.number} ACK")
        return Request("ACK", req.uri, headers)

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "A" and self.state is State.CALLING:
            interval = self._interval["A"] * 2  # INVITE retransmissions keep doubling (17.1.1.2)
            self._start("A", now, interval)
            return [Transmit(self.request, self.peer, retransmission=True)]
        if name == "B" and self.state is State.CALLING:
            self._terminate()
            return [Timeout(self)]
        if name in ("D", "M"):
            self._terminate()
        return []


class NonInviteClientTransaction(ClientTransaction):
    """RFC 3261 17.1.2."""

    kind = "NICT"

    def start(self, now: float) -> list[Action]:
        self.state = State.TRYING
        if not self.reliable:
            self._start("E", now, self.values.t1)
        self._start("F", now, self.values.timeout)
        return [Transmit(self.request, self.peer)]

    def receive(self, response: Response, now: float) -> list[Action]:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return []  # Completed: retransmissions are absorbed
        self.last_response = response
        if response.is_provisional:
            self.state = State.PROCEEDING
            return [Deliver(self, response)]
        self.state = State.COMPLETED
        self._stop("E", "F")
        self._start("K", now, 0.0 if self.reliable else self.values.t4)
        return [Deliver(self, response)]

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "E" and self.state in (State.TRYING, State.PROCEEDING):
            if self.state is State.PROCEEDING:
                interval = self.values.t2
            else:
                interval = min(2 * self._interval["E"], self.values.t2)
            self._start("E", now, interval)
            return [Transmit(self.request, self.peer, retransmission=True)]
        if name == "F" and self.state in (State.TRYING, State.PROCEEDING):
            self._terminate()
            return [Timeout(self)]
        if name == "K":
            self._terminate()
        return []


# -- server transactions ------------------------------------------------------------------------------


class ServerTransaction(Transaction):
    def __init__(self, request: Request, source: Addr, timers: TimerValues) -> None:
        super().__init__(request, source, timers)
        self.key = server_key(request)
        self.last_response: Response | None = None
        self.loop = ""  # the proxy's loop-detection hash of the request as received

    def response_dest(self) -> Addr:
        """Where responses go: back over the connection for streams; for UDP to the source address (what
        ``received`` would say, RFC 3261 18.2.2) at the sent-by port, or the source port with rport (RFC 3581)."""
        if self.reliable:
            return self.peer
        via = self.request.top_via
        port = self.peer.port if "rport" in via.params else via.sent_by[1]
        return Addr(self.peer.transport, self.peer.host, port)

    def receive(self, request: Request, now: float) -> list[Action]:
        raise NotImplementedError

    def respond(self, response: Response, now: float) -> list[Action]:
        raise NotImplementedError


class InviteServerTransaction(ServerTransaction):
    """RFC 3261 17.2.1 with the Accepted state of RFC 6026 7.1."""

    kind = "IST"

    def __init__(self, request: Request, source: Addr, timers: TimerValues) -> None:
        super().__init__(request, source, timers)
        self.state = State.PROCEEDING

    def receive(self, request: Request, now: float) -> list[Action]:
        if request.method == "ACK":
            if self.state is State.COMPLETED:
                self.state = State.CONFIRMED
                self._stop("G", "H")
                self._start("I", now, 0.0 if self.reliable else self.values.t4)
            elif self.state is State.ACCEPTED:
                return [Deliver(self, request)]  # RFC 6026 7.1: an ACK matching here goes to the TU
            return []
        # a retransmitted INVITE
        if self.state in (State.PROCEEDING, State.COMPLETED) and self.last_response is not None:
            return [Transmit(self.last_response, self.response_dest(), retransmission=True)]
        return []

    def respond(self, response: Response, now: float) -> list[Action]:
        if self.state is State.PROCEEDING:
            self.last_response = response
            if response.is_provisional:
                return [Transmit(response, self.response_dest())]
            if response.is_success:
                self.state = State.ACCEPTED
                self._start("L", now, self.values.timeout)
                return [Transmit(response, self.response_dest())]
            self.state = State.COMPLETED
            if not self.reliable:
                self._start("G", now, self.values.t1)
            self._start("H", now, self.values.timeout)
            return [Transmit(response, self.response_dest())]
        if self.state is State.ACCEPTED and response.is_success:
            return [Transmit(response, self.response_dest())]  # 2xx retransmissions from the TU
        return []

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "G" and self.state is State.COMPLETED and self.last_response is not None:
            self._start("G", now, min(2 * self._interval["G"], self.values.t2))
            return [Transmit(self.last_response, self.response_dest(), retransmission=True)]
        if name == "H" and self.state is State.COMPLETED:
            self._terminate()
            return [Timeout(self)]
        if name in ("I", "L"):
            self._terminate()
        return []


class NonInviteServerTransaction(ServerTransaction):
    """RFC 3261 17.2.2."""

    kind = "NIST"

    def receive(self, request: Request, now: float) -> list[Action]:
        if self.state in (State.PROCEEDING, State.COMPLETED) and self.last_response is not None:
            return [Transmit(self.last_response, self.response_dest(), retransmission=True)]
        return []

    def respond(self, response: Response, now: float) -> list[Action]:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return []
        self.last_response = response
        if response.is_provisional:
            self.state = State.PROCEEDING
        else:
            self.state = State.COMPLETED
            self._start("J", now, 0.0 if self.reliable else self.values.timeout)
        return [Transmit(response, self.response_dest())]

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "J":
            self._terminate()
        return []


# -- matching and the layer ---------------------------------------------------------------------------


def client_key(branch: str, method: str) -> str:
    """RFC 3261 17.1.3: branch of the top Via and the CSeq method (ACK never has a client transaction)."""
    return f"c|{branch}|{method}"


def server_key(request: Request, method: str | None = None) -> str:
    """RFC 3261 17.2.3: branch, sent-by and method, where an ACK matches its INVITE.  A branch without the
    magic cookie comes from an RFC 2543 element; its requests are matched on Request-URI, From tag,
    Call-ID, CSeq number and top Via instead (the To tag is left out: the ACK of a failure carries the
    tag of the response, its INVITE none)."""
    via = request.top_via
    method = method or request.method
    if method == "ACK":
        method = "INVITE"
    if has_cookie(via):
        host, port = via.sent_by
        return f"s|{via.branch}|{host}:{port}|{method}"
    return f"s2543|{request.uri}|{request.from_.tag}|{request.call_id}|{request.cseq.number}|{via}|{method}"


def has_cookie(via: Via) -> bool:
    return bool(via.branch and via.branch.startswith(BRANCH_COOKIE))


@dataclass(slots=True, frozen=True)
class NewRequest:
    """A request no transaction holds: a new server transaction (None for an ACK, which has none)."""

    transaction: ServerTransaction | None
    request: Request
    source: Addr


@dataclass(slots=True, frozen=True)
class StrayResponse:
    """A response no client transaction holds (a 2xx retransmission after Timer M, say)."""

    response: Response
    source: Addr


Event = Action | NewRequest | StrayResponse


class TransactionLayer:
    """The live transactions of one SIP element, matched by key, with their timers."""

    def __init__(self, timers: TimerValues | None = None) -> None:
        self.values = timers or TimerValues()
        self.transactions: dict[str, Transaction] = {}

    def receive(self, msg: Request | Response, source: Addr, now: float) -> list[Event]:
        if isinstance(msg, Response):
            key = client_key(msg.top_via.branch or "", msg.cseq.method)
            ctx = self.transactions.get(key)
            if not isinstance(ctx, ClientTransaction):
                return [StrayResponse(msg, source)]
            return self._reap(ctx, ctx.receive(msg, now))
        found = self.transactions.get(server_key(msg))
        if isinstance(found, ServerTransaction):
            if msg.method == "ACK" and not isinstance(found, InviteServerTransaction):
                return [NewRequest(None, msg, source)]
            return self._reap(found, found.receive(msg, now))
        if msg.method == "ACK":
            return [NewRequest(None, msg, source)]  # the ACK of a 2xx is a transaction of its own, end to end
        stx: ServerTransaction
        if msg.method == "INVITE":
            stx = InviteServerTransaction(msg, source, self.values)
        else:
            stx = NonInviteServerTransaction(msg, source, self.values)
        self.transactions[stx.key] = stx
        return [NewRequest(stx, msg, source)]

    def find_invite(self, cancel: Request) -> InviteServerTransaction | None:
        """The INVITE server transaction a CANCEL cancels (RFC 3261 9.2: same matching rules, method INVITE)."""
        found = self.transactions.get(server_key(cancel, "INVITE"))
        return found if isinstance(found, InviteServerTransaction) and not found.terminated else None

    def send_request(self, request: Request, dest: Addr, now: float) -> tuple[ClientTransaction, list[Event]]:
        ctx: ClientTransaction
        if request.method == "INVITE":
            ctx = InviteClientTransaction(request, dest, self.values)
        else:
            ctx = NonInviteClientTransaction(request, dest, self.values)
        self.transactions[ctx.key] = ctx
        return ctx, self._reap(ctx, ctx.start(now))

    def respond(self, stx: ServerTransaction, response: Response, now: float) -> list[Event]:
        return self._reap(stx, stx.respond(response, now))

    def transport_error(self, tx: Transaction) -> list[Event]:
        return self._reap(tx, tx.transport_error())

    def discard(self, tx: Transaction) -> None:
        """End a transaction without a word (a non-INVITE whose forwarded request timed out, RFC 4320)."""
        tx._terminate()
        self._reap(tx, [])

    def timer(self, now: float) -> list[Event]:
        events: list[Event] = []
        for tx in list(self.transactions.values()):
            deadline = tx.next_deadline()
            if deadline is not None and deadline <= now:
                events += self._reap(tx, tx.timer(now))
        return events

    def next_deadline(self) -> float | None:
        deadlines = [d for tx in self.transactions.values() if (d := tx.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    def _reap(self, tx: Transaction, actions: list[Action]) -> list[Event]:
        if tx.terminated and self.transactions.get(tx.key) is tx:
            del self.transactions[tx.key]
        return list(actions)
