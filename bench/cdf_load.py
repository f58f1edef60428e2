"""CDF load benchmark: ACR START/INTERIM/STOP calls from several IMS nodes, CDRs to a real Kafka-protocol broker,
and the same load against a python-diameter responder that only answers ACAs.

Run from the repository root::

    .venv/bin/python -m bench.cdf_load                  # 10 s measured per side, SQLite (the embedded default)
    .venv/bin/python -m bench.cdf_load --postgres       # the CDF on PostgreSQL (CHARGING_TEST_POSTGRES)
    .venv/bin/python -m bench.cdf_load --quick          # a few seconds per side, for CI
    .venv/bin/python -m bench.cdf_load --pin            # each side's processes on a core of their own

Each side runs in a process of its own:

* the CDF: ``charging serve --roles cdf`` (Diameter node, CDF service, outbox publisher) on a fresh
  database, publishing to an embedded tansu broker started by this process;
* the baseline: a responder on the PyPI package ``python-diameter`` (``diameter.node.Node`` with a
  ``SimpleThreadingApplication``) that answers every ACR with an ACA: no parsing, no storage, no CDRs.

The load, from this process: ``--nodes`` simulated IMS nodes (P-CSCF, S-CSCF, AS in turn), each one
Diameter connection with ``--in-flight`` workers; a worker plays calls over and over: ACR START, INTERIM
(the media change) and STOP of a new session, each sent once its predecessor was answered.  After the
measured window the workers finish their calls, the CDF's outbox drains to Kafka, and every CDR on the
topic is read back: ``lost`` counts ACRs that got a 2001 ACA but are in no CDR on Kafka.  The last line
printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.loadgen import LoadResult, result_code
from bench.messages import ims_acr, sdp_media
from charging import eventloop
from charging.broker import EmbeddedBroker, consumer_config, create_topic, free_port
from charging.diameter.node import DiameterNode, NodeConfig, PeerConfig
from charging.diameter.peer import LocalIdentity, Timers

POSTGRES_URL = os.environ.get("CHARGING_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CDF_HOST = "cdf.bench"
REALM = "bench"
TOPIC = "charging.cdrs"
NODE_KINDS = (("pcscf", "P_CSCF"), ("scscf", "S_CSCF"), ("as", "AS"))
REPO = Path(__file__).resolve().parent.parent


# -- the load -------------------------------------------------------------------------------------------------
@dataclass
class Load:
    result: LoadResult = field(default_factory=LoadResult)
    measuring: bool = False
    stopping: bool = False
    calls: int = 0
    acked: list[tuple[str, str, int]] = field(default_factory=list)  # (Session-Id, Origin-Host, number)
    failures: int = 0
    cpu: CpuUse | None = None  # from warm-up to the last call's end, not only the measured window


def node_hosts(count: int) -> list[tuple[str, str]]:
    """(Origin-Host, Node-Functionality) of the simulated IMS nodes."""
    return [(f"{NODE_KINDS[i % 3][0]}{i}.bench", NODE_KINDS[i % 3][1]) for i in range(count)]


def client(port: int, host: str) -> DiameterNode:
    return DiameterNode(
        NodeConfig(
            LocalIdentity(host, REALM),
            peers=[PeerConfig(CDF_HOST, REALM, "127.0.0.1", port)],
            client_acct_applications=frozenset({3}),
            timers=Timers(watchdog=30.0),
            request_timeout=10.0,
        )
    )


async def play_calls(load: Load, node: DiameterNode, functionality: str, worker: int, run: str) -> None:
    host = node.config.identity.origin_host
    call = 0
    while not load.stopping:
        call += 1
        session = f"{host};{run};{worker};{call}"
        for number, kind in enumerate(("START", "INTERIM", "STOP")):
            acr = ims_acr(
                session_id=session,
                origin_host=host,
                origin_realm=REALM,
                destination_realm=REALM,
                record_type=kind,
                record_number=number,
                node_functionality=functionality,
                icid=f"{run}-{worker}-{call}@{host}",
                event_time=int(time.time()),
                media=sdp_media(video=number == 1) if kind != "STOP" else None,
            )
            started = time.perf_counter()
            while True:  # an ACR is sent until it is answered with success: nothing is given up
                try:
                    aca = await node.request(acr, peer=CDF_HOST, timeout=10.0)
                except Exception:
                    load.failures += 1
                    await asyncio.sleep(0.05)
                    continue
                code = result_code(aca)
                if code == 2001:
                    break
                load.failures += 1
                await asyncio.sleep(0.01)
            load.acked.append((session, host, number))
            if load.measuring:
                load.result.requests += 1
                load.result.latencies.append(time.perf_counter() - started)
                load.result.results[2001] += 1
        load.calls += 1


async def run_load(ports: list[int], nodes: int, in_flight: int, seconds: float, warmup: float) -> Load:
    """Node ``i`` talks to the server on ``ports[i % len(ports)]``, as a DRA would spread them."""
    load = Load()
    run = uuid.uuid4().hex[:8]
    clients = [
        (client(ports[i % len(ports)], host), functionality)
        for i, (host, functionality) in enumerate(node_hosts(nodes))
    ]
    for node, _ in clients:
        await node.start()
    deadline = time.monotonic() + 10
    while not all(CDF_HOST in n.peers and n.peers[CDF_HOST].available for n, _ in clients):
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not connect every node to {CDF_HOST} on {ports}")
        await asyncio.sleep(0.05)
    tasks = [
        asyncio.create_task(play_calls(load, node, functionality, worker, run))
        for node, functionality in clients
        for worker in range(in_flight)
    ]
    await asyncio.sleep(warmup)
    load.measuring = True
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    load.measuring = False
    load.result.seconds = time.perf_counter() - started
    load.stopping = True  # workers finish the call they are in: every session gets its STOP
    await asyncio.wait(tasks, timeout=60)
    for node, _ in clients:
        await node.stop(timeout=2.0)
    load.result.errors = load.failures
    return load


# -- CPU ------------------------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuUse:
    """CPU the server processes and this process (the load generator) used while the load ran."""

    server: float | None = None
    generator: float = 0.0
    seconds: float = 0.0
    acrs: int = 0

    def summary(self) -> str:
        if not self.acrs or not self.seconds:
            return "CPU: no ACRs"
        generator = f"load generator {self.generator / self.acrs * 1e6:.0f} us per ACR"
        if self.server is None:
            return f"CPU: {generator}"
        return (
            f"CPU while loaded: server {self.server / self.seconds:.2f} cores, {self.server / self.acrs * 1e6:.0f} us "
            f"per ACR; {generator}"
        )


def run_measured(pids: list[int], ports: list[int], nodes: int, in_flight: int, args: argparse.Namespace) -> Load:
    """run_load, with the CPU the servers ``pids`` and this process used meanwhile in ``load.cpu``."""
    before = [cpu_seconds(pid) for pid in pids]
    own, started = time.process_time(), time.monotonic()
    load = eventloop.run(run_load(ports, nodes, in_flight, args.seconds, args.warmup))
    after = [cpu_seconds(pid) for pid in pids]
    server = None
    if all(v is not None for v in before + after):
        server = sum(a - b for a, b in zip(after, before, strict=True) if a is not None and b is not None)
    load.cpu = CpuUse(server, time.process_time() - own, time.monotonic() - started, len(load.acked))
    return load


# -- the CDF side ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def database(postgres: bool, workdir: Path) -> Iterator[str]:
    """A fresh database URL: a SQLite file, or a PostgreSQL schema of its own (dropped afterwards)."""
    if not postgres:
        yield f"sqlite:///{workdir / 'cdf.db'}"
        return
    from charging.db import make_engine

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def pinned(command: list[str], cpu: int | None) -> list[str]:
    """``command`` run on CPU ``cpu`` only (every thread it starts inherits that), or as it is for None."""
    if cpu is None:
        return command
    if shutil.which("taskset") is None:
        raise RuntimeError("--pin needs taskset (util-linux)")
    return ["taskset", "--cpu-list", str(cpu), *command]


def cpu_for(index: int) -> int:
    """The ``index``-th of the CPUs this process may run on, round and round."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[index % len(cpus)]


@dataclass
class CdfProcess:
    proc: subprocess.Popen[bytes]
    diameter_port: int
    http_port: int
    log_path: Path

    def backlog(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/cdf/outbox", timeout=10) as answer:
            data: dict[str, Any] = json.load(answer)
        return data

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_cdf(url: str, bootstrap: str, workdir: Path, node_id: str = "cdf-1", cpu: int | None = None) -> CdfProcess:
    ready = workdir / f"ready-{node_id}.txt"
    log_path = workdir / f"{node_id}.log"
    config = workdir / f"{node_id}.toml"
    config.write_text(f'node_id = "{node_id}"\n')  # top-level keys have no environment variable
    env = {
        **os.environ,
        "CHARGING_DATABASE__URL": url,
        "CHARGING_KAFKA__BOOTSTRAP": bootstrap,
        "CHARGING_KAFKA__CDR_TOPIC": TOPIC,
        "CHARGING_DIAMETER__PORT": "0",
        "CHARGING_DIAMETER__ORIGIN_HOST": CDF_HOST,
        "CHARGING_DIAMETER__ORIGIN_REALM": REALM,
        "CHARGING_HTTP__PORT": "0",
        "CHARGING_LOGGING__LEVEL": "WARNING",
        "CHARGING_CDF__PUBLISH_POLL_SECONDS": "0.2",
    }
    command = [sys.executable, "-m", "charging.cli", "-c", str(config), "serve", "--roles", "cdf"]
    command += ["--ready-file", str(ready)]
    if os.environ.get("CDF_BENCH_PROFILE"):  # cProfile of the CDF process, written when it stops
        command[1:3] = ["-m", "cProfile", "-o", os.environ["CDF_BENCH_PROFILE"], "-m", "charging.cli"]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(pinned(command, cpu), cwd=REPO, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the CDF did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    endpoints = json.loads(ready.read_text())  # charging serve --ready-file: where it listens, as JSON
    diameter_port = int(endpoints["diameter"][0][1])
    http_port = int(endpoints["http"].rsplit(":", 1)[1])
    return CdfProcess(proc, diameter_port, http_port, log_path)


def wait_drained(cdf: CdfProcess, timeout: float) -> float:
    """Seconds until the outbox is empty (every CDR acknowledged by the broker)."""
    started = time.monotonic()
    while cdf.backlog()["unpublished"]:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"the outbox did not drain in {timeout} s: {cdf.backlog()}")
        time.sleep(0.2)
    return time.monotonic() - started


def published_ids(url: str) -> set[str]:
    """The ids of the CDRs the CDF stored and marked published (the broker acknowledged them)."""
    from sqlalchemy import select

    from cdf.models import outbox
    from charging.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {r[0] for r in conn.execute(select(outbox.c.cdr_id).where(outbox.c.published_at.is_not(None)))}
    finally:
        engine.dispose()


def read_cdrs(bootstrap: str) -> list[dict[str, Any]]:
    """Every CDR on the topic, duplicates included."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**consumer_config(bootstrap, None, max_partition_fetch_bytes=8 << 20))
    try:
        partitions = [TopicPartition(TOPIC, p) for p in sorted(consumer.partitions_for_topic(TOPIC) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        expected = sum(consumer.end_offsets(partitions).values())
        cdrs: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while len(cdrs) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=10_000).values():
                cdrs.extend(json.loads(record.value) for record in batch)
        quiet_until = time.monotonic() + 1.0  # anything beyond the end offsets read at the start
        while time.monotonic() < quiet_until:
            for batch in consumer.poll(timeout_ms=200, max_records=10_000).values():
                cdrs.extend(json.loads(record.value) for record in batch)
        return cdrs
    finally:
        consumer.close()


# -- the baseline side ----------------------------------------------------------------------------------------
def serve_baseline(port: int, nodes: int) -> None:
    import logging

    from diameter.message.constants import APP_DIAMETER_BASE_ACCOUNTING
    from diameter.node import Node
    from diameter.node.application import SimpleThreadingApplication

    logging.getLogger("diameter").setLevel(logging.ERROR)  # it reports every closed connection
    node = Node(CDF_HOST, REALM, ip_addresses=["127.0.0.1"], tcp_port=port)
    peers = [node.add_peer(f"aaa://{host}", REALM) for host, _ in node_hosts(nodes)]

    def answer(app: Any, request: Any) -> Any:
        aca = app.generate_answer(request)
        aca.result_code = 2001
        aca.accounting_record_type = request.accounting_record_type
        aca.accounting_record_number = request.accounting_record_number
        aca.acct_application_id = 3
        return aca

    app = SimpleThreadingApplication(APP_DIAMETER_BASE_ACCOUNTING, is_acct_application=True, request_handler=answer)
    node.add_application(app, peers)
    node.start()
    print("READY", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.read()
    node.stop(wait_timeout=2, force=True)


def start_baseline(port: int, nodes: int, cpu: int | None = None) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "bench.cdf_load", "--serve-baseline", str(port), str(nodes)]
    proc = subprocess.Popen(pinned(command, cpu), cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "READY":
        proc.kill()
        raise RuntimeError("the python-diameter baseline did not start")
    return proc


def stop_baseline(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the run --------------------------------------------------------------------------------------------------
def measure_cdf(args: argparse.Namespace) -> tuple[Load, dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="cdf-bench-") as tmp, EmbeddedBroker() as broker:
        workdir = Path(tmp)
        create_topic(broker.bootstrap, TOPIC, partitions=4, exist_ok=True)
        with database(args.postgres, workdir) as url:
            instances: list[CdfProcess] = []
            try:
                for n in range(args.instances):
                    cpu = cpu_for(n) if args.pin else None
                    instances.append(start_cdf(url, broker.bootstrap, workdir, f"cdf-{n + 1}", cpu))
                ports = [cdf.diameter_port for cdf in instances]
                pids = [cdf.proc.pid for cdf in instances]
                load = run_measured(pids, ports, args.nodes, args.in_flight, args)
                cdf = instances[0]
                at_end = cdf.backlog()
                backlog_at_end = at_end["unpublished"]
                drain_seconds = wait_drained(cdf, timeout=300)
            finally:
                for instance in instances:
                    instance.stop()
            cdrs = read_cdrs(broker.bootstrap)
            published = published_ids(url)
    unique = {cdr["cdr_id"]: cdr for cdr in cdrs}
    in_cdrs = {(c["session_id"], c["node_address"], n) for c in unique.values() for n in c["accounting_record_numbers"]}
    lost = sum(1 for key in set(load.acked) if key not in in_cdrs)
    return load, {
        "cdrs_in_kafka": len(unique),
        "copies_in_kafka": len(cdrs),
        "lost": lost,
        "backlog_at_end": backlog_at_end,
        "drain_seconds": drain_seconds,
        "writer": at_end.get("writer") or {},
        # Tells a CDF that lost a CDR from a broker that lost one it had acknowledged.
        "acknowledged_but_not_on_topic": len(published - set(unique)),
        "stored": len(published),
    }


def measure_baseline(args: argparse.Namespace) -> Load:
    port = free_port()
    proc = start_baseline(port, args.nodes, cpu_for(0) if args.pin else None)
    try:
        return run_measured([proc.pid], [port], args.nodes, args.baseline_in_flight, args)
    finally:
        stop_baseline(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per side")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="3 s per side, for CI")
    parser.add_argument("--nodes", type=int, default=6, help="simulated IMS nodes, one connection each")
    parser.add_argument("--in-flight", type=int, default=16, help="calls in progress per node against the CDF")
    parser.add_argument("--baseline-in-flight", type=int, default=2, help="per node against python-diameter")
    parser.add_argument("--postgres", action="store_true", help="the CDF on PostgreSQL instead of SQLite")
    parser.add_argument(
        "--instances", type=int, default=1, help="CDF processes sharing the database, the nodes spread over them"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="each CDF process on a CPU of its own (round and round), the baseline on the first: a GIL-bound "
        "process runs faster when its threads stay on one core",
    )
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--serve-baseline", nargs=2, metavar=("PORT", "NODES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_baseline:
        serve_baseline(int(args.serve_baseline[0]), int(args.serve_baseline[1]))
        return 0
    if args.quick:
        args.seconds, args.warmup = 3.0, 1.0

    cdf_load, kafka = measure_cdf(args)
    store = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"CDF ({args.instances} process(es){', pinned' if args.pin else ''}, {args.nodes} IMS nodes x "
        f"{args.in_flight} calls in flight, {store}, CDRs to Kafka (tansu))"
    )
    print("  " + cdf_load.result.summary("CDF ACRs"))
    if cdf_load.cpu is not None:
        print("  " + cdf_load.cpu.summary())
    print(
        f"  calls completed {cdf_load.calls}, ACRs acknowledged {len(cdf_load.acked)}; outbox backlog at the end "
        f"{kafka['backlog_at_end']}, drained in {kafka['drain_seconds']:.1f} s; CDRs in Kafka {kafka['cdrs_in_kafka']}"
        f" ({kafka['copies_in_kafka']} records); acknowledged ACRs in no CDR: {kafka['lost']}"
    )
    if kafka["acknowledged_but_not_on_topic"]:
        print(f"  CDRs the broker acknowledged but the topic lacks: {kafka['acknowledged_but_not_on_topic']}")
    writer = kafka["writer"]
    if writer.get("batches"):
        print(
            f"  writer: {writer['acrs']} ACRs in {writer['batches']} batches "
            f"({writer['acrs'] / writer['batches']:.1f} per batch), {writer['transactions']} transactions"
        )
    baseline = Load()
    if not args.no_baseline:
        baseline = measure_baseline(args)
        pin = ", pinned" if args.pin else ""
        print(f"baseline python-diameter ({args.nodes} nodes x {args.baseline_in_flight} in flight, ACA only{pin})")
        print("  " + baseline.result.summary("baseline ACRs"))
        if baseline.cpu is not None:
            print("  " + baseline.cpu.summary())
    rate = cdf_load.result.rate
    base_rate = baseline.result.rate
    figures = {
        "acr_per_s": round(rate),
        "p99_ms": round(cdf_load.result.percentile_ms(0.99), 2),
        "baseline_acr_per_s": round(base_rate),
        "ratio": round(rate / base_rate, 2) if base_rate else None,
        "acked": len(cdf_load.acked),
        "cdrs_in_kafka": kafka["cdrs_in_kafka"],
        "lost": kafka["lost"],
    }
    print(json.dumps(figures))
    return 0 if kafka["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
