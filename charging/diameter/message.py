"""Diameter messages and AVPs (RFC 6733 sections 3 and 4), decoded lazily.

A received message keeps its bytes.  Its AVPs are split out only when somebody
first asks for one, their values are decoded only when read, and a grouped AVP's
members are split out only when the group is entered.  A message built in code is
encoded AVP by AVP as it is built, so sending it costs one join.  Encoding a
received message that nobody changed gives back the bytes that came in, unknown
AVPs included.

Access by name::

    ccr["Session-Id"]
    ccr["Multiple-Services-Credit-Control"]["Rating-Group"]
    ccr.all("Multiple-Services-Credit-Control")     # every instance
    ccr.get("Service-Information", {})               # default when absent
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from charging.diameter.dictionary import DICTIONARY, AvpDef, encode_group_data, iter_encoded
from charging.diameter.errors import MessageFormatError

FLAG_REQUEST = 0x80
FLAG_PROXIABLE = 0x40
FLAG_ERROR = 0x20
FLAG_RETRANSMIT = 0x10

AVP_FLAG_VENDOR = 0x80
AVP_FLAG_MANDATORY = 0x40

HEADER_LENGTH = 20

_MSG_HEADER = struct.Struct(">IIIII")

# Where a received message's AVPs are, as the validator found them on its one pass: per container (the
# message's own AVPs at HEADER_LENGTH, a grouped AVP's members at the first octet of its data), every
# instance of each AVP key in order, as ``data start << 32 | data end`` in the message's bytes.  One int
# per AVP and one dict per container: the readers of the applications take their values from it without
# walking the AVP headers again.
AvpPlaces = dict[int, list[int]]
AvpIndex = dict[int, AvpPlaces]
PLACE_END = 0xFFFFFFFF  # place & PLACE_END: where the data ends; place >> 32: where it starts
_AVP_HEADER = struct.Struct(">II")
_U32 = struct.Struct(">I")
_UNSET: Any = object()
_BY_NAME = DICTIONARY.by_name
_SESSION_ID_KEY = _BY_NAME["Session-Id"].key
_PROXY_INFO_KEY = _BY_NAME["Proxy-Info"].key
_RESULT_CODE = _BY_NAME["Result-Code"].code
_VENDOR_BIT = AVP_FLAG_VENDOR << 24  # the V flag in an AVP header's flags-and-length word
_BY_KEY = DICTIONARY.by_key


def _defn(name: str) -> AvpDef:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no AVP named {name!r} in the dictionary") from None


class Avp:
    """One AVP: header fields, and the data read from the buffer on demand."""

    __slots__ = ("_buf", "_data", "_end", "_start", "_value", "code", "flags", "vendor_id")

    def __init__(self, code: int, flags: int, vendor_id: int, buf: bytes, start: int, data: int, end: int):
        self.code = code
        self.flags = flags
        self.vendor_id = vendor_id
        self._buf = buf
        self._start = start  # first octet of the AVP header
        self._data = data  # first octet of the data
        self._end = end  # one past the last data octet (padding excluded)
        self._value = _UNSET

    @classmethod
    def build(cls, name: str, value: Any) -> Avp:
        """An AVP encoded from a dictionary name and a value."""
        raw = _defn(name).encode(value)
        return parse_avps(raw, 0, len(raw))[0]

    @classmethod
    def from_raw(cls, code: int, data: bytes, vendor_id: int = 0, flags: int | None = None) -> Avp:
        """An AVP from its code and data, known to the dictionary or not."""
        if flags is None:
            flags = AVP_FLAG_VENDOR if vendor_id else 0
        header_len = 12 if vendor_id else 8
        length = header_len + len(data)
        raw = _AVP_HEADER.pack(code, (flags << 24) | length)
        if vendor_id:
            raw += _U32.pack(vendor_id)
        raw += data + b"\x00" * (-len(data) & 3)
        return cls(code, flags, vendor_id, raw, 0, header_len, length)

    @property
    def key(self) -> int:
        """The dictionary's key of this AVP (``dictionary.avp_key``): code and vendor in one int."""
        return self.code | (self.vendor_id << 32)

    @property
    def definition(self) -> AvpDef | None:
        return _BY_KEY.get(self.key)

    @property
    def name(self) -> str:
        defn = self.definition
        return defn.name if defn is not None else f"AVP-{self.code}-{self.vendor_id}"

    @property
    def is_mandatory(self) -> bool:
        return bool(self.flags & AVP_FLAG_MANDATORY)

    @property
    def length(self) -> int:
        return self._end - self._start

    @property
    def data(self) -> bytes:
        return self._buf[self._data : self._end]

    @property
    def value(self) -> Any:
        """The decoded value: an int, str, bytes, datetime, address, or a group for Grouped."""
        value = self._value
        if value is _UNSET:
            defn = _BY_KEY.get(self.key)
            value = self._decode(defn)
        return value

    def _decode(self, defn: AvpDef | None) -> Any:
        if defn is None:
            value: Any = self._buf[self._data : self._end]
        elif defn.type_name == "Grouped":
            value = AvpGroup(self._buf, self._data, self._end)
        else:
            value = defn.decode(self._buf, self._data, self._end)
        self._value = value
        return value

    def to_bytes(self) -> bytes:
        """The whole AVP as it stands on the wire, padding included."""
        padded = self._start + ((self._end - self._start + 3) & ~3)
        raw = self._buf[self._start : padded]
        if len(raw) < padded - self._start:  # a last AVP whose padding the sender left out
            raw += b"\x00" * (padded - self._start - len(raw))
        return raw

    def __repr__(self) -> str:
        try:
            shown = repr(self.value)
        except Exception as exc:  # a repr must never raise
            shown = f"<undecodable: {exc}>"
        return f"<Avp {self.name} code={self.code} vendor={self.vendor_id} flags={self.flags:#04x} {shown}>"


def parse_avps(buf: bytes, start: int, end: int) -> list[Avp]:
    """Split ``buf[start:end]`` into AVPs, reading headers only."""
    avps: list[Avp] = []
    append = avps.append
    unpack = _AVP_HEADER.unpack_from
    offset = start
    while offset < end:
        if end - offset < 8:
            raise MessageFormatError(5014, "truncated AVP header", buf[offset:end])
        code, flags_length = unpack(buf, offset)
        flags = flags_length >> 24
        length = flags_length & 0xFFFFFF
        if flags & AVP_FLAG_VENDOR:
            if length < 12 or end - offset < 12:
                raise MessageFormatError(5014, f"AVP {code}: length {length} too short", buf[offset:end])
            vendor_id = _U32.unpack_from(buf, offset + 8)[0]
            data = offset + 12
        else:
            if length < 8:
                raise MessageFormatError(5014, f"AVP {code}: length {length} too short", buf[offset : offset + 8])
            vendor_id = 0
            data = offset + 8
        avp_end = offset + length
        if avp_end > end:
            raise MessageFormatError(5014, f"AVP {code}: length {length} runs past its container", buf[offset:end])
        append(Avp(code, flags, vendor_id, buf, offset, data, avp_end))
        offset += (length + 3) & ~3
    return avps


class AvpContainer:
    """Lookup by AVP name, shared by messages and grouped AVP values."""

    __slots__ = ()

    def _avp_list(self) -> list[Avp]:
        raise NotImplementedError

    @property
    def avps(self) -> list[Avp]:
        return self._avp_list()

    def __iter__(self) -> Iterator[Avp]:
        return iter(self._avp_list())

    def __len__(self) -> int:
        return len(self._avp_list())

    def __getitem__(self, name: str) -> Any:
        defn = _defn(name)
        code = defn.code
        vendor_id = defn.vendor_id
        for avp in self._avp_list():
            if avp.code == code and avp.vendor_id == vendor_id:
                value = avp._value
                return avp._decode(defn) if value is _UNSET else value
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return self.avp(name) is not None

    def avp(self, name: str) -> Avp | None:
        """The first AVP of that name, or None."""
        defn = _defn(name)
        for avp in self._avp_list():
            if avp.code == defn.code and avp.vendor_id == defn.vendor_id:
                return avp
        return None

    def all(self, name: str) -> list[Any]:
        """The values of every AVP of that name, in order."""
        defn = _defn(name)
        code = defn.code
        vendor_id = defn.vendor_id
        out = []
        for avp in self._avp_list():
            if avp.code == code and avp.vendor_id == vendor_id:
                value = avp._value
                out.append(avp._decode(defn) if value is _UNSET else value)
        return out

    def find(self, path: str, default: Any = None) -> Any:
        """Follow ``A/B/C`` through grouped AVPs, taking the first instance at each step."""
        node: Any = self
        for part in path.split("/"):
            if not isinstance(node, AvpContainer):
                return default
            node = node.get(part, _UNSET)
            if node is _UNSET:
                return default
        return node


class AvpGroup(AvpContainer):
    """The value of a Grouped AVP: its members, split out on first use."""

    __slots__ = ("_avps", "_buf", "_end", "_start")

    def __init__(self, buf: bytes, start: int, end: int) -> None:
        self._buf = buf
        self._start = start
        self._end = end
        self._avps: list[Avp] | None = None

    def _avp_list(self) -> list[Avp]:
        avps = self._avps
        if avps is None:
            avps = self._avps = parse_avps(self._buf, self._start, self._end)
        return avps

    def data_bytes(self) -> bytes:
        return self._buf[self._start : self._end]

    def __repr__(self) -> str:
        return f"<AvpGroup {[a.name for a in self._avp_list()]}>"


class Message(AvpContainer):
    """A Diameter message: header fields and AVPs."""

    __slots__ = (
        "_avps",
        "_buf",
        "_off",
        "_tail",
        "app_id",
        "avp_index",
        "code",
        "end_to_end",
        "flags",
        "hop_by_hop",
        "version",
    )

    def __init__(
        self,
        code: int,
        app_id: int = 0,
        flags: int = 0,
        hop_by_hop: int = 0,
        end_to_end: int = 0,
        avps: Mapping[str, Any] | Sequence[Any] | None = None,
    ) -> None:
        self.version = 1
        self.code = code
        self.app_id = app_id
        self.flags = flags
        self.hop_by_hop = hop_by_hop
        self.end_to_end = end_to_end
        self._buf = b""
        self._off = 0
        self._tail: list[bytes] | None = None
        self._avps: list[Avp] | None = []
        # Where each AVP's data is in ``to_bytes()``, by container: set by the validator on a received message.
        self.avp_index: AvpIndex | None = None
        if avps:
            self._tail = [encode_group_data(avps, DICTIONARY)]
            self._avps = None

    # -- construction ---------------------------------------------------------------
    @classmethod
    def request(
        cls,
        command: str | int,
        app_id: int,
        avps: Mapping[str, Any] | Sequence[Any] | None = None,
        proxiable: bool | None = None,
    ) -> Message:
        """A request for a command named by abbreviation (``"CCR"``) or code."""
        if isinstance(command, str):
            cmd = DICTIONARY.command_by_abbrev(command)
            code = cmd.code
            pxy = cmd.proxiable
        else:
            code = command
            found = DICTIONARY.command(command)
            pxy = found.proxiable if found else False
        if proxiable is not None:
            pxy = proxiable
        return cls(code, app_id, FLAG_REQUEST | (FLAG_PROXIABLE if pxy else 0), avps=avps)

    def answer(self, avps: Mapping[str, Any] | Sequence[Any] | None = None) -> Message:
        """An answer to this request: same command, application and identifiers.

        Session-Id comes first when the request had one (RFC 6733 3.2 puts it
        first), and the Proxy-Info AVPs are copied as section 6.2 requires.
        """
        ans = Message(self.code, self.app_id, self.flags & FLAG_PROXIABLE, self.hop_by_hop, self.end_to_end)
        tail = self.encoded(_SESSION_ID_KEY)[:1]
        if avps:
            tail.extend(iter_encoded(avps, DICTIONARY))
        tail.extend(self.encoded(_PROXY_INFO_KEY))
        if tail:
            ans._tail = tail
            ans._avps = None
        return ans

    @classmethod
    def decode(cls, raw: bytes) -> Message:
        """A message from one whole frame; AVPs are split out later, on demand."""
        if len(raw) < HEADER_LENGTH:
            raise MessageFormatError(5015, "shorter than a Diameter header")
        word0, word1, app_id, hop_by_hop, end_to_end = _MSG_HEADER.unpack_from(raw, 0)
        length = word0 & 0xFFFFFF
        if length != len(raw) or length & 3:
            raise MessageFormatError(5015, f"message length {length} does not match the {len(raw)} octets")
        msg = cls.__new__(cls)
        msg.version = word0 >> 24
        msg.flags = word1 >> 24
        msg.code = word1 & 0xFFFFFF
        msg.app_id = app_id
        msg.hop_by_hop = hop_by_hop
        msg.end_to_end = end_to_end
        msg._buf = raw
        msg._off = HEADER_LENGTH
        msg._tail = None
        msg._avps = None
        msg.avp_index = None
        return msg

    # -- AVP list ---------------------------------------------------------------------
    def encoded(self, key: int) -> list[bytes]:
        """The top-level AVPs with this key (code | vendor id << 32) as they are encoded, padding included.

        On a message as the validator saw it, read where its index says, without splitting the AVPs."""
        index = self.avp_index
        if index is None or self._tail is not None or self._off != HEADER_LENGTH:
            return [avp.to_bytes() for avp in self._avp_list() if avp.key == key]
        buf = self._buf
        found = []
        for place in index[HEADER_LENGTH].get(key, ()):
            data, end = place >> 32, place & PLACE_END
            start = data - 8
            # The 8-octet header unless its flags have V or its length does not fit (a vendor id of 0 with V).
            if key >> 32 or buf[start + 4] & AVP_FLAG_VENDOR or int.from_bytes(buf[start + 5 : data]) != end - start:
                start = data - 12
            found.append(buf[start : (end + 3) & ~3])
        return found

    def _body(self) -> tuple[bytes, int]:
        tail = self._tail
        if tail:
            buf = self._buf
            self._buf = (buf[self._off :] if self._off else buf) + b"".join(tail)
            self._off = 0
            self._tail = None
        return self._buf, self._off

    def _avp_list(self) -> list[Avp]:
        avps = self._avps
        if avps is None:
            buf, off = self._body()
            avps = self._avps = parse_avps(buf, off, len(buf))
        return avps

    def add(self, name: str, value: Any) -> Message:
        """Append an AVP by dictionary name; returns the message for chaining."""
        return self.add_raw(_defn(name).encode(value))

    def add_avp(self, avp: Avp) -> Message:
        return self.add_raw(avp.to_bytes())

    def add_raw(self, encoded_avp: bytes) -> Message:
        if self._tail is None:
            self._tail = [encoded_avp]
        else:
            self._tail.append(encoded_avp)
        if self._avps is not None:
            self._avps.extend(parse_avps(encoded_avp, 0, len(encoded_avp)))
        return self

    def extend(self, avps: Mapping[str, Any] | Sequence[Any]) -> Message:
        for encoded in iter_encoded(avps, DICTIONARY):
            self.add_raw(encoded)
        return self

    def remove(self, name: str) -> int:
        """Drop every AVP of that name; returns how many went."""
        defn = _defn(name)
        avps = self._avp_list()
        keep = [a for a in avps if not (a.code == defn.code and a.vendor_id == defn.vendor_id)]
        removed = len(avps) - len(keep)
        if removed:
            self._replace_all(keep)
        return removed

    def set(self, name: str, value: Any) -> Message:
        """Replace every AVP of that name by one with ``value``, at the first one's place."""
        defn = _defn(name)
        encoded = defn.encode(value)
        avps = self._avp_list()
        out: list[bytes] = []
        placed = False
        for avp in avps:
            if avp.code == defn.code and avp.vendor_id == defn.vendor_id:
                if not placed:
                    out.append(encoded)
                    placed = True
            else:
                out.append(avp.to_bytes())
        if not placed:
            out.append(encoded)
        self._buf = b"".join(out)
        self._off = 0
        self._tail = None
        self._avps = None
        return self

    def _replace_all(self, avps: list[Avp]) -> None:
        self._buf = b"".join(a.to_bytes() for a in avps)
        self._off = 0
        self._tail = None
        self._avps = None

    # -- header -----------------------------------------------------------------------
    @property
    def is_request(self) -> bool:
        return bool(self.flags & FLAG_REQUEST)

    @property
    def is_proxiable(self) -> bool:
        return bool(self.flags & FLAG_PROXIABLE)

    @property
    def is_error(self) -> bool:
        return bool(self.flags & FLAG_ERROR)

    @property
    def is_retransmit(self) -> bool:
        return bool(self.flags & FLAG_RETRANSMIT)

    def result_code(self) -> int | None:
        """The top-level Result-Code, read off the AVP headers without splitting the AVPs (an answer's
        Result-Code is read for every answer counted or checked)."""
        buf, offset = self._body()
        end = len(buf)
        while end - offset >= 12:
            code, flags_length = _AVP_HEADER.unpack_from(buf, offset)
            length = flags_length & 0xFFFFFF
            if code == _RESULT_CODE and length == 12 and not flags_length & _VENDOR_BIT:
                return int(_U32.unpack_from(buf, offset + 8)[0])
            if length < 8:
                return None
            offset += (length + 3) & ~3
        return None

    @property
    def command_name(self) -> str:
        cmd = DICTIONARY.command(self.code)
        if cmd is None:
            return f"{'Request' if self.is_request else 'Answer'}-{self.code}"
        return cmd.abbrev(self.is_request)

    # -- encoding ---------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        buf, off = self._body()
        length = HEADER_LENGTH + len(buf) - off
        header = _MSG_HEADER.pack(
            (self.version << 24) | length,
            (self.flags << 24) | self.code,
            self.app_id,
            self.hop_by_hop,
            self.end_to_end,
        )
        return header + (buf[off:] if off else buf)

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def __repr__(self) -> str:
        return (
            f"<Message {self.command_name} app={self.app_id} flags={self.flags:#04x} "
            f"hbh={self.hop_by_hop:#x} e2e={self.end_to_end:#x}>"
        )
