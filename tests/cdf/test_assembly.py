"""CDR assembly, pure: records opened, updated, closed as partial, final and incomplete, with a clock passed in."""

from __future__ import annotations

from bench.messages import IMPU, sdp_media
from cdf.acr import Acr
from cdf.assembly import Assembler, AssemblyConfig, ClosedRecord, Outcome, RecordState, build_cdr
from charging.cdr import CauseForRecordClosing, Cdr, RecordType, cdr_id_for
from tests.cdf.acrs import ICID, T0, acr


def run(
    assembler: Assembler, acrs: list[Acr], state: RecordState | None = None
) -> tuple[RecordState | None, list[Cdr]]:
    """Apply ``acrs`` in order; the closed records become CDRs numbered from 1."""
    closed: list[ClosedRecord] = []
    for item in acrs:
        outcome: Outcome = assembler.apply(state, item)
        state = outcome.state
        closed.extend(outcome.closed)
    return state, [build_cdr(c, n + 1, "cdf-test") for n, c in enumerate(closed)]


def no_partials() -> Assembler:
    return Assembler(AssemblyConfig(interim_closes_partial=False))


def test_start_and_stop_make_one_complete_record_without_sequence_number() -> None:
    state, cdrs = run(
        no_partials(),
        [
            acr("START", 0, at=T0, media=sdp_media(), request_time=int(T0) - 3, response_time=int(T0)),
            acr("STOP", 1, at=T0 + 65, request_time=int(T0) + 65),
        ],
    )
    assert state is None
    [cdr] = cdrs
    assert cdr.record_type is RecordType.S_CSCF
    assert cdr.cdr_id == cdr_id_for("scscf.test", "scscf.test;1;1", None)
    assert cdr.record_sequence_number is None
    assert cdr.cause_for_record_closing is CauseForRecordClosing.SERVICE_DELIVERY_END_SUCCESSFULLY
    assert cdr.duration_seconds == 65
    assert cdr.record_opening_time.timestamp() == T0 and cdr.record_closure_time.timestamp() == T0 + 65
    assert cdr.service_request_time_stamp is not None and cdr.service_request_time_stamp.timestamp() == T0 - 3
    assert cdr.service_delivery_end_time_stamp is not None
    assert cdr.served_party == IMPU
    assert cdr.ims_charging_identifier == ICID
    assert [(i.originating_ioi, i.terminating_ioi) for i in cdr.inter_operator_identifiers] == [
        ("ims.mnc001.mcc001.3gppnetwork.org", "ims.mnc002.mcc001.3gppnetwork.org")
    ]
    assert len(cdr.list_of_sdp_media_components) == 1
    assert cdr.accounting_record_numbers == [0, 1]
    assert cdr.incomplete_cdr_indication is None
    assert cdr.local_record_sequence_number == 1


def test_each_interim_closes_a_partial_record_and_opens_the_next() -> None:
    assembler = Assembler(AssemblyConfig(interim_closes_partial=True))
    state, cdrs = run(
        assembler,
        [
            acr("START", 0, at=T0, media=sdp_media()),
            acr("INTERIM", 1, at=T0 + 30, media=sdp_media()),  # periodic: same media
            acr("INTERIM", 2, at=T0 + 50, media=sdp_media(video=True)),  # re-INVITE adding video
            acr("STOP", 3, at=T0 + 70),
        ],
    )
    assert state is None
    assert [c.record_sequence_number for c in cdrs] == [1, 2, 3]
    assert [c.cause_for_record_closing for c in cdrs] == [
        CauseForRecordClosing.TIME_LIMIT,
        CauseForRecordClosing.SERVICE_CHANGE,
        CauseForRecordClosing.SERVICE_DELIVERY_END_SUCCESSFULLY,
    ]
    assert [c.duration_seconds for c in cdrs] == [30, 20, 20]
    assert [c.accounting_record_numbers for c in cdrs] == [[0, 1], [2], [3]]
    assert len({c.cdr_id for c in cdrs}) == 3
    # The second partial holds the media in force and the change; the third starts with audio and video.
    assert [len(m.sdp_media_components) for m in cdrs[1].list_of_sdp_media_components] == [1, 2]
    assert [len(m.sdp_media_components) for m in cdrs[2].list_of_sdp_media_components] == [2]
    assert cdrs[1].record_opening_time == cdrs[0].record_closure_time


def test_maximum_number_of_media_changes_closes_a_partial_record() -> None:
    assembler = Assembler(AssemblyConfig(interim_closes_partial=False, partial_max_changes=2))
    state, cdrs = run(
        assembler,
        [
            acr("START", 0, at=T0, media=sdp_media()),
            acr("INTERIM", 1, at=T0 + 10, media=sdp_media(video=True)),
            acr("INTERIM", 2, at=T0 + 20, media=sdp_media(video=True)),  # no change: no count
            acr("INTERIM", 3, at=T0 + 30, media=sdp_media()),
        ],
    )
    assert state is not None and state.partial_seq == 2
    [partial] = cdrs
    assert partial.cause_for_record_closing is CauseForRecordClosing.SERVICE_CHANGE
    assert partial.record_sequence_number == 1
    assert len(partial.list_of_sdp_media_components) == 3


def test_maximum_duration_closes_a_partial_record_on_an_acr_and_on_the_clock() -> None:
    assembler = Assembler(AssemblyConfig(interim_closes_partial=False, partial_max_duration=60))
    state, cdrs = run(assembler, [acr("START", 0, at=T0), acr("INTERIM", 1, at=T0 + 61)])
    assert [c.cause_for_record_closing for c in cdrs] == [CauseForRecordClosing.TIME_LIMIT]
    assert state is not None
    assert assembler.due_at(state) == T0 + 61 + 60
    assert assembler.on_timer(state, T0 + 120).closed == []
    outcome = assembler.on_timer(state, T0 + 121)
    [closed] = outcome.closed
    assert closed.record_sequence_number == 2 and closed.closure_time == T0 + 121
    assert outcome.state is not None and outcome.state.partial_seq == 3


def test_a_session_silent_for_the_multiple_of_its_interim_interval_is_closed_incomplete() -> None:
    assembler = Assembler(AssemblyConfig(interim_closes_partial=False, incomplete_multiple=3))
    state, _ = run(assembler, [acr("START", 0, at=T0, interim_interval=10), acr("INTERIM", 1, at=T0 + 10)])
    assert state is not None
    assert assembler.due_at(state) == T0 + 10 + 30
    assert assembler.on_timer(state, T0 + 39.9).closed == []
    outcome = assembler.on_timer(state, T0 + 40)
    assert outcome.state is None
    cdr = build_cdr(outcome.closed[0], 7, "cdf-test")
    assert cdr.cause_for_record_closing is CauseForRecordClosing.MANAGEMENT_INTERVENTION
    assert cdr.incomplete_cdr_indication is not None
    assert cdr.incomplete_cdr_indication.acr_stop_lost
    assert cdr.incomplete_cdr_indication.acr_interim_lost == "unknown"
    assert cdr.duration_seconds == 10  # what the node reported, not the silence after it
    assert cdr.record_closure_time.timestamp() == T0 + 40


def test_the_interim_interval_the_cdf_dictates_overrides_the_nodes_own() -> None:
    assembler = Assembler(AssemblyConfig(interim_interval=5, incomplete_multiple=2))
    state, _ = run(assembler, [acr("START", 0, at=T0, interim_interval=600)])
    assert state is not None and assembler.due_at(state) == T0 + 10


def test_a_session_without_interim_interval_gets_the_silence_timeout() -> None:
    assembler = Assembler(AssemblyConfig(incomplete_timeout=3600))
    state, _ = run(assembler, [acr("START", 0, at=T0)])
    assert state is not None and assembler.due_at(state) == T0 + 3600


def test_an_interim_without_start_and_a_gap_in_numbers_are_flagged() -> None:
    state, cdrs = run(
        no_partials(), [acr("INTERIM", 3, at=T0), acr("INTERIM", 5, at=T0 + 5), acr("STOP", 6, at=T0 + 9)]
    )
    assert state is None
    [cdr] = cdrs
    assert cdr.incomplete_cdr_indication is not None
    assert cdr.incomplete_cdr_indication.acr_start_lost
    assert cdr.incomplete_cdr_indication.acr_interim_lost == "yes"
    assert not cdr.incomplete_cdr_indication.acr_stop_lost
    assert cdr.cdr_id == cdr_id_for("scscf.test", "scscf.test;1;1", None, incarnation=3)


def test_a_new_start_closes_the_open_record_as_incomplete_with_a_different_id() -> None:
    state, cdrs = run(no_partials(), [acr("START", 0, at=T0), acr("START", 1, at=T0 + 20), acr("STOP", 2, at=T0 + 30)])
    assert state is None
    assert [c.cause_for_record_closing for c in cdrs] == [
        CauseForRecordClosing.MANAGEMENT_INTERVENTION,
        CauseForRecordClosing.SERVICE_DELIVERY_END_SUCCESSFULLY,
    ]
    assert cdrs[0].incomplete_cdr_indication is not None and cdrs[0].incomplete_cdr_indication.acr_stop_lost
    assert cdrs[0].cdr_id != cdrs[1].cdr_id


def test_an_event_is_a_record_of_its_own_and_leaves_an_open_record_alone() -> None:
    assembler = no_partials()
    state, _ = run(assembler, [acr("START", 0, at=T0)])
    outcome = assembler.apply(
        state,
        acr("EVENT", 7, session="scscf.test;1;1", sip_method="MESSAGE", at=T0 + 3, cause_code=404),
    )
    assert outcome.state is state
    [closed] = outcome.closed
    cdr = build_cdr(closed, 1, "cdf-test")
    assert cdr.sip_method == "MESSAGE"
    assert cdr.cause_for_record_closing is CauseForRecordClosing.UNSUCCESSFUL_SERVICE_DELIVERY
    assert cdr.duration_seconds == 0 and cdr.record_sequence_number is None
    assert cdr.accounting_record_numbers == [7]


def test_a_failure_cause_code_in_the_stop_makes_the_delivery_unsuccessful() -> None:
    _, cdrs = run(no_partials(), [acr("START", 0, at=T0), acr("STOP", 1, at=T0 + 1, cause_code=487)])
    assert cdrs[0].cause_for_record_closing is CauseForRecordClosing.UNSUCCESSFUL_SERVICE_DELIVERY
    assert cdrs[0].cause_code == 487


def test_terminating_record_charges_the_called_party() -> None:
    _, cdrs = run(
        no_partials(),
        [
            acr("START", 0, role="TERMINATING_ROLE", called_party="sip:bob@ims.test"),
            acr("STOP", 1, role="TERMINATING_ROLE", called_party="sip:bob@ims.test", at=T0 + 2),
        ],
    )
    assert cdrs[0].served_party == "sip:bob@ims.test"


def test_record_state_survives_its_json_round_trip() -> None:
    state, _ = run(
        no_partials(),
        [acr("START", 0, media=sdp_media(), application_server="sip:as1.test"), acr("INTERIM", 1, at=T0 + 5)],
    )
    assert state is not None
    assert RecordState.from_json(state.to_json()) == state


def test_cdrs_survive_their_json_round_trip() -> None:
    _, cdrs = run(Assembler(AssemblyConfig()), [acr("START", 0, media=sdp_media()), acr("INTERIM", 1), acr("STOP", 2)])
    for cdr in cdrs:
        assert Cdr.from_json(cdr.to_json()) == cdr
