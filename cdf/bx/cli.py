"""``charging cdr decode FILE``: a TS 32.297 CDR file's header and each CDR decoded."""

from __future__ import annotations

import argparse
from typing import Any

from cdf.bx.fileformat import FileFormatError


def add_commands(subparsers: Any) -> None:
    cdr = subparsers.add_parser("cdr", help="CDR files for the billing domain (TS 32.297, Bx)")
    cdr_sub = cdr.add_subparsers(dest="cdr_command", required=True, metavar="COMMAND")
    decode = cdr_sub.add_parser("decode", help="print a CDR file's header and each CDR decoded")
    decode.add_argument("file", metavar="FILE", help="a TS 32.297 CDR file of TS 32.298 records in BER")
    decode.add_argument("--json", action="store_true", help="one JSON document instead of text")
    decode.set_defaults(func=_decode)


def _decode(args: argparse.Namespace) -> int:
    from cdf.bx.reader import as_json, as_text, read_cdr_file
    from charging.cli import CommandError

    try:
        parsed, decoded = read_cdr_file(args.file)
    except FileNotFoundError:
        raise CommandError(f"{args.file}: no such file") from None
    except (OSError, FileFormatError) as exc:
        raise CommandError(f"{args.file}: {exc}") from None
    print(as_json(args.file, parsed, decoded) if args.json else as_text(args.file, parsed, decoded))
    return 1 if any(item.error is not None for item in decoded) else 0
