"""OCF load benchmark: a SCUR + IEC mix against the OCF on PostgreSQL, and against a python-diameter baseline.

Run from the repository root (PostgreSQL from ``CHARGING_TEST_POSTGRES``, default the local test server)::

    .venv/bin/python -m bench.ocf_load                 # 3 rounds of 5 s per side, the sides taking turns
    .venv/bin/python -m bench.ocf_load --quick         # a few seconds, for CI

Each side runs in a process of its own, so it has a core to itself, as a deployed OCF would:

* the OCF: ``charging``'s node and OCF service on a fresh PostgreSQL schema with
  ``--subscribers`` prepaid accounts, a per-second voice tariff and an SMS tariff;
* the baseline: a responder on the PyPI package ``python-diameter`` (``diameter.node.Node``
  with a ``SimpleThreadingApplication``) that answers every CCR with a bare CCA:
  no rating, no storage.

The load, from this process over several connections (``bench.loadgen``): workers play,
over and over, a SCUR session (CCR-I for 60 s, two CCR-U each reporting 60 s used, CCR-T)
and, every fifth time, an IEC DIRECT_DEBITING event.  The two sides are measured in turn, round by
round, so that a slow spell of the (shared, virtual) machine does not fall on one side only.
Printed: throughput, p50/p99 latency and errors of both sides over all rounds, each round's rates,
and, as the last line, one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

from sqlalchemy import insert, text

from bench.loadgen import Context, LoadResult, client_hosts, run_load
from bench.messages import call_values, ccr_initial_avps
from charging import eventloop
from charging.diameter import Message
from charging.diameter.dictionary import DICTIONARY, iter_encoded
from charging.serve import tune_gc
from ocf.settings import OcfSettings

POSTGRES_URL = os.environ.get("CHARGING_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SERVER_HOST = "ocs.bench"
REALM = "bench"
VOICE_RG = 100
SMS_SERVICE = 20
BALANCE = 10**12


def msisdn(n: int) -> str:
    return f"3460{n:07d}"


# -- the messages ---------------------------------------------------------------------------------------
CONTEXT = "mnc001.mcc001.18.32260@3gpp.org"
EVENT_EXTRA: tuple[tuple[str, Any], ...] = (
    ("Requested-Action", "DIRECT_DEBITING"),
    ("Service-Identifier", SMS_SERVICE),
    ("Requested-Service-Unit", {"CC-Service-Specific-Units": 1}),
)
UPDATE_EXTRA: tuple[tuple[str, Any], ...] = (
    (
        "Multiple-Services-Credit-Control",
        {"Requested-Service-Unit": {"CC-Time": 60}, "Used-Service-Unit": {"CC-Time": 60}, "Rating-Group": VOICE_RG},
    ),
)
FINAL_EXTRA: tuple[tuple[str, Any], ...] = (
    (
        "Multiple-Services-Credit-Control",
        {"Used-Service-Unit": {"CC-Time": 30, "Reporting-Reason": "FINAL"}, "Rating-Group": VOICE_RG},
    ),
)


def ccr(ctx: Context, session_id: str, kind: str, number: int, subscriber: int, *extra: tuple[str, Any]) -> Message:
    avps: list[tuple[str, Any]] = [
        ("Session-Id", session_id),
        ("Origin-Host", ctx.origin_host),
        ("Origin-Realm", REALM),
        ("Destination-Realm", REALM),
        ("Auth-Application-Id", 4),
        ("Service-Context-Id", CONTEXT),
        ("CC-Request-Type", kind),
        ("CC-Request-Number", number),
        ("Subscription-Id", {"Subscription-Id-Type": "END_USER_E164", "Subscription-Id-Data": msisdn(subscriber)}),
        *extra,
    ]
    return Message.request("CCR", 4, avps)


class Ccrs:
    """``ccr()``'s very bytes, from pieces encoded once: only the Session-Id is encoded per request.

    The load generator shares the machine with the servers; building every request AVP by AVP was
    about a third of its CPU (the CCR-I, whose IMS information changes call by call, is still built
    in full by ``initial``).  ``extra`` names the AVPs after the Subscription-Id (``EXTRAS``).  The
    same bytes go to the OCF and to the baseline.
    """

    def __init__(self) -> None:
        self._pieces: dict[Any, bytes] = {}
        self._session_id = DICTIONARY.by_name["Session-Id"].encode

    def _piece(self, key: Any, avps: list[tuple[str, Any]]) -> bytes:
        found = self._pieces.get(key)
        if found is None:
            found = self._pieces[key] = b"".join(iter_encoded(avps, DICTIONARY))
        return found

    def __call__(self, ctx: Context, session_id: str, kind: str, number: int, subscriber: int, extra: str) -> Message:
        head = self._piece(
            (ctx.origin_host, kind),
            [
                ("Origin-Host", ctx.origin_host),
                ("Origin-Realm", REALM),
                ("Destination-Realm", REALM),
                ("Auth-Application-Id", 4),
                ("Service-Context-Id", CONTEXT),
                ("CC-Request-Type", kind),
            ],
        )
        sub = {"Subscription-Id-Type": "END_USER_E164", "Subscription-Id-Data": msisdn(subscriber)}
        body = [
            self._session_id(session_id),
            head,
            self._piece(("number", number), [("CC-Request-Number", number)]),
            self._piece(("subscriber", subscriber), [("Subscription-Id", sub)]),
            self._piece(("extra", extra), list(EXTRAS[extra])),
        ]
        return Message(CCR_CODE, 4, CCR_FLAGS, avps=[b"".join(body)])


EXTRAS = {"event": EVENT_EXTRA, "update": UPDATE_EXTRA, "final": FINAL_EXTRA}
CCR_CODE = DICTIONARY.command_by_abbrev("CCR").code
CCR_FLAGS = Message.request("CCR", 4).flags


def initial(ctx: Context, n: int, subscriber: int) -> Message:
    """A realistic IMS CCR-I (bench.messages) for this client and subscriber."""
    avps = ccr_initial_avps(call_values(n))
    avps["Session-Id"] = f"{ctx.origin_host};{n}"
    avps["Origin-Host"] = ctx.origin_host
    avps["Origin-Realm"] = REALM
    avps["Destination-Realm"] = REALM
    avps["Subscription-Id"] = {"Subscription-Id-Type": "END_USER_E164", "Subscription-Id-Data": msisdn(subscriber)}
    avps["Multiple-Services-Credit-Control"] = {"Requested-Service-Unit": {"CC-Time": 60}, "Rating-Group": VOICE_RG}
    return Message.request("CCR", 4, avps)


def make_scenario(subscribers: int) -> Any:
    build = Ccrs()

    async def scenario(ctx: Context) -> None:
        n = ctx.next()
        subscriber = n % subscribers
        if n % 5 == 4:
            await ctx.send(build(ctx, f"{ctx.origin_host};e{n}", "EVENT_REQUEST", 0, subscriber, "event"))
            return
        sid = f"{ctx.origin_host};{n}"
        await ctx.send(initial(ctx, n, subscriber))
        for number in (1, 2):
            await ctx.send(build(ctx, sid, "UPDATE_REQUEST", number, subscriber, "update"))
        await ctx.send(build(ctx, sid, "TERMINATION_REQUEST", 3, subscriber, "final"))

    return scenario


# -- the database ---------------------------------------------------------------------------------------
def prepare_database(url: str, subscribers: int) -> str:
    from charging.db import make_engine, migrate
    from ocf import models as m

    schema = f"bench_ocf_{uuid.uuid4().hex[:10]}"
    admin = make_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    admin.dispose()
    engine = make_engine(url, schema=schema)
    migrate(engine)
    now = time.time()
    with engine.begin() as conn:
        conn.execute(
            insert(m.accounts),
            [
                {
                    "id": i + 1,
                    "name": f"bench-{i}",
                    "currency": 978,
                    "balance": BALANCE,
                    "reserved": 0,
                    "credit_limit": 0,
                    "blocked": False,
                    "low_balance_threshold": None,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(subscribers)
            ],
        )
        conn.execute(
            insert(m.subscribers),
            [{"id": i + 1, "account_id": i + 1, "name": f"bench-{i}", "created_at": now} for i in range(subscribers)],
        )
        conn.execute(
            insert(m.subscription_ids),
            [{"id_type": 0, "id_data": msisdn(i), "subscriber_id": i + 1} for i in range(subscribers)],
        )
        common = {
            "destination_prefix": "",
            "band_start_minute": None,
            "band_end_minute": None,
            "setup_fee": 0,
            "minimum_charge": 0,
            "currency": 978,
            "active": True,
            "effective_from": 0.0,
            "created_at": now,
        }
        conn.execute(
            insert(m.tariffs),
            [
                {
                    "name": "voice",
                    "rating_group": VOICE_RG,
                    "service_identifier": None,
                    "unit": "time",
                    "price": 1,
                    "increment": 1,
                    **common,
                },
                {
                    "name": "sms",
                    "rating_group": None,
                    "service_identifier": SMS_SERVICE,
                    "unit": "units",
                    "price": 5,
                    "increment": 1,
                    **common,
                },
            ],
        )
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT setval(pg_get_serial_sequence('ocf_accounts', 'id'), :n)"), {"n": subscribers})
            conn.execute(text("SELECT setval(pg_get_serial_sequence('ocf_subscribers', 'id'), :n)"), {"n": subscribers})
    if engine.dialect.name == "postgresql":
        # Statistics, as a database in service has them (autovacuum), so that plans fit the tables' sizes.
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    engine.dispose()
    return schema


def drop_schema(url: str, schema: str) -> None:
    from charging.db import make_engine

    admin = make_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def check_books(url: str, schema: str) -> dict[str, int]:
    """After the run: nothing overdrawn, and every debit in the ledger is in the balances."""
    from charging.db import make_engine

    engine = make_engine(url, schema=schema)
    with engine.begin() as conn:
        row = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE reserved > balance + credit_limit) AS overdrawn, "
                "coalesce(sum(:b - balance), 0) AS spent FROM ocf_accounts"
            ),
            {"b": BALANCE},
        ).one()
        debited = conn.execute(text("SELECT coalesce(-sum(amount), 0) FROM ocf_transactions")).scalar_one()
        sessions = conn.execute(text("SELECT count(*) FROM ocf_sessions")).scalar_one()
    engine.dispose()
    return {"overdrawn": int(row.overdrawn), "spent": int(row.spent), "ledger": int(debited), "sessions": int(sessions)}


# -- the servers, each in a process of its own ---------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_for_stdin_close() -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    await loop.run_in_executor(None, sys.stdin.read)
    done.set()
    await done.wait()


async def serve_ocf(url: str, schema: str, port: int, gc_tuned: bool, writers: int) -> None:
    from charging.config import Settings
    from charging.db import make_engine
    from charging.diameter.node import DiameterNode, NodeConfig
    from charging.diameter.peer import LocalIdentity
    from charging.service import ServiceContext
    from ocf.service import create_service
    from ocf.settings import OcfSettings

    logging.basicConfig(level=logging.ERROR)  # peers leaving at the end are no news
    engine = make_engine(url, schema=schema, pool_size=writers + 1)
    node = DiameterNode(
        NodeConfig(LocalIdentity(SERVER_HOST, REALM), listen=[("127.0.0.1", port)], allowed_networks=["127.0.0.0/8"])
    )
    service = create_service(
        ServiceContext(Settings(roles=["ocf"], ocf=OcfSettings(writers=writers)), engine, node, None)
    )
    await node.start()
    await service.start()
    if gc_tuned:
        tune_gc()
    print(f"PORT {node.port}", flush=True)
    cpu_start = time.process_time()
    await _wait_for_stdin_close()
    cpu = time.process_time() - cpu_start
    await service.stop()
    await node.stop(timeout=1.0)
    per_ccr = cpu / service.settled * 1000 if service.settled else 0.0
    print(
        f"{service.settled} CCRs in {service.transactions} transactions ({service.batches} batches), "
        f"CPU {cpu:.1f} s = {per_ccr:.3f} ms per CCR",
        flush=True,
    )


def serve_baseline(port: int, clients: int, gc_tuned: bool) -> None:
    from diameter.message.constants import APP_DIAMETER_CREDIT_CONTROL_APPLICATION
    from diameter.node import Node
    from diameter.node.application import SimpleThreadingApplication

    logging.basicConfig(level=logging.ERROR)

    node = Node(SERVER_HOST, REALM, ip_addresses=["127.0.0.1"], tcp_port=port)
    peers = [node.add_peer(f"aaa://{host}", REALM) for host in client_hosts(clients)]

    def answer(app: Any, request: Any) -> Any:
        cca = app.generate_answer(request)
        cca.result_code = 2001
        cca.auth_application_id = 4
        cca.cc_request_type = request.cc_request_type
        cca.cc_request_number = request.cc_request_number
        return cca

    app = SimpleThreadingApplication(
        APP_DIAMETER_CREDIT_CONTROL_APPLICATION, is_auth_application=True, request_handler=answer
    )
    node.add_application(app, peers)
    node.start()
    if gc_tuned:
        tune_gc()
    print(f"PORT {port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.read()
    node.stop(wait_timeout=2, force=True)


def spawn(args: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ocf_load", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, int(line.split()[1])


def finish(proc: subprocess.Popen[str]) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    try:
        rest = proc.stdout.read()
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        rest = ""
    return rest.strip()


async def measure(
    port: int | list[int], args: argparse.Namespace, connections: int, in_flight: int, warmup: float
) -> LoadResult:
    return await run_load(
        port,
        SERVER_HOST,
        make_scenario(args.subscribers),
        connections=connections,
        in_flight=in_flight,
        seconds=args.seconds,
        warmup=warmup,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured per side and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each measuring the OCF and then the baseline")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="3 s per side, for CI")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=20, help="workers per connection against the OCF")
    parser.add_argument("--baseline-connections", type=int, default=4)
    parser.add_argument("--baseline-in-flight", type=int, default=2, help="its best per the issue's measurement")
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--postgres", default=POSTGRES_URL)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="OCF processes sharing the database, the connections spread over them (the baseline stays one)",
    )
    parser.add_argument(
        "--writers", type=int, default=OcfSettings().writers, help="the OCF's concurrent CCR transactions"
    )
    parser.add_argument(
        "--no-tune-gc",
        dest="tune_gc",
        action="store_false",
        help="leave both servers' garbage collector as Python ships it (charging serve tunes it; so does the "
        "baseline by default, to compare like with like)",
    )
    parser.add_argument("--serve-ocf", nargs=2, metavar=("SCHEMA", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-baseline", nargs=2, metavar=("PORT", "CLIENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_ocf:
        eventloop.run(serve_ocf(args.postgres, args.serve_ocf[0], int(args.serve_ocf[1]), args.tune_gc, args.writers))
        return 0
    if args.serve_baseline:
        serve_baseline(int(args.serve_baseline[0]), int(args.serve_baseline[1]), args.tune_gc)
        return 0
    if args.quick:
        args.seconds, args.warmup, args.subscribers, args.rounds = 3.0, 1.0, 500, 1

    schema = prepare_database(args.postgres, args.subscribers)
    ocf, baseline = LoadResult(), LoadResult()
    rounds: list[tuple[float, float]] = []  # each round's rates: OCF, baseline
    clients = max(args.baseline_connections, 1)
    try:
        servers = [
            spawn(
                [
                    "--postgres",
                    args.postgres,
                    "--writers",
                    str(args.writers),
                    "--serve-ocf",
                    schema,
                    "0",
                    *([] if args.tune_gc else ["--no-tune-gc"]),
                ]
            )
            for _ in range(args.processes)
        ]
        bproc = None
        if not args.no_baseline:
            bproc, bport = spawn(
                ["--serve-baseline", str(free_port()), str(clients), *([] if args.tune_gc else ["--no-tune-gc"])]
            )
        try:
            # The sides take turns, round by round: a slow spell of the machine then weighs on both alike.
            for round_number in range(args.rounds):
                warmup = args.warmup if round_number == 0 else min(args.warmup, 1.0)
                one = eventloop.run(measure([p for _, p in servers], args, args.connections, args.in_flight, warmup))
                ocf.add(one)
                base = LoadResult()
                if bproc is not None:
                    base = eventloop.run(measure(bport, args, clients, args.baseline_in_flight, warmup))
                    baseline.add(base)
                rounds.append((one.rate, base.rate))
        finally:
            tails = [finish(proc) for proc, _ in servers]
            if bproc is not None:
                finish(bproc)
        books = check_books(args.postgres, schema)
    finally:
        drop_schema(args.postgres, schema)
    tuned = ", GC tuned" if args.tune_gc else ""
    processes = f"{args.processes} OCF processes sharing the database, " if args.processes > 1 else ""
    print(
        f"OCF ({processes}{args.connections} connections x {args.in_flight} in flight, PostgreSQL, "
        f"{args.subscribers} accounts, writers: {args.writers}{tuned}); {args.rounds} rounds of {args.seconds:g} s, "
        f"each side in turn"
    )
    print("  " + ocf.summary("OCF"))
    for tail in tails:
        print(f"  OCF process: {tail}")
    print(f"  books after the run: {books}")
    if ocf.error_samples:
        print(f"  error samples: {ocf.error_samples}")
    if not args.no_baseline:
        print(
            f"baseline python-diameter ({clients} connections x {args.baseline_in_flight} in flight, "
            f"no rating/storage{tuned})"
        )
        print("  " + baseline.summary("baseline"))
        if baseline.error_samples:
            print(f"  error samples: {baseline.error_samples}")
    print("rounds (OCF/s, baseline/s): " + ", ".join(f"{o:,.0f}/{b:,.0f}" for o, b in rounds))
    # Books that do not add up (an account overdrawn, debits in the ledger that the balances do not show) count too.
    errors = ocf.errors + (1 if books["overdrawn"] else 0) + (1 if books["spent"] != books["ledger"] else 0)
    figures = {
        "ccr_per_s": round(ocf.rate),
        "p50_ms": round(ocf.percentile_ms(0.5), 2),
        "p99_ms": round(ocf.percentile_ms(0.99), 2),
        "errors": errors,
        "baseline_ccr_per_s": round(baseline.rate),
        "ratio": round(ocf.rate / baseline.rate, 2) if baseline.rate else None,
    }
    print(json.dumps(figures))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
