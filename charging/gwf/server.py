"""The IMS-GWF at run time: the SIP proxy core and the credit-control sessions, driven over asyncio.

``Gwf`` owns the SIP transport, the sans-I/O ``Proxy`` and one ``CreditSession`` per charged call, and
uses a ``DiameterNode`` (the caller's, see ``node_for``) as the Ro client (and Rf client when configured).
It carries out what the cores ask for: messages to send, CCRs to send and their answers fed back, Tx,
INVITEs forwarded or refused, calls torn down; and it answers the OCF's ASR and RAR.

Everything the GWF sends over SIP is kept in ``sent`` (bounded), and every Ro exchange in ``ro_log``: the
record an operator (or a test) reads to see what the GWF did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from charging.clock import Clock, SystemClock
from charging.diameter import FLAG_RETRANSMIT, Message
from charging.diameter.constants import AccountingRecordType, AppId, Command, ResultCode
from charging.diameter.node import DiameterNode, NodeConfig, NoRouteError, PeerConfig, RequestTimeout
from charging.diameter.peer import LocalIdentity, Peer, Timers
from charging.gwf.credit import (
    LOGOUT,
    Allow,
    CcState,
    CreditConfig,
    CreditSession,
    Deny,
    Kind,
    SendCcr,
    Teardown,
)
from charging.gwf.credit import Action as CreditAction
from charging.gwf.ims import ORIGINATING_ROLE, TERMINATING_ROLE, SessionData, session_data
from charging.gwf.rf import RfProfile, build_acr
from charging.gwf.ro import RoProfile, build_ccr, parse_cca, result_code
from charging.gwf.settings import GwfSettings
from charging.gwf.sip.dialog import Call
from charging.gwf.sip.message import Request, Uri
from charging.gwf.sip.proxy import (
    CallAnswered,
    CallEnded,
    CallFailed,
    CallOffered,
    InDialog,
    Output,
    Proxy,
    ProxyConfig,
    TeardownAnswered,
)
from charging.gwf.sip.transaction import Addr, TimerValues, Transmit
from charging.gwf.sip.transport import SipTransport

log = logging.getLogger("charging.gwf")

REASONS = {
    "final units used": 'Q.850;cause=16;text="credit exhausted"',
    "aborted by the OCF": 'Q.850;cause=16;text="aborted by the charging system"',
}


@dataclass(slots=True, frozen=True)
class Sent:
    """One SIP message the GWF sent."""

    at: float
    dest: Addr
    first_line: str
    call_id: str
    cseq: str
    retransmission: bool
    own: bool  # a request the GWF originated (its Via is the only one), not one it forwarded


@dataclass(slots=True, frozen=True)
class RoExchange:
    """One CCR and how it went: ``result`` is the Result-Code, or ``timeout`` / ``failed``."""

    at: float
    session_id: str
    call_id: str
    kind: str  # INITIAL | UPDATE | TERMINATION
    number: int
    used_seconds: int | None
    reporting_reason: int | None
    result: str


@dataclass(slots=True)
class ChargedCall:
    call: Call
    session_id: str
    data: SessionData
    credit: CreditSession
    inflight: int = 0
    server_host: str | None = None  # the OCF that answered the CCR-I
    rf_session: str | None = None
    rf_number: int = 0
    rf_interval: int = 0
    rf_next: float | None = None
    rf_stopped: bool = False
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


def node_for(settings: GwfSettings) -> DiameterNode:
    """The GWF's Diameter node: a client of the OCF (and of the CDF with Rf), dialling them."""
    peers = [PeerConfig(settings.ocf.host, settings.ocf.realm, settings.ocf.address, settings.ocf.port)]
    acct: frozenset[int] = frozenset()
    if settings.rf is not None:
        cdf = settings.rf.cdf
        if cdf.host.lower() != settings.ocf.host.lower():
            peers.append(PeerConfig(cdf.host, cdf.realm, cdf.address, cdf.port))
        acct = frozenset({AppId.ACCOUNTING})
    identity = LocalIdentity(
        settings.origin_host,
        settings.origin_realm,
        host_ip_addresses=(settings.host_ip_address,),
        product_name="charging-gwf",
    )
    return DiameterNode(
        NodeConfig(
            identity,
            peers=peers,
            client_auth_applications=frozenset({AppId.CREDIT_CONTROL}),
            client_acct_applications=acct,
            timers=Timers(watchdog=settings.watchdog_seconds, reconnect_min=0.2, reconnect_max=5.0),
            request_timeout=settings.tx_seconds,
        )
    )


class Gwf:
    def __init__(self, settings: GwfSettings, node: DiameterNode, clock: Clock | None = None) -> None:
        self.settings = settings
        self.node = node
        self.clock = clock or SystemClock()
        self.transport = SipTransport(self._on_data)
        self.proxy: Proxy | None = None
        self.calls: dict[str, ChargedCall] = {}  # by Ro Session-Id
        self.sent: deque[Sent] = deque(maxlen=settings.record_size or None)
        self.ro_log: deque[RoExchange] = deque(maxlen=settings.record_size or None)
        self.rf_log: deque[tuple[str, int, str]] = deque(maxlen=settings.record_size or None)
        self.ro = RoProfile(
            origin_host=settings.origin_host,
            origin_realm=settings.origin_realm,
            destination_realm=settings.destination_realm or settings.ocf.realm,
            destination_host=settings.ocf.host if settings.send_destination_host else None,
            service_context=settings.service_context_id,
            rating_group=settings.rating_group,
            service_identifier=settings.service_identifier,
            requested_seconds=settings.requested_seconds,
        )
        self.rf: RfProfile | None = None
        if settings.rf is not None:
            self.rf = RfProfile(
                origin_host=settings.origin_host,
                origin_realm=settings.origin_realm,
                destination_realm=settings.rf.cdf.realm,
                service_context=settings.service_context_id,
                interim_interval=settings.rf.interim_interval_seconds,
            )
        self.credit_config = CreditConfig(
            requested_seconds=settings.requested_seconds,
            margin=settings.quota_margin_seconds,
            failure_handling=settings.failure_handling,
        )
        self._wake = asyncio.Event()
        self._timer_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = False
        node.register(AppId.CREDIT_CONTROL, Command.ABORT_SESSION, self._on_asr)
        node.register(AppId.CREDIT_CONTROL, Command.RE_AUTH, self._on_rar)

    # -- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        await self.transport.start(
            s.sip_address,
            s.udp_port if "UDP" in s.transports else None,
            s.tcp_port if "TCP" in s.transports else None,
        )
        ports: dict[str, int] = {}
        if self.transport.udp_port is not None:
            ports["UDP"] = self.transport.udp_port
        if self.transport.tcp_port is not None:
            ports["TCP"] = self.transport.tcp_port
        aliases = []
        for alias in s.aliases:
            host, _, port = alias.rpartition(":")
            aliases.append((host, int(port)) if host and port.isdigit() else (alias, 5060))
        self.proxy = Proxy(
            ProxyConfig(
                host=s.sip_host or s.sip_address,
                ports=ports,
                next_hop=Uri.parse(s.next_hop) if s.next_hop else None,
                aliases=tuple(aliases),
                timer_c=s.timer_c_seconds,
                timers=TimerValues(s.t1_seconds, s.t2_seconds, s.t4_seconds),
            )
        )
        await self.node.start()
        self._timer_task = asyncio.create_task(self._timer_loop())
        log.info("IMS-GWF listening for SIP on %s (UDP %s, TCP %s)", s.sip_address, ports.get("UDP"), ports.get("TCP"))

    async def stop(self, grace: float = 2.0) -> None:
        """End the calls still up (BYE to both legs, CCR-T), give the CCR-Ts ``grace`` seconds, then close."""
        if self._stopped:
            return
        self._stopped = True
        if self.proxy is not None:
            now = self.clock.now()
            for charged in list(self.calls.values()):
                if not charged.call.is_over:
                    self._credit(charged, charged.credit.shutdown(now))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            while any(not t.done() for t in self._tasks) and loop.time() < deadline:
                await asyncio.sleep(0.02)
        if self._timer_task is not None:
            self._timer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer_task
        for task in list(self._tasks):
            task.cancel()
        await self.transport.stop()
        await self.node.stop()

    @property
    def udp_port(self) -> int | None:
        return self.transport.udp_port

    @property
    def tcp_port(self) -> int | None:
        return self.transport.tcp_port

    def ocf_available(self) -> bool:
        peer = self.node.peers.get(self.settings.ocf.host.lower())
        return peer is not None and peer.available

    # -- SIP -------------------------------------------------------------------------------------
    def _on_data(self, data: bytes, source: Addr) -> None:
        if self.proxy is None:
            return
        try:
            outputs = self.proxy.receive_data(data, source, self.clock.now())
        except Exception:
            log.exception("SIP message from %s:%d could not be handled", source.host, source.port)
            return
        self._run(outputs)

    def _run(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Transmit):
                self._transmit(out)
            elif isinstance(out, CallOffered):
                self._offered(out.call)
            elif isinstance(out, CallAnswered):
                self._answered(out.call)
            elif isinstance(out, CallEnded):
                log.info("call %s ended by the %s (%s)", out.call.call_id, out.by, out.method)
                self._ended(out.call)
            elif isinstance(out, CallFailed):
                log.info("call %s failed with %d", out.call.call_id, out.status)
                self._ended(out.call)
            elif isinstance(out, InDialog):
                log.debug("%s within call %s from the %s", out.request.method, out.call.call_id, out.side)
            elif isinstance(out, TeardownAnswered):
                log.info("%s to the %s of %s: %d", out.method, out.toward, out.call.call_id, out.status)
        self._wake.set()

    def _transmit(self, out: Transmit) -> None:
        msg = out.message
        data = msg.to_bytes()
        self.sent.append(
            Sent(
                self.clock.now(),
                out.dest,
                msg.start_line(),
                msg.headers.get("Call-ID") or "",
                msg.headers.get("CSeq") or "",
                out.retransmission,
                isinstance(msg, Request) and len(msg.headers.get_all("Via")) == 1,
            )
        )
        proxy = self.proxy

        def failed() -> None:
            if proxy is not None:
                self._run(proxy.transport_error(msg, self.clock.now()))

        self.transport.send(data, out.dest, failed)

    # -- calls and credit ------------------------------------------------------------------------
    def _offered(self, call: Call) -> None:
        now = self.clock.now()
        role = ORIGINATING_ROLE if self.settings.role == "originating" else TERMINATING_ROLE
        charged = ChargedCall(
            call=call,
            session_id=self.node.new_session_id(),
            data=session_data(call.invite, role, now),
            credit=CreditSession(self.credit_config),
        )
        call.app = charged
        self.calls[charged.session_id] = charged
        log.info(
            "INVITE %s from %s: CCR-I for %s",
            call.call_id,
            call.source.host,
            charged.data.subscriber,
            extra=self._context(charged),
        )
        self._credit(charged, charged.credit.start(now))

    def _answered(self, call: Call) -> None:
        charged = call.app
        if not isinstance(charged, ChargedCall):
            return
        now = self.clock.now()
        self._credit(charged, charged.credit.answered(now))
        if self.rf is not None:
            self._rf_start(charged, now)

    def _ended(self, call: Call) -> None:
        charged = call.app
        if not isinstance(charged, ChargedCall):
            return
        now = self.clock.now()
        self._credit(charged, charged.credit.call_ended(now, LOGOUT))
        self._rf_stop(charged, now)

    def _credit(self, charged: ChargedCall, actions: list[CreditAction]) -> None:
        proxy = self.proxy
        assert proxy is not None
        for action in actions:
            now = self.clock.now()
            if isinstance(action, Allow):
                self._run(proxy.forward_call(charged.call, now))
            elif isinstance(action, Deny):
                log.info(
                    "INVITE %s refused with %d: %s",
                    charged.call.call_id,
                    action.status,
                    action.reason,
                    extra=self._context(charged),
                )
                warning = f'399 {self.settings.origin_host} "{action.reason}"'
                self._run(proxy.reject_call(charged.call, action.status, now, warning=warning))
            elif isinstance(action, Teardown):
                log.info("tearing down call %s: %s", charged.call.call_id, action.reason, extra=self._context(charged))
                reason = REASONS.get(action.reason, f'Q.850;cause=16;text="{action.reason}"')
                self._run(proxy.end_call(charged.call, now, reason))
                self._rf_stop(charged, now)
            elif isinstance(action, SendCcr):
                self._spawn(charged, self._send_ccr(charged, action))
        self._forget_if_done(charged)
        self._wake.set()

    async def _send_ccr(self, charged: ChargedCall, ccr: SendCcr) -> None:
        """Send one CCR and feed the outcome back: the answer, Tx expiry (RFC 4006 5.7), or failure."""
        msg = build_ccr(self.ro, charged.session_id, charged.data, ccr, self.clock.now(), charged.server_host)
        charged.inflight += 1
        try:
            outcome = await self._exchange(charged, ccr, msg, self.settings.tx_seconds)
            if outcome == "timeout":
                self._credit(charged, charged.credit.tx_expired(self.clock.now()))
                if charged.credit.state in (CcState.PENDING_I, CcState.PENDING_U):
                    # CONTINUE and RETRY_AND_TERMINATE: the request goes again, T flag set (RFC 4006 5.7,
                    # RFC 6733 5.5.4), to whichever OCF peer the node routes to; the answer is still awaited.
                    msg.flags |= FLAG_RETRANSMIT
                    outcome = await self._exchange(charged, ccr, msg, self.settings.failover_seconds)
                    if outcome != "answered":
                        self._credit(charged, charged.credit.failed(self.clock.now()))
            elif outcome == "failed":
                self._credit(charged, charged.credit.failed(self.clock.now()))
        finally:
            charged.inflight -= 1
            self._forget_if_done(charged)

    async def _exchange(self, charged: ChargedCall, ccr: SendCcr, msg: Message, timeout: float) -> str:
        kind = Kind(ccr.kind).name
        try:
            answer = await self.node.request(msg, timeout=timeout)
        except RequestTimeout:
            self._note_ro(charged, ccr, kind, "timeout")
            return "timeout"
        except (NoRouteError, ConnectionError) as exc:
            log.warning("CCR %s of %s not delivered: %s", kind, charged.session_id, exc)
            self._note_ro(charged, ccr, kind, "failed")
            return "failed"
        cca = parse_cca(answer, self.ro)
        if ccr.kind is Kind.INITIAL and 2000 <= cca.result_code < 3000:
            charged.server_host = str(answer.get("Origin-Host") or "") or None
        self._note_ro(charged, ccr, kind, str(cca.result_code))
        self._credit(charged, charged.credit.answer(cca, self.clock.now()))
        return "answered"

    @staticmethod
    def _context(charged: ChargedCall) -> dict[str, str]:
        return {"session_id": charged.session_id, "icid": charged.data.icid or "", "call_id": charged.call.call_id}

    def _note_ro(self, charged: ChargedCall, ccr: SendCcr, kind: str, result: str) -> None:
        self.ro_log.append(
            RoExchange(
                self.clock.now(),
                charged.session_id,
                charged.call.call_id,
                kind,
                ccr.number,
                ccr.used_seconds,
                ccr.reporting_reason,
                result,
            )
        )

    def _forget_if_done(self, charged: ChargedCall) -> None:
        """A call leaves ``calls`` once it is over and its credit-control session is closed."""
        closed = charged.credit.state in (CcState.CLOSED, CcState.IDLE)
        if closed and charged.call.is_over and charged.inflight == 0:
            self.calls.pop(charged.session_id, None)

    # -- the OCF's requests ----------------------------------------------------------------------
    async def _on_asr(self, msg: Message, peer: Peer) -> Message:
        """Abort-Session-Request: ASA first, then BYE to both legs and CCR-T (RFC 4006 5.5)."""
        charged = self.calls.get(str(msg["Session-Id"]))
        if charged is None or charged.credit.ended:
            return self.node.make_answer(msg, ResultCode.DIAMETER_UNKNOWN_SESSION_ID)
        asyncio.get_running_loop().call_soon(self._abort, charged)
        return self.node.make_answer(msg, ResultCode.DIAMETER_SUCCESS)

    def _abort(self, charged: ChargedCall) -> None:
        log.info("ASR for call %s", charged.call.call_id, extra=self._context(charged))
        self._credit(charged, charged.credit.abort(self.clock.now()))

    async def _on_rar(self, msg: Message, peer: Peer) -> Message:
        """Re-Auth-Request: RAA first, then a CCR-U (RFC 4006 5.5)."""
        charged = self.calls.get(str(msg["Session-Id"]))
        if charged is None or charged.credit.ended:
            return self.node.make_answer(msg, ResultCode.DIAMETER_UNKNOWN_SESSION_ID)
        asyncio.get_running_loop().call_soon(self._reauth, charged)
        return self.node.make_answer(msg, ResultCode.DIAMETER_SUCCESS)

    def _reauth(self, charged: ChargedCall) -> None:
        self._credit(charged, charged.credit.reauth(self.clock.now()))

    # -- Rf --------------------------------------------------------------------------------------
    def _rf_start(self, charged: ChargedCall, now: float) -> None:
        if self.rf is None or charged.rf_session is not None:
            return
        charged.rf_session = self.node.new_session_id("rf")
        charged.rf_interval = self.rf.interim_interval
        self._spawn(charged, self._send_acr(charged, AccountingRecordType.START, now))

    def _rf_stop(self, charged: ChargedCall, now: float) -> None:
        if self.rf is None or charged.rf_session is None or charged.rf_stopped:
            return
        charged.rf_stopped = True
        charged.rf_next = None
        self._spawn(charged, self._send_acr(charged, AccountingRecordType.STOP, now))

    def _rf_interim(self, charged: ChargedCall, now: float) -> None:
        charged.rf_next = None
        self._spawn(charged, self._send_acr(charged, AccountingRecordType.INTERIM, now))

    async def _send_acr(self, charged: ChargedCall, kind: AccountingRecordType, now: float) -> None:
        assert self.rf is not None and charged.rf_session is not None
        charged.rf_number += 1
        number = charged.rf_number - 1  # Accounting-Record-Number starts at 0 (RFC 6733 9.8.3)
        acr = build_acr(
            self.rf,
            charged.rf_session,
            charged.data,
            kind,
            number,
            now,
            answered_at=charged.credit.answered_at,
            cause_code=0 if kind is AccountingRecordType.STOP else None,
        )
        try:
            aca = await self.node.request(acr, timeout=self.settings.tx_seconds)
        except (RequestTimeout, NoRouteError, ConnectionError) as exc:
            log.warning("ACR %s of %s not answered: %s", kind.name, charged.call.call_id, exc)
            self.rf_log.append((charged.call.call_id, number, f"{kind.name} failed"))
            return
        self.rf_log.append((charged.call.call_id, number, f"{kind.name} {result_code(aca)}"))
        interval = aca.get("Acct-Interim-Interval")
        if interval:
            charged.rf_interval = int(interval)  # RFC 6733 9.8.2: the server's value is the one to use
        if kind is not AccountingRecordType.STOP and not charged.rf_stopped and charged.rf_interval:
            charged.rf_next = self.clock.now() + charged.rf_interval
            self._wake.set()

    # -- timers ----------------------------------------------------------------------------------
    async def _timer_loop(self) -> None:
        while True:
            now = self.clock.now()
            proxy = self.proxy
            deadlines: list[float] = []
            if proxy is not None:
                if (d := proxy.next_deadline()) is not None and d <= now:
                    self._run(proxy.timer(now))
                if (d := proxy.next_deadline()) is not None:
                    deadlines.append(d)
            for charged in list(self.calls.values()):
                d = charged.credit.next_deadline()
                if d is not None and d <= now:
                    self._credit(charged, charged.credit.timer(now))
                    d = charged.credit.next_deadline()
                if d is not None:
                    deadlines.append(d)
                if charged.rf_next is not None:
                    if charged.rf_next <= now:
                        self._rf_interim(charged, now)
                    else:
                        deadlines.append(charged.rf_next)
            wait = min(deadlines) - self.clock.now() if deadlines else 1.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.001, min(wait, 1.0)))

    def _spawn(self, charged: ChargedCall, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        charged.tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(charged.tasks.discard)
        task.add_done_callback(_log_failure)

    # -- views for operators and tests -----------------------------------------------------------
    def active_calls(self) -> list[ChargedCall]:
        return [c for c in self.calls.values() if not c.call.is_over]

    def sent_requests(self, method: str, own: bool | None = None) -> list[Sent]:
        """Requests sent (first transmissions), those the GWF originated only with ``own=True``."""
        return [
            s
            for s in self.sent
            if s.first_line.startswith(method + " ") and not s.retransmission and (own is None or s.own == own)
        ]


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("IMS-GWF task failed", exc_info=task.exception())
