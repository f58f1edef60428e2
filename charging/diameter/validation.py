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

from collections.abc import Callable

from charging.diameter.constants import ResultCode
from charging.diameter.dictionary import DICTIONARY, MANDATORY_MUST, MANDATORY_MUSTNOT, Dictionary, Rule
from charging.diameter.errors import DiameterError, MessageFormatError
from charging.diameter.message import (
    AVP_FLAG_MANDATORY,
    FLAG_ERROR,
    FLAG_PROXIABLE,
    FLAG_REQUEST,
    Avp,
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


def _wrap(path: list[Avp], inner: bytes) -> bytes:
    """Put an offending AVP back inside the grouped AVPs it was found in (RFC 6733 7.5)."""
    for parent in reversed(path):
        inner = Avp.from_raw(parent.code, inner, parent.vendor_id, parent.flags).to_bytes()
    return inner


class Validator:
    def __init__(self, strict: bool = False, dictionary: Dictionary = DICTIONARY) -> None:
        self.strict = strict
        self.dictionary = dictionary
        self._value_checks: dict[int, tuple[int, Callable[[bytes, int, int], object] | None]] = {}

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
        """Check the header and every AVP, grouped ones included; return tolerated deviations."""
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
        try:
            avps = msg.avps
        except MessageFormatError as exc:
            raise DiameterError(exc.result_code, str(exc), exc.failed_avp) from exc
        self._walk(avps, rule, [], notes, msg)
        return notes

    def _deviate(self, notes: list[str], code: int, text: str, failed: bytes | None) -> None:
        if self.strict:
            raise DiameterError(code, text, failed)
        notes.append(text)

    def _walk(self, avps: list[Avp], rule: Rule | None, path: list[Avp], notes: list[str], msg: Message) -> None:
        """Check a list of AVPs against ``rule``, descending into grouped AVPs by their headers alone."""
        by_key = self.dictionary.by_key
        counts: dict[int, list[Avp]] | None = {} if rule is not None else None
        for avp in avps:
            key = avp.code | (avp.vendor_id << 32)
            defn = by_key.get(key)
            flags = avp.flags
            if flags & _RESERVED_AVP_BITS:
                self._deviate(notes, ResultCode.DIAMETER_INVALID_AVP_BITS, f"AVP {avp.code}: reserved bits set", None)
            if defn is None:
                if flags & AVP_FLAG_MANDATORY:
                    raise DiameterError(
                        ResultCode.DIAMETER_AVP_UNSUPPORTED,
                        f"AVP {avp.code} (vendor {avp.vendor_id}) is not supported and has the M bit",
                        _wrap(path, avp.to_bytes()),
                    )
                continue
            mandatory = defn.mandatory
            if flags & AVP_FLAG_MANDATORY:
                if mandatory == MANDATORY_MUSTNOT:
                    self._deviate(
                        notes,
                        ResultCode.DIAMETER_INVALID_AVP_BITS,
                        f"{defn.name}: M bit set",
                        _wrap(path, avp.to_bytes()),
                    )
            elif mandatory == MANDATORY_MUST:
                self._deviate(
                    notes,
                    ResultCode.DIAMETER_INVALID_AVP_BITS,
                    f"{defn.name}: M bit not set",
                    _wrap(path, avp.to_bytes()),
                )
            check = self._value_checks.get(key)
            if check is None:
                check = self._value_checks[key] = _value_check(defn.type_name)
            size, text_decoder = check
            if size >= 0 and avp._end - avp._data != size:
                raise DiameterError(
                    ResultCode.DIAMETER_INVALID_AVP_LENGTH,
                    f"{defn.name}: {defn.type_name} needs {size} octets, got {avp._end - avp._data}",
                    _wrap(path, avp.to_bytes()),
                )
            if text_decoder is not None:
                try:
                    text_decoder(avp._buf, avp._data, avp._end)
                except DiameterError as exc:
                    raise DiameterError(exc.result_code, f"{defn.name}: {exc}", _wrap(path, avp.to_bytes())) from exc
            if size == _GROUPED:
                try:
                    members = parse_avps(avp._buf, avp._data, avp._end)
                except MessageFormatError as exc:
                    raise DiameterError(exc.result_code, f"{defn.name}: {exc}", _wrap(path, avp.to_bytes())) from exc
                path.append(avp)
                self._walk(members, defn.rule, path, notes, msg)
                path.pop()
            if counts is not None:
                assert rule is not None
                if key not in rule.by_key and not rule.any_avp:
                    self._deviate(
                        notes,
                        ResultCode.DIAMETER_AVP_NOT_ALLOWED,
                        f"{defn.name} is not allowed here",
                        _wrap(path, avp.to_bytes()),
                    )
                seen = counts.get(key)
                if seen is None:
                    counts[key] = [avp]
                else:
                    seen.append(avp)
        if rule is None or counts is None:
            return
        if len(avps) < rule.any_minimum:
            raise DiameterError(
                ResultCode.DIAMETER_MISSING_AVP,
                f"at least {rule.any_minimum} AVPs are required here",
                _wrap(path[:-1], path[-1].to_bytes()) if path else None,
            )
        for entry in rule.entries:
            present = counts.get(entry.key, [])
            if len(present) < entry.minimum:
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
            if entry.maximum is not None and len(present) > entry.maximum:
                extra = present[entry.maximum]
                failed = _wrap(path, extra.to_bytes())
                if all(a.data == present[0].data for a in present):
                    self._deviate(
                        notes,
                        ResultCode.DIAMETER_AVP_OCCURS_TOO_MANY_TIMES,
                        f"{entry.name} repeated {len(present)} times with one value",
                        failed,
                    )
                else:
                    raise DiameterError(
                        ResultCode.DIAMETER_AVP_OCCURS_TOO_MANY_TIMES,
                        f"{entry.name} occurs {len(present)} times with different values",
                        failed,
                    )


_GROUPED = -2
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
