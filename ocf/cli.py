"""``charging ocf ...``: provisioning from the command line, on the configured database.

    charging ocf account create NAME [--currency 978] [--balance N] [--credit-limit N]
    charging ocf account topup|block|unblock|show|history ACCOUNT
    charging ocf subscriber add ACCOUNT --e164 34600... [--sip-uri ...] [--imsi ...] [--nai ...] [--name ...]
    charging ocf subscriber show SUBSCRIBER
    charging ocf tariff set NAME --unit time --price 2 [--increment 60] [--rating-group 100] ...
    charging ocf tariff list
    charging ocf sessions list [--account A] [--state open]
    charging ocf reservations list [--account A]

Output is JSON.  A running OCF notices blocks, top-ups and tariff changes made here
within ``teardown_poll_seconds`` and sends the ASRs and RARs they call for.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from charging.cli import CommandError, engine_from, settings_from
from charging.clock import SystemClock
from ocf import provisioning as p


def _run(args: argparse.Namespace, fn: Callable[[Connection, float], Any]) -> int:
    engine = engine_from(settings_from(args))
    try:
        with engine.begin() as conn:
            result = fn(conn, SystemClock().now())
    except (p.NotFound, p.Conflict) as exc:
        raise CommandError(str(exc)) from None
    finally:
        engine.dispose()
    print(json.dumps(result, indent=2, default=str))
    return 0


def _account_create(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda c, now: p.create_account(
            c, args.name, args.currency, now, args.balance, args.credit_limit, args.low_balance
        ),
    )


def _account_topup(args: argparse.Namespace) -> int:
    if args.amount <= 0:
        raise CommandError("the amount must be positive")
    return _run(args, lambda c, now: p.top_up(c, p.find_account(c, args.account), args.amount, now, args.note))


def _account_block(args: argparse.Namespace) -> int:
    return _run(args, lambda c, now: p.set_blocked(c, p.find_account(c, args.account), True, now))


def _account_unblock(args: argparse.Namespace) -> int:
    return _run(args, lambda c, now: p.set_blocked(c, p.find_account(c, args.account), False, now))


def _account_show(args: argparse.Namespace) -> int:
    return _run(args, lambda c, now: p.get_account(c, p.find_account(c, args.account)))


def _account_history(args: argparse.Namespace) -> int:
    return _run(args, lambda c, now: p.history(c, p.find_account(c, args.account), args.limit))


def _subscriber_add(args: argparse.Namespace) -> int:
    ids = [(0, v) for v in args.e164] + [(2, v) for v in args.sip_uri] + [(1, v) for v in args.imsi]
    ids += [(3, v) for v in args.nai] + [(4, v) for v in args.private]
    if not ids:
        raise CommandError("give at least one of --e164, --sip-uri, --imsi, --nai, --private")
    return _run(args, lambda c, now: p.add_subscriber(c, p.find_account(c, args.account), args.name, ids, now))


def _subscriber_show(args: argparse.Namespace) -> int:
    return _run(args, lambda c, now: p.get_subscriber(c, p.find_subscriber(c, args.subscriber)))


def _tariff_set(args: argparse.Namespace) -> int:
    if (args.band_start is None) != (args.band_end is None):
        raise CommandError("a time band needs both --band-start and --band-end")
    if args.increment < 1 or args.price < 0:
        raise CommandError("--increment must be at least 1 and --price not negative")
    spec = p.TariffSpec(
        name=args.name,
        unit=args.unit,
        price=args.price,
        increment=args.increment,
        setup_fee=args.setup_fee,
        minimum_charge=args.minimum_charge,
        currency=args.currency,
        rating_group=args.rating_group,
        service_identifier=args.service_identifier,
        destination_prefix=args.prefix,
        band_start_minute=args.band_start,
        band_end_minute=args.band_end,
        active=not args.withdraw,
        effective_from=args.effective_from,
    )
    return _run(args, lambda c, now: p.add_tariff(c, spec, now))


def _tariff_list(args: argparse.Namespace) -> int:
    return _run(args, lambda c, now: p.list_tariffs(c))


def _sessions_list(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda c, now: p.list_sessions(
            c, p.find_account(c, args.account) if args.account else None, args.state, args.limit
        ),
    )


def _reservations_list(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda c, now: p.list_reservations(c, p.find_account(c, args.account) if args.account else None, args.limit),
    )


def add_commands(subparsers: Any) -> None:
    ocf = subparsers.add_parser("ocf", help="online charging: subscribers, accounts, tariffs, sessions")
    groups = ocf.add_subparsers(dest="ocf_command", required=True)

    account = groups.add_parser("account", help="accounts").add_subparsers(dest="account_command", required=True)
    create = account.add_parser("create", help="create an account")
    create.add_argument("name")
    create.add_argument("--currency", type=int, default=978, help="ISO 4217 numeric (978 = EUR)")
    create.add_argument("--balance", type=int, default=0, help="opening balance, minor units")
    create.add_argument("--credit-limit", type=int, default=0)
    create.add_argument("--low-balance", type=int, default=None, help="Low-Balance-Indication threshold")
    create.set_defaults(func=_account_create)
    topup = account.add_parser("topup", help="credit an account (dry sessions get RAR)")
    topup.add_argument("account")
    topup.add_argument("amount", type=int)
    topup.add_argument("--note", default="top-up")
    topup.set_defaults(func=_account_topup)
    for name, func, text in (
        ("block", _account_block, "block an account (open sessions get ASR)"),
        ("unblock", _account_unblock, "unblock an account"),
        ("show", _account_show, "an account with its buckets and open sessions"),
    ):
        cmd = account.add_parser(name, help=text)
        cmd.add_argument("account", help="id or name")
        cmd.set_defaults(func=func)
    hist = account.add_parser("history", help="the account's ledger, newest first")
    hist.add_argument("account")
    hist.add_argument("--limit", type=int, default=50)
    hist.set_defaults(func=_account_history)

    subscriber = groups.add_parser("subscriber", help="subscribers").add_subparsers(
        dest="subscriber_command", required=True
    )
    add = subscriber.add_parser("add", help="add a subscriber to an account")
    add.add_argument("account")
    add.add_argument("--name", default="")
    for flag in ("--e164", "--sip-uri", "--imsi", "--nai", "--private"):
        add.add_argument(flag, action="append", default=[], help="a Subscription-Id (repeatable)")
    add.set_defaults(func=_subscriber_add)
    show = subscriber.add_parser("show", help="a subscriber by id or identity")
    show.add_argument("subscriber")
    show.set_defaults(func=_subscriber_show)

    tariff = groups.add_parser("tariff", help="tariffs").add_subparsers(dest="tariff_command", required=True)
    tset = tariff.add_parser("set", help="add a tariff version (applies from --effective-from, default now)")
    tset.add_argument("name")
    tset.add_argument("--unit", choices=["time", "octets", "units"], required=True)
    tset.add_argument("--price", type=int, required=True, help="minor units per started increment")
    tset.add_argument("--increment", type=int, default=1, help="1: per second; 60: per started minute")
    tset.add_argument("--setup-fee", type=int, default=0)
    tset.add_argument("--minimum-charge", type=int, default=0)
    tset.add_argument("--currency", type=int, default=978)
    tset.add_argument("--rating-group", type=int)
    tset.add_argument("--service-identifier", type=int)
    tset.add_argument("--prefix", default="", help="destination prefix (digits)")
    tset.add_argument("--band-start", type=int, help="minute of the UTC day the band starts")
    tset.add_argument("--band-end", type=int)
    tset.add_argument("--effective-from", type=float, help="Unix seconds")
    tset.add_argument("--withdraw", action="store_true", help="withdraw this key from --effective-from on")
    tset.set_defaults(func=_tariff_set)
    tariff.add_parser("list", help="every tariff version").set_defaults(func=_tariff_list)

    sessions = groups.add_parser("sessions", help="credit-control sessions").add_subparsers(
        dest="sessions_command", required=True
    )
    slist = sessions.add_parser("list", help="sessions by state")
    slist.add_argument("--account")
    slist.add_argument("--state", default="open", choices=["open", "closed", "expired", "aborted"])
    slist.add_argument("--limit", type=int, default=100)
    slist.set_defaults(func=_sessions_list)

    reservations = groups.add_parser("reservations", help="reservations held").add_subparsers(
        dest="reservations_command", required=True
    )
    rlist = reservations.add_parser("list", help="units granted and not yet reported")
    rlist.add_argument("--account")
    rlist.add_argument("--limit", type=int, default=100)
    rlist.set_defaults(func=_reservations_list)
