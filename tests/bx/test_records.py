"""CDF CDRs as TS 32.298 IMS records in BER: every record type round-trips through pycrate, and the octets
agree with hand encoding and with an independent BER parser (openssl asn1parse)."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from cdf.bx import asn1, records
from charging.cdr import IncompleteCdrIndication, InterOperatorIdentifiers, RecordType
from tests.bx.factories import START, make_cdr

# The RecordType value of each IMS record (TS 32.298 GenericChargingDataTypes) and the IMSRecord tag.
RECORD_NUMBERS = {
    RecordType.S_CSCF: 63,
    RecordType.P_CSCF: 64,
    RecordType.I_CSCF: 65,
    RecordType.MRFC: 66,
    RecordType.MGCF: 67,
    RecordType.BGCF: 68,
    RecordType.AS: 69,
    RecordType.E_CSCF: 70,
    RecordType.IBCF: 82,
    RecordType.TRF: 89,
    RecordType.TF: 90,
    RecordType.ATCF: 91,
}


@pytest.mark.parametrize("record_type", list(RecordType), ids=lambda r: r.value)
def test_every_ims_record_type_round_trips_through_the_library(record_type: RecordType) -> None:
    cdr = make_cdr(7, record_type)
    name, value = records.to_record(cdr)
    encoded = asn1.encode_record(name, value)

    decoded_name, decoded = asn1.decode_record(encoded)

    assert decoded_name == record_type.value
    assert decoded == value
    assert decoded["recordType"] == RECORD_NUMBERS[record_type]
    # the outer tag is the IMSRecord alternative's: [n] constructed, high tag number form
    assert encoded[:2] == bytes([0xBF, RECORD_NUMBERS[record_type]])
    assert decoded["session-Id"] == cdr.session_id
    assert decoded["nodeAddress"] == ("domainName", "scscf.example.net")
    assert decoded["list-Of-Calling-Party-Address"] == [
        ("sIP-URI", "sip:alice@example.net"),
        ("tEL-URI", "tel:+4930123456"),
    ]
    assert decoded["called-Party-Address"] == ("sIP-URI", "sip:bob@example.org")
    assert decoded["localRecordSequenceNumber"] == 7
    assert decoded["causeForRecordClosing"] == "serviceDeliveryEndSuccessfully"
    assert decoded["incomplete-CDR-Indication"] == {
        "aCRStartLost": False,
        "aCRInterimLost": "unknown",
        "aCRStopLost": False,
    }
    assert decoded["iMS-Charging-Identifier"] == b"icid-7-0001@pcscf.example.net"
    assert decoded["sIP-Method"] == "INVITE"
    assert records.decode_timestamp(decoded["serviceRequestTimeStamp"]) == START.replace(microsecond=0)


@pytest.mark.parametrize("record_type", list(RecordType), ids=lambda r: r.value)
def test_each_record_holds_exactly_the_cdf_fields_its_node_type_defines(record_type: RecordType) -> None:
    name, value = records.to_record(make_cdr(1, record_type))
    defined = set(asn1.record_components(name))
    assert set(value) <= defined
    carried = {
        "recordType",
        "sIP-Method",
        "role-of-Node",
        "nodeAddress",
        "session-Id",
        "list-Of-Calling-Party-Address",
        "called-Party-Address",
        "serviceRequestTimeStamp",
        "serviceDeliveryStartTimeStamp",
        "serviceDeliveryEndTimeStamp",
        "recordOpeningTime",
        "recordClosureTime",
        "interOperatorIdentifiers",
        "localRecordSequenceNumber",
        "recordSequenceNumber",
        "causeForRecordClosing",
        "incomplete-CDR-Indication",
        "iMS-Charging-Identifier",
        "list-Of-SDP-Media-Components",
    }
    assert carried & defined <= set(value)


def test_record_types_without_opening_time_or_role_leave_those_fields_out() -> None:
    _, icscf = records.to_record(make_cdr(1, RecordType.I_CSCF))
    _, mrfc = records.to_record(make_cdr(1, RecordType.MRFC))
    assert "recordOpeningTime" not in icscf and "recordSequenceNumber" not in icscf
    assert "role-of-Node" not in mrfc
    assert mrfc["recordOpeningTime"] == records.encode_timestamp(START)


def test_inter_operator_identifiers_are_a_list_in_s_cscf_records_and_the_first_pair_elsewhere() -> None:
    _, scscf = records.to_record(make_cdr(1, RecordType.S_CSCF))
    _, pcscf = records.to_record(make_cdr(1, RecordType.P_CSCF))
    first = {"originatingIOI": "home.example.net", "terminatingIOI": "visited.example.org"}
    assert scscf["interOperatorIdentifiers"] == [first, {"originatingIOI": "home.example.net"}]
    assert pcscf["interOperatorIdentifiers"] == first


def test_hand_encoded_ber_matches_the_library() -> None:
    # [65] { recordType [0] 65, causeForRecordClosing [17] timeLimit(3), retransmission [1] NULL }
    encoded = asn1.encode_record(
        "iCSCFRecord", {"recordType": 65, "retransmission": 0, "causeForRecordClosing": "timeLimit"}
    )
    assert encoded == bytes.fromhex("bf41 08 800141 8100 910103".replace(" ", ""))
    assert asn1.decode_record(bytes.fromhex("bf4103800141")) == ("iCSCFRecord", {"recordType": 65})


def test_time_stamps_are_the_nine_octet_bcd_form() -> None:
    moment = datetime(2026, 3, 15, 14, 30, 5, 250_000, tzinfo=UTC)
    assert records.encode_timestamp(moment) == bytes.fromhex("260315143005") + b"+" + bytes.fromhex("0000")
    assert records.encode_timestamp(moment, 120) == bytes.fromhex("260315163005") + b"+" + bytes.fromhex("0200")
    assert records.encode_timestamp(moment, -330) == bytes.fromhex("260315090005") + b"-" + bytes.fromhex("0530")
    back = records.decode_timestamp(records.encode_timestamp(moment, -330))
    assert back == moment.replace(microsecond=0)
    assert back.utcoffset() == -timedelta(hours=5, minutes=30)


def test_time_stamps_keep_their_milliseconds_in_the_fraction_fields() -> None:
    _, value = records.to_record(make_cdr(1))
    assert value["serviceRequestTimeStampFraction"] == 250
    assert value["serviceDeliveryStartTimeStampFraction"] == 750
    media = value["list-Of-SDP-Media-Components"][0]
    assert media["sIP-Response-Timestamp-Fraction"] == 750
    assert media["mediaInitiatorFlag"] == 0  # NULL: the called party initiated
    assert media["sDP-Type"] == "sDP-answer"


def test_time_stamps_follow_the_configured_local_time() -> None:
    _, value = records.to_record(make_cdr(1), utc_offset_minutes=60)
    opened = records.decode_timestamp(value["recordOpeningTime"])
    assert opened.utcoffset() == timedelta(hours=1)
    assert opened == START.replace(microsecond=0).astimezone(timezone(timedelta(hours=1)))


def test_party_addresses_take_the_involved_party_alternative_of_their_scheme() -> None:
    assert records.involved_party("sip:a@b") == ("sIP-URI", "sip:a@b")
    assert records.involved_party("SIPS:a@b") == ("sIP-URI", "SIPS:a@b")
    assert records.involved_party("tel:+123") == ("tEL-URI", "tel:+123")
    assert records.involved_party("urn:service:sos") == ("uRN", "urn:service:sos")
    assert records.involved_party("+4930123") == ("iSDN-E164", "+4930123")


def test_node_addresses_that_are_ip_addresses_are_binary() -> None:
    assert records.node_address("192.0.2.1") == (
        "iPAddress",
        ("iPBinaryAddress", ("iPBinV4Address", b"\xc0\x00\x02\x01")),
    )
    v6 = records.node_address("2001:db8::1")
    assert v6[1][1][1][1] == bytes.fromhex("20010db8000000000000000000000001")
    name, value = records.to_record(make_cdr(1, node_address="192.0.2.1"))
    assert records.readable(asn1.decode_record(asn1.encode_record(name, value))[1])["nodeAddress"] == {
        "iPAddress": {"iPBinaryAddress": {"iPBinV4Address": "192.0.2.1"}}
    }


def test_local_record_sequence_numbers_wrap_at_the_asn1_range() -> None:
    _, value = records.to_record(make_cdr(1, local_record_sequence_number=2**32 + 5))
    assert value["localRecordSequenceNumber"] == 5


def test_incomplete_cdr_indication_and_retransmission_are_carried() -> None:
    cdr = make_cdr(
        1,
        incomplete_cdr_indication=IncompleteCdrIndication(
            acr_start_lost=True, acr_interim_lost="yes", acr_stop_lost=True
        ),
        extensions={"retransmission": True},
        inter_operator_identifiers=[InterOperatorIdentifiers(terminating_ioi="t.example")],
    )
    name, value = records.to_record(cdr)
    decoded = asn1.decode_record(asn1.encode_record(name, value))[1]
    assert decoded["incomplete-CDR-Indication"] == {"aCRStartLost": True, "aCRInterimLost": "yes", "aCRStopLost": True}
    assert decoded["retransmission"] == 0
    assert decoded["interOperatorIdentifiers"] == [{"terminatingIOI": "t.example"}]
    assert "retransmission" not in records.to_record(make_cdr(1))[1]


def test_values_the_asn1_forbids_are_refused() -> None:
    with pytest.raises(asn1.Asn1Error):
        asn1.encode_record("sCSCFRecord", {"recordType": 63, "localRecordSequenceNumber": -1})
    with pytest.raises(asn1.Asn1Error):
        asn1.decode_record(bytes.fromhex("bf4103800141") + b"\x00")  # octets after the record
    with pytest.raises(asn1.Asn1Error):
        asn1.decode_record(bytes.fromhex("bf410380"))  # cut short


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_an_independent_ber_parser_finds_every_field_under_its_ts_32298_tag(tmp_path: Path) -> None:
    name, value = records.to_record(make_cdr(1, RecordType.P_CSCF))
    path = tmp_path / "record.ber"
    path.write_bytes(asn1.encode_record(name, value))
    listing = subprocess.run(
        ["openssl", "asn1parse", "-inform", "DER", "-in", str(path)], capture_output=True, text=True, check=True
    ).stdout
    tags = [(int(depth), int(tag)) for depth, tag in re.findall(r"d=(\d+)\s.*?cont \[ (\d+) \]", listing)]
    assert tags[0] == (0, 64)  # pCSCFRecord [64]
    # PCSCFRecord (TS 32.298 IMSChargingDataTypes): the tags of the fields the CDF fills in
    assert {tag for depth, tag in tags if depth == 1} == {
        0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 29, 30, 31, 33, 37, 38, 39, 41,
    }  # fmt: skip
