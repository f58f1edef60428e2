"""Checks of a received message against the dictionary (RFC 6733 section 7).

Errors that leave the meaning of a message unclear raise ``DiameterError`` with
the Result-Code and Failed-AVP the RFC asks for.  Deviations that clients in the
field commit while their meaning stays plain (an AVP repeated with the same value,
an AVP the command's ABNF does not name, an Application-Id AVP left out although
the header carries it, an M bit set where it may not be) are returned as a list of
notes so that the caller can log them and serve the request; in strict mode they
raise like the rest.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from charging.diameter.constants import ResultCode
from charging.diameter.dictionary import DICTIONARY, MANDATORY_MUST, MANDATORY_MUSTNOT, AvpDef, Dictionary, Rule
from charging.diameter.errors import DiameterError
from charging.diameter.message import (
    _AVP_HEADER,
    AVP_FLAG_MANDATORY,
    AVP_FLAG_VENDOR,
    FLAG_ERROR,
    FLAG_PROXIABLE,
    FLAG_REQUEST,
    HEADER_LENGTH,
    Avp,
    AvpIndex,
    AvpPlaces,
    Message,
    parse_avps,
)
from charging.diameter.types import data_type

_RESERVED_HEADER_BITS = 0x0F
_RESERVED_AVP_BITS = 0x1F

# An AVP whose value the header already gives: Application-Id AVPs name the
# application that the header's Application-Id field names too.
_IMPLIED_BY_HEADER = {"Auth-Application-Id", "Acct-Application-Id"}

# RFC 6733 7.2: the relaxed ABNF of an answer with the E bit.
_ERROR_ANSWER_REQUIRED = ("Origin-Host", "Origin-Realm", "Result-Code")


def _example_avp(name: str, dictionary: Dictionary) -> Avp:
    """RFC 6733 7.5: a missing AVP is shown with a zero value of the minimum length."""
    defn = dictionary.avp(name)
    size = data_type(defn.type_name).size or 0
    if defn.type_name == "Address":
        size = 6
    return Avp.from_raw(defn.code, b"\x00" * size, defn.vendor_id, defn.flags)


Decoder = Callable[[bytes, int, int], object]
# Per AVP key in a container: (definition, fixed size / _GROUPED / -1, value decoder to validate text,
# the rule of a grouped AVP, flag mask, expected flags under the mask, known and named by the container's
# ABNF (the fast path)).
_Info = tuple[AvpDef | None, int, Decoder | None, Rule | None, int, int, bool]

_AVP_HEADER_VENDOR = struct.Struct(">III")
_NO_PLACES: list[int] = []

# A grouped AVP on the way down to the one being checked: (code, flags, vendor, offset, length) in the buffer.
Parent = tuple[int, int, int, int, int]


def _wrap(path: list[Parent], inner: bytes) -> bytes:
    """Put an offending AVP back inside the grouped AVPs it was found in (RFC 6733 7.5)."""
    for code, flags, vendor, _, _ in reversed(path):
        inner = Avp.from_raw(code, inner, vendor, flags).to_bytes()
    return inner


def _raw_avp(buf: bytes, offset: int, length: int, end: int) -> bytes:
    """The AVP at ``offset`` as it stands, padded; cut at ``end`` when its length runs past it."""
    raw = buf[offset : min(offset + ((length + 3) & ~3), end)]
    return raw + b"\x00" * (-len(raw) & 3)


class Validator:
    def __init__(self, strict: bool = False, dictionary: Dictionary = DICTIONARY) -> None:
        self.strict = strict
        self.dictionary = dictionary
        self._tables: dict[int, dict[int, _Info]] = {}  # id(rule) -> AVP key -> what checking it takes

    def check_header(self, msg: Message) -> list[str]:
        notes: list[str] = []
        if msg.flags & FLAG_REQUEST and msg.flags & FLAG_ERROR:
            raise DiameterError(ResultCode.DIAMETER_INVALID_HDR_BITS, "E bit set on a request")
        if msg.flags & _RESERVED_HEADER_BITS:
            self._deviate(notes, ResultCode.DIAMETER_INVALID_HDR_BITS, "reserved header bits set", None)
        cmd = self.dictionary.command(msg.code)
        if cmd is not None and msg.is_request and bool(msg.flags & FLAG_PROXIABLE) != cmd.proxiable:
            self._deviate(notes, ResultCode.DIAMETER_INVALID_HDR_BITS, f"P bit differs from {cmd.name}'s", None)
        return notes

    def check(self, msg: Message) -> list[str]:
        """Check the header and every AVP, grouped ones included; return tolerated deviations.

        A received message gets, as ``msg.avp_index``, where each of its AVPs is (``AvpIndex``)."""
        notes = self.check_header(msg)
        cmd = self.dictionary.command(msg.code)
        rule: Rule | None = cmd.rule(msg.is_request) if cmd is not None else None
        if msg.is_error and not msg.is_request:
            rule = None  # the relaxed error-answer ABNF: check only what it requires
            for name in _ERROR_ANSWER_REQUIRED:
                if msg.avp(name) is None:
                    raise DiameterError(
                        ResultCode.DIAMETER_MISSING_AVP,
                        f"missing {name}",
                        _example_avp(name, self.dictionary).to_bytes(),
                    )
        buf, start = msg._body()
        index: AvpIndex = {}
        self._scan(buf, start, len(buf), rule, [], notes, msg, index)
        if start == HEADER_LENGTH:  # the body follows the header as received: places in it are places in to_bytes()
            msg.avp_index = index
        return notes

    def _deviate(self, notes: list[str], code: int, text: str, failed: bytes | None) -> None:
        if self.strict:
            raise DiameterError(code, text, failed)
        notes.append(text)

    def _table(self, rule: Rule | None) -> dict[int, _Info]:
        """The per-container lookup: one dict get per AVP gives everything the fast path needs."""
        table = self._tables.get(id(rule))
        if table is None:
            table = self._tables[id(rule)] = {}
        return table

    def _info(self, key: int, rule: Rule | None, table: dict[int, _Info]) -> _Info:
        defn = self.dictionary.by_key.get(key)
        if defn is None:
            info: _Info = (None, _UNKNOWN, None, None, 0, 0, False)
        else:
            size, decoder = _value_check(defn.type_name)
            if defn.mandatory == MANDATORY_MUST:
                mask, expect = _RESERVED_AVP_BITS | AVP_FLAG_MANDATORY, AVP_FLAG_MANDATORY
            elif defn.mandatory == MANDATORY_MUSTNOT:
                mask, expect = _RESERVED_AVP_BITS | AVP_FLAG_MANDATORY, 0
            else:
                mask, expect = _RESERVED_AVP_BITS, 0
            allowed = rule is None or rule.any_avp or key in rule.by_key
            info = (defn, size, decoder, defn.rule, mask, expect, allowed)
        table[key] = info
        return info

    def _scan(
        self,
        buf: bytes,
        start: int,
        end: int,
        rule: Rule | None,
        path: list[Parent],
        notes: list[str],
        msg: Message,
        index: AvpIndex,
    ) -> None:
        """Check the AVPs in ``buf[start:end]`` against ``rule``, reading headers in place (no objects),
        note where each is in ``index``, and descend into grouped AVPs.  The loop is the hot path of
        every request: anything unusual leaves it for ``_unusual``."""
        unpack = _AVP_HEADER.unpack_from
        unpack_vendor = _AVP_HEADER_VENDOR.unpack_from
        table = self._table(rule)
        places: AvpPlaces = {}  # also how often each AVP occurs, for the ABNF's bounds
        index[start] = places
        found = 0
        offset = start
        while offset < end:
            # One unpack reads the vendor id too when there is room for it (most 3GPP AVPs have one).
            if end - offset >= 12:
                code, flags_length, vendor = unpack_vendor(buf, offset)
            elif end - offset >= 8:
                code, flags_length = unpack(buf, offset)
                vendor = -1
            else:
                raise DiameterError(5014, "truncated AVP header", _wrap(path, _raw_avp(buf, offset, 8, end)))
            flags = flags_length >> 24
            length = flags_length & 0xFFFFFF
            if flags & AVP_FLAG_VENDOR:
                if length < 12 or vendor < 0:
                    raise DiameterError(
                        5014, f"AVP {code}: length {length} too short", _wrap(path, _raw_avp(buf, offset, 12, end))
                    )
                key = code | (vendor << 32)
                data = offset + 12
            else:
                if length < 8:
                    raise DiameterError(
                        5014, f"AVP {code}: length {length} too short", _wrap(path, _raw_avp(buf, offset, 8, end))
                    )
                key = code
                data = offset + 8
            avp_end = offset + length
            if avp_end > end:
                raise DiameterError(
                    5014,
                    f"AVP {code}: length {length} runs past its container",
                    _wrap(path, _raw_avp(buf, offset, length, end)),
                )
            here = offset
            offset += (length + 3) & ~3
            found += 1
            instances = places.get(key)
            if instances is None:
                places[key] = [data << 32 | avp_end]
            else:
                instances.append(data << 32 | avp_end)
            info = table.get(key)
            if info is None:
                info = self._info(key, rule, table)
            defn, size, decoder, sub_rule, mask, expect, fast = info
            if (not fast or flags & mask != expect) and not self._unusual(
                buf, here, length, end, key, flags, info, path, notes
            ):
                continue  # an unknown AVP without the M bit: kept, not checked
            if size >= 0:
                if avp_end - data != size:
                    assert defn is not None
                    raise DiameterError(
                        ResultCode.DIAMETER_INVALID_AVP_LENGTH,
                        f"{defn.name}: {defn.type_name} needs {size} octets, got {avp_end - data}",
                        _wrap(path, _raw_avp(buf, here, length, end)),
                    )
            elif size == _GROUPED:
                path.append((code, flags, key >> 32, here, length))
                self._scan(buf, data, avp_end, sub_rule, path, notes, msg, index)
                path.pop()
            elif decoder is not None:
                try:
                    decoder(buf, data, avp_end)
                except DiameterError as exc:
                    assert defn is not None
                    raise DiameterError(
                        exc.result_code, f"{defn.name}: {exc}", _wrap(path, _raw_avp(buf, here, length, end))
                    ) from exc
        if rule is None:
            return
        if found < rule.any_minimum:
            parent = path[-1] if path else None
            raise DiameterError(
                ResultCode.DIAMETER_MISSING_AVP,
                f"at least {rule.any_minimum} AVPs are required here",
                _wrap(path[:-1], _raw_avp(buf, parent[3], parent[4], len(buf))) if parent else None,
            )
        for entry in rule.required:
            if len(places.get(entry.key, _NO_PLACES)) < entry.minimum:
                if not path and entry.name in _IMPLIED_BY_HEADER:
                    self._deviate(
                        notes,
                        ResultCode.DIAMETER_MISSING_AVP,
                        f"{entry.name} missing; the header's Application-Id {msg.app_id} stands for it",
                        _example_avp(entry.name, self.dictionary).to_bytes(),
                    )
                    continue
                raise DiameterError(
                    ResultCode.DIAMETER_MISSING_AVP,
                    f"missing {entry.name}",
                    _wrap(path, _example_avp(entry.name, self.dictionary).to_bytes()),
                )
        by_rule_key = rule.by_key
        for key, instances in places.items():
            if len(instances) > 1:
                count = len(instances)
                bounded = by_rule_key.get(key)
                if bounded is not None and bounded.maximum is not None and count > bounded.maximum:
                    self._too_many(buf, start, end, key, bounded.name, bounded.maximum, path, notes)

    def _unusual(
        self,
        buf: bytes,
        here: int,
        length: int,
        end: int,
        key: int,
        flags: int,
        info: _Info,
        path: list[Parent],
        notes: list[str],
    ) -> bool:
        """An unknown AVP, odd flag bits or an AVP the ABNF does not name; False: skip the AVP."""
        defn, _, _, _, _, _, allowed = info
        code, vendor = key & 0xFFFFFFFF, key >> 32
        if flags & _RESERVED_AVP_BITS:
            self._deviate(notes, ResultCode.DIAMETER_INVALID_AVP_BITS, f"AVP {code}: reserved bits set", None)
        if defn is None:
            if flags & AVP_FLAG_MANDATORY:
                raise DiameterError(
                    ResultCode.DIAMETER_AVP_UNSUPPORTED,
                    f"AVP {code} (vendor {vendor}) is not supported and has the M bit",
                    _wrap(path, _raw_avp(buf, here, length, end)),
                )
            return False
        if flags & AVP_FLAG_MANDATORY and defn.mandatory == MANDATORY_MUSTNOT:
            self._deviate(
                notes,
                ResultCode.DIAMETER_INVALID_AVP_BITS,
                f"{defn.name}: M bit set",
                _wrap(path, _raw_avp(buf, here, length, end)),
            )
        elif not flags & AVP_FLAG_MANDATORY and defn.mandatory == MANDATORY_MUST:
            self._deviate(
                notes,
                ResultCode.DIAMETER_INVALID_AVP_BITS,
                f"{defn.name}: M bit not set",
                _wrap(path, _raw_avp(buf, here, length, end)),
            )
        if not allowed:
            self._deviate(
                notes,
                ResultCode.DIAMETER_AVP_NOT_ALLOWED,
                f"{defn.name} is not allowed here",
                _wrap(path, _raw_avp(buf, here, length, end)),
            )
        return True

    def _too_many(
        self,
        buf: bytes,
        start: int,
        end: int,
        key: int,
        name: str,
        maximum: int,
        path: list[Parent],
        notes: list[str],
    ) -> None:
        """More instances than the ABNF allows: tolerated when they all say the same, else 5009."""
        instances = [a for a in parse_avps(buf, start, end) if a.key == key]
        failed = _wrap(path, instances[maximum].to_bytes())
        if all(a.data == instances[0].data for a in instances):
            self._deviate(
                notes,
                ResultCode.DIAMETER_AVP_OCCURS_TOO_MANY_TIMES,
                f"{name} repeated {len(instances)} times with one value",
                failed,
            )
        else:
            raise DiameterError(
                ResultCode.DIAMETER_AVP_OCCURS_TOO_MANY_TIMES,
                f"{name} occurs {len(instances)} times with different values",
                failed,
            )


_GROUPED = -2
_UNKNOWN = -3
_TEXT_TYPES = ("UTF8String", "DiameterIdentity", "DiameterURI", "Address")


def _value_check(type_name: str) -> tuple[int, Callable[[bytes, int, int], object] | None]:
    """(fixed data size or -1, or _GROUPED; a decoder that validates the value, or None)."""
    if type_name == "Grouped":
        return _GROUPED, None
    dt = data_type(type_name)
    return (dt.size if dt.size is not None else -1), (dt.decode if type_name in _TEXT_TYPES else None)


def required_answer_echoes(code: int, dictionary: Dictionary = DICTIONARY) -> list[str]:
    """AVPs an answer requires that a generic error answer can copy from the request."""
    cmd = dictionary.command(code)
    if cmd is None or cmd.answer is None:
        return []
    skip = {"Session-Id", "Result-Code", "Origin-Host", "Origin-Realm"}
    return [e.name for e in cmd.answer.entries if e.minimum > 0 and e.name not in skip]


__all__ = ["MANDATORY_MUST", "Validator", "required_answer_echoes"]
