"""The Diameter peer state machine (RFC 6733 section 5.6) with the RFC 3539 watchdog.

No sockets and no clock in here: the node feeds events in (a connection came up
or went down, a message arrived, time passed) with the current time, and gets
back actions to carry out (connect, send, disconnect, deliver to the
application, fail over, fail back).  Connections are opaque ids chosen by the
node.  Each Peer tracks its initiator ("I") and responder ("R") connection as the
RFC's state table does, so that an election on simultaneous connections can be
run and tested without any I/O.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from charging.diameter.constants import Command, DisconnectCause, ResultCode
from charging.diameter.message import FLAG_ERROR, Message

RELAY_APPLICATION = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class LocalIdentity:
    """What this node says about itself in CER/CEA, DWR and DPR."""

    origin_host: str
    origin_realm: str
    host_ip_addresses: tuple[str, ...] = ("127.0.0.1",)
    vendor_id: int = 0
    product_name: str = "charging"
    firmware_revision: int = 1
    origin_state_id: int = 1
    auth_applications: frozenset[int] = frozenset()
    acct_applications: frozenset[int] = frozenset()
    supported_vendors: frozenset[int] = frozenset()
    # (vendor, auth app, acct app) advertised inside Vendor-Specific-Application-Id
    vendor_specific: tuple[tuple[int, int, int], ...] = ()


@dataclass(slots=True)
class Timers:
    watchdog: float = 30.0  # Twinit (RFC 3539 3.4.1); jitter of +-2 s is added unless small
    cea_timeout: float = 10.0
    dpa_timeout: float = 5.0
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0
    jitter: float = 2.0


class State(enum.Enum):
    CLOSED = "Closed"
    WAIT_CONN_ACK = "Wait-Conn-Ack"
    WAIT_I_CEA = "Wait-I-CEA"
    WAIT_CONN_ACK_ELECT = "Wait-Conn-Ack/Elect"
    WAIT_RETURNS = "Wait-Returns"
    R_OPEN = "R-Open"
    I_OPEN = "I-Open"
    CLOSING = "Closing"


class Watchdog(enum.Enum):
    INITIAL = "INITIAL"
    OKAY = "OKAY"
    SUSPECT = "SUSPECT"
    DOWN = "DOWN"
    REOPEN = "REOPEN"


# -- actions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    """Open the initiator connection to this peer; answer with conn_ack/conn_nack."""


@dataclass(frozen=True, slots=True)
class Send:
    conn: int
    message: Message


@dataclass(frozen=True, slots=True)
class Disconnect:
    conn: int


@dataclass(frozen=True, slots=True)
class Deliver:
    """An application message (neither CER/CEA, DWR/DWA nor DPR/DPA) for the node to route."""

    conn: int
    message: Message


@dataclass(frozen=True, slots=True)
class Failover:
    """The peer stopped answering: requests waiting on it should go elsewhere (RFC 3539)."""


@dataclass(frozen=True, slots=True)
class Failback:
    """The peer is usable again for new requests."""


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str


Action = Connect | Send | Disconnect | Deliver | Failover | Failback | Closed


@dataclass(slots=True)
class PeerInfo:
    """What the peer said about itself in its CER or CEA."""

    origin_host: str = ""
    origin_realm: str = ""
    host_ip_addresses: list[str] = field(default_factory=list)
    product_name: str = ""
    applications: set[int] = field(default_factory=set)
    origin_state_id: int | None = None


def advertised_applications(msg: Message) -> set[int]:
    apps = set(msg.all("Auth-Application-Id")) | set(msg.all("Acct-Application-Id"))
    for vsa in msg.all("Vendor-Specific-Application-Id"):
        apps.update(vsa.all("Auth-Application-Id"))
        apps.update(vsa.all("Acct-Application-Id"))
    return apps


def common_applications(local: LocalIdentity, remote: set[int]) -> set[int]:
    """RFC 6733 5.3: the applications both sides support; a relay supports all."""
    ours = set(local.auth_applications) | set(local.acct_applications)
    for _, auth, acct in local.vendor_specific:
        ours.update(a for a in (auth, acct) if a)
    if RELAY_APPLICATION in remote:
        return ours or {RELAY_APPLICATION}
    if RELAY_APPLICATION in ours:
        return set(remote)
    return ours & remote


def capabilities_avps(local: LocalIdentity) -> list[tuple[str, object]]:
    avps: list[tuple[str, object]] = [("Origin-Host", local.origin_host), ("Origin-Realm", local.origin_realm)]
    avps += [("Host-IP-Address", ip) for ip in local.host_ip_addresses]
    avps += [("Vendor-Id", local.vendor_id), ("Product-Name", local.product_name)]
    avps.append(("Origin-State-Id", local.origin_state_id))
    avps += [("Supported-Vendor-Id", v) for v in sorted(local.supported_vendors)]
    avps += [("Auth-Application-Id", a) for a in sorted(local.auth_applications)]
    avps += [("Acct-Application-Id", a) for a in sorted(local.acct_applications)]
    for vendor, auth, acct in local.vendor_specific:
        member: dict[str, int] = {"Vendor-Id": vendor}
        if auth:
            member["Auth-Application-Id"] = auth
        if acct:
            member["Acct-Application-Id"] = acct
        avps.append(("Vendor-Specific-Application-Id", member))
    avps.append(("Firmware-Revision", local.firmware_revision))
    return avps


class Peer:
    """One remote Diameter peer: its connections, its state, its watchdog."""

    def __init__(
        self,
        local: LocalIdentity,
        host: str,
        *,
        dial: bool = False,
        timers: Timers | None = None,
        ids: IdSource | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.local = local
        self.host = host
        self.dial = dial
        self.timers = timers or Timers()
        self.ids = ids or IdSource()
        self._rng = rng or random.Random()
        self.state = State.CLOSED
        self.watchdog = Watchdog.INITIAL
        self.info = PeerInfo()
        self.i_conn: int | None = None
        self.r_conn: int | None = None
        self.r_cer: Message | None = None  # the CER waiting for its CEA during an election
        self.stopped = False
        self._deadline_state: float | None = None  # CEA or DPA wait
        self._deadline_watchdog: float | None = None
        self._deadline_reconnect: float | None = None
        self._dwr_pending = False
        self._dwa_count = 0
        self._reconnect_delay = self.timers.reconnect_min
        self.last_error = ""

    # -- observers --------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.state in (State.R_OPEN, State.I_OPEN)

    @property
    def conn(self) -> int | None:
        """The connection that carries traffic once open."""
        if self.state is State.R_OPEN or (self.state is State.CLOSING and self.r_conn is not None):
            return self.r_conn
        if self.state in (State.I_OPEN, State.CLOSING):
            return self.i_conn
        return None

    @property
    def available(self) -> bool:
        """Open and trusted by the watchdog: new requests may be routed here."""
        return self.is_open and self.watchdog is Watchdog.OKAY

    def next_deadline(self) -> float | None:
        times = [t for t in (self._deadline_state, self._deadline_watchdog, self._deadline_reconnect) if t is not None]
        return min(times) if times else None

    # -- events from the node ------------------------------------------------------------
    def start(self, now: float) -> list[Action]:
        """Begin dialing this peer (Start event)."""
        self.stopped = False
        self.dial = True
        if self.state is State.CLOSED:
            return self._connect(now)
        return []

    def conn_ack(self, conn: int, now: float) -> list[Action]:
        """The initiator connection is up (I-Rcv-Conn-Ack)."""
        if self.state is State.WAIT_CONN_ACK:
            self.i_conn = conn
            self.state = State.WAIT_I_CEA
            self._deadline_state = now + self.timers.cea_timeout
            return [Send(conn, self._cer())]
        if self.state is State.WAIT_CONN_ACK_ELECT:
            self.i_conn = conn
            self.state = State.WAIT_RETURNS
            self._deadline_state = now + self.timers.cea_timeout
            return [Send(conn, self._cer()), *self._elect(now)]
        return [Disconnect(conn)]  # a connection nobody waits for any more

    def conn_nack(self, now: float, reason: str = "connection refused") -> list[Action]:
        """The initiator connection could not be made (I-Rcv-Conn-Nack)."""
        self.last_error = reason
        if self.state is State.WAIT_CONN_ACK:
            self.state = State.CLOSED
            self._deadline_state = None
            self._schedule_reconnect(now)
            return [Closed(reason)]
        if self.state is State.WAIT_CONN_ACK_ELECT:
            return self._accept_r(now)
        return []

    def r_conn_cer(self, conn: int, cer: Message, now: float) -> list[Action]:
        """A connection arrived whose CER names this peer (R-Conn-CER).

        The node has already checked that the peer is allowed and that there is a
        common application.
        """
        if self.state is State.CLOSED:
            self._take_info(cer)
            self.r_conn = conn
            self.r_cer = cer
            return self._accept_r(now)
        if self.state is State.WAIT_CONN_ACK:
            self._take_info(cer)
            self.r_conn = conn
            self.r_cer = cer
            self.state = State.WAIT_CONN_ACK_ELECT
            return []
        if self.state is State.WAIT_I_CEA:
            self._take_info(cer)
            self.r_conn = conn
            self.r_cer = cer
            self.state = State.WAIT_RETURNS
            return self._elect(now)
        # Wait-Conn-Ack/Elect, Wait-Returns, open or closing: R-Reject.
        return [Send(conn, self._cea(cer, ResultCode.ELECTION_LOST)), Disconnect(conn)]

    def message(self, conn: int, msg: Message, now: float) -> list[Action]:
        """A message arrived on one of this peer's connections."""
        actions: list[Action] = []
        if conn == self.conn:
            actions += self._watchdog_receipt(msg, now)
        code = msg.code
        if code == Command.CAPABILITIES_EXCHANGE:
            return actions + self._on_cer_cea(conn, msg, now)
        if not self._is_live(conn):
            return [*actions, Disconnect(conn)]
        if code == Command.DEVICE_WATCHDOG:
            if msg.is_request:
                actions.append(Send(conn, self._plain_answer(msg)))
            return actions
        if code == Command.DISCONNECT_PEER:
            if msg.is_request:
                cause = msg.get("Disconnect-Cause", DisconnectCause.REBOOTING)
                actions.append(Send(conn, self._plain_answer(msg)))
                return actions + self._close(
                    now, f"peer sent DPR ({cause})", reconnect=cause == DisconnectCause.REBOOTING
                )
            if self.state is State.CLOSING:
                return actions + self._close(now, "DPA received", reconnect=False)
            return actions
        if self.state in (State.WAIT_I_CEA, State.WAIT_RETURNS) and conn == self.i_conn:
            # I-Rcv-Non-CEA: anything before the CEA is a protocol error.
            return actions + self._close(now, "message before CEA", reconnect=True)
        actions.append(Deliver(conn, msg))
        return actions

    def conn_lost(self, conn: int, now: float) -> list[Action]:
        """A connection of this peer went down (I-Peer-Disc / R-Peer-Disc)."""
        if conn == self.i_conn:
            self.i_conn = None
            if self.state is State.WAIT_RETURNS:
                return self._accept_r(now)
            if self.state in (State.WAIT_I_CEA, State.I_OPEN, State.CLOSING):
                return self._close(now, "connection lost", reconnect=not self.stopped, already_down=True)
            return []
        if conn == self.r_conn:
            self.r_conn = None
            self.r_cer = None
            if self.state is State.WAIT_RETURNS:
                self.state = State.WAIT_I_CEA
                return []
            if self.state is State.WAIT_CONN_ACK_ELECT:
                self.state = State.WAIT_CONN_ACK
                return []
            if self.state in (State.R_OPEN, State.CLOSING):
                return self._close(now, "connection lost", reconnect=not self.stopped, already_down=True)
        return []

    def stop(self, now: float, cause: DisconnectCause = DisconnectCause.REBOOTING) -> list[Action]:
        """Close gracefully: DPR when open, else drop whatever connection exists."""
        self.stopped = True
        self._deadline_reconnect = None
        if self.is_open:
            conn = self.conn
            assert conn is not None
            self.state = State.CLOSING
            self._deadline_state = now + self.timers.dpa_timeout
            self._deadline_watchdog = None
            dpr = Message.request(
                "DPR",
                0,
                [
                    ("Origin-Host", self.local.origin_host),
                    ("Origin-Realm", self.local.origin_realm),
                    ("Disconnect-Cause", int(cause)),
                ],
            )
            return [Send(conn, self._stamp(dpr))]
        if self.state is State.CLOSING:
            return []
        return self._close(now, "stopped", reconnect=False)

    def timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self._deadline_state is not None and now >= self._deadline_state:
            self._deadline_state = None
            if self.state is State.CLOSING:
                actions += self._close(now, "no DPA", reconnect=False)
            elif self.state in (State.WAIT_I_CEA, State.WAIT_RETURNS, State.WAIT_CONN_ACK, State.WAIT_CONN_ACK_ELECT):
                actions += self._close(now, "timeout waiting for CEA", reconnect=True)
        if self._deadline_watchdog is not None and now >= self._deadline_watchdog:
            actions += self._watchdog_timer(now)
        if self._deadline_reconnect is not None and now >= self._deadline_reconnect:
            self._deadline_reconnect = None
            if self.state is State.CLOSED and self.dial and not self.stopped:
                actions += self._connect(now)
        return actions

    # -- internals -------------------------------------------------------------------------
    def _is_live(self, conn: int) -> bool:
        if self.is_open or self.state is State.CLOSING:
            return conn == self.conn
        return conn in (self.i_conn, self.r_conn)

    def _connect(self, now: float) -> list[Action]:
        self.state = State.WAIT_CONN_ACK
        self._deadline_state = now + self.timers.cea_timeout
        return [Connect()]

    def _schedule_reconnect(self, now: float) -> None:
        if self.dial and not self.stopped:
            self._deadline_reconnect = now + self._reconnect_delay
            self._reconnect_delay = min(self._reconnect_delay * 2, self.timers.reconnect_max)

    def _elect(self, now: float) -> list[Action]:
        """RFC 6733 5.6.4: the side whose Origin-Host is the larger keeps the connection it accepted."""
        ours = self.local.origin_host.lower().encode()
        theirs = self.info.origin_host.lower().encode()
        if ours > theirs:  # Win-Election
            actions: list[Action] = []
            if self.i_conn is not None:
                actions.append(Disconnect(self.i_conn))
                self.i_conn = None
            return actions + self._accept_r(now)
        return []  # lost: wait for the CEA on our own connection, then drop theirs

    def _accept_r(self, now: float) -> list[Action]:
        conn = self.r_conn
        cer = self.r_cer
        assert conn is not None and cer is not None
        self.r_cer = None
        self.state = State.R_OPEN
        self._deadline_state = None
        return [Send(conn, self._cea(cer, ResultCode.DIAMETER_SUCCESS)), *self._opened(now)]

    def _on_cer_cea(self, conn: int, msg: Message, now: float) -> list[Action]:
        if msg.is_request:
            # A CER on an open connection is answered again (RFC 6733 5.6, R-Rcv-CER / I-Rcv-CER).
            if self._is_live(conn):
                self._take_info(msg)
                return [Send(conn, self._cea(msg, ResultCode.DIAMETER_SUCCESS))]
            return [Disconnect(conn)]
        if conn != self.i_conn or self.state not in (State.WAIT_I_CEA, State.WAIT_RETURNS):
            return []
        result = msg.get("Result-Code", 0)
        self._take_info(msg)
        if result != ResultCode.DIAMETER_SUCCESS:
            self.last_error = f"CEA Result-Code {result}"
            return self._close(now, self.last_error, reconnect=True)
        actions: list[Action] = []
        if self.state is State.WAIT_RETURNS and self.r_conn is not None:
            actions.append(Disconnect(self.r_conn))  # lost the election: drop theirs (R-Disc)
            self.r_conn = None
            self.r_cer = None
        self.state = State.I_OPEN
        self._deadline_state = None
        return actions + self._opened(now)

    def _opened(self, now: float) -> list[Action]:
        self._reconnect_delay = self.timers.reconnect_min
        self._deadline_reconnect = None
        self._dwr_pending = False
        self._set_watchdog(now)
        if self.watchdog is Watchdog.DOWN:
            # RFC 3539 REOPEN: a connection that failed earns traffic back with three DWAs.
            self.watchdog = Watchdog.REOPEN
            self._dwa_count = 0
            return self._send_dwr(now)
        self.watchdog = Watchdog.OKAY
        return [Failback()]

    def _close(self, now: float, reason: str, *, reconnect: bool, already_down: bool = False) -> list[Action]:
        actions: list[Action] = []
        for conn in (self.i_conn, self.r_conn):
            if conn is not None:
                actions.append(Disconnect(conn))
        was_available = self.available
        self.i_conn = None
        self.r_conn = None
        self.r_cer = None
        self.state = State.CLOSED
        self._deadline_state = None
        self._deadline_watchdog = None
        self._dwr_pending = False
        if self.watchdog in (Watchdog.OKAY, Watchdog.SUSPECT, Watchdog.REOPEN):
            self.watchdog = Watchdog.DOWN
        if was_available:
            actions.append(Failover())
        self.last_error = reason
        if reconnect:
            self._schedule_reconnect(now)
        actions.append(Closed(reason))
        return actions

    # -- watchdog (RFC 3539 3.4.1) --------------------------------------------------------------
    def _set_watchdog(self, now: float) -> None:
        tw = self.timers.watchdog
        jitter = min(self.timers.jitter, tw / 10)
        self._deadline_watchdog = now + tw + self._rng.uniform(-jitter, jitter)

    def _send_dwr(self, now: float) -> list[Action]:
        conn = self.conn
        if conn is None:
            return []
        self._dwr_pending = True
        dwr = Message.request(
            "DWR",
            0,
            [
                ("Origin-Host", self.local.origin_host),
                ("Origin-Realm", self.local.origin_realm),
                ("Origin-State-Id", self.local.origin_state_id),
            ],
        )
        return [Send(conn, self._stamp(dwr))]

    def _watchdog_receipt(self, msg: Message, now: float) -> list[Action]:
        if not self.is_open:
            return []
        is_dwa = msg.code == Command.DEVICE_WATCHDOG and not msg.is_request
        if is_dwa:
            self._dwr_pending = False
        self._set_watchdog(now)
        if self.watchdog is Watchdog.SUSPECT:
            self.watchdog = Watchdog.OKAY
            return [Failback()]
        if self.watchdog is Watchdog.REOPEN and is_dwa:
            if self._dwa_count >= 2:
                self.watchdog = Watchdog.OKAY
                return [Failback()]
            self._dwa_count += 1
        return []

    def _watchdog_timer(self, now: float) -> list[Action]:
        self._deadline_watchdog = None
        if not self.is_open:
            return []
        if self.watchdog is Watchdog.OKAY:
            if not self._dwr_pending:
                actions = self._send_dwr(now)
                self._set_watchdog(now)
                return actions
            self.watchdog = Watchdog.SUSPECT
            self._set_watchdog(now)
            return [Failover()]
        if self.watchdog is Watchdog.SUSPECT:
            return self._close(now, "watchdog: no answer", reconnect=True)
        if self.watchdog is Watchdog.REOPEN:
            if self._dwr_pending:
                if self._dwa_count < 0:
                    return self._close(now, "watchdog: no answer while reopening", reconnect=True)
                self._dwa_count = -1
                self._set_watchdog(now)
                return []
            actions = self._send_dwr(now)
            self._set_watchdog(now)
            return actions
        return []

    # -- messages ------------------------------------------------------------------------------
    def _take_info(self, msg: Message) -> None:
        self.info = PeerInfo(
            origin_host=msg.get("Origin-Host", ""),
            origin_realm=msg.get("Origin-Realm", ""),
            host_ip_addresses=[str(a) for a in msg.all("Host-IP-Address")],
            product_name=msg.get("Product-Name", ""),
            applications=advertised_applications(msg),
            origin_state_id=msg.get("Origin-State-Id"),
        )

    def _cer(self) -> Message:
        return self._stamp(Message.request("CER", 0, capabilities_avps(self.local)))

    def _cea(self, cer: Message, result: int) -> Message:
        cea = cer.answer([("Result-Code", result), *capabilities_avps(self.local)])
        if 3000 <= result < 4000:
            cea.flags |= FLAG_ERROR
        return cea

    def _plain_answer(self, req: Message) -> Message:
        return req.answer(
            [
                ("Result-Code", ResultCode.DIAMETER_SUCCESS),
                ("Origin-Host", self.local.origin_host),
                ("Origin-Realm", self.local.origin_realm),
                ("Origin-State-Id", self.local.origin_state_id),
            ]
        )

    def _stamp(self, msg: Message) -> Message:
        msg.hop_by_hop = self.ids.next_hop_by_hop()
        msg.end_to_end = self.ids.next_end_to_end()
        return msg


class IdSource:
    """Hop-by-Hop and End-to-End identifiers (RFC 6733 3).

    End-to-End: the high 12 bits from the start time, the low 20 a counter, so
    that identifiers stay unique across restarts for the 4 minutes the RFC asks.
    """

    def __init__(self, start_time: float = 0.0, seed: int | None = None) -> None:
        rng = random.Random(seed)
        self._hbh = rng.getrandbits(32)
        self._e2e_high = (int(start_time) & 0xFFF) << 20
        self._e2e_low = rng.getrandbits(20)

    def next_hop_by_hop(self) -> int:
        self._hbh = (self._hbh + 1) & 0xFFFFFFFF
        return self._hbh

    def next_end_to_end(self) -> int:
        self._e2e_low = (self._e2e_low + 1) & 0xFFFFF
        return self._e2e_high | self._e2e_low
