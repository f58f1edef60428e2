"""What the IMS-GWF reads from an INVITE and puts in its CCRs, and what it reads from CCAs (pure)."""

from __future__ import annotations

from charging.diameter import Message
from charging.gwf.credit import FINAL, QUOTA_EXHAUSTED, THRESHOLD, CreditAnswer, Kind, SendCcr
from charging.gwf.ims import (
    END_USER_E164,
    END_USER_SIP_URI,
    ORIGINATING_ROLE,
    TERMINATING_ROLE,
    parse_charging_vector,
    session_data,
    subscription_id,
)
from charging.gwf.ro import RoProfile, build_ccr, parse_cca
from charging.gwf.sip.message import Request, Uri, parse_message

PROFILE = RoProfile("gwf.example.net", "example.net", "ocs.example.net", rating_group=100, requested_seconds=60)


def invite(*headers: str) -> Request:
    lines = [
        "INVITE sip:+4930555@example.net;user=phone SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-1",
        "Max-Forwards: 70",
        "From: <sip:anonymous@anonymous.invalid>;tag=f",
        "To: <sip:+4930555@example.net;user=phone>",
        "Call-ID: c-1",
        "CSeq: 1 INVITE",
        *headers,
    ]
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def test_the_charging_vector_gives_icid_and_iois_quoted_or_not() -> None:
    vector = parse_charging_vector(
        'icid-value="AyretyU0dm+6O2IrT5tAFrbHLso=023551024";icid-generated-at=192.0.6.8;'
        "orig-ioi=home1.net;term-ioi=home2.net"
    )
    assert vector.icid == "AyretyU0dm+6O2IrT5tAFrbHLso=023551024"
    assert (vector.icid_generated_at, vector.orig_ioi, vector.term_ioi) == ("192.0.6.8", "home1.net", "home2.net")
    assert parse_charging_vector(None).icid is None


def test_the_calling_party_is_every_asserted_identity_and_the_subscriber_the_first() -> None:
    data = session_data(
        invite(
            'P-Asserted-Identity: "Alice" <sip:alice@example.net>, <tel:+4930123>', "P-Charging-Vector: icid-value=x1"
        ),
        ORIGINATING_ROLE,
        100.0,
    )
    assert data.calling_parties == ("sip:alice@example.net", "tel:+4930123")
    assert data.called_party == "sip:+4930555@example.net;user=phone"
    assert data.subscription_id() == (END_USER_SIP_URI, "sip:alice@example.net")
    assert data.icid == "x1" and data.role == ORIGINATING_ROLE


def test_without_asserted_identity_the_from_uri_is_the_calling_party() -> None:
    data = session_data(invite(), ORIGINATING_ROLE, 0.0)
    assert data.calling_parties == ("sip:anonymous@anonymous.invalid",)


def test_p_served_user_decides_the_subscriber_and_the_role() -> None:
    data = session_data(
        invite("P-Asserted-Identity: <sip:alice@example.net>", "P-Served-User: <tel:+49-30-555>;sescase=term"),
        ORIGINATING_ROLE,
        0.0,
    )
    assert data.role == TERMINATING_ROLE
    assert data.subscription_id() == (END_USER_E164, "4930555")


def test_the_terminating_role_charges_the_request_uri_as_e164_when_it_is_a_phone_number() -> None:
    data = session_data(invite("P-Asserted-Identity: <sip:alice@example.net>"), TERMINATING_ROLE, 0.0)
    assert data.subscription_id() == (END_USER_E164, "4930555")
    assert subscription_id(Uri.parse("sip:Bob@Example.NET:5070;transport=tcp")) == (
        END_USER_SIP_URI,
        "sip:Bob@example.net",
    )


def test_reporting_reasons_go_in_the_used_units_or_the_mscc_as_ts_32_299_says() -> None:
    data = session_data(invite("P-Asserted-Identity: <sip:alice@example.net>"), ORIGINATING_ROLE, 0.0)
    update = Message.decode(
        build_ccr(
            PROFILE, "s;1", data, SendCcr(Kind.UPDATE, 1, 58, QUOTA_EXHAUSTED), 10.0, "ocs1.example.net"
        ).to_bytes()
    )
    mscc = update["Multiple-Services-Credit-Control"]
    assert mscc["Used-Service-Unit"]["Reporting-Reason"] == QUOTA_EXHAUSTED
    assert mscc["Used-Service-Unit"]["CC-Time"] == 58 and mscc["Requested-Service-Unit"]["CC-Time"] == 60
    assert "Reporting-Reason" not in mscc
    assert update["Destination-Host"] == "ocs1.example.net"  # the server of the CCR-I, for the rest
    threshold = build_ccr(PROFILE, "s;1", data, SendCcr(Kind.UPDATE, 2, 50, THRESHOLD), 10.0)
    assert threshold["Multiple-Services-Credit-Control"]["Used-Service-Unit"]["Reporting-Reason"] == THRESHOLD
    term = build_ccr(PROFILE, "s;1", data, SendCcr(Kind.TERMINATION, 3, 7, FINAL, False, 1), 10.0)
    mscc = term["Multiple-Services-Credit-Control"]
    assert mscc["Reporting-Reason"] == FINAL and "Requested-Service-Unit" not in mscc
    assert term["Termination-Cause"] == 1 and "Destination-Host" not in term
    initial = build_ccr(PROFILE, "s;1", data, SendCcr(Kind.INITIAL, 0), 10.0, "ocs1.example.net")
    assert "Destination-Host" not in initial and initial["Multiple-Services-Indicator"] == 1


def cca(code: int, *avps: tuple[str, object]) -> Message:
    msg = Message(272, 4, 0, 1, 1, [("Session-Id", "s;1"), ("Result-Code", code), *avps])
    return Message.decode(msg.to_bytes())


def test_a_cca_is_read_from_the_mscc_of_our_rating_group() -> None:
    answer = parse_cca(
        cca(
            2001,
            ("Credit-Control-Failure-Handling", 1),
            ("Multiple-Services-Credit-Control", {"Rating-Group": 200, "Granted-Service-Unit": {"CC-Time": 999}}),
            (
                "Multiple-Services-Credit-Control",
                {
                    "Rating-Group": 100,
                    "Granted-Service-Unit": {"CC-Time": 42},
                    "Validity-Time": 300,
                    "Time-Quota-Threshold": 10,
                    "Final-Unit-Indication": {"Final-Unit-Action": 0},
                    "Result-Code": 2001,
                },
            ),
        ),
        PROFILE,
    )
    assert answer == CreditAnswer(2001, 42, 300, 0, 10, "CONTINUE")


def test_a_refusal_inside_the_mscc_wins_over_a_successful_command() -> None:
    answer = parse_cca(
        cca(2001, ("Multiple-Services-Credit-Control", {"Rating-Group": 100, "Result-Code": 4012})), PROFILE
    )
    assert answer.result_code == 4012


def test_an_answer_without_mscc_is_read_at_command_level() -> None:
    answer = parse_cca(cca(2001, ("Granted-Service-Unit", {"CC-Time": 30}), ("Validity-Time", 60)), PROFILE)
    assert (answer.granted_seconds, answer.validity_time, answer.final_unit_action) == (30, 60, None)
