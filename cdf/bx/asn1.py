"""The one module that touches pycrate: BER encoding and decoding of TS 32.298 IMS records.

pycrate (``pycrate_asn1dir.CDR``) ships the TS 32.298 ASN.1 modules compiled (v16.11.0 for pycrate 0.8.1:
IMSChargingDataTypes, GenericChargingDataTypes ...).  Its values are plain Python: a CHOICE is a
``(name, value)`` tuple, a SET or SEQUENCE a dict, a SEQUENCE OF a list, an ENUMERATED its name, an
OCTET STRING bytes, a NULL 0.  pycrate has no type hints; everything it hands back is typed ``Any``
here and nowhere else.  Its ASN.1 objects are shared, stateful singletons, hence the lock.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Mapping
from functools import cache
from typing import Any

IMS_MODULE = "IMSChargingDataTypes"
GENERIC_MODULE = "GenericChargingDataTypes"

_lock = threading.Lock()


class Asn1Error(ValueError):
    """A value the ASN.1 does not allow, or octets that are not a BER IMSRecord."""


@cache
def _modules() -> Any:
    """pycrate's compiled CDR modules; loaded on first use (about two seconds)."""
    # Loading logs some fifty INFO lines about OIDs of unrelated modules that share a value: not ours to see.
    importlib.import_module("pycrate_core.log")  # sets the "pycrate" logger to INFO when imported
    logging.getLogger("pycrate").setLevel(logging.WARNING)
    cdr = importlib.import_module("pycrate_asn1dir.CDR")
    return cdr.GLOBAL.MOD


def _ims_record() -> Any:
    return _modules()[IMS_MODULE]["IMSRecord"]


@cache
def record_types() -> tuple[str, ...]:
    """The alternatives of the IMSRecord CHOICE (``sCSCFRecord`` ...)."""
    return tuple(str(name) for name in _ims_record()._cont)


@cache
def record_type_number(record_type: str) -> int:
    """The RecordType value of an IMS record (GenericChargingDataTypes: sCSCFRecord 63 ...)."""
    named: Mapping[str, Any] = _modules()[GENERIC_MODULE]["RecordType"]._cont
    return int(named[record_type])


@cache
def record_components(record_type: str) -> Mapping[str, str]:
    """The components the record of ``record_type`` has, each with its ASN.1 type (``SEQUENCE OF`` ...)."""
    try:
        record = _ims_record()._cont[record_type]
    except KeyError:
        raise Asn1Error(f"{record_type} is not an IMSRecord alternative") from None
    return {str(name): str(component.TYPE) for name, component in record._cont.items()}


def encode_record(record_type: str, value: Mapping[str, Any]) -> bytes:
    """The BER encoding of the IMSRecord ``(record_type, value)``."""
    with _lock:
        record = _ims_record()
        try:
            record.set_val((record_type, dict(value)))
            encoded = record.to_ber()
        except Exception as exc:  # pycrate raises its own error classes, all of them plain Exceptions
            raise Asn1Error(f"{record_type}: {exc}") from exc
    return bytes(encoded)


def decode_record(data: bytes) -> tuple[str, dict[str, Any]]:
    """The IMSRecord that ``data`` encodes in BER, every octet of it."""
    used = _tlv_length(data)
    if used is not None and used != len(data):
        raise Asn1Error(f"the record is {used} octets, {len(data) - used} more follow it")
    with _lock:
        record = _ims_record()
        try:
            record.from_ber(data)
            name, value = record.get_val()
        except Exception as exc:
            raise Asn1Error(f"not a BER IMSRecord: {exc}") from exc
    return str(name), value


def _tlv_length(data: bytes) -> int | None:
    """Octets taken by the BER TLV at the start of ``data`` (identifier, length, contents); None if indefinite."""
    if not data:
        raise Asn1Error("no octets")
    position = 1
    if data[0] & 0x1F == 0x1F:  # high tag number form: more identifier octets while bit 8 is set
        while position < len(data) and data[position] & 0x80:
            position += 1
        position += 1
    if position >= len(data):
        raise Asn1Error("the record ends inside its identifier")
    first = data[position]
    position += 1
    if first == 0x80:
        return None
    if first < 0x80:
        return position + first
    count = first & 0x7F
    if position + count > len(data):
        raise Asn1Error("the record ends inside its length")
    return position + count + int.from_bytes(data[position : position + count], "big")
