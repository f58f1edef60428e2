"""``charging cdf ...``: look at CDRs, the correlated view of a session, the outbox backlog; sweep now."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cdf import queries
from cdf.assembly import Assembler
from cdf.service import assembly_config
from cdf.store import CdfStore
from charging.cli import CommandError, engine_from, settings_from
from charging.clock import SystemClock


def _print(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _correlation(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    with engine_from(settings).connect() as conn:
        view = queries.correlated_view(conn, args.icid, settings.cdf.home_iois)
    if view is None:
        raise CommandError(f"no CDR and no open record carries ICID {args.icid!r}")
    _print(view.model_dump(mode="json"))
    return 0


def _cdr(args: argparse.Namespace) -> int:
    with engine_from(settings_from(args)).connect() as conn:
        cdr = queries.find_cdr(conn, args.cdr_id)
    if cdr is None:
        raise CommandError(f"no CDR with id {args.cdr_id!r}")
    _print(cdr.model_dump(mode="json"))
    return 0


def _cdrs(args: argparse.Namespace) -> int:
    with engine_from(settings_from(args)).connect() as conn:
        rows = queries.list_cdrs(conn, icid=args.icid, session_id=args.session_id, limit=args.limit)
    for _, cdr in rows:
        sys.stdout.write(cdr.to_json().decode() + "\n")  # JSON lines, as in the CDR files
    return 0


def _outbox(args: argparse.Namespace) -> int:
    with engine_from(settings_from(args)).connect() as conn:
        _print(queries.backlog(conn, SystemClock().now()))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    store = CdfStore(
        Assembler(assembly_config(settings.cdf)), settings.node_id, cache_size=settings.cdf.remembered_records
    )
    closed = 0
    with engine_from(settings).begin() as conn:
        while True:
            seen, cdrs = store.sweep(conn, SystemClock().now(), settings.cdf.sweep_batch)
            closed += len(cdrs)
            if seen < settings.cdf.sweep_batch:
                break
    _print({"cdrs_closed": closed})
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cdf = subparsers.add_parser("cdf", help="offline charging: CDRs, correlation per ICID, outbox")
    sub = cdf.add_subparsers(dest="cdf_command", required=True, metavar="COMMAND")
    correlation = sub.add_parser("correlation", help="the correlated view of one IMS session")
    correlation.add_argument("icid", help="IMS Charging Identifier")
    correlation.set_defaults(func=_correlation)
    cdr = sub.add_parser("cdr", help="one CDR by its id")
    cdr.add_argument("cdr_id")
    cdr.set_defaults(func=_cdr)
    cdrs = sub.add_parser("cdrs", help="CDRs as JSON lines, oldest first")
    cdrs.add_argument("--icid")
    cdrs.add_argument("--session-id")
    cdrs.add_argument("--limit", type=int, default=100)
    cdrs.set_defaults(func=_cdrs)
    outbox = sub.add_parser("outbox", help="CDRs waiting for Kafka and for files; open records")
    outbox.set_defaults(func=_outbox)
    sweep = sub.add_parser("sweep", help="close silent and over-long records now, as the running CDF would")
    sweep.set_defaults(func=_sweep)
