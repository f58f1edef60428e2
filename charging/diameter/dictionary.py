"""The AVP and command dictionary: one data-driven table loaded from text files.

The files under ``dictionaries/`` hold the AVPs (name, code, type, M-bit rule,
vendor, enumerated values), the grouped AVPs' and commands' ABNF written as the
RFCs write it, and nothing else.  This module parses them into lookup tables and
compiles, per AVP, an encoder that emits the whole AVP with a precomputed header.

File format (one directive per line; ``#`` starts a comment)::

    vendor 10415 3GPP                  the vendor of the avp lines that follow (0 = IETF)
    application 4 Diameter Credit Control
    avp NAME CODE TYPE FLAGS           FLAGS: M = M bit must be set, m = may, - = must not
        ENUM_NAME VALUE                indented lines under an Enumerated avp
    command CODE REQ ANS Full-Name     e.g. ``command 272 CCR CCA Credit-Control``
    <CCR> ::= < Diameter Header: 272, REQ, PXY >     a command's ABNF block
          < Session-Id >
          { Origin-Host }
        * [ AVP ]
    Name ::= < AVP Header: 456 >       a grouped AVP's ABNF block
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from charging.diameter.types import data_type, time_to_ntp, type_names

FLAG_VENDOR = 0x80
FLAG_MANDATORY = 0x40
FLAG_PROTECTED = 0x20

MANDATORY_MUST = "must"
MANDATORY_MAY = "may"
MANDATORY_MUSTNOT = "mustnot"

_PAD = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")
_U32 = struct.Struct(">I")


def avp_key(code: int, vendor_id: int) -> int:
    """One int for (code, vendor): cheaper to hash than a tuple on the hot path."""
    return code | (vendor_id << 32)


@dataclass(slots=True)
class RuleEntry:
    """One line of an ABNF: ``min*max [ Name ]`` (max None = unbounded)."""

    name: str
    minimum: int
    maximum: int | None
    fixed: bool = False  # ``< Name >``: must stand at this position
    key: int = -1  # avp_key, resolved when the dictionary is complete


@dataclass(slots=True)
class Rule:
    """The ABNF of a grouped AVP or a command: its entries and whether ``* [ AVP ]`` is allowed."""

    entries: list[RuleEntry]
    any_avp: bool
    any_minimum: int = 0  # ``1* { AVP }``: at least this many AVPs of any kind
    by_key: dict[int, RuleEntry] = field(default_factory=dict)
    required: list[RuleEntry] = field(default_factory=list)  # the entries with a minimum, checked every time


@dataclass(slots=True)
class AvpDef:
    name: str
    code: int
    vendor_id: int
    type_name: str
    mandatory: str
    enum_by_name: dict[str, int] = field(default_factory=dict)
    enum_by_value: dict[int, str] = field(default_factory=dict)
    rule: Rule | None = None
    key: int = 0
    flags: int = 0
    decode: Callable[[bytes, int, int], Any] = field(default=lambda b, s, e: b[s:e], repr=False)
    encode: Callable[[Any], bytes] = field(default=lambda v: b"", repr=False)

    @property
    def is_grouped(self) -> bool:
        return self.type_name == "Grouped"

    @property
    def is_enumerated(self) -> bool:
        return self.type_name == "Enumerated"


@dataclass(slots=True)
class CommandDef:
    code: int
    request_abbrev: str
    answer_abbrev: str
    name: str
    proxiable: bool = False
    request: Rule | None = None
    answer: Rule | None = None

    def rule(self, is_request: bool) -> Rule | None:
        return self.request if is_request else self.answer

    def abbrev(self, is_request: bool) -> str:
        return self.request_abbrev if is_request else self.answer_abbrev


class DictionaryError(ValueError):
    pass


_RULE_LINE = re.compile(r"^\s*(?:(\d*)\s*\*\s*(\d*))?\s*([<{\[])\s*([A-Za-z0-9][A-Za-z0-9_.\-]*)\s*[>}\]]\s*$")
_COMMAND_HEAD = re.compile(r"^<\s*([A-Za-z0-9\-]+)\s*>\s*::=\s*<\s*Diameter Header:\s*(\d+)\s*((?:,\s*\w+\s*)*)>\s*$")
_GROUP_HEAD = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)\s*::=\s*<\s*AVP Header:\s*(\d+)(?:\s+(\d+))?\s*>\s*$")


class Dictionary:
    """AVP and command definitions, looked up by name or by (code, vendor)."""

    def __init__(self) -> None:
        self.by_name: dict[str, AvpDef] = {}
        self.by_key: dict[int, AvpDef] = {}
        self.encoders: dict[str, Callable[[Any], bytes]] = {}  # name -> whole-AVP encoder, for the hot path
        self.commands: dict[int, CommandDef] = {}
        self.commands_by_abbrev: dict[str, CommandDef] = {}
        self.applications: dict[int, str] = {}
        self.vendors: dict[int, str] = {0: "IETF"}
        self._pending_rules: list[tuple[str, int, Rule, str]] = []

    # -- lookups -----------------------------------------------------------------
    def avp(self, name: str) -> AvpDef:
        try:
            return self.by_name[name]
        except KeyError:
            raise KeyError(f"no AVP named {name!r} in the dictionary") from None

    def lookup(self, code: int, vendor_id: int = 0) -> AvpDef | None:
        return self.by_key.get(code | (vendor_id << 32))

    def command(self, code: int) -> CommandDef | None:
        return self.commands.get(code)

    def command_by_abbrev(self, abbrev: str) -> CommandDef:
        try:
            return self.commands_by_abbrev[abbrev]
        except KeyError:
            raise KeyError(f"no command {abbrev!r} in the dictionary") from None

    def enum_value(self, avp_name: str, value_name: str) -> int:
        return self.avp(avp_name).enum_by_name[value_name]

    def enum_name(self, avp_name: str, value: int) -> str | None:
        return self.avp(avp_name).enum_by_value.get(value)

    # -- loading -----------------------------------------------------------------
    def add_avp(
        self,
        name: str,
        code: int,
        type_name: str,
        mandatory: str = MANDATORY_MUST,
        vendor_id: int = 0,
        enum: Mapping[str, int] | None = None,
    ) -> AvpDef:
        if type_name not in type_names():
            raise DictionaryError(f"AVP {name}: unknown type {type_name}")
        key = avp_key(code, vendor_id)
        if name in self.by_name:
            raise DictionaryError(f"AVP {name} defined twice")
        if key in self.by_key:
            raise DictionaryError(f"AVP {name}: code {code}/{vendor_id} already used by {self.by_key[key].name}")
        flags = (FLAG_VENDOR if vendor_id else 0) | (FLAG_MANDATORY if mandatory == MANDATORY_MUST else 0)
        defn = AvpDef(name, code, vendor_id, type_name, mandatory, key=key, flags=flags)
        if enum:
            for value_name, value in enum.items():
                defn.enum_by_name[value_name] = value
                defn.enum_by_value.setdefault(value, value_name)
        self.by_name[name] = defn
        self.by_key[key] = defn
        _compile(defn, self)
        self.encoders[name] = defn.encode
        return defn

    def load_text(self, text: str, source: str = "<text>") -> None:
        lines = text.splitlines()
        vendor_id = 0
        current_enum: AvpDef | None = None
        i = 0
        while i < len(lines):
            raw = lines[i].split("#", 1)[0].rstrip()
            lineno = i + 1
            i += 1
            if not raw.strip():
                current_enum = None  # a blank line ends an enumeration
                continue
            where = f"{source}:{lineno}"
            if raw[0].isspace():
                if current_enum is None:
                    raise DictionaryError(f"{where}: indented line outside an enumeration")
                parts = raw.split()
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    raise DictionaryError(f"{where}: enumeration lines are NAME VALUE")
                value = int(parts[1])
                if parts[0] in current_enum.enum_by_name:
                    raise DictionaryError(f"{where}: {current_enum.name} names {parts[0]} twice")
                current_enum.enum_by_name[parts[0]] = value
                current_enum.enum_by_value.setdefault(value, parts[0])
                continue
            current_enum = None
            if "::=" in raw:
                block = [raw]
                while i < len(lines) and (lines[i][:1].isspace() and lines[i].strip()):
                    body = lines[i].split("#", 1)[0].split(";", 1)[0].strip()
                    if body:
                        block.append(body)
                    i += 1
                self._load_abnf(block, where)
                continue
            parts = raw.split()
            keyword = parts[0]
            try:
                if keyword == "vendor":
                    vendor_id = int(parts[1])
                    self.vendors[vendor_id] = " ".join(parts[2:]) or str(vendor_id)
                elif keyword == "application":
                    self.applications[int(parts[1])] = " ".join(parts[2:])
                elif keyword == "avp":
                    name, code, type_name, flag_rule = parts[1], int(parts[2]), parts[3], parts[4]
                    mandatory = {"M": MANDATORY_MUST, "m": MANDATORY_MAY, "-": MANDATORY_MUSTNOT}[flag_rule]
                    defn = self.add_avp(name, code, type_name, mandatory, vendor_id)
                    if type_name == "Enumerated":
                        current_enum = defn
                elif keyword == "command":
                    code = int(parts[1])
                    cmd = CommandDef(code, parts[2], parts[3], parts[4])
                    self.commands[code] = cmd
                    self.commands_by_abbrev[cmd.request_abbrev] = cmd
                    self.commands_by_abbrev[cmd.answer_abbrev] = cmd
                else:
                    raise DictionaryError(f"unknown directive {keyword!r}")
            except (IndexError, ValueError, KeyError) as exc:
                raise DictionaryError(f"{where}: {exc}") from exc
        self._resolve_rules()

    def _load_abnf(self, block: list[str], where: str) -> None:
        head = block[0].strip()
        rule = Rule(entries=[], any_avp=False)
        for line in block[1:]:
            m = _RULE_LINE.match(line)
            if not m:
                raise DictionaryError(f"{where}: cannot read ABNF line {line!r}")
            lo, hi, bracket, name = m.groups()
            star = "*" in line.split(bracket, 1)[0]
            if name == "AVP":
                rule.any_avp = True
                rule.any_minimum = int(lo) if star and lo else (1 if bracket in "<{" else 0)
                continue
            if star:
                minimum = int(lo) if lo else 0
                maximum = int(hi) if hi else None
            else:
                minimum = 0 if bracket == "[" else 1
                maximum = 1
            if not star and bracket in "<{":
                minimum = 1
            if star and bracket in "<{" and minimum == 0:
                minimum = 1  # RFC 6733 3.2: a required AVP occurs at least once
            rule.entries.append(RuleEntry(name, minimum, maximum, fixed=bracket == "<"))
        cm = _COMMAND_HEAD.match(head)
        if cm:
            abbrev, code_text, flag_text = cm.groups()
            cmd = self.commands_by_abbrev.get(abbrev)
            if cmd is None or cmd.code != int(code_text):
                raise DictionaryError(f"{where}: declare 'command {code_text} ...' before <{abbrev}>")
            flags = {f.strip() for f in flag_text.split(",") if f.strip()}
            if "PXY" in flags:
                cmd.proxiable = True
            if ("REQ" in flags and cmd.request is not None) or ("REQ" not in flags and cmd.answer is not None):
                raise DictionaryError(f"{where}: <{abbrev}> defined twice")
            if "REQ" in flags:
                cmd.request = rule
            else:
                cmd.answer = rule
            self._pending_rules.append((abbrev, -1, rule, where))
            return
        gm = _GROUP_HEAD.match(head)
        if gm:
            name, code_text, vendor_text = gm.groups()
            defn = self.by_name.get(name)
            if defn is None or defn.code != int(code_text) or defn.vendor_id != int(vendor_text or 0):
                raise DictionaryError(f"{where}: grouped {name} does not match its avp line")
            if not defn.is_grouped:
                raise DictionaryError(f"{where}: {name} is not Grouped")
            if defn.rule is not None:
                raise DictionaryError(f"{where}: the ABNF of {name} is defined twice")
            defn.rule = rule
            self._pending_rules.append((name, defn.key, rule, where))
            return
        raise DictionaryError(f"{where}: cannot read ABNF head {head!r}")

    def _resolve_rules(self) -> None:
        """Bind rule entries to AVP keys once every file that may define them is in."""
        still: list[tuple[str, int, Rule, str]] = []
        for owner, key, rule, where in self._pending_rules:
            missing = [e.name for e in rule.entries if e.name not in self.by_name]
            if missing:
                still.append((owner, key, rule, where))
                continue
            for entry in rule.entries:
                entry.key = self.by_name[entry.name].key
                rule.by_key[entry.key] = entry
            rule.required = [e for e in rule.entries if e.minimum > 0]
        self._pending_rules = still

    def unresolved(self) -> list[str]:
        return [f"{where}: {owner}" for owner, _, _, where in self._pending_rules]

    @classmethod
    def standard(cls) -> Dictionary:
        d = cls()
        for name in STANDARD_FILES:
            text = resources.files("charging.diameter").joinpath("dictionaries", name).read_text()
            d.load_text(text, name)
        if d.unresolved():
            raise DictionaryError("ABNF names undefined AVPs: " + "; ".join(d.unresolved()))
        return d


STANDARD_FILES = ("base.txt", "creditcontrol.txt", "tgpp.txt")


_HEADER = struct.Struct(">II")
_HEADER_VENDOR = struct.Struct(">III")
# struct codes of the fixed-size types; Time is packed after conversion to NTP seconds.
_FIXED_FORMAT = {
    "Integer32": "i",
    "Integer64": "q",
    "Unsigned32": "I",
    "Unsigned64": "Q",
    "Float32": "f",
    "Float64": "d",
    "Enumerated": "i",
    "Time": "I",
}
_STRING_TYPES = {"OctetString", "UTF8String", "DiameterIdentity", "DiameterURI", "IPFilterRule", "QoSFilterRule"}


def _compile(defn: AvpDef, dictionary: Dictionary) -> None:
    """Give ``defn`` an encoder for the whole AVP (header packed in one call) and a decoder for its data."""
    code = defn.code
    vendor = defn.vendor_id
    flag_bits = defn.flags << 24
    header_len = 12 if vendor else 8
    dt = data_type(defn.type_name)
    data_encode = dt.encode
    defn.decode = dt.decode
    name = defn.name
    pack_header = _HEADER.pack
    pack_header_vendor = _HEADER_VENDOR.pack

    if defn.is_grouped:
        encoders = dictionary.encoders

        def encode_grouped(value: Any) -> bytes:
            if type(value) is dict:
                # encode_group_data's dict case, inlined: groups nest, and a call per level adds up.
                parts: list[bytes] = []
                append = parts.append
                for avp_name, item in value.items():
                    encode = encoders.get(avp_name)
                    if encode is None:
                        raise KeyError(f"no AVP named {avp_name!r} in the dictionary")
                    if type(item) is list:
                        for element in item:
                            append(encode(element))
                    else:
                        append(encode(item))
                data = b"".join(parts)
            else:
                data = encode_group_data(value, dictionary)
            if vendor:
                return pack_header_vendor(code, flag_bits | (12 + len(data)), vendor) + data
            return pack_header(code, flag_bits | (8 + len(data))) + data

        defn.encode = encode_grouped
    elif dt.size is not None:
        word = flag_bits | (header_len + dt.size)
        fixed = struct.Struct(">II" + ("I" if vendor else "") + _FIXED_FORMAT[defn.type_name])
        pack = fixed.pack
        names = defn.enum_by_name
        is_time = defn.type_name == "Time"

        def encode_fixed(value: Any) -> bytes:
            if is_time:
                value = time_to_ntp(value)
            elif type(value) is str and names:
                try:
                    value = names[value]
                except KeyError:
                    raise ValueError(f"{name} has no value named {value!r}") from None
            try:
                return pack(code, word, vendor, value) if vendor else pack(code, word, value)
            except struct.error as exc:
                raise ValueError(f"{name} cannot hold {value!r}: {exc}") from None

        defn.encode = encode_fixed
    elif defn.type_name in _STRING_TYPES:
        if vendor:

            def encode_string(value: Any) -> bytes:
                data = value.encode() if type(value) is str else data_encode(value)
                n = len(data)
                return pack_header_vendor(code, flag_bits | (12 + n), vendor) + data + _PAD[n & 3]

        else:

            def encode_string(value: Any) -> bytes:
                data = value.encode() if type(value) is str else data_encode(value)
                n = len(data)
                return pack_header(code, flag_bits | (8 + n)) + data + _PAD[n & 3]

        defn.encode = encode_string
    else:

        def encode_variable(value: Any) -> bytes:
            data = data_encode(value)
            n = len(data)
            if vendor:
                return pack_header_vendor(code, flag_bits | (12 + n), vendor) + data + _PAD[n & 3]
            return pack_header(code, flag_bits | (8 + n)) + data + _PAD[n & 3]

        defn.encode = encode_variable


def encode_group_data(value: Any, dictionary: Dictionary) -> bytes:
    """Encode the data of a Grouped AVP.

    ``value`` is a mapping of AVP name to value (a list value repeats the AVP),
    a sequence of ``(name, value)`` pairs, AVPs kept from a received message or
    encoded AVPs, or an object with ``data_bytes()`` (a group received and passed
    on as it is).
    """
    if type(value) is dict:  # the common case, without the generator below
        encoders = dictionary.encoders
        parts: list[bytes] = []
        append = parts.append
        for avp_name, item in value.items():
            encode = encoders.get(avp_name)
            if encode is None:
                raise KeyError(f"no AVP named {avp_name!r} in the dictionary")
            if type(item) is list:
                for element in item:
                    append(encode(element))
            else:
                append(encode(item))
        return b"".join(parts)
    data_bytes = getattr(value, "data_bytes", None)
    if data_bytes is not None:
        return data_bytes()  # type: ignore[no-any-return]
    return b"".join(iter_encoded(value, dictionary))


def iter_encoded(value: Any, dictionary: Dictionary) -> Iterable[bytes]:
    """Encoded AVPs from a mapping of name to value, or a sequence of pairs, AVPs or encoded AVPs."""
    by_name = dictionary.by_name
    if isinstance(value, Mapping):
        for name, item in value.items():
            defn = by_name.get(name)
            if defn is None:
                raise KeyError(f"no AVP named {name!r} in the dictionary")
            encode = defn.encode
            if isinstance(item, list):
                for element in item:
                    yield encode(element)
            else:
                yield encode(item)
        return
    for item in value:
        if isinstance(item, tuple):
            name, element = item
            defn = by_name.get(name)
            if defn is None:
                raise KeyError(f"no AVP named {name!r} in the dictionary")
            yield defn.encode(element)
        elif isinstance(item, bytes):
            yield item
        else:
            yield item.to_bytes()


DICTIONARY = Dictionary.standard()
# Each AVP's value decoder by key (code | vendor << 32), for readers that take values from ``Message.avp_index``.
DECODERS: dict[int, Callable[[bytes, int, int], Any]] = {d.key: d.decode for d in DICTIONARY.by_key.values()}
