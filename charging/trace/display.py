"""Diameter messages as JSON-safe trees that people read, diff and edit.

``describe(msg)`` gives the header and an AVP tree: each AVP by name, a grouped AVP
as a nested object, a repeated AVP as a list of its values in order (no value is a
list otherwise, so a list always means repetition).  Values are JSON-safe:

=====================  ==========================================================
AVP type               shown as
=====================  ==========================================================
integers, floats       numbers
Enumerated             the value's name from the dictionary, else the number
UTF8String, identity   strings
OctetString            ``"0x"`` followed by the octets in hex
Time                   ISO 8601 in UTC, ``"2026-01-01T00:00:00Z"``
Address                ``"192.0.2.1"`` / ``"2001:db8::1"``; other families as
                       ``{"family": 8, "data": "0x..."}``
unknown AVP            named ``AVP-<code>-<vendor>``, its data as ``"0x..."``
undecodable data       ``{"undecodable": "0x...", "error": "..."}``
=====================  ==========================================================

``encode_avps(tree)`` goes the other way, so a trace record may be written by hand as
a tree alone.  Repeated AVPs come back grouped by name, in the tree's order.
"""

from __future__ import annotations

import ipaddress
import math
from datetime import UTC, datetime
from typing import Any

from charging.diameter.dictionary import DICTIONARY, AvpDef
from charging.diameter.errors import DiameterError
from charging.diameter.message import FLAG_ERROR, FLAG_PROXIABLE, FLAG_REQUEST, FLAG_RETRANSMIT, Avp, AvpGroup, Message
from charging.diameter.types import OtherAddress

JsonTree = dict[str, Any]

_FLAG_LETTERS = ((FLAG_REQUEST, "R"), (FLAG_PROXIABLE, "P"), (FLAG_ERROR, "E"), (FLAG_RETRANSMIT, "T"))


def flags_text(flags: int) -> str:
    """Header flags as letters, ``-`` for a clear bit: ``"RP--"``."""
    return "".join(letter if flags & bit else "-" for bit, letter in _FLAG_LETTERS)


def describe(msg: Message) -> JsonTree:
    """The header and the AVP tree of a message."""
    return {
        "command": msg.command_name,
        "code": msg.code,
        "application_id": msg.app_id,
        "flags": flags_text(msg.flags),
        "hop_by_hop": msg.hop_by_hop,
        "end_to_end": msg.end_to_end,
        "avps": avp_tree(msg.avps),
    }


def avp_tree(avps: list[Avp] | AvpGroup) -> JsonTree:
    """Name → value for a list of AVPs; repeated names gather into a list."""
    out: JsonTree = {}
    repeated: set[str] = set()
    for avp in avps:
        name = avp.name
        value = avp_value(avp)
        if name not in out:
            out[name] = value
        elif name in repeated:
            out[name].append(value)
        else:
            out[name] = [out[name], value]
            repeated.add(name)
    return out


def avp_value(avp: Avp) -> Any:
    """One AVP's value in its JSON-safe form."""
    defn = avp.definition
    try:
        value = avp.value
        if isinstance(value, AvpGroup):
            return avp_tree(value)
        return json_value(value, defn)
    except DiameterError as exc:
        return {"undecodable": "0x" + avp.data.hex(), "error": str(exc)}


def json_value(value: Any, defn: AvpDef | None = None) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if defn is not None and defn.is_enumerated:
            return defn.enum_by_value.get(value, value)
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, datetime):
        return iso_time(value)
    if isinstance(value, OtherAddress):
        return {"family": value.family, "data": "0x" + value.data.hex()}
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    return str(value)


def iso_time(value: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``; microseconds only when there are any."""
    text = value.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def parse_iso_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    return value


# -- back from trees to AVPs -------------------------------------------------------------------


def encode_avps(tree: JsonTree) -> bytes:
    """The encoded AVPs of a tree written by ``avp_tree`` (or by hand in the same form)."""
    return b"".join(_encode_named(name, value) for name, value in tree.items())


def _encode_named(name: str, value: Any) -> bytes:
    if isinstance(value, list):
        return b"".join(_encode_named(name, v) for v in value)
    if name.startswith("AVP-"):
        code_text, _, vendor_text = name[4:].partition("-")
        if not isinstance(value, str) or not value.startswith("0x"):
            raise ValueError(f"{name}: an unknown AVP's value must be 0x-prefixed hex")
        return Avp.from_raw(int(code_text), bytes.fromhex(value[2:]), int(vendor_text or 0)).to_bytes()
    defn = DICTIONARY.avp(name)
    if defn.is_grouped:
        if not isinstance(value, dict):
            raise ValueError(f"{name} is Grouped: its value must be an object")
        data = encode_avps(value)
        return _with_header(defn, data)
    if isinstance(value, dict) and "undecodable" in value:
        return _with_header(defn, bytes.fromhex(str(value["undecodable"])[2:]))
    return defn.encode(python_value(defn, value))


def _with_header(defn: AvpDef, data: bytes) -> bytes:
    return Avp.from_raw(defn.code, data, defn.vendor_id, defn.flags).to_bytes()


def python_value(defn: AvpDef, value: Any) -> Any:
    """A JSON value of an AVP turned back into what the dictionary's encoder takes."""
    kind = defn.type_name
    if kind == "OctetString" and isinstance(value, str):
        if not value.startswith("0x"):
            raise ValueError(f"{defn.name} is an OctetString: write it as 0x-prefixed hex")
        return bytes.fromhex(value[2:])
    if kind == "Time" and isinstance(value, str):
        return parse_iso_time(value)
    if kind == "Address":
        if isinstance(value, dict):
            return OtherAddress(int(value["family"]), bytes.fromhex(str(value["data"])[2:]))
        return ipaddress.ip_address(value)
    return value


def message_from_tree(tree: JsonTree) -> Message:
    """A message from the form ``describe`` gives (header fields and ``avps``)."""
    flags = 0
    for bit, letter in _FLAG_LETTERS:
        if letter in str(tree.get("flags", "")):
            flags |= bit
    if "code" in tree:
        code = int(tree["code"])
    else:
        command = str(tree["command"])
        cmd = DICTIONARY.command_by_abbrev(command)
        code = cmd.code
        if "flags" not in tree:
            flags = (FLAG_REQUEST if command == cmd.request_abbrev else 0) | (FLAG_PROXIABLE if cmd.proxiable else 0)
    msg = Message(
        code,
        int(tree.get("application_id", 0)),
        flags,
        int(tree.get("hop_by_hop", 0)),
        int(tree.get("end_to_end", 0)),
    )
    msg.add_raw(encode_avps(tree.get("avps", {})))
    return Message.decode(msg.to_bytes())
