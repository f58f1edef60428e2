"""A trace with its expectations replaced by what a replay actually saw (``charging replay --write-expected``).

Used to make a trace's expectations from a run that is known to be right: answers
recorded after each request (in place of the old ones), server requests as
received, and every CDR and balance expectation filled with the actual values.
Fields that the CDR rules ignore are left out, so the written expectations hold
only what a replay compares.
"""

from __future__ import annotations

from typing import Any

from charging.diameter.message import Message
from charging.trace.compare import Rules
from charging.trace.format import CheckRecord, Endpoint, Expectation, MessageRecord, Record, Trace
from charging.trace.plan import Exchange, ServerRequest
from charging.trace.replay import CaseResult, Replayer

DEFAULT_BALANCE_FIELDS = ("balance", "reserved")


def blessed(replayer: Replayer, cases: list[CaseResult]) -> Trace:
    trace = replayer.trace
    by_step = dict(zip((id(s) for s in replayer.plan.steps), cases, strict=False))
    replaced: dict[int, Record] = {}  # id of an old answer record -> its replacement (or dropped)
    inserted: dict[int, MessageRecord] = {}  # id of a request -> the answer to put after it
    dropped: set[int] = set()
    expects: dict[int, Expectation] = {}
    for step in replayer.plan.steps:
        case = by_step.get(id(step))
        if case is None:
            continue
        if isinstance(step, Exchange):
            if case.actual_answer is not None and (step.request.expect is None or step.request.expect.answer is None):
                answer = _answer_record(step.request, case.actual_answer, step.answer)
                if step.answer is not None:
                    dropped.add(id(step.answer))
                inserted[id(step.request)] = answer
            if step.request.expect is not None:
                expects[id(step.request)] = _filled(step.request.expect, case, replayer.options.cdr_rules)
        elif isinstance(step, ServerRequest):
            if case.actual_request is not None:
                raw = _with_ids(case.actual_request, step.request.hop_by_hop, step.request.end_to_end)
                replaced[id(step.request)] = MessageRecord(
                    step.request.t, step.request.connection, "server", raw, step.request.peer, step.request.expect
                )
        elif isinstance(step, CheckRecord):
            expects[id(step)] = _filled(step.expect, case, replayer.options.cdr_rules)
    records: list[Record] = []
    for record in trace.records:
        if id(record) in dropped:
            continue
        new = replaced.get(id(record), record)
        if id(record) in expects:
            if isinstance(new, CheckRecord):
                new = CheckRecord(new.t, expects[id(record)], new.name)
            else:
                new = MessageRecord(new.t, new.connection, new.sender, new.raw, new.peer, expects[id(record)])
        records.append(new)
        if id(record) in inserted:
            records.append(inserted[id(record)])
    return Trace(trace.header, records)


def _answer_record(request: MessageRecord, actual: Message, old: MessageRecord | None) -> MessageRecord:
    raw = _with_ids(actual, request.hop_by_hop, request.end_to_end)
    peer = old.peer if old is not None else Endpoint(str(actual.get("Origin-Host", "")), "")
    return MessageRecord(request.t, request.connection, "server", raw, peer)


def _with_ids(msg: Message, hop_by_hop: int, end_to_end: int) -> bytes:
    raw = msg.to_bytes()
    return raw[:12] + hop_by_hop.to_bytes(4, "big") + end_to_end.to_bytes(4, "big") + raw[20:]


def _filled(expect: Expectation, case: CaseResult, cdr_rules: Rules) -> Expectation:
    cdrs = expect.cdrs
    if cdrs is not None and case.actual_cdrs is not None:
        cdrs = [_without_ignored(c, cdr_rules) for c in case.actual_cdrs]
    balances = expect.balances
    if balances is not None and case.actual_balances is not None:
        balances = {
            name: {k: case.actual_balances.get(name, {}).get(k) for k in (fields or DEFAULT_BALANCE_FIELDS)}
            for name, fields in balances.items()
        }
    return Expectation(expect.answer, cdrs, balances)


def _without_ignored(tree: Any, rules: Rules, path: tuple[str, ...] = ()) -> Any:
    if isinstance(tree, dict):
        return {k: _without_ignored(v, rules, (*path, k)) for k, v in tree.items() if not rules.ignored([*path, k])}
    if isinstance(tree, list):
        return [_without_ignored(v, rules, path) for v in tree]
    return tree
