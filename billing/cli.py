"""``charging billing ...``: accounts, subscribers, tariffs, bill cycles, invoices, rerating, dead letters."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, select

from billing import models
from billing.catalog import (
    AccountSpec,
    CatalogError,
    add_subscriber,
    create_account,
    find_account,
    set_tariff,
    subscribers_of,
    tariff_versions,
)
from billing.invoicing import InvoiceError, export_csv, export_json, invoice_document, run_cycles
from billing.rating import TariffPlan
from billing.rerate import RerateReport, apply_rerate, plan_rerate
from billing.settings import BillingSettings, TaxSetting
from charging.cli import CommandError, engine_from, settings_from
from charging.clock import SystemClock, utc

log = logging.getLogger("charging.billing")


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors())


def _time(text: str, option: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"{option} {text!r} is not an ISO 8601 time (e.g. 2026-03-01T00:00:00Z)") from None
    if value.tzinfo is None:
        raise CommandError(f"{option} {text!r} needs a time zone offset (Z or +01:00)")
    return value


def _tax(text: str) -> TaxSetting:
    name, sep, points = text.rpartition(":")
    if not sep or not points.isdigit():
        raise CommandError(f"--tax {text!r} must be NAME:BASIS_POINTS, e.g. VAT:1900 for 19 %")
    try:
        return TaxSetting(name=name, basis_points=int(points))
    except ValidationError as exc:
        raise CommandError(f"--tax {text!r}: {_errors(exc)}") from None


class _Context:
    def __init__(self, args: argparse.Namespace) -> None:
        settings = settings_from(args)
        self.billing: BillingSettings = settings.billing
        self.engine: Engine = engine_from(settings)
        self.now = utc(SystemClock().now())

    def write(self, work: Callable[[Connection], Any]) -> Any:
        try:
            with self.engine.begin() as conn:
                return work(conn)
        except (CatalogError, InvoiceError, ValueError) as exc:
            raise CommandError(str(exc)) from None

    def read(self, work: Callable[[Connection], Any]) -> Any:
        try:
            with self.engine.connect() as conn:
                return work(conn)
        except (CatalogError, InvoiceError, ValueError) as exc:
            raise CommandError(str(exc)) from None


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _money(minor: int, currency: str) -> str:
    return f"{minor / 100:.2f} {currency}"


# -- accounts and subscribers ---------------------------------------------------------------------------


def _account_add(args: argparse.Namespace) -> int:
    ctx = _Context(args)
    try:
        spec = AccountSpec(
            name=args.name,
            currency=args.currency,
            tariff_plan=args.plan,
            cycle_kind=args.cycle,
            cycle_day=args.cycle_day,
            time_zone=args.time_zone,
            taxes=[_tax(t) for t in args.tax] if args.tax else None,
            subscribers=args.subscriber or [],
        )
    except ValidationError as exc:
        raise CommandError(f"account {args.name!r}: {_errors(exc)}") from None

    def work(conn: Connection) -> dict[str, Any]:
        account = create_account(
            conn,
            spec,
            now=ctx.now,
            default_currency=ctx.billing.default_currency,
            default_time_zone=ctx.billing.default_time_zone,
            default_taxes=ctx.billing.default_taxes,
        )
        return {**account.as_json(), "subscribers": subscribers_of(conn, account.id)}

    created = ctx.write(work)
    print(f"account {created['name']} created with id {created['id']}")
    return 0


def _account_show(args: argparse.Namespace) -> int:
    ctx = _Context(args)

    def work(conn: Connection) -> dict[str, Any]:
        account = find_account(conn, args.account)
        return {**account.as_json(), "subscribers": subscribers_of(conn, account.id)}

    _print_json(ctx.read(work))
    return 0


def _subscriber_add(args: argparse.Namespace) -> int:
    ctx = _Context(args)
    identity = ctx.write(
        lambda conn: add_subscriber(conn, find_account(conn, args.account).id, args.identity, now=ctx.now)
    )
    print(f"{identity} belongs to account {args.account}")
    return 0


# -- tariffs --------------------------------------------------------------------------------------------


def _tariff_set(args: argparse.Namespace) -> int:
    ctx = _Context(args)
    path = Path(args.file)
    try:
        plan = TariffPlan.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise CommandError(f"{path}: no such file") from None
    except ValidationError as exc:
        raise CommandError(f"{path}: {_errors(exc)}") from None
    effective = _time(args.effective_from, "--effective-from") if args.effective_from else ctx.now
    version = ctx.write(
        lambda conn: set_tariff(conn, args.plan, plan, effective_from=effective, now=ctx.now, note=args.note)
    )
    print(f"tariff {args.plan} version {version} effective from {effective.isoformat()}")
    return 0


def _tariff_show(args: argparse.Namespace) -> int:
    ctx = _Context(args)
    versions = ctx.read(lambda conn: tariff_versions(conn, args.plan))
    if not versions:
        raise CommandError(f"no tariff plan {args.plan!r}")
    _print_json(versions if args.all else versions[-1])
    return 0


# -- cycles and invoices --------------------------------------------------------------------------------


def _cycle_run(args: argparse.Namespace) -> int:
    ctx = _Context(args)
    now = _time(args.now, "--now") if args.now else ctx.now

    def work(conn: Connection) -> list[dict[str, Any]]:
        account_id = find_account(conn, args.account).id if args.account else None
        return run_cycles(conn, now=now, prefix=ctx.billing.invoice_number_prefix, account_id=account_id)

    closed = ctx.write(work)
    for invoice in closed:
        period = f"{invoice['period_start'][:10]}..{invoice['period_end'][:10]}"
        total = _money(invoice["total_minor"], invoice["currency"])
        print(f"{invoice['number']}  {invoice['account_name']}  {period}  {total}")
    print(f"{len(closed)} invoices closed")
    return 0


def _invoice_ref(conn: Connection, ref: str) -> int:
    table = models.invoices
    found = conn.execute(select(table.c.id).where(table.c.number == ref)).scalar_one_or_none()
    if found is None and ref.isdigit():
        found = conn.execute(select(table.c.id).where(table.c.id == int(ref))).scalar_one_or_none()
    if found is None:
        raise InvoiceError(f"no invoice {ref!r} (give its number or id)")
    return int(found)


def _invoice_list(args: argparse.Namespace) -> int:
    ctx = _Context(args)
    table = models.invoices

    def work(conn: Connection) -> list[Any]:
        query = select(table).order_by(table.c.period_start, table.c.id).limit(args.limit)
        if args.account:
            query = query.where(table.c.account_id == find_account(conn, args.account).id)
        if args.status:
            query = query.where(table.c.status == args.status)
        return list(conn.execute(query).all())

    for row in ctx.read(work):
        total = _money(row.total_minor, row.currency) if row.status == models.INVOICE_CLOSED else "(running)"
        print(
            f"{row.id:>6}  {row.number or '-':<14}  account {row.account_id:<5}  "
            f"{row.period_start.date()}..{row.period_end.date()}  {row.status:<6}  {total}"
        )
    return 0


def _invoice_show(args: argparse.Namespace) -> int:
    ctx = _Context(args)
    _print_json(ctx.read(lambda conn: invoice_document(conn, _invoice_ref(conn, args.invoice))))
    return 0


def _invoice_export(args: argparse.Namespace) -> int:
    ctx = _Context(args)
    document = ctx.read(lambda conn: invoice_document(conn, _invoice_ref(conn, args.invoice)))
    text = export_csv(document) if args.format == "csv" else export_json(document)
    if args.output:
        Path(args.output).write_text(text)
        print(f"invoice {document['number'] or document['id']} written to {args.output}")
    else:
        print(text, end="")
    return 0


# -- rerating and dead letters --------------------------------------------------------------------------


def _print_report(report: RerateReport) -> None:
    print(f"period {report.period_from.isoformat()} .. {report.period_to.isoformat()}: {report.cdr_count} CDRs")
    for change in report.changes[:50]:
        print(
            f"  {change.cdr_id}  account {change.old_account_id} -> {change.new_account_id}  "
            f"{change.old_service} -> {change.new_service}  {change.old_minor} -> {change.new_minor}"
            f"  ({change.difference_minor:+d})"
        )
    if len(report.changes) > 50:
        print(f"  ... and {len(report.changes) - 50} more")
    for account, (old, new) in sorted(report.by_account().items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        print(f"account {account}: {old} -> {new} minor units ({new - old:+d})")
    print(f"{len(report.changes)} CDRs change, difference {report.difference_minor:+d} minor units")


def _rerate(args: argparse.Namespace) -> int:
    ctx = _Context(args)
    since, until = _time(args.since, "--from"), _time(args.until, "--to")
    if until <= since:
        raise CommandError("--to must be after --from")
    if args.apply:
        report = ctx.write(lambda conn: apply_rerate(conn, since, until, now=ctx.now))
        _print_report(report)
        print("applied")
        log.info("rerated %s..%s: %d CDRs changed", since, until, len(report.changes))
    else:
        _print_report(ctx.read(lambda conn: plan_rerate(conn, since, until)))
        print("nothing changed yet: run again with --apply to book the difference")
    return 0


def _dead_letters_list(args: argparse.Namespace) -> int:
    ctx = _Context(args)
    table = models.dead_letters
    rows = ctx.read(lambda conn: list(conn.execute(select(table).order_by(table.c.id.desc()).limit(args.limit)).all()))
    for row in rows:
        print(f"{row.received_at.isoformat()}  {row.topic}/{row.kafka_partition}@{row.kafka_offset}  {row.reason}")
    print(f"{len(rows)} dead letters shown")
    return 0


def add_commands(subparsers: Any) -> None:
    billing = subparsers.add_parser("billing", help="accounts, tariffs, bill cycles, invoices, rerating")
    sub = billing.add_subparsers(dest="billing_command", required=True, metavar="COMMAND")

    account = sub.add_parser("account", help="accounts").add_subparsers(dest="account_command", required=True)
    add = account.add_parser("add", help="create an account")
    add.add_argument("name")
    add.add_argument("--currency", help="ISO 4217 code (default: billing.default_currency)")
    add.add_argument("--plan", help="tariff plan name")
    add.add_argument("--cycle", choices=["monthly", "weekly", "daily"], default="monthly")
    add.add_argument(
        "--cycle-day", type=int, default=1, help="monthly: day 1-31 (clamped to month end); weekly: 0=Monday"
    )
    add.add_argument("--time-zone", help="IANA zone of the account's days and cycles")
    add.add_argument("--tax", action="append", help="NAME:BASIS_POINTS, repeatable (default: billing.default_taxes)")
    add.add_argument("--subscriber", action="append", help="sip:/tel: identity, repeatable")
    add.set_defaults(func=_account_add)
    show = account.add_parser("show", help="an account and its subscribers")
    show.add_argument("account", help="name or id")
    show.set_defaults(func=_account_show)

    subscriber = sub.add_parser("subscriber", help="subscriber identities").add_subparsers(
        dest="subscriber_command", required=True
    )
    sub_add = subscriber.add_parser("add", help="give an identity (served party) to an account")
    sub_add.add_argument("account", help="name or id")
    sub_add.add_argument("identity", help="sip:alice@ims.example or tel:+4930...")
    sub_add.set_defaults(func=_subscriber_add)

    tariff = sub.add_parser("tariff", help="tariff plans").add_subparsers(dest="tariff_command", required=True)
    tariff_set = tariff.add_parser("set", help="store a new version of a tariff plan from a JSON file")
    tariff_set.add_argument("plan")
    tariff_set.add_argument("file", help="the plan as JSON (see docs/billing.md)")
    tariff_set.add_argument("--effective-from", help="ISO 8601 time (default: now)")
    tariff_set.add_argument("--note", default="")
    tariff_set.set_defaults(func=_tariff_set)
    tariff_show = tariff.add_parser("show", help="the newest version of a plan")
    tariff_show.add_argument("plan")
    tariff_show.add_argument("--all", action="store_true", help="every version")
    tariff_show.set_defaults(func=_tariff_show)

    cycle = sub.add_parser("cycle", help="bill cycles").add_subparsers(dest="cycle_command", required=True)
    run = cycle.add_parser("run", help="close every invoice whose period has ended")
    run.add_argument("--account", help="name or id (default: every account)")
    run.add_argument("--now", help="ISO 8601 time to close up to (default: now)")
    run.set_defaults(func=_cycle_run)

    invoice = sub.add_parser("invoice", help="invoices").add_subparsers(dest="invoice_command", required=True)
    listing = invoice.add_parser("list", help="invoices by period")
    listing.add_argument("--account", help="name or id")
    listing.add_argument("--status", choices=["open", "closed"])
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(func=_invoice_list)
    inv_show = invoice.add_parser("show", help="one invoice with lines and taxes")
    inv_show.add_argument("invoice", help="number or id")
    inv_show.set_defaults(func=_invoice_show)
    export = invoice.add_parser("export", help="export an invoice")
    export.add_argument("invoice", help="number or id")
    export.add_argument("--format", choices=["json", "csv"], default="json")
    export.add_argument("--output", help="file (default: standard output)")
    export.set_defaults(func=_invoice_export)

    rerate = sub.add_parser("rerate", help="rate a period's CDRs again; shows the difference, books it with --apply")
    rerate.add_argument("--from", dest="since", required=True, help="ISO 8601 time, inclusive")
    rerate.add_argument("--to", dest="until", required=True, help="ISO 8601 time, exclusive")
    rerate.add_argument("--apply", action="store_true", help="book the difference")
    rerate.set_defaults(func=_rerate)

    dead = sub.add_parser("dead-letters", help="messages refused as CDRs").add_subparsers(
        dest="dead_command", required=True
    )
    dead_list = dead.add_parser("list", help="the newest dead letters with their reason")
    dead_list.add_argument("--limit", type=int, default=50)
    dead_list.set_defaults(func=_dead_letters_list)
