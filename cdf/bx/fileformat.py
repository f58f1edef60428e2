"""TS 32.297 CDR files: the file header and the CDR header, encoded and parsed.  Pure: bytes in, bytes out.

A CDR file (TS 32.297 clause 6.1) is one file header followed by CDRs, each a CDR header and the
CDR itself (here a TS 32.298 record in BER).  All integers are unsigned, big-endian (network order).

File header (TS 32.297 clause 6.1.1), octet numbers counted from 1:

    1-4     file length: the whole file, header included
    5-8     header length
    9       high release / version identifier: release identifier in bits 8-6, version in bits 5-1
    10      low release / version identifier (same coding)
    11-14   file opening timestamp (coding below)
    15-18   timestamp when the last CDR was appended to the file
    19-22   number of CDRs in the file (FFFFFFFF hex: unknown)
    23-26   file sequence number
    27      file closure trigger reason (FileClosureReason)
    28-47   IP address of the node that generated the file: FF FF FF FF, then the 16 octets of an
            IPv6 address (an IPv4 address as the IPv4-mapped IPv6 address ::ffff:a.b.c.d)
    48      lost CDR indicator
    49-50   length of the CDR routeing filter, then that many octets of filter
    next 2  length of the private extension, then that many octets of extension
    next 1  high release identifier extension, present when the high release identifier is 7
    next 1  low release identifier extension, present when the low release identifier is 7

Release identifier (3 bits): 0 R99, 1 Rel-4, 2 Rel-5, 3 Rel-6, 4 Rel-7, 5 Rel-8, 6 Rel-9, 7 beyond Rel-9, in
which case the release identifier extension octet holds the release minus 10.  The version identifier
(5 bits) is the middle digit of the TS 32.298 version the records follow (x.y.z: y).

Timestamps of the file header (4 octets, 32 bits from the most significant): month (4 bits), day (5),
hour (5), minute (6), sign of the local time differential from UTC (1 bit: 1 "+", 0 "-"), hours of
the differential (5), minutes of the differential (6).  The time is local time at that offset.

CDR header (TS 32.297 clause 6.1.2):

    1-2     CDR length: the CDR that follows, without this header
    3       release identifier (bits 8-6) / version identifier (bits 5-1), as in the file header
    4       data record format (bits 8-6: 1 BER, 2 unaligned PER, 3 aligned PER, 4 XER) /
            TS number (bits 5-1: the charging TS whose records these are; 9 = TS 32.260, IMS)
    5       release identifier extension, present when the release identifier is 7

Writers of this module always write the private extension length (0 when there is none); the parser
also reads headers that leave it out, telling the two apart by the header length.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN_CDR_COUNT = 0xFFFFFFFF
MAX_CDR_LENGTH = 0xFFFF
MAX_FILE_LENGTH = 0xFFFFFFFF
TS_32260 = 9  # TS number of IMS charging (TS 32.260) in the CDR header

# TS number (CDR header octet 4, bits 5-1) -> the TS, for people reading a file.
TS_NUMBERS: dict[int, str] = {
    0: "32.005",
    1: "32.015",
    2: "32.205",
    3: "32.215",
    4: "32.225",
    5: "32.235",
    6: "32.250",
    7: "32.251",
    9: "32.260",
    10: "32.270",
    11: "32.271",
    12: "32.272",
    13: "32.273",
    14: "32.275",
    15: "32.274",
    16: "32.277",
    17: "32.296",
    18: "32.278",
    19: "32.253",
    20: "32.255",
    21: "32.254",
    22: "32.256",
    23: "28.201",
    24: "28.202",
    25: "32.257",
}


class FileFormatError(ValueError):
    """Bytes that are not a TS 32.297 CDR file (or header) this module can read."""


class FileClosureReason(enum.IntEnum):
    """File closure trigger reason (file header octet 27)."""

    NORMAL = 0
    SIZE_LIMIT = 1
    TIME_LIMIT = 2
    CDR_COUNT_LIMIT = 3
    MANUAL_INTERVENTION = 4
    RELEASE_VERSION_OR_ENCODING_CHANGE = 5
    ABNORMAL = 128
    FILE_SYSTEM_ERROR = 129
    FILE_SYSTEM_STORAGE_EXHAUSTED = 130
    FILE_INTEGRITY_ERROR = 131


class DataRecordFormat(enum.IntEnum):
    """Data record format (CDR header octet 4, bits 8-6)."""

    BER = 1
    UNALIGNED_PER = 2
    ALIGNED_PER = 3
    XER = 4


@dataclass(frozen=True, slots=True)
class Release:
    """A 3GPP release and the version of the TS within it; R99 is release 99."""

    release: int
    version: int

    def __post_init__(self) -> None:
        if not (self.release == 99 or 4 <= self.release <= 10 + 255):
            raise ValueError(f"release {self.release} cannot be coded (R99 is 99, else 4 to 265)")
        if not 0 <= self.version <= 31:
            raise ValueError(f"version identifier {self.version} does not fit in 5 bits")

    @property
    def identifier(self) -> int:
        """The 3-bit release identifier."""
        if self.release == 99:
            return 0
        return min(self.release - 3, 7)

    @property
    def extension(self) -> int | None:
        """The release identifier extension octet, present beyond Rel-9."""
        return self.release - 10 if self.release >= 10 and self.release != 99 else None

    @property
    def octet(self) -> int:
        return (self.identifier << 5) | self.version

    @staticmethod
    def from_octets(octet: int, extension: int | None) -> Release:
        identifier, version = octet >> 5, octet & 0x1F
        if identifier == 7:
            if extension is None:
                raise FileFormatError("release identifier 7 without its release identifier extension")
            return Release(10 + extension, version)
        return Release(99 if identifier == 0 else identifier + 3, version)

    def __str__(self) -> str:
        name = "R99" if self.release == 99 else f"Rel-{self.release}"
        return f"{name} version {self.version}"


@dataclass(frozen=True, slots=True)
class HeaderTime:
    """A file header timestamp: local month, day, hour and minute, and the offset of local time from UTC."""

    month: int
    day: int
    hour: int
    minute: int
    utc_offset_minutes: int = 0

    def __post_init__(self) -> None:
        if not (1 <= self.month <= 12 and 1 <= self.day <= 31 and 0 <= self.hour <= 23 and 0 <= self.minute <= 59):
            raise ValueError(f"not a time of the year: {self.month}-{self.day} {self.hour}:{self.minute}")
        if abs(self.utc_offset_minutes) >= 24 * 60:
            raise ValueError(f"UTC offset {self.utc_offset_minutes} minutes is a day or more")

    @staticmethod
    def at(unix_seconds: float, utc_offset_minutes: int = 0) -> HeaderTime:
        local = datetime.fromtimestamp(unix_seconds, timezone(timedelta(minutes=utc_offset_minutes)))
        return HeaderTime(local.month, local.day, local.hour, local.minute, utc_offset_minutes)

    def encode(self) -> bytes:
        offset = abs(self.utc_offset_minutes)
        sign = 0 if self.utc_offset_minutes < 0 else 1
        value = (
            self.month << 28
            | self.day << 23
            | self.hour << 18
            | self.minute << 12
            | sign << 11
            | (offset // 60) << 6
            | offset % 60
        )
        return value.to_bytes(4, "big")

    @staticmethod
    def decode(data: bytes) -> HeaderTime:
        value = int.from_bytes(data[:4], "big")
        offset = ((value >> 6) & 0x1F) * 60 + (value & 0x3F)
        if not (value >> 11) & 1:
            offset = -offset
        try:
            return HeaderTime(value >> 28, (value >> 23) & 0x1F, (value >> 18) & 0x1F, (value >> 12) & 0x3F, offset)
        except ValueError as exc:
            raise FileFormatError(f"timestamp {data[:4].hex()}: {exc}") from None

    def __str__(self) -> str:
        sign = "-" if self.utc_offset_minutes < 0 else "+"
        offset = abs(self.utc_offset_minutes)
        zone = f"{sign}{offset // 60:02d}:{offset % 60:02d}"
        return f"--{self.month:02d}-{self.day:02d}T{self.hour:02d}:{self.minute:02d}{zone}"


def encode_node_address(address: IPAddress) -> bytes:
    """File header octets 28-47."""
    if isinstance(address, ipaddress.IPv4Address):
        address = ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + address.packed)
    return b"\xff" * 4 + address.packed


def decode_node_address(data: bytes) -> IPAddress:
    address = ipaddress.IPv6Address(data[4:20])
    return address.ipv4_mapped or address


@dataclass(frozen=True, slots=True)
class FileHeader:
    """The TS 32.297 file header; ``encode`` computes the header length."""

    file_length: int
    high: Release
    low: Release
    opened: HeaderTime
    last_append: HeaderTime
    cdr_count: int
    file_sequence_number: int
    closure_reason: int
    node_address: IPAddress
    lost_cdr_indicator: int = 0
    routing_filter: bytes = b""
    private_extension: bytes = b""

    def __post_init__(self) -> None:
        for name in ("file_length", "cdr_count", "file_sequence_number"):
            if not 0 <= getattr(self, name) <= 0xFFFFFFFF:
                raise ValueError(f"{name} {getattr(self, name)} does not fit in 4 octets")
        if not (0 <= self.closure_reason <= 255 and 0 <= self.lost_cdr_indicator <= 255):
            raise ValueError("closure reason and lost CDR indicator are one octet each")
        if len(self.routing_filter) > 0xFFFF or len(self.private_extension) > 0xFFFF:
            raise ValueError("routeing filter and private extension are at most 65535 octets")

    @property
    def header_length(self) -> int:
        extensions = (self.high.extension is not None) + (self.low.extension is not None)
        return 50 + len(self.routing_filter) + 2 + len(self.private_extension) + extensions

    def encode(self) -> bytes:
        parts = [
            struct.pack(">IIBB", self.file_length, self.header_length, self.high.octet, self.low.octet),
            self.opened.encode(),
            self.last_append.encode(),
            struct.pack(">IIB", self.cdr_count, self.file_sequence_number, self.closure_reason),
            encode_node_address(self.node_address),
            struct.pack(">BH", self.lost_cdr_indicator, len(self.routing_filter)),
            self.routing_filter,
            struct.pack(">H", len(self.private_extension)),
            self.private_extension,
        ]
        parts.extend(bytes([ext]) for ext in (self.high.extension, self.low.extension) if ext is not None)
        return b"".join(parts)


def parse_file_header(data: bytes) -> FileHeader:
    """The file header at the start of ``data``; ``FileFormatError`` if it is not one."""
    if len(data) < 50:
        raise FileFormatError(f"{len(data)} octets are too short for a TS 32.297 file header (50 at least)")
    file_length, header_length, high_octet, low_octet = struct.unpack_from(">IIBB", data, 0)
    if header_length < 50 or header_length > len(data):
        raise FileFormatError(f"header length {header_length} outside the {len(data)} octets there are")
    opened = HeaderTime.decode(data[10:14])
    last_append = HeaderTime.decode(data[14:18])
    cdr_count, sequence, reason = struct.unpack_from(">IIB", data, 18)
    node = decode_node_address(data[27:47])
    lost, filter_length = struct.unpack_from(">BH", data, 47)
    position = 50 + filter_length
    if position > header_length:
        raise FileFormatError(f"routeing filter of {filter_length} octets overruns the header")
    routing_filter = bytes(data[50:position])
    extensions_needed = (high_octet >> 5 == 7) + (low_octet >> 5 == 7)
    private_extension = b""
    if header_length - position != extensions_needed:  # the private extension length is there
        if position + 2 > header_length:
            raise FileFormatError("header ends inside the private extension length")
        (extension_length,) = struct.unpack_from(">H", data, position)
        position += 2
        private_extension = bytes(data[position : position + extension_length])
        position += extension_length
    release_extensions = list(data[position:header_length])
    if len(release_extensions) != extensions_needed:
        raise FileFormatError(
            f"header length {header_length} leaves {len(release_extensions)} octets where "
            f"{extensions_needed} release identifier extension(s) belong"
        )
    high_ext = release_extensions.pop(0) if high_octet >> 5 == 7 else None
    low_ext = release_extensions.pop(0) if low_octet >> 5 == 7 else None
    try:
        return FileHeader(
            file_length=file_length,
            high=Release.from_octets(high_octet, high_ext),
            low=Release.from_octets(low_octet, low_ext),
            opened=opened,
            last_append=last_append,
            cdr_count=cdr_count,
            file_sequence_number=sequence,
            closure_reason=reason,
            node_address=node,
            lost_cdr_indicator=lost,
            routing_filter=routing_filter,
            private_extension=private_extension,
        )
    except ValueError as exc:
        raise FileFormatError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class CdrHeader:
    length: int
    release: Release
    data_record_format: int = DataRecordFormat.BER
    ts_number: int = TS_32260

    def __post_init__(self) -> None:
        if not 0 <= self.length <= MAX_CDR_LENGTH:
            raise ValueError(f"a CDR of {self.length} octets does not fit the 2-octet CDR length")
        if not (0 <= self.data_record_format <= 7 and 0 <= self.ts_number <= 31):
            raise ValueError("data record format is 3 bits and TS number 5 bits")

    @property
    def size(self) -> int:
        return 4 if self.release.extension is None else 5

    def encode(self) -> bytes:
        head = struct.pack(">HBB", self.length, self.release.octet, self.data_record_format << 5 | self.ts_number)
        return head if self.release.extension is None else head + bytes([self.release.extension])


def parse_cdr_header(data: bytes, offset: int = 0) -> CdrHeader:
    if offset + 4 > len(data):
        raise FileFormatError(f"CDR header at octet {offset} runs past the end of the file")
    length, release_octet, format_octet = struct.unpack_from(">HBB", data, offset)
    extension = None
    if release_octet >> 5 == 7:
        if offset + 5 > len(data):
            raise FileFormatError(f"CDR header at octet {offset} ends before its release identifier extension")
        extension = data[offset + 4]
    return CdrHeader(length, Release.from_octets(release_octet, extension), format_octet >> 5, format_octet & 0x1F)


def encode_cdr(content: bytes, release: Release, ts_number: int = TS_32260) -> bytes:
    """A CDR header and the BER-encoded CDR it announces; ``ValueError`` if the CDR is over 65535 octets."""
    return CdrHeader(len(content), release, DataRecordFormat.BER, ts_number).encode() + content


@dataclass(frozen=True, slots=True)
class CdrEntry:
    offset: int  # of the CDR header in the file
    header: CdrHeader
    content: bytes


@dataclass(frozen=True, slots=True)
class CdrFile:
    header: FileHeader
    header_length: int
    cdrs: list[CdrEntry]


def parse_file(data: bytes) -> CdrFile:
    """A whole CDR file; ``FileFormatError`` if its lengths or CDR count disagree with its content."""
    header = parse_file_header(data)
    header_length = struct.unpack_from(">I", data, 4)[0]
    if header.file_length != len(data):
        raise FileFormatError(f"file length field says {header.file_length} octets, the file has {len(data)}")
    cdrs: list[CdrEntry] = []
    offset = header_length
    while offset < len(data):
        cdr_header = parse_cdr_header(data, offset)
        start = offset + cdr_header.size
        end = start + cdr_header.length
        if end > len(data):
            raise FileFormatError(f"CDR {len(cdrs) + 1} at octet {offset} runs past the end of the file")
        cdrs.append(CdrEntry(offset, cdr_header, bytes(data[start:end])))
        offset = end
    if header.cdr_count not in (UNKNOWN_CDR_COUNT, len(cdrs)):
        raise FileFormatError(f"header counts {header.cdr_count} CDRs, the file holds {len(cdrs)}")
    return CdrFile(header, header_length, cdrs)
