"""``charging replay``: sends a trace's requests to a CDF/OCF and checks what comes back.

The replay impersonates every client of the trace with a Diameter node of its own
(same Origin-Host and realm, after rewriting), connected to the target.  It walks
the plan (``plan.py``) in trace order and, for each step:

1. waits, at ``speed`` > 0, until ``t / speed`` seconds after the start;
2. moves the target's clock to the step's time (an in-process target runs on a
   ``ManualClock`` that only the replay moves, and runs what became due);
3. sends the request and waits for its answer (one at a time, so the target sees
   the same order every run), or waits for the server's request to arrive;
4. compares: the answer with the recorded answer (or ``expect.answer``), the CDRs
   produced since the last CDR expectation with ``expect.cdrs``, the balances with
   ``expect.balances``.

Each step is a case in the result; a case fails with the differences found.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from charging.diameter.constants import Command
from charging.diameter.errors import DiameterError
from charging.diameter.message import FLAG_ERROR, Message
from charging.diameter.node import DiameterNode, NodeConfig, PeerConfig, RequestTimeout
from charging.diameter.peer import LocalIdentity, Peer
from charging.trace.compare import ABSENT, Difference, Rules, compare_trees
from charging.trace.display import avp_tree
from charging.trace.format import CheckRecord, Expectation, MessageRecord, Trace
from charging.trace.plan import ClientIdentity, Exchange, Plan, ServerRequest, Step, build_plan, describe_step
from charging.trace.rewrite import Rewriter

log = logging.getLogger("charging.trace.replay")

TARGET_PEER = "replay-target"


class Target(Protocol):
    """Where a replay sends its requests, and where it reads the effects."""

    address: tuple[str, int]

    async def advance(self, unix_time: float) -> None:
        """Move the target's clock to ``unix_time`` (if it has one the replay drives) and run what is due."""

    async def cdrs(self) -> list[dict[str, Any]] | None:
        """Every CDR the target has produced so far, in the order produced; None if it cannot tell."""

    async def balances(self, accounts: list[str]) -> dict[str, dict[str, Any]] | None:
        """The named accounts' state (``balance``, ``reserved``, ...); None if it cannot tell."""


@dataclass(slots=True)
class ReplayOptions:
    speed: float = 0.0  # 0: as fast as the target answers; 1: real time; 10: ten times faster
    rewriter: Rewriter = field(default_factory=Rewriter)
    answer_rules: Rules = field(default_factory=Rules.for_answers)
    cdr_rules: Rules = field(default_factory=Rules.for_cdrs)
    answer_timeout: float = 10.0
    connect_timeout: float = 10.0
    settle: float = 0.3  # seconds after the last step in which a server request the trace lacks still counts


@dataclass(slots=True)
class CaseResult:
    name: str
    line: int
    t: float
    differences: list[Difference] = field(default_factory=list)
    error: str = ""  # the step could not be carried out (timeout, no connection)
    notes: list[str] = field(default_factory=list)  # what was not checked, and why
    actual_answer: Message | None = None
    actual_request: Message | None = None  # a server request as received
    actual_cdrs: list[dict[str, Any]] | None = None
    actual_balances: dict[str, dict[str, Any]] | None = None

    @property
    def passed(self) -> bool:
        return not self.differences and not self.error

    def failure_text(self) -> str:
        lines = [self.error] if self.error else []
        lines += [str(d) for d in self.differences]
        return "\n".join(lines)


@dataclass(slots=True)
class ReplayResult:
    trace_name: str
    cases: list[CaseResult]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)

    @property
    def failures(self) -> list[CaseResult]:
        return [c for c in self.cases if not c.passed]


class Replayer:
    def __init__(
        self,
        trace: Trace,
        target: Target,
        options: ReplayOptions | None = None,
        name: str = "",
        plan: Plan | None = None,
    ) -> None:
        self.trace = trace
        self.target = target
        self.options = options or ReplayOptions()
        self.name = name or "trace"
        self.plan: Plan = plan if plan is not None else build_plan(trace)
        self._clients: dict[str, DiameterNode] = {}  # by trace host
        self._e2e: dict[tuple[str, int], int] = {}  # (trace host, recorded End-to-End) -> the one sent
        self._expected_server: dict[tuple[str, int], deque[_Awaited]] = {}
        self._unexpected: list[CaseResult] = []
        self._cdrs_seen: set[str] = set()
        self._watching = False

    async def run(self) -> ReplayResult:
        cases: list[CaseResult] = []
        try:
            await self._connect()
        except ConnectionError as exc:
            await self._disconnect()
            return ReplayResult(self.name, [CaseResult("connect to the target", 0, 0.0, error=str(exc))])
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            for step in self.plan.steps:
                if self.options.speed > 0:
                    delay = started + step.t / self.options.speed - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await self.target.advance(self.trace.header.start + step.t)
                cases.append(await self._step(step))
            if self._watching and self.options.settle > 0:
                await asyncio.sleep(self.options.settle)  # time for a request the server should not send
        finally:
            await self._disconnect()
        return ReplayResult(self.name, cases + self._unexpected)

    # -- clients -------------------------------------------------------------------------------------
    async def _connect(self) -> None:
        rw = self.options.rewriter
        address, port = self.target.address
        for host, ident in self.plan.clients.items():
            node = DiameterNode(self._node_config(ident, rw, address, port))
            # Credit-control clients take ASR and RAR whether the trace has any or not: one it
            # does not expect must fail the replay, not be refused by the node unnoticed.
            watched = set(ident.server_commands)
            if 4 in ident.auth_applications:
                watched |= {(4, Command.ABORT_SESSION), (4, Command.RE_AUTH)}
            for app, code in sorted(watched):
                node.register(app, code, self._server_request_handler(host))
            self._watching |= bool(watched)
            self._clients[host] = node
        for node in self._clients.values():
            await node.start()
        deadline = asyncio.get_running_loop().time() + self.options.connect_timeout
        for host, node in self._clients.items():
            while not (TARGET_PEER in node.peers and node.peers[TARGET_PEER].available):
                if asyncio.get_running_loop().time() > deadline:
                    reason = node.peers[TARGET_PEER].last_error if TARGET_PEER in node.peers else "no connection"
                    raise ConnectionError(
                        f"client {rw.host(host)} could not open a Diameter connection to {address}:{port}: {reason}"
                    )
                await asyncio.sleep(0.01)

    @staticmethod
    def _node_config(ident: ClientIdentity, rw: Rewriter, address: str, port: int) -> NodeConfig:
        server_apps = {app for app, _ in ident.server_commands}
        return NodeConfig(
            LocalIdentity(rw.host(ident.host), rw.realm(ident.realm) or "replay", product_name="charging-replay"),
            peers=[PeerConfig(TARGET_PEER, "", address, port)],
            client_auth_applications=frozenset(ident.auth_applications | (server_apps - {3})),
            client_acct_applications=frozenset(ident.acct_applications),
        )

    async def _disconnect(self) -> None:
        for node in self._clients.values():
            try:
                await node.stop(timeout=2.0)
            except Exception:  # a node that fails to stop must not hide the result
                log.exception("stopping a replay client failed")

    # -- steps ---------------------------------------------------------------------------------------
    async def _step(self, step: Step) -> CaseResult:
        case = CaseResult(describe_step(step), _line(step), step.t)
        if isinstance(step, Exchange):
            await self._exchange(step, case)
            expect = step.request.expect
        elif isinstance(step, ServerRequest):
            await self._server_request(step, case)
            expect = step.request.expect
        else:
            expect = step.expect
        if expect is not None and not case.error:
            await self._effects(expect, case)
        return case

    async def _exchange(self, step: Exchange, case: CaseResult) -> None:
        rw = self.options.rewriter
        record = step.request
        host = self._client_host(record)
        node = self._clients[host]
        msg = Message.decode(rw.message(record.raw))
        key = (host, record.end_to_end)
        # A fresh End-to-End id (0: the node picks one), except that a retransmission reuses its original's.
        msg.end_to_end = self._e2e.get(key, 0)
        try:
            answer = await node.request(msg, peer=TARGET_PEER, timeout=self.options.answer_timeout)
        except RequestTimeout:
            case.error = f"no answer within {self.options.answer_timeout:g} s"
            return
        except (ConnectionError, DiameterError) as exc:
            case.error = f"the request could not be sent: {exc}"
            return
        finally:
            if msg.end_to_end:
                self._e2e.setdefault(key, msg.end_to_end)
        case.actual_answer = answer
        case.differences += self._compare_answer(record.expect, step.answer, answer)
        if (record.expect is None or record.expect.answer is None) and step.answer is None:
            case.notes.append("no answer in the trace to compare with")

    def _compare_answer(
        self, expect: Expectation | None, recorded: MessageRecord | None, actual: Message
    ) -> list[Difference]:
        rw = self.options.rewriter
        rules = self.options.answer_rules
        actual_tree = avp_tree(actual.avps)
        if expect is not None and expect.answer is not None:
            return compare_trees(rw.tree(expect.answer), actual_tree, rules, "answer", subset=True)
        if recorded is None:
            return []
        expected_msg = Message.decode(rw.message(recorded.raw))
        diffs: list[Difference] = []
        if expected_msg.code != actual.code or expected_msg.app_id != actual.app_id:
            diffs.append(
                Difference(
                    "answer",
                    "header",
                    f"{expected_msg.command_name} (application {expected_msg.app_id})",
                    f"{actual.command_name} (application {actual.app_id})",
                )
            )
        if (expected_msg.flags & FLAG_ERROR) != (actual.flags & FLAG_ERROR):
            diffs.append(Difference("answer", "header/E-bit", bool(expected_msg.flags & FLAG_ERROR), actual.is_error))
        diffs += compare_trees(avp_tree(expected_msg.avps), actual_tree, rules, "answer")
        return diffs

    def _client_host(self, record: MessageRecord) -> str:
        host = str(record.message.get("Origin-Host", "") or record.peer.host)
        return host if host in self._clients else next(iter(self._clients))

    # -- requests from the server --------------------------------------------------------------------
    async def _server_request(self, step: ServerRequest, case: CaseResult) -> None:
        awaited = self._await_server_request(step)
        try:
            await asyncio.wait_for(asyncio.shield(awaited.done), self.options.answer_timeout)
        except TimeoutError:
            case.error = f"the server did not send this {step.request.message.command_name}"
            return
        received = awaited.received
        assert received is not None
        case.actual_request = received
        expected = Message.decode(self.options.rewriter.message(step.request.raw))
        case.differences += compare_trees(
            avp_tree(expected.avps), avp_tree(received.avps), self.options.answer_rules, "request"
        )

    def _await_server_request(self, step: ServerRequest) -> _Awaited:
        host = self._server_request_host(step.request)
        queue = self._expected_server.setdefault((host, step.request.code), deque())
        for awaited in queue:
            if awaited.step is step:
                return awaited
        awaited = _Awaited(step)
        queue.append(awaited)
        return awaited

    def _server_request_host(self, record: MessageRecord) -> str:
        for host, ident in self.plan.clients.items():
            if (record.message.app_id, record.code) in ident.server_commands:
                dest = str(record.message.get("Destination-Host", "") or "")
                if not dest or dest.lower() == host.lower():
                    return host
        return next(iter(self.plan.clients))

    def _server_request_handler(self, host: str) -> Any:
        async def handle(msg: Message, peer: Peer) -> Message:
            awaited = self._match_server_request(host, msg)
            if awaited is None:
                case = CaseResult(f"unexpected {msg.command_name} from the server ({msg.get('Session-Id')})", 0, 0.0)
                case.error = f"the trace has no {msg.command_name} for {self.options.rewriter.host(host)} at this point"
                case.actual_request = msg
                self._unexpected.append(case)
                return _plain_answer(msg, self._clients[host])
            awaited.received = msg
            awaited.done.set_result(None)
            recorded = awaited.step.answer
            if recorded is None:
                return _plain_answer(msg, self._clients[host])
            answer = Message.decode(self.options.rewriter.message(recorded.raw))
            answer.hop_by_hop = msg.hop_by_hop
            answer.end_to_end = msg.end_to_end
            return answer

        return handle

    def _match_server_request(self, host: str, msg: Message) -> _Awaited | None:
        queue = self._expected_server.setdefault((host, msg.code), deque())
        for awaited in queue:
            if awaited.received is None:
                return awaited
        # It came before the replay reached its step: take the next such request of the plan.
        taken = {id(a.step) for a in queue}
        for step in self.plan.steps:
            if (
                isinstance(step, ServerRequest)
                and id(step) not in taken
                and step.request.code == msg.code
                and self._server_request_host(step.request) == host
            ):
                awaited = _Awaited(step)
                queue.append(awaited)
                return awaited
        return None

    # -- effects -------------------------------------------------------------------------------------
    async def _effects(self, expect: Expectation, case: CaseResult) -> None:
        rw = self.options.rewriter
        if expect.cdrs is not None:
            cdrs = await self.target.cdrs()
            if cdrs is None:
                case.error = "CDRs are expected but the target gives no way to read them"
            else:
                new = [c for c in cdrs if str(c.get("cdr_id")) not in self._cdrs_seen]
                self._cdrs_seen |= {str(c.get("cdr_id")) for c in new}
                case.actual_cdrs = new
                case.differences += compare_cdrs([rw.cdr(c) for c in expect.cdrs], new, self.options.cdr_rules)
        if expect.balances is not None:
            names = list(expect.balances)
            balances = await self.target.balances(names)
            if balances is None:
                case.error = "balances are expected but the target gives no way to read them"
                return
            case.actual_balances = balances
            for name, fields in expect.balances.items():
                actual = balances.get(name)
                if actual is None:
                    case.differences.append(Difference(f"balance {name}", "", fields, ABSENT, "no such account"))
                    continue
                case.differences += compare_trees(fields, actual, Rules(), f"balance {name}", subset=True, enums=False)


@dataclass(slots=True)
class _Awaited:
    step: ServerRequest
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    received: Message | None = None


def _plain_answer(msg: Message, node: DiameterNode) -> Message:
    return node.make_answer(msg, 2001)


def _line(step: Step) -> int:
    return step.line if isinstance(step, CheckRecord) else step.request.line


CDR_KEY = ("record_type", "node_address", "session_id", "record_sequence_number")


def cdr_key(cdr: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(cdr.get(k) for k in CDR_KEY)


def cdr_name(cdr: dict[str, Any]) -> str:
    seq = cdr.get("record_sequence_number")
    part = f" #{seq}" if seq is not None else ""
    return f"cdr {cdr.get('record_type')} of {cdr.get('node_address')} ({cdr.get('session_id')}){part}"


def compare_cdrs(expected: list[dict[str, Any]], actual: list[dict[str, Any]], rules: Rules) -> list[Difference]:
    """Pair CDRs by record type, node, session and partial sequence number; compare what the expected ones name."""
    diffs: list[Difference] = []
    remaining = list(actual)
    for exp in expected:
        match = next((a for a in remaining if all(exp.get(k) == a.get(k) for k in CDR_KEY if k in exp)), None)
        if match is None:
            diffs.append(Difference(cdr_name(exp), "", exp, ABSENT, "missing: expected, but the target produced none"))
            continue
        remaining.remove(match)
        diffs += compare_trees(exp, match, rules, cdr_name(match), subset=True, enums=False)
    for extra in remaining:
        diffs.append(Difference(cdr_name(extra), "", ABSENT, extra, "unexpected: produced, but not expected"))
    return diffs
