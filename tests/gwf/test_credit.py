"""The RFC 4006 credit-control client session of a call (TS 32.299 SCUR, time units), with a hand-moved clock."""

from __future__ import annotations

from collections.abc import Sequence

from charging.gwf.credit import (
    ADMINISTRATIVE,
    CONTINUE,
    FINAL,
    FORCED_REAUTHORISATION,
    FUA_TERMINATE,
    LOGOUT,
    QUOTA_EXHAUSTED,
    RETRY_AND_TERMINATE,
    TERMINATE,
    THRESHOLD,
    VALIDITY_TIME,
    Allow,
    CcState,
    CreditAnswer,
    CreditConfig,
    CreditSession,
    Deny,
    Kind,
    SendCcr,
    Teardown,
)


def session(handling: str = TERMINATE, margin: float = 1.0) -> CreditSession:
    return CreditSession(CreditConfig(requested_seconds=60, margin=margin, failure_handling=handling))


def ok(granted: int | None = 30, **extra: object) -> CreditAnswer:
    return CreditAnswer(2001, granted_seconds=granted, **extra)  # type: ignore[arg-type]


def ccrs(actions: Sequence[object]) -> list[SendCcr]:
    return [a for a in actions if isinstance(a, SendCcr)]


def test_a_normal_call_reports_every_second_once_over_initial_update_and_termination() -> None:
    s = session()
    assert s.start(0.0) == [SendCcr(Kind.INITIAL, 0)]
    assert s.answer(ok(30), 0.1) == [Allow()]
    assert s.next_deadline() is None  # nothing counts before the answer
    s.answered(10.0)
    assert s.next_deadline() == 39.0  # 30 s granted, the CCR-U one second (the margin) before
    (update,) = ccrs(s.timer(39.0))
    assert (update.kind, update.number, update.used_seconds, update.reporting_reason) == (
        Kind.UPDATE,
        1,
        29,
        QUOTA_EXHAUSTED,
    )
    assert s.answer(ok(30), 39.2) == []
    assert s.next_deadline() == 10.0 + 29 + 30 - 1
    (term,) = ccrs(s.call_ended(50.4, LOGOUT))
    assert (term.kind, term.number, term.used_seconds, term.reporting_reason) == (Kind.TERMINATION, 2, 11, FINAL)
    assert term.termination_cause == LOGOUT and not term.request_units
    assert s.reported == 40  # 50.4 - 10 rounds to 40, all of it reported once
    assert s.answer(ok(None), 50.5) == [] and s.state is CcState.CLOSED


def test_final_units_end_the_call_when_used_and_never_report_more_than_granted() -> None:
    s = session()
    s.start(0.0)
    s.answer(ok(20, final_unit_action=FUA_TERMINATE), 0.1)
    s.answered(5.0)
    assert s.next_deadline() == 25.0  # no margin: the final units are used to the end
    assert s.timer(24.9) == []
    actions = s.timer(25.3)
    assert isinstance(actions[0], Teardown)
    (term,) = ccrs(actions)
    assert term.kind is Kind.TERMINATION and term.used_seconds == 20
    assert s.call_ended(25.5) == []  # the BYE's own end changes nothing


def test_time_quota_threshold_gives_earlier_notice_with_reason_threshold() -> None:
    s = session()
    s.start(0.0)
    s.answer(ok(60, time_threshold=10), 0.0)
    s.answered(0.0)
    assert s.next_deadline() == 50.0
    (update,) = ccrs(s.timer(50.0))
    assert update.reporting_reason == THRESHOLD and update.used_seconds == 50


def test_validity_time_forces_an_update_even_before_the_answer() -> None:
    s = session()
    s.start(0.0)
    s.answer(ok(30, validity_time=5), 1.0)
    assert s.next_deadline() == 6.0
    (update,) = ccrs(s.timer(6.0))
    assert update.reporting_reason == VALIDITY_TIME and update.used_seconds == 0


def test_refusals_map_to_402_and_403_and_send_nothing_more() -> None:
    for code, status in ((4012, 402), (4010, 403), (5030, 403), (5031, 403)):
        s = session()
        s.start(0.0)
        (deny,) = s.answer(CreditAnswer(code), 0.1)
        assert isinstance(deny, Deny) and deny.status == status and deny.result_code == code
        assert s.call_ended(0.2) == [] and s.state is CcState.CLOSED


def test_credit_control_not_applicable_lets_the_call_through_without_further_ccrs() -> None:
    s = session()
    s.start(0.0)
    assert s.answer(CreditAnswer(4011), 0.1) == [Allow()]
    s.answered(1.0)
    assert s.next_deadline() is None
    assert s.call_ended(100.0) == []


def test_tx_on_the_initial_request_with_terminate_refuses_the_call_503() -> None:
    s = session(TERMINATE)
    s.start(0.0)
    (deny,) = s.tx_expired(10.0)
    assert isinstance(deny, Deny) and deny.status == 503


def test_tx_with_continue_lets_the_call_through_and_a_failure_drops_credit_control() -> None:
    s = session(CONTINUE)
    s.start(0.0)
    assert s.tx_expired(10.0) == [Allow()]
    assert s.state is CcState.PENDING_I  # still waiting for the answer of the retried request
    assert s.failed(20.0) == []  # the service goes on without credit control
    s.answered(21.0)
    assert s.state.value == "Closed" and s.next_deadline() is None
    assert s.call_ended(60.0) == []


def test_tx_with_retry_and_terminate_continues_until_the_retry_fails_then_tears_down() -> None:
    s = session(RETRY_AND_TERMINATE)
    s.start(0.0)
    s.answer(ok(30), 0.1)
    s.answered(1.0)
    s.timer(30.0)
    assert s.state is CcState.PENDING_U
    assert s.tx_expired(40.0) == []
    actions = s.failed(50.0)
    assert [type(a) for a in actions] == [Teardown]  # no CCR-T: credit control is unreachable


def test_the_failure_handling_sent_by_the_ocf_overrides_the_configured_one() -> None:
    s = session(CONTINUE)
    s.start(0.0)
    s.answer(ok(30, failure_handling=TERMINATE), 0.1)
    s.answered(1.0)
    s.timer(30.0)
    actions = s.tx_expired(40.0)
    assert isinstance(actions[0], Teardown)


def test_abort_session_tears_down_then_terminates_with_administrative_cause() -> None:
    s = session()
    s.start(0.0)
    s.answer(ok(60), 0.0)
    s.answered(2.0)
    actions = s.abort(9.6)
    assert isinstance(actions[0], Teardown)
    (term,) = ccrs(actions)
    assert term.termination_cause == ADMINISTRATIVE and term.used_seconds == 8


def test_re_auth_request_reports_usage_with_forced_reauthorisation() -> None:
    s = session()
    s.start(0.0)
    s.answer(ok(60), 0.0)
    s.answered(2.0)
    (update,) = ccrs(s.reauth(7.0))
    assert update.reporting_reason == FORCED_REAUTHORISATION and update.used_seconds == 5
    assert s.reauth(7.5) == []  # one update at a time


def test_an_end_while_a_request_is_pending_queues_the_termination_until_the_answer() -> None:
    s = session()
    s.start(0.0)
    assert s.call_ended(0.5) == []  # CANCEL while the CCR-I is out
    actions = s.answer(ok(30), 1.0)
    (term,) = ccrs(actions)
    assert term.kind is Kind.TERMINATION and term.used_seconds == 0
    assert Allow() not in actions

    s = session()
    s.start(0.0)
    s.answer(ok(30), 0.0)
    s.answered(0.0)
    s.timer(29.0)
    assert s.call_ended(29.5) == []
    (term,) = ccrs(s.answer(ok(30), 30.0))
    assert term.kind is Kind.TERMINATION and term.used_seconds == 1  # 29.5 rounds to 30; 29 were reported


def test_a_protocol_error_answer_counts_as_a_failure() -> None:
    s = session(TERMINATE)
    s.start(0.0)
    (deny,) = s.answer(CreditAnswer(3002), 0.1)
    assert isinstance(deny, Deny) and deny.status == 503


def test_a_stopping_gwf_ends_the_call_and_reports_the_usage_administratively() -> None:
    s = session()
    s.start(0.0)
    s.answer(ok(60), 0.0)
    s.answered(1.0)
    actions = s.shutdown(4.0)
    assert isinstance(actions[0], Teardown)
    (term,) = ccrs(actions)
    assert term.termination_cause == ADMINISTRATIVE and term.used_seconds == 3
    assert s.shutdown(5.0) == []


def test_a_zero_grant_is_the_end_the_call_is_torn_down_as_soon_as_it_is_answered() -> None:
    s = session()
    s.start(0.0)
    assert s.answer(ok(0), 0.1) == [Allow()]
    actions = s.answered(2.0)
    assert isinstance(actions[0], Teardown)
    (term,) = ccrs(actions)
    assert term.used_seconds == 0
