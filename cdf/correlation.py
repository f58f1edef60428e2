"""The correlated view of one IMS session: every node's records that share an ICID.  Pure.

All nodes on a session's path put the same IMS-Charging-Identifier in their ACRs (TS 32.260
5.2.1.1); the Inter-Operator-Identifiers tell which network originated and which terminates
it.  ``correlate`` takes the closed CDRs and the still open records of one ICID and says
which nodes reported, in which role and with which IOIs, what is missing (gaps), and how
long the session lasted.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from cdf.assembly import RecordState
from charging.cdr import CauseForRecordClosing, Cdr

GapKind = Literal[
    "open",  # a node's record has no STOP yet (the session may still be running)
    "start_lost",  # a node's record was opened by an INTERIM or STOP: its START never arrived
    "interim_lost",  # a node's ACR numbers jump: an INTERIM never arrived
    "stop_lost",  # the CDF closed a silent session as incomplete
    "partial_missing",  # a node's chain of partial records lacks a record sequence number
    "no_terminating_leg",  # an originating leg in a network that should also report the terminating one
    "no_originating_leg",  # the reverse
]

# Causes that close a partial record and open the next one; the others end the chain.
_PARTIAL_CAUSES = frozenset({CauseForRecordClosing.TIME_LIMIT, CauseForRecordClosing.SERVICE_CHANGE})


class Gap(BaseModel):
    kind: GapKind
    node_address: str | None = None
    session_id: str | None = None
    detail: str


class NodeLeg(BaseModel):
    """What one node reported about the session (all its records of one Session-Id)."""

    node_address: str
    session_id: str
    node_functionality: str
    role_of_node: str | None = None
    originating_iois: list[str] = Field(default_factory=list)
    terminating_iois: list[str] = Field(default_factory=list)
    cdr_ids: list[str] = Field(default_factory=list)
    record_sequence_numbers: list[int] = Field(default_factory=list)
    open_record: bool = False  # a record of this leg is still open at the CDF
    first_opened: datetime | None = None
    last_closed: datetime | None = None
    duration_seconds: float = 0.0  # sum over the leg's closed records
    closing_causes: list[str] = Field(default_factory=list)


class CorrelatedView(BaseModel):
    icid: str
    legs: list[NodeLeg]
    originating_iois: list[str]
    terminating_iois: list[str]
    gaps: list[Gap]
    total_duration_seconds: float  # the longest leg: every leg reports the same session
    complete: bool  # no gaps

    @property
    def nodes(self) -> list[str]:
        return sorted({leg.node_address for leg in self.legs})


def _add(values: list[str], value: str | None) -> None:
    if value and value not in values:
        values.append(value)


def correlate(
    icid: str,
    cdrs: Iterable[Cdr],
    open_records: Iterable[RecordState] = (),
    home_iois: Iterable[str] = (),
) -> CorrelatedView:
    """The view of session ``icid`` from its CDRs and open records.

    ``home_iois``: the IOIs of this operator's network.  When given, a terminating leg is expected only if
    the terminating IOI is one of them (and an originating leg only if the originating IOI is): the other
    network's nodes report to that network's CDF.  When empty, every leg expects its counterpart.
    """
    home = set(home_iois)
    legs: dict[tuple[str, str], NodeLeg] = {}
    gaps: list[Gap] = []
    partials_seen: dict[tuple[str, str], set[int]] = {}
    open_partial: dict[tuple[str, str], int] = {}

    def leg_of(node: str, session: str, functionality: str) -> NodeLeg:
        key = (node, session)
        leg = legs.get(key)
        if leg is None:
            leg = legs[key] = NodeLeg(node_address=node, session_id=session, node_functionality=functionality)
        return leg

    for cdr in sorted(cdrs, key=lambda c: (c.node_address, c.session_id, c.record_opening_time)):
        leg = leg_of(cdr.node_address, cdr.session_id, cdr.node_functionality)
        leg.role_of_node = cdr.role_of_node or leg.role_of_node
        for ioi in cdr.inter_operator_identifiers:
            _add(leg.originating_iois, ioi.originating_ioi)
            _add(leg.terminating_iois, ioi.terminating_ioi)
        leg.cdr_ids.append(cdr.cdr_id)
        if cdr.record_sequence_number is not None:
            leg.record_sequence_numbers.append(cdr.record_sequence_number)
            partials_seen.setdefault((cdr.node_address, cdr.session_id), set()).add(cdr.record_sequence_number)
        if leg.first_opened is None or cdr.record_opening_time < leg.first_opened:
            leg.first_opened = cdr.record_opening_time
        if leg.last_closed is None or cdr.record_closure_time > leg.last_closed:
            leg.last_closed = cdr.record_closure_time
        leg.duration_seconds += cdr.duration_seconds
        leg.closing_causes.append(cdr.cause_for_record_closing.value)
        indication = cdr.incomplete_cdr_indication
        if indication is not None:
            where = {"node_address": cdr.node_address, "session_id": cdr.session_id}
            if indication.acr_start_lost:
                gaps.append(Gap(kind="start_lost", detail=f"record {cdr.cdr_id} opened without a START", **where))
            if indication.acr_interim_lost == "yes":
                gaps.append(Gap(kind="interim_lost", detail=f"record {cdr.cdr_id} misses an INTERIM", **where))
            if indication.acr_stop_lost:
                gaps.append(Gap(kind="stop_lost", detail=f"record {cdr.cdr_id} closed by the CDF, no STOP", **where))

    for state in open_records:
        leg = leg_of(state.node_address, state.session_id, state.node_functionality)
        leg.role_of_node = state.role_of_node or leg.role_of_node
        for ioi in state.iois:
            _add(leg.originating_iois, ioi.originating_ioi)
            _add(leg.terminating_iois, ioi.terminating_ioi)
        leg.open_record = True
        open_partial[(state.node_address, state.session_id)] = state.partial_seq
        gaps.append(
            Gap(
                kind="open",
                node_address=state.node_address,
                session_id=state.session_id,
                detail=f"{state.node_functionality} record open since its ACR {state.incarnation}, no STOP yet",
            )
        )

    for key, seen in sorted(partials_seen.items()):
        # Numbers run from 1; an open record holds the next one.
        upto = max(seen) if key not in open_partial else open_partial[key] - 1
        missing = sorted(set(range(1, upto + 1)) - seen)
        if missing:
            gaps.append(
                Gap(
                    kind="partial_missing",
                    node_address=key[0],
                    session_id=key[1],
                    detail=f"partial records {missing} of this leg are not here",
                )
            )

    originating: list[str] = []
    terminating: list[str] = []
    for leg in legs.values():
        for name in leg.originating_iois:
            _add(originating, name)
        for name in leg.terminating_iois:
            _add(terminating, name)
    roles = {leg.role_of_node for leg in legs.values()}
    expect_terminating = not home or any(name in home for name in terminating)
    expect_originating = not home or any(name in home for name in originating)
    if "ORIGINATING_ROLE" in roles and "TERMINATING_ROLE" not in roles and expect_terminating:
        gaps.append(Gap(kind="no_terminating_leg", detail="originating nodes reported, no terminating node did"))
    if "TERMINATING_ROLE" in roles and "ORIGINATING_ROLE" not in roles and expect_originating:
        gaps.append(Gap(kind="no_originating_leg", detail="terminating nodes reported, no originating node did"))

    ordered = sorted(legs.values(), key=lambda leg: (leg.first_opened is None, leg.first_opened, leg.node_address))
    return CorrelatedView(
        icid=icid,
        legs=ordered,
        originating_iois=originating,
        terminating_iois=terminating,
        gaps=gaps,
        total_duration_seconds=max((leg.duration_seconds for leg in legs.values()), default=0.0),
        complete=not gaps,
    )


def is_final(cdr: Cdr) -> bool:
    """Whether ``cdr`` ends its chain (as opposed to a partial record with a successor)."""
    return cdr.cause_for_record_closing not in _PARTIAL_CAUSES
