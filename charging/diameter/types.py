"""Value codecs for the AVP data types of RFC 6733 sections 4.2 and 4.3.

Each type has a decoder ``(buf, start, end) -> value`` that reads the AVP's data
in place, and an encoder ``value -> bytes`` for the data alone (no header, no
padding).  Fixed-size types also expose their size so that the dictionary can
precompute a whole AVP header for them.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from charging.diameter.errors import AvpDecodeError

Decoder = Callable[[bytes, int, int], Any]
DataEncoder = Callable[[Any], bytes]

_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")

# RFC 6733 4.3.1: Time is the NTP timestamp's seconds.  The 32-bit field wraps on
# 2036-02-07 06:28:16 UTC; RFC 4330 section 3 gives the rule used here: a value
# with the top bit set counts from 1900, one without it from the 2036 wrap.
NTP_EPOCH = datetime(1900, 1, 1, tzinfo=UTC)
NTP_ERA1 = NTP_EPOCH + timedelta(seconds=1 << 32)
_UNIX_MINUS_NTP = 2208988800  # seconds from 1900-01-01 to 1970-01-01


class OtherAddress(NamedTuple):
    """An Address whose family is neither IPv4 nor IPv6 (IANA address family numbers)."""

    family: int
    data: bytes


AddressValue = ipaddress.IPv4Address | ipaddress.IPv6Address | OtherAddress

ADDRESS_FAMILY_IPV4 = 1
ADDRESS_FAMILY_IPV6 = 2
ADDRESS_FAMILY_E164 = 8


def _fixed(size: int, st: struct.Struct, type_name: str) -> Decoder:
    unpack = st.unpack_from

    def decode(buf: bytes, start: int, end: int) -> Any:
        if end - start != size:
            raise AvpDecodeError(5014, f"{type_name} needs {size} octets, got {end - start}")
        return unpack(buf, start)[0]

    return decode


def _packer(st: struct.Struct, type_name: str) -> DataEncoder:
    pack = st.pack

    def encode(value: Any) -> bytes:
        try:
            return pack(value)
        except struct.error as exc:
            raise ValueError(f"{type_name} cannot hold {value!r}") from exc

    return encode


def decode_octets(buf: bytes, start: int, end: int) -> bytes:
    return buf[start:end]


def encode_octets(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"OctetString wants bytes, got {type(value).__name__}")


def decode_utf8(buf: bytes, start: int, end: int) -> str:
    try:
        return buf[start:end].decode()
    except UnicodeDecodeError as exc:
        raise AvpDecodeError(5004, "not valid UTF-8") from exc


def encode_utf8(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    raise TypeError(f"UTF8String wants str, got {type(value).__name__}")


def decode_identity(buf: bytes, start: int, end: int) -> str:
    try:
        return buf[start:end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise AvpDecodeError(5004, "DiameterIdentity must be ASCII") from exc


def decode_time(buf: bytes, start: int, end: int) -> datetime:
    if end - start != 4:
        raise AvpDecodeError(5014, f"Time needs 4 octets, got {end - start}")
    seconds = _U32.unpack_from(buf, start)[0]
    return ntp_to_datetime(seconds)


def ntp_to_datetime(seconds: int) -> datetime:
    base = NTP_EPOCH if seconds & 0x80000000 else NTP_ERA1
    return base + timedelta(seconds=seconds)


def datetime_to_ntp(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("Time values must be timezone-aware datetimes")
    seconds = int((value - NTP_EPOCH).total_seconds())
    return ntp_from_seconds(seconds)


def ntp_from_seconds(seconds_since_1900: int) -> int:
    """Fold seconds since 1900 into the 32-bit field by the RFC 4330 rule."""
    if (1 << 31) <= seconds_since_1900 < (1 << 32):
        return seconds_since_1900
    if (1 << 32) <= seconds_since_1900 < (1 << 32) + (1 << 31):
        return seconds_since_1900 - (1 << 32)
    raise ValueError("Time outside 1968-2104 cannot be encoded")


def unix_to_ntp(unix_seconds: float) -> int:
    return ntp_from_seconds(int(unix_seconds) + _UNIX_MINUS_NTP)


def ntp_to_unix(ntp_seconds: int) -> int:
    if ntp_seconds & 0x80000000:
        return ntp_seconds - _UNIX_MINUS_NTP
    return ntp_seconds + (1 << 32) - _UNIX_MINUS_NTP


def time_to_ntp(value: Any) -> int:
    """NTP seconds of a datetime, or of a bare number taken as Unix seconds (what clocks give)."""
    if isinstance(value, datetime):
        return datetime_to_ntp(value)
    if isinstance(value, int | float):
        return unix_to_ntp(value)
    raise TypeError(f"Time wants a datetime or Unix seconds, got {type(value).__name__}")


def encode_time(value: Any) -> bytes:
    return _U32.pack(time_to_ntp(value))


def decode_address(buf: bytes, start: int, end: int) -> AddressValue:
    if end - start < 2:
        raise AvpDecodeError(5014, "Address shorter than its family field")
    family = (buf[start] << 8) | buf[start + 1]
    data = buf[start + 2 : end]
    if family == ADDRESS_FAMILY_IPV4:
        if len(data) != 4:
            raise AvpDecodeError(5014, "IPv4 Address needs 4 octets")
        return ipaddress.IPv4Address(data)
    if family == ADDRESS_FAMILY_IPV6:
        if len(data) != 16:
            raise AvpDecodeError(5014, "IPv6 Address needs 16 octets")
        return ipaddress.IPv6Address(data)
    return OtherAddress(family, data)


def encode_address(value: Any) -> bytes:
    if isinstance(value, str):
        value = ipaddress.ip_address(value)
    if isinstance(value, ipaddress.IPv4Address):
        return b"\x00\x01" + value.packed
    if isinstance(value, ipaddress.IPv6Address):
        return b"\x00\x02" + value.packed
    if isinstance(value, OtherAddress):
        return value.family.to_bytes(2, "big") + value.data
    raise TypeError(f"Address wants an IP address or OtherAddress, got {type(value).__name__}")


class DataType(NamedTuple):
    name: str
    decode: Decoder
    encode: DataEncoder
    size: int | None  # data size of fixed-size types


_TYPES: dict[str, DataType] = {}


def _register(name: str, decode: Decoder, encode: DataEncoder, size: int | None = None) -> None:
    _TYPES[name] = DataType(name, decode, encode, size)


_register("OctetString", decode_octets, encode_octets)
_register("Integer32", _fixed(4, _I32, "Integer32"), _packer(_I32, "Integer32"), 4)
_register("Integer64", _fixed(8, _I64, "Integer64"), _packer(_I64, "Integer64"), 8)
_register("Unsigned32", _fixed(4, _U32, "Unsigned32"), _packer(_U32, "Unsigned32"), 4)
_register("Unsigned64", _fixed(8, _U64, "Unsigned64"), _packer(_U64, "Unsigned64"), 8)
_register("Float32", _fixed(4, _F32, "Float32"), _packer(_F32, "Float32"), 4)
_register("Float64", _fixed(8, _F64, "Float64"), _packer(_F64, "Float64"), 8)
_register("Enumerated", _fixed(4, _I32, "Enumerated"), _packer(_I32, "Enumerated"), 4)
_register("Time", decode_time, encode_time, 4)
_register("Address", decode_address, encode_address)
_register("UTF8String", decode_utf8, encode_utf8)
_register("DiameterIdentity", decode_identity, encode_utf8)
_register("DiameterURI", decode_identity, encode_utf8)
_register("IPFilterRule", decode_identity, encode_utf8)
_register("QoSFilterRule", decode_identity, encode_utf8)
# Grouped values are containers, handled by the message module; listed so that
# the dictionary can check type names.
_register("Grouped", decode_octets, encode_octets)


def data_type(name: str) -> DataType:
    try:
        return _TYPES[name]
    except KeyError:
        raise KeyError(f"unknown Diameter data type {name!r}") from None


def type_names() -> frozenset[str]:
    return frozenset(_TYPES)
