"""Comparison rules and rewriting of identities (pure)."""

from __future__ import annotations

from charging.diameter import Message
from charging.trace.compare import Rules, compare_trees
from charging.trace.display import avp_tree
from charging.trace.replay import compare_cdrs
from charging.trace.rewrite import Rewriter

ANSWER = {
    "Session-Id": "as.trace.test;1;1",
    "Result-Code": 2001,
    "Origin-State-Id": 17,
    "CC-Request-Type": "UPDATE_REQUEST",
    "Event-Timestamp": "2026-01-01T09:00:00Z",
    "Multiple-Services-Credit-Control": [
        {"Rating-Group": 100, "Granted-Service-Unit": {"CC-Time": 60}, "Validity-Time": 30},
        {"Rating-Group": 200, "Granted-Service-Unit": {"CC-Total-Octets": 1000}},
    ],
}


def changed(**avps: object) -> dict[str, object]:
    return {**ANSWER, **avps}


def texts(expected: object, actual: object, rules: Rules | None = None, subset: bool = False) -> list[str]:
    return [str(d) for d in compare_trees(expected, actual, rules or Rules.for_answers(), "answer", subset)]


def test_a_changed_value_is_named_by_its_avp_path_with_the_instance() -> None:
    mscc = [dict(ANSWER["Multiple-Services-Credit-Control"][0]), ANSWER["Multiple-Services-Credit-Control"][1]]  # type: ignore[index]
    mscc[0]["Granted-Service-Unit"] = {"CC-Time": 45}
    assert texts(ANSWER, changed(**{"Multiple-Services-Credit-Control": mscc})) == [
        "answer Multiple-Services-Credit-Control[1]/Granted-Service-Unit/CC-Time: expected 60, got 45"
    ]


def test_origin_state_id_and_event_timestamp_may_differ_unless_compared() -> None:
    other = changed(**{"Origin-State-Id": 99, "Event-Timestamp": "2026-01-01T10:00:00Z"})
    assert texts(ANSWER, other) == []
    assert texts(ANSWER, other, Rules.for_answers(compare=["Event-Timestamp"])) == [
        'answer Event-Timestamp: expected "2026-01-01T09:00:00Z", got "2026-01-01T10:00:00Z"'
    ]


def test_an_ignore_path_with_slashes_applies_at_that_path_only() -> None:
    mscc = [dict(g) for g in ANSWER["Multiple-Services-Credit-Control"]]  # type: ignore[attr-defined]
    mscc[0]["Validity-Time"] = 600
    other = changed(**{"Multiple-Services-Credit-Control": mscc, "Validity-Time": 5})
    rules = Rules.for_answers(ignore=["Multiple-Services-Credit-Control/Validity-Time"])
    assert texts(ANSWER, other, rules) == ["answer Validity-Time: expected (absent), got 5"]
    assert texts(ANSWER, other, Rules.for_answers(ignore=["*/Validity-Time", "Validity-Time"])) == []


def test_missing_extra_and_repeated_avps_are_reported() -> None:
    other = {k: v for k, v in ANSWER.items() if k != "Result-Code"}
    other["Multiple-Services-Credit-Control"] = ANSWER["Multiple-Services-Credit-Control"][:1]  # type: ignore[index]
    other["Cost-Information"] = {"Unit-Value": {"Value-Digits": 5}}
    assert texts(ANSWER, other) == [
        "answer Result-Code: expected 2001, got (absent)",
        'answer Multiple-Services-Credit-Control: expected "2 instances", got "1 instances"',
        'answer Cost-Information: expected (absent), got {"Unit-Value": {"Value-Digits": 5}}',
    ]


def test_a_chosen_subset_compares_only_what_it_names_and_enums_match_their_numbers() -> None:
    assert texts({"Result-Code": 2001, "CC-Request-Type": 2}, ANSWER, subset=True) == []
    assert texts({"CC-Request-Type": 3}, ANSWER, subset=True) == [
        'answer CC-Request-Type: expected 3, got "UPDATE_REQUEST"'
    ]


def test_cdrs_pair_by_node_and_session_and_ignore_their_timestamps() -> None:
    cdr = {
        "record_type": "pCSCFRecord",
        "node_address": "pcscf.test",
        "session_id": "s;1",
        "record_sequence_number": None,
        "duration_seconds": 60.0,
        "record_opening_time": "2026-01-01T09:00:00Z",
        "cdr_id": "a",
    }
    later = {**cdr, "record_opening_time": "2026-01-02T09:00:00Z", "cdr_id": "b"}
    assert compare_cdrs([cdr], [later], Rules.for_cdrs()) == []
    shorter = {**cdr, "duration_seconds": 45.0}
    other = {**cdr, "session_id": "s;2"}
    found = [str(d) for d in compare_cdrs([cdr], [other, shorter], Rules.for_cdrs())]
    assert found == [
        "cdr pCSCFRecord of pcscf.test (s;1) duration_seconds: expected 60.0, got 45.0",
        "cdr pCSCFRecord of pcscf.test (s;2): unexpected: produced, but not expected",
    ]
    assert [str(d) for d in compare_cdrs([cdr], [], Rules.for_cdrs())] == [
        "cdr pCSCFRecord of pcscf.test (s;1): missing: expected, but the target produced none"
    ]


def test_rewriting_changes_identities_in_requests_and_expectations_alike() -> None:
    rw = Rewriter({"as.lab.test": "as.ci.test"}, {"lab.test": "ci.test"}, "run7")
    msg = Message.request(
        "CCR",
        4,
        {
            "Session-Id": "as.lab.test;1;5",
            "Origin-Host": "as.lab.test",
            "Origin-Realm": "lab.test",
            "Destination-Realm": "lab.test",
            "Destination-Host": "ocs.lab.test",
            "Auth-Application-Id": 4,
            "CC-Request-Type": 1,
            "CC-Request-Number": 0,
        },
    )
    out = avp_tree(Message.decode(rw.message(msg.to_bytes())).avps)
    assert out["Session-Id"] == "as.ci.test;1;5;run7"
    assert (out["Origin-Host"], out["Origin-Realm"], out["Destination-Realm"]) == ("as.ci.test", "ci.test", "ci.test")
    assert out["Destination-Host"] == "ocs.lab.test"  # no rule for it
    assert out["CC-Request-Type"] == "INITIAL_REQUEST"
    assert rw.tree({"Session-Id": "as.lab.test;1;5"}) == {"Session-Id": "as.ci.test;1;5;run7"}
    cdr = rw.cdr({"node_address": "as.lab.test", "session_id": "as.lab.test;1;5"})
    assert cdr == {"node_address": "as.ci.test", "session_id": "as.ci.test;1;5;run7"}


def test_without_rules_a_message_keeps_its_octets() -> None:
    raw = Message.request("DWR", 0, {"Origin-Host": "a", "Origin-Realm": "b"}).to_bytes()
    assert Rewriter().message(raw) is raw
    assert Rewriter({"x": "y"}).message(raw) == raw
