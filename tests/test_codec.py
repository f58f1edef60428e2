"""The codec: every data type round-trips, bytes survive decode/encode, lazy access by name."""

from __future__ import annotations

import ipaddress
import struct
from datetime import UTC, datetime, timedelta

import pytest

from charging.diameter import DICTIONARY, Avp, AvpDecodeError, Message, MessageFormatError, OtherAddress
from charging.diameter.framing import Framer, FramingError
from charging.diameter.message import FLAG_PROXIABLE, FLAG_REQUEST, parse_avps
from charging.diameter.types import NTP_ERA1, ntp_to_datetime
from charging.diameter.validation import Validator


def roundtrip(name: str, value: object) -> object:
    raw = DICTIONARY.avp(name).encode(value)
    assert len(raw) % 4 == 0, "AVPs are padded to 32 bits"
    (avp,) = parse_avps(raw, 0, len(raw))
    assert avp.to_bytes() == raw
    return avp.value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Class", b"\x00\x01binary\xff"),  # OctetString
        ("Exponent", -3),  # Integer32
        ("Exponent", -(2**31)),
        ("Value-Digits", -(2**63)),  # Integer64
        ("Value-Digits", 2**63 - 1),
        ("Result-Code", 2**32 - 1),  # Unsigned32
        ("CC-Total-Octets", 2**64 - 1),  # Unsigned64
        ("Session-Id", "host.example;1;2;ünïcödé"),  # UTF8String
        ("Origin-Host", "ocs.example.net"),  # DiameterIdentity
        ("Redirect-Host", "aaa://host.example.com:3868;transport=tcp"),  # DiameterURI
        ("CC-Request-Type", 3),  # Enumerated
        ("Restriction-Filter-Rule", "permit in ip from any to 10.0.0.1"),  # IPFilterRule
        ("Host-IP-Address", ipaddress.IPv4Address("192.0.2.7")),
        ("Host-IP-Address", ipaddress.IPv6Address("2001:db8::7")),
        ("Host-IP-Address", OtherAddress(8, b"4930123456")),  # E.164 family
    ],
)
def test_each_data_type_round_trips(name: str, value: object) -> None:
    assert roundtrip(name, value) == value


def test_float_types_round_trip() -> None:
    from charging.diameter.dictionary import Dictionary

    d = Dictionary()
    d.add_avp("Test-Float32", 9001, "Float32", "-")
    d.add_avp("Test-Float64", 9002, "Float64", "-")
    for name, value in (("Test-Float32", 1.5), ("Test-Float64", 3.141592653589793)):
        raw = d.avp(name).encode(value)
        assert d.avp(name).decode(raw, 8, len(raw)) == value


def test_enumerated_accepts_names_and_encodes_their_numbers() -> None:
    assert roundtrip("CC-Request-Type", "TERMINATION_REQUEST") == 3
    with pytest.raises(ValueError, match="no value named"):
        DICTIONARY.avp("CC-Request-Type").encode("NOT_A_VALUE")


def test_time_round_trips_before_and_after_the_2036_wrap() -> None:
    before = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
    after = datetime(2040, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert roundtrip("Event-Timestamp", before) == before
    assert roundtrip("Event-Timestamp", after) == after
    raw = DICTIONARY.avp("Event-Timestamp").encode(after)
    assert struct.unpack(">I", raw[8:12])[0] < 2**31, "after 2036 the top bit is clear (RFC 4330)"
    assert ntp_to_datetime(0) == NTP_ERA1 == datetime(2036, 2, 7, 6, 28, 16, tzinfo=UTC)
    assert ntp_to_datetime(2**32 - 1) == NTP_ERA1 - timedelta(seconds=1)


def test_time_accepts_unix_seconds() -> None:
    assert roundtrip("Event-Timestamp", 1_700_000_000) == datetime.fromtimestamp(1_700_000_000, UTC)


def test_vendor_avp_carries_vendor_flag_and_id() -> None:
    raw = DICTIONARY.avp("IMS-Charging-Identifier").encode("icid-1")
    code, flags_len, vendor = struct.unpack(">III", raw[:12])
    assert (code, flags_len >> 24, vendor) == (841, 0xC0, 10415)
    assert flags_len & 0xFFFFFF == 12 + len("icid-1")


def test_padding_is_zero_and_excluded_from_length() -> None:
    raw = DICTIONARY.avp("Session-Id").encode("abcde")
    assert struct.unpack(">I", raw[4:8])[0] & 0xFFFFFF == 13
    assert raw[13:] == b"\x00\x00\x00"


def sample_ccr() -> Message:
    return Message.request(
        "CCR",
        4,
        {
            "Session-Id": "as.example.net;1;2",
            "Origin-Host": "as.example.net",
            "Origin-Realm": "example.net",
            "Destination-Realm": "ocs.example.net",
            "Auth-Application-Id": 4,
            "Service-Context-Id": "32260@3gpp.org",
            "CC-Request-Type": "INITIAL_REQUEST",
            "CC-Request-Number": 0,
            "Subscription-Id": [
                {"Subscription-Id-Type": "END_USER_E164", "Subscription-Id-Data": "491711234567"},
                {"Subscription-Id-Type": "END_USER_SIP_URI", "Subscription-Id-Data": "sip:alice@example.net"},
            ],
            "Multiple-Services-Credit-Control": [
                {"Requested-Service-Unit": {"CC-Time": 60}, "Service-Identifier": 1, "Rating-Group": 100},
                {"Requested-Service-Unit": {"CC-Total-Octets": 10**6}, "Rating-Group": 200},
            ],
            "Service-Information": {
                "IMS-Information": {
                    "Node-Functionality": "AS",
                    "Role-Of-Node": "ORIGINATING_ROLE",
                    "Inter-Operator-Identifier": {"Originating-IOI": "orig.net", "Terminating-IOI": "term.net"},
                    "IMS-Charging-Identifier": "icid-abc",
                }
            },
        },
    )


def test_decode_then_encode_gives_identical_bytes() -> None:
    raw = sample_ccr().to_bytes()
    assert Message.decode(raw).to_bytes() == raw


def test_reencoding_decoded_values_gives_identical_bytes() -> None:
    """Not just the kept bytes: each value decoded and encoded again is the same AVP."""
    raw = sample_ccr().to_bytes()

    def rebuild(avps: list[Avp]) -> bytes:
        out = b""
        for avp in avps:
            defn = avp.definition
            assert defn is not None
            if defn.is_grouped:
                out += Avp.from_raw(avp.code, rebuild(avp.value.avps), avp.vendor_id, avp.flags).to_bytes()
            else:
                out += defn.encode(avp.value)
        return out

    assert raw[20:] == rebuild(Message.decode(raw).avps)


def test_access_by_name_reaches_deep_values() -> None:
    msg = Message.decode(sample_ccr().to_bytes())
    assert msg["Multiple-Services-Credit-Control"]["Rating-Group"] == 100
    assert [m["Rating-Group"] for m in msg.all("Multiple-Services-Credit-Control")] == [100, 200]
    assert msg.find("Service-Information/IMS-Information/Inter-Operator-Identifier/Terminating-IOI") == "term.net"
    assert msg.find("Service-Information/IMS-Information/Cause-Code", -1) == -1
    assert msg.get("Destination-Host") is None
    assert "Subscription-Id" in msg and "User-Name" not in msg
    with pytest.raises(KeyError):
        msg["User-Name"]


def test_decoding_reads_nothing_until_asked() -> None:
    msg = Message.decode(sample_ccr().to_bytes())
    assert msg._avps is None, "AVPs are split out on first access only"
    mscc = msg.avp("Multiple-Services-Credit-Control")
    assert mscc is not None
    group = mscc.value
    assert group._avps is None, "a group's members are split out when the group is entered"


def test_unknown_avps_are_kept_through_decode_and_encode() -> None:
    msg = sample_ccr()
    unknown = Avp.from_raw(99999, b"opaque", vendor_id=12345)
    msg.add_avp(unknown)
    raw = msg.to_bytes()
    again = Message.decode(raw)
    assert again.to_bytes() == raw
    kept = [a for a in again.avps if a.code == 99999]
    assert kept and kept[0].vendor_id == 12345 and kept[0].value == b"opaque"
    assert kept[0].name == "AVP-99999-12345"


def test_header_fields_round_trip() -> None:
    msg = sample_ccr()
    msg.hop_by_hop, msg.end_to_end = 0xDEADBEEF, 0x01020304
    again = Message.decode(msg.to_bytes())
    assert (again.code, again.app_id, again.hop_by_hop, again.end_to_end) == (272, 4, 0xDEADBEEF, 0x01020304)
    assert again.flags == FLAG_REQUEST | FLAG_PROXIABLE
    assert again.command_name == "CCR"


def test_answer_copies_session_id_first_and_proxy_info() -> None:
    req = sample_ccr()
    req.add("Proxy-Info", {"Proxy-Host": "relay.net", "Proxy-State": b"state"})
    req.hop_by_hop, req.end_to_end = 7, 8
    ans = req.answer([("Result-Code", 2001)])
    assert ans.avps[0].name == "Session-Id"
    assert ans["Proxy-Info"]["Proxy-State"] == b"state"
    assert (ans.hop_by_hop, ans.end_to_end, ans.is_request, ans.is_proxiable) == (7, 8, False, True)


def test_encoded_avps_read_through_the_validators_index_are_the_avps_as_sent() -> None:
    req = sample_ccr()
    req.add("Proxy-Info", {"Proxy-Host": "relay.net", "Proxy-State": b"one"})
    req.add("Proxy-Info", {"Proxy-Host": "relay2.net", "Proxy-State": b"two"})
    req.add_raw(struct.pack(">IIII", 4242, 0x80 << 24 | 16, 0, 0x5A5A5A5A))  # V set with a vendor id of 0
    req.add_raw(Avp.from_raw(4243, b"odd", vendor_id=10415, flags=0x80).to_bytes())  # length not a multiple of 4
    raw = req.to_bytes()
    checked = Message.decode(raw)
    Validator().check(checked)
    assert checked.avp_index is not None
    plain = Message.decode(raw)  # not validated: the AVPs are split
    keys = [a.code | a.vendor_id << 32 for a in plain.avps] + [999_999]
    for key in keys:
        assert checked.encoded(key) == plain.encoded(key), key
    proxies = checked.encoded(DICTIONARY.avp("Proxy-Info").key)
    assert [parse_avps(avp, 0, len(avp))[0].value["Proxy-State"] for avp in proxies] == [b"one", b"two"]
    assert checked.encoded(4243 | 10415 << 32) == [Avp.from_raw(4243, b"odd", 10415, 0x80).to_bytes()]
    assert checked.encoded(4242) == [struct.pack(">IIII", 4242, 0x80 << 24 | 16, 0, 0x5A5A5A5A)]
    answer = checked.answer([("Result-Code", 2001)])
    assert answer.to_bytes() == plain.answer([("Result-Code", 2001)]).to_bytes()


def test_set_and_remove_edit_a_received_message() -> None:
    msg = Message.decode(sample_ccr().to_bytes())
    msg.set("Origin-Host", "other.example.net")
    assert msg.remove("Subscription-Id") == 2
    again = Message.decode(msg.to_bytes())
    assert again["Origin-Host"] == "other.example.net"
    assert again.all("Subscription-Id") == []
    assert again["CC-Request-Number"] == 0


def test_truncated_avp_is_an_invalid_avp_length() -> None:
    raw = bytearray(sample_ccr().to_bytes())
    struct.pack_into(">I", raw, 24, (0x40 << 24) | 4000)  # first AVP claims 4000 octets
    msg = Message.decode(bytes(raw))
    with pytest.raises(MessageFormatError) as err:
        msg["Session-Id"]
    assert err.value.result_code == 5014


def test_wrong_size_fixed_type_is_an_invalid_avp_length() -> None:
    avp = Avp.from_raw(415, b"\x00\x01", flags=0x40)  # CC-Request-Number with 2 octets
    with pytest.raises(AvpDecodeError) as err:
        _ = avp.value
    assert err.value.result_code == 5014


def test_message_length_mismatch_is_rejected() -> None:
    raw = sample_ccr().to_bytes()
    with pytest.raises(MessageFormatError) as err:
        Message.decode(raw[:-4])
    assert err.value.result_code == 5015


def test_framer_splits_and_joins_stream_chunks() -> None:
    a, b = sample_ccr().to_bytes(), Message.request("DWR", 0, {"Origin-Host": "x", "Origin-Realm": "y"}).to_bytes()
    stream = a + b + a
    framer = Framer()
    frames: list[bytes] = []
    for i in range(0, len(stream), 7):  # odd chunk size: messages span and share chunks
        frames += framer.feed(stream[i : i + 7])
    assert frames == [a, b, a]
    assert framer.buffered == 0


def test_framer_refuses_bad_version_and_length() -> None:
    raw = bytearray(sample_ccr().to_bytes())
    raw[0] = 2
    with pytest.raises(FramingError) as err:
        Framer().feed(bytes(raw))
    assert err.value.result_code == 5011
    raw[0] = 1
    raw[1:4] = (21).to_bytes(3, "big")
    with pytest.raises(FramingError) as err:
        Framer().feed(bytes(raw))
    assert err.value.result_code == 5015
