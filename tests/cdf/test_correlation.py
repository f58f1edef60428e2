"""Correlation, pure: the view per ICID from node CDRs and open records; roles, IOIs, gaps, duration."""

from __future__ import annotations

from cdf.acr import Acr
from cdf.assembly import Assembler, AssemblyConfig, RecordState, build_cdr
from cdf.correlation import correlate
from charging.cdr import Cdr
from tests.cdf.acrs import HOME_IOI, ICID, T0, VISITED_IOI, acr

ASSEMBLER = Assembler(AssemblyConfig(interim_closes_partial=False))


def leg(
    node: str, functionality: str, role: str | None, kinds: list[str], length: float = 60
) -> tuple[list[Cdr], RecordState | None]:
    """One node's view of the call: its ACRs in order, assembled."""
    session = f"{node};1;1"
    state: RecordState | None = None
    cdrs: list[Cdr] = []
    for number, kind in enumerate(kinds):
        item: Acr = acr(
            kind, number, session=session, node=node, functionality=functionality, role=role, at=T0 + number * length
        )
        outcome = ASSEMBLER.apply(state, item)
        state = outcome.state
        cdrs += [build_cdr(c, 1, "cdf-test") for c in outcome.closed]
    return cdrs, state


def test_a_complete_call_through_both_networks_has_no_gaps() -> None:
    cdrs: list[Cdr] = []
    for node, functionality, role in [
        ("pcscf.test", "P_CSCF", "ORIGINATING_ROLE"),
        ("scscf-o.test", "S_CSCF", "ORIGINATING_ROLE"),
        ("as.test", "AS", "ORIGINATING_ROLE"),
        ("scscf-t.test", "S_CSCF", "TERMINATING_ROLE"),
    ]:
        closed, state = leg(node, functionality, role, ["START", "STOP"])
        assert state is None
        cdrs += closed
    view = correlate(ICID, cdrs)
    assert view.complete and view.gaps == []
    assert view.nodes == ["as.test", "pcscf.test", "scscf-o.test", "scscf-t.test"]
    assert view.originating_iois == [HOME_IOI] and view.terminating_iois == [VISITED_IOI]
    assert view.total_duration_seconds == 60
    roles = {leg.node_address: leg.role_of_node for leg in view.legs}
    assert roles["scscf-t.test"] == "TERMINATING_ROLE"


def test_an_originating_leg_without_a_terminating_one_is_a_gap_unless_that_network_is_not_ours() -> None:
    cdrs, _ = leg("scscf-o.test", "S_CSCF", "ORIGINATING_ROLE", ["START", "STOP"])
    assert [g.kind for g in correlate(ICID, cdrs).gaps] == ["no_terminating_leg"]
    assert [g.kind for g in correlate(ICID, cdrs, home_iois=[VISITED_IOI]).gaps] == ["no_terminating_leg"]
    assert correlate(ICID, cdrs, home_iois=[HOME_IOI]).gaps == []


def test_a_node_with_a_start_and_no_stop_is_an_open_gap() -> None:
    closed_p, _ = leg("pcscf.test", "P_CSCF", "ORIGINATING_ROLE", ["START", "STOP"])
    closed_s, open_s = leg("scscf-t.test", "S_CSCF", "TERMINATING_ROLE", ["START", "INTERIM"])
    assert open_s is not None and closed_s == []
    view = correlate(ICID, closed_p, [open_s])
    assert [(g.kind, g.node_address) for g in view.gaps] == [("open", "scscf-t.test")]
    assert not view.complete
    assert next(leg for leg in view.legs if leg.node_address == "scscf-t.test").open_record


def test_incomplete_records_and_missing_partials_show_as_gaps() -> None:
    partials = Assembler(AssemblyConfig(interim_closes_partial=True))
    state: RecordState | None = None
    cdrs: list[Cdr] = []
    for number, kind in enumerate(["START", "INTERIM", "INTERIM", "STOP"]):
        outcome = partials.apply(state, acr(kind, number, at=T0 + number))
        state = outcome.state
        cdrs += [build_cdr(c, 1, "cdf-test") for c in outcome.closed]
    assert [c.record_sequence_number for c in cdrs] == [1, 2, 3]
    silent = Assembler(AssemblyConfig(incomplete_timeout=10))
    started = silent.apply(None, acr("START", 0, session="as.test;9", node="as.test", functionality="AS"))
    assert started.state is not None
    swept = silent.on_timer(started.state, T0 + 10)
    cdrs_with_hole = [cdrs[0], cdrs[2], build_cdr(swept.closed[0], 2, "cdf-test")]
    view = correlate(ICID, cdrs_with_hole, home_iois=[HOME_IOI])
    kinds = sorted(g.kind for g in view.gaps)
    assert kinds == ["partial_missing", "stop_lost"]
    missing = next(g for g in view.gaps if g.kind == "partial_missing")
    assert missing.node_address == "scscf.test" and "[2]" in missing.detail
