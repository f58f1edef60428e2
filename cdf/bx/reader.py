"""Reading a TS 32.297 CDR file back: its header and each CDR decoded, as JSON-ready data and as text."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdf.bx import asn1, records
from cdf.bx.fileformat import (
    TS_NUMBERS,
    UNKNOWN_CDR_COUNT,
    CdrEntry,
    CdrFile,
    DataRecordFormat,
    FileClosureReason,
    FileHeader,
    parse_file,
)


@dataclass(frozen=True, slots=True)
class DecodedCdr:
    entry: CdrEntry
    record_type: str | None  # the IMSRecord alternative; None when the record did not decode
    record: dict[str, Any] | None  # readable (records.readable) record value
    error: str | None = None


def decode_cdr(entry: CdrEntry) -> DecodedCdr:
    if entry.header.data_record_format != DataRecordFormat.BER:
        return DecodedCdr(entry, None, None, f"data record format {entry.header.data_record_format} is not BER")
    try:
        record_type, value = asn1.decode_record(entry.content)
    except asn1.Asn1Error as exc:
        return DecodedCdr(entry, None, None, str(exc))
    return DecodedCdr(entry, record_type, records.readable(value))


def read_cdr_file(path: str | Path) -> tuple[CdrFile, list[DecodedCdr]]:
    """The file's header and CDRs; ``FileFormatError`` if it is not a TS 32.297 file, OSError if unreadable."""
    parsed = parse_file(Path(path).read_bytes())
    return parsed, [decode_cdr(entry) for entry in parsed.cdrs]


def _text(data: bytes) -> str:
    if not data:
        return ""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return data.hex()
    return text if text.isprintable() else data.hex()


def _reason(value: int) -> str:
    try:
        return FileClosureReason(value).name.lower().replace("_", " ")
    except ValueError:
        return "unknown"


def _format(value: int) -> str:
    try:
        return DataRecordFormat(value).name.replace("_", " ")
    except ValueError:
        return str(value)


def describe_header(header: FileHeader, header_length: int) -> dict[str, Any]:
    return {
        "file_length": header.file_length,
        "header_length": header_length,
        "high_release_version": str(header.high),
        "low_release_version": str(header.low),
        "file_opening_timestamp": str(header.opened),
        "last_cdr_append_timestamp": str(header.last_append),
        "number_of_cdrs": None if header.cdr_count == UNKNOWN_CDR_COUNT else header.cdr_count,
        "file_sequence_number": header.file_sequence_number,
        "file_closure_trigger_reason": {"value": header.closure_reason, "name": _reason(header.closure_reason)},
        "node_ip_address": str(header.node_address),
        "lost_cdr_indicator": header.lost_cdr_indicator,
        "cdr_routeing_filter": _text(header.routing_filter),
        "private_extension": _text(header.private_extension),
    }


def describe_cdr(index: int, decoded: DecodedCdr) -> dict[str, Any]:
    header = decoded.entry.header
    described: dict[str, Any] = {
        "index": index,
        "offset": decoded.entry.offset,
        "length": header.length,
        "release_version": str(header.release),
        "data_record_format": _format(header.data_record_format),
        "ts_number": TS_NUMBERS.get(header.ts_number, str(header.ts_number)),
    }
    if decoded.error is not None:
        described["error"] = decoded.error
        described["content_hex"] = decoded.entry.content.hex()
    else:
        described["record"] = {decoded.record_type: decoded.record}
    return described


def as_json(path: str | Path, parsed: CdrFile, decoded: list[DecodedCdr]) -> str:
    return json.dumps(
        {
            "file": str(path),
            "header": describe_header(parsed.header, parsed.header_length),
            "cdrs": [describe_cdr(i, d) for i, d in enumerate(decoded, 1)],
        },
        indent=2,
        ensure_ascii=False,
    )


def as_text(path: str | Path, parsed: CdrFile, decoded: list[DecodedCdr]) -> str:
    header = describe_header(parsed.header, parsed.header_length)
    lost = header["lost_cdr_indicator"]
    rows = [
        ("file length", f"{header['file_length']} octets"),
        ("header length", f"{header['header_length']} octets"),
        ("high release/version", header["high_release_version"]),
        ("low release/version", header["low_release_version"]),
        ("file opened", header["file_opening_timestamp"]),
        ("last CDR appended", header["last_cdr_append_timestamp"]),
        ("number of CDRs", "unknown" if header["number_of_cdrs"] is None else str(header["number_of_cdrs"])),
        ("file sequence number", str(header["file_sequence_number"])),
        ("closure reason", f"{parsed.header.closure_reason} ({header['file_closure_trigger_reason']['name']})"),
        ("node IP address", header["node_ip_address"]),
        ("lost CDR indicator", "0 (none lost)" if lost == 0 else f"{lost} (0x{lost:02x})"),
        ("CDR routeing filter", header["cdr_routeing_filter"] or "(none)"),
        ("private extension", header["private_extension"] or "(none)"),
    ]
    lines = [f"TS 32.297 CDR file {path}"]
    lines.extend(f"  {label:<22} {value}" for label, value in rows)
    for index, item in enumerate(decoded, 1):
        described = describe_cdr(index, item)
        lines.append("")
        lines.append(
            f"CDR {index} at octet {described['offset']}: {described['length']} octets, "
            f"{described['release_version']}, {described['data_record_format']}, "
            f"TS {described['ts_number']}"
        )
        if item.error is not None:
            lines.append(f"  cannot decode: {item.error}")
            lines.append(f"  content: {described['content_hex']}")
        else:
            body = json.dumps(described["record"], indent=2, ensure_ascii=False)
            lines.extend(f"  {line}" for line in body.splitlines())
    return "\n".join(lines)
