"""Rewriting a trace's identities for the place it is replayed in, with no I/O.

A trace recorded in a lab names the lab's hosts and realms; a replay in CI may need
others, and a replay against a server that keeps state needs Session-Ids it has not
seen.  One ``Rewriter`` is applied to everything alike: the requests sent, the
answers and server requests expected, the CDRs expected, the client identities.

- ``hosts``: old → new DiameterIdentity, in Origin-Host, Destination-Host, the
  leading identity of Session-Id, and a CDR's ``node_address``;
- ``realms``: old → new, in Origin-Realm and Destination-Realm;
- ``session_suffix``: appended to every Session-Id (``;<suffix>``), in messages and
  in CDRs' ``session_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from charging.diameter.message import Message

_HOST_AVPS = ("Origin-Host", "Destination-Host")
_REALM_AVPS = ("Origin-Realm", "Destination-Realm")


@dataclass(frozen=True, slots=True)
class Rewriter:
    hosts: Mapping[str, str] = field(default_factory=dict)
    realms: Mapping[str, str] = field(default_factory=dict)
    session_suffix: str = ""

    @property
    def active(self) -> bool:
        return bool(self.hosts or self.realms or self.session_suffix)

    def host(self, value: str) -> str:
        return _lookup(self.hosts, value)

    def realm(self, value: str) -> str:
        return _lookup(self.realms, value)

    def session_id(self, value: str) -> str:
        head, sep, rest = value.partition(";")
        new_head = self.host(head)
        out = new_head + sep + rest
        if self.session_suffix:
            out += ";" + self.session_suffix
        return out

    def value(self, avp_name: str, value: Any) -> Any:
        """The rewritten value of a top-level AVP (anything else unchanged)."""
        if not isinstance(value, str):
            return value
        if avp_name in _HOST_AVPS:
            return self.host(value)
        if avp_name in _REALM_AVPS:
            return self.realm(value)
        if avp_name == "Session-Id":
            return self.session_id(value)
        return value

    def message(self, raw: bytes) -> bytes:
        """A message's octets with its identities rewritten; the same octets when nothing applies."""
        if not self.active:
            return raw
        msg = Message.decode(raw)
        changed = False
        for name in (*_HOST_AVPS, *_REALM_AVPS, "Session-Id"):
            if name not in msg:
                continue
            old = msg[name]
            new = self.value(name, old)
            if new != old:
                msg.set(name, new)
                changed = True
        return msg.to_bytes() if changed else raw

    def tree(self, avps: dict[str, Any]) -> dict[str, Any]:
        """An AVP tree (expected answer) with its top-level identities rewritten."""
        if not self.active:
            return avps
        return {name: _each(value, lambda v, n=name: self.value(n, v)) for name, value in avps.items()}

    def cdr(self, cdr: dict[str, Any]) -> dict[str, Any]:
        """An expected CDR with its node and session rewritten."""
        if not self.active:
            return cdr
        out = dict(cdr)
        if isinstance(out.get("node_address"), str):
            out["node_address"] = self.host(out["node_address"])
        if isinstance(out.get("session_id"), str):
            out["session_id"] = self.session_id(out["session_id"])
        return out


def _lookup(mapping: Mapping[str, str], value: str) -> str:
    new = mapping.get(value)
    if new is None:
        lowered = value.lower()
        for old, replacement in mapping.items():
            if old.lower() == lowered:
                return replacement
        return value
    return new


def _each(value: Any, fn: Any) -> Any:
    if isinstance(value, list):
        return [fn(v) for v in value]
    return fn(value)


def parse_mapping(pairs: list[str], what: str) -> dict[str, str]:
    """``OLD=NEW`` pairs from the command line."""
    out: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise ValueError(f"{what} {pair!r}: write it as OLD=NEW")
        out[old] = new
    return out
