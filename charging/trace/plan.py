"""What a replay does, worked out from a trace before anything is sent (no I/O).

The replay plays the client side of every connection in the trace.  Its steps, in
trace order:

- ``Exchange``: a request the client sent (ACR, CCR, STR, ...) and the answer the
  server gave to it in the trace (same connection and Hop-by-Hop id), if captured;
- ``ServerRequest``: a request the server sent (ASR, RAR, ...) that the replay
  must see arrive, and the answer the client gave to it, which the replay sends back;
- ``CheckRecord``: expectations at a point in time.

Capabilities exchange, watchdog and disconnect messages (CER/CEA, DWR/DWA, DPR/DPA)
are not replayed: the replay's own Diameter nodes speak them with the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from charging.diameter.constants import Command
from charging.diameter.dictionary import DICTIONARY
from charging.trace.format import CheckRecord, MessageRecord, Trace

BASE_COMMANDS = frozenset({Command.CAPABILITIES_EXCHANGE, Command.DEVICE_WATCHDOG, Command.DISCONNECT_PEER})


@dataclass(slots=True)
class Exchange:
    request: MessageRecord
    answer: MessageRecord | None

    @property
    def t(self) -> float:
        return self.request.t


@dataclass(slots=True)
class ServerRequest:
    request: MessageRecord
    answer: MessageRecord | None

    @property
    def t(self) -> float:
        return self.request.t


Step = Exchange | ServerRequest | CheckRecord


@dataclass(slots=True)
class ClientIdentity:
    """A client the replay impersonates: the Origin-Host of its requests, its realm, its applications."""

    host: str
    realm: str = ""
    auth_applications: set[int] = field(default_factory=set)
    acct_applications: set[int] = field(default_factory=set)
    server_commands: set[tuple[int, int]] = field(default_factory=set)  # (application, command) it must answer


@dataclass(slots=True)
class Plan:
    steps: list[Step]
    clients: dict[str, ClientIdentity]  # by Origin-Host as in the trace (before rewriting)
    server_host: str = ""  # the server's Origin-Host as recorded, if any message shows it
    server_realm: str = ""
    skipped: int = 0  # base protocol messages not replayed


def build_plan(trace: Trace) -> Plan:
    answers: dict[tuple[int, str, int, int], list[MessageRecord]] = {}
    for record in trace.messages:
        if not record.is_request:
            key = (record.connection, record.sender, record.hop_by_hop, record.end_to_end)
            answers.setdefault(key, []).append(record)
    steps: list[Step] = []
    clients: dict[str, ClientIdentity] = {}
    conn_client: dict[int, str] = {}  # connection -> client host, for server requests
    plan = Plan(steps, clients)
    for item in trace.records:
        if isinstance(item, CheckRecord):
            steps.append(item)
            continue
        record = item
        msg = record.message
        if record.sender == "server" and not plan.server_host:
            plan.server_host = str(msg.get("Origin-Host", "") or "")
            plan.server_realm = str(msg.get("Origin-Realm", "") or "")
        if record.code in BASE_COMMANDS:
            if record.sender == "client" and record.is_request and record.code == Command.CAPABILITIES_EXCHANGE:
                _client(clients, conn_client, record)
            plan.skipped += 1
            continue
        if not record.is_request:
            continue  # answers are taken with their requests
        other = "server" if record.sender == "client" else "client"
        candidates = answers.get((record.connection, other, record.hop_by_hop, record.end_to_end), [])
        answer = next((a for a in candidates if a.t >= record.t), None)
        if answer is not None:
            candidates.remove(answer)
        if record.sender == "client":
            ident = _client(clients, conn_client, record)
            if record.message.app_id == 3:
                ident.acct_applications.add(3)
            else:
                ident.auth_applications.add(record.message.app_id)
            steps.append(Exchange(record, answer))
        else:
            host = conn_client.get(record.connection) or str(msg.get("Destination-Host", "") or "")
            ident = clients.setdefault(host, ClientIdentity(host))
            ident.server_commands.add((msg.app_id, msg.code))
            conn_client.setdefault(record.connection, host)
            steps.append(ServerRequest(record, answer))
    return plan


def _client(clients: dict[str, ClientIdentity], conn_client: dict[int, str], record: MessageRecord) -> ClientIdentity:
    msg = record.message
    host = str(msg.get("Origin-Host", "") or record.peer.host)
    ident = clients.setdefault(host, ClientIdentity(host))
    if not ident.realm:
        ident.realm = str(msg.get("Origin-Realm", "") or "")
    conn_client.setdefault(record.connection, host)
    return ident


def describe_step(step: Step) -> str:
    """A short name for reports: ``line 7: CCR UPDATE_REQUEST #1 (as.example.net;1;2)``."""
    if isinstance(step, CheckRecord):
        return f"line {step.line}: check{(' ' + step.name) if step.name else ''} at t={step.t:g}"
    record = step.request
    msg = record.message
    parts = [msg.command_name]
    try:
        for name in ("CC-Request-Type", "Accounting-Record-Type"):
            value = msg.get(name)
            if value is not None:
                parts.append(DICTIONARY.enum_name(name, value) or str(value))
        for name in ("CC-Request-Number", "Accounting-Record-Number"):
            value = msg.get(name)
            if value is not None:
                parts.append(f"#{value}")
        session = msg.get("Session-Id")
    except Exception:  # a damaged message is still named by its command
        session = None
    if isinstance(step, ServerRequest):
        parts.append("from the server")
    text = " ".join(parts)
    if session:
        text += f" ({session})"
    return f"line {record.line}: {text}" if record.line else text
