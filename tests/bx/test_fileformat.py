"""TS 32.297 file header and CDR header: the octets of clause 6.1.1 and 6.1.2, and parsing them back."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from cdf.bx.fileformat import (
    UNKNOWN_CDR_COUNT,
    CdrHeader,
    FileClosureReason,
    FileFormatError,
    FileHeader,
    HeaderTime,
    Release,
    encode_cdr,
    parse_cdr_header,
    parse_file,
    parse_file_header,
)

REL16 = Release(16, 11)


def header(**overrides: object) -> FileHeader:
    values: dict[str, object] = {
        "file_length": 0x01020304,
        "high": REL16,
        "low": Release(8, 7),
        "opened": HeaderTime(3, 15, 14, 30, 120),
        "last_append": HeaderTime(12, 31, 23, 59, -330),
        "cdr_count": 5,
        "file_sequence_number": 0x0A0B0C0D,
        "closure_reason": FileClosureReason.TIME_LIMIT,
        "node_address": ipaddress.ip_address("192.0.2.7"),
        "lost_cdr_indicator": 0,
        "routing_filter": b"IMS",
        "private_extension": b"x1",
    }
    values.update(overrides)
    return FileHeader(**values)  # type: ignore[arg-type]


def test_file_header_octets_follow_clause_6_1_1() -> None:
    encoded = header().encode()

    assert encoded[0:4] == bytes.fromhex("01020304")  # file length
    assert struct.unpack(">I", encoded[4:8])[0] == len(encoded) == 50 + 3 + 2 + 2 + 1  # header length
    assert encoded[8] == 0b111_01011  # beyond Rel-9 (7), version 11
    assert encoded[9] == 0b101_00111  # Rel-8 (5), version 7
    # month 3, day 15, 14:30, "+" 02:00 -> 0011 01111 01110 011110 1 00010 000000
    assert encoded[10:14] == bytes.fromhex("37b9e880")
    # December 31, 23:59, "-" 05:30 -> 1100 11111 10111 111011 0 00101 011110
    assert encoded[14:18] == (12 << 28 | 31 << 23 | 23 << 18 | 59 << 12 | 0 << 11 | 5 << 6 | 30).to_bytes(4, "big")
    assert encoded[18:22] == bytes.fromhex("00000005")  # number of CDRs
    assert encoded[22:26] == bytes.fromhex("0a0b0c0d")  # file sequence number
    assert encoded[26] == 2  # closure reason: file open-time limit reached
    assert encoded[27:47] == bytes.fromhex("ffffffff 00000000000000000000ffff c0000207")  # node address
    assert encoded[47] == 0  # lost CDR indicator
    assert encoded[48:50] == b"\x00\x03" and encoded[50:53] == b"IMS"  # routeing filter
    assert encoded[53:55] == b"\x00\x02" and encoded[55:57] == b"x1"  # private extension
    assert encoded[57] == 16 - 10  # high release identifier extension; the low release needs none


def test_file_header_parses_back_to_itself() -> None:
    original = header(node_address=ipaddress.ip_address("2001:db8::7"), low=REL16)
    assert parse_file_header(original.encode()) == original
    assert original.header_length == len(original.encode())


def test_header_without_private_extension_length_is_read_by_its_header_length() -> None:
    # Some writers leave the private extension length out; the release extensions follow the filter at once.
    with_length = header(routing_filter=b"", private_extension=b"", low=REL16).encode()
    without = with_length[:50] + with_length[52:]
    without = without[:4] + struct.pack(">I", len(without)) + without[8:]
    parsed = parse_file_header(without)
    assert parsed.high == parsed.low == REL16
    assert parsed.private_extension == b""


def test_release_identifiers() -> None:
    assert Release(99, 0).octet == 0 and Release(99, 0).extension is None
    assert Release(4, 2).octet == 0b001_00010
    assert Release(9, 31).octet == 0b110_11111
    assert (Release(10, 0).octet, Release(10, 0).extension) == (0b111_00000, 0)
    assert Release.from_octets(0b111_01011, 6) == REL16
    with pytest.raises(FileFormatError):
        Release.from_octets(0b111_01011, None)
    with pytest.raises(ValueError):
        Release(16, 32)


def test_header_times_round_trip_with_their_utc_offset() -> None:
    opened = HeaderTime.at(1_773_585_005.0, 120)  # 2026-03-15T14:30:05Z
    assert (opened.month, opened.day, opened.hour, opened.minute, opened.utc_offset_minutes) == (3, 15, 16, 30, 120)
    assert HeaderTime.decode(opened.encode()) == opened
    west = HeaderTime(1, 2, 3, 4, -90)
    assert HeaderTime.decode(west.encode()) == west
    assert str(west) == "--01-02T03:04-01:30"


def test_cdr_header_octets_follow_clause_6_1_2() -> None:
    assert CdrHeader(0x0102, REL16).encode() == bytes.fromhex("0102 eb 29 06")  # BER (1), TS 32.260 (9)
    assert CdrHeader(7, Release(8, 7)).encode() == bytes.fromhex("0007 a7 29")
    assert encode_cdr(b"\x30\x00", REL16) == bytes.fromhex("0002eb2906") + b"\x30\x00"
    parsed = parse_cdr_header(bytes.fromhex("0102eb2906"))
    assert (parsed.length, parsed.release, parsed.data_record_format, parsed.ts_number, parsed.size) == (
        0x0102,
        REL16,
        1,
        9,
        5,
    )


def test_a_cdr_longer_than_the_two_octet_length_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode_cdr(b"\x00" * 65536, REL16)


def file_of(contents: list[bytes], count: int | None = None) -> bytes:
    body = b"".join(encode_cdr(c, REL16) for c in contents)
    first = header(file_length=0, cdr_count=len(contents) if count is None else count)
    return header(file_length=first.header_length + len(body), cdr_count=first.cdr_count).encode() + body


def test_a_file_parses_into_its_header_and_cdrs() -> None:
    data = file_of([b"\x01\x02", b"", b"\x03" * 300])
    parsed = parse_file(data)
    assert [c.content for c in parsed.cdrs] == [b"\x01\x02", b"", b"\x03" * 300]
    assert parsed.cdrs[0].offset == parsed.header_length
    assert parse_file(file_of([b"\x01"], count=UNKNOWN_CDR_COUNT)).header.cdr_count == UNKNOWN_CDR_COUNT


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (file_of([b"\x01\x02"])[:-1], "file length field"),
        (file_of([b"\x01\x02"], count=2), "counts 2 CDRs"),
        (b"\x00" * 20, "too short"),
    ],
    ids=["truncated", "count", "tiny"],
)
def test_files_whose_lengths_or_counts_disagree_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(FileFormatError, match=message):
        parse_file(data)


def test_a_cdr_running_past_the_end_is_refused() -> None:
    data = bytearray(file_of([b"\x01\x02"]))
    data[-6:-4] = b"\x00\x09"  # the CDR length now claims more than there is
    with pytest.raises(FileFormatError, match="runs past the end"):
        parse_file(bytes(data))
