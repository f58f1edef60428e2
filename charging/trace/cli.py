"""Commands: ``charging trace record``, ``charging trace import``, ``charging trace show``, ``charging replay``.

``charging replay TRACE...`` exits 0 when every trace replays as expected, 1 when
any differs (the differences are printed, and written as JUnit XML with
``--junit``), 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from charging import eventloop
from charging.clock import SystemClock
from charging.logs import setup_logging
from charging.trace.bless import blessed
from charging.trace.capture import CaptureError
from charging.trace.compare import Rules
from charging.trace.format import MessageRecord, Trace, TraceFormatError, read_trace, write_trace
from charging.trace.importer import import_capture
from charging.trace.plan import Exchange, Plan, ServerRequest, build_plan
from charging.trace.proxy import RecordingProxy
from charging.trace.recorder import TraceRecorder
from charging.trace.replay import Replayer, ReplayOptions, ReplayResult
from charging.trace.report import junit_xml, text_report
from charging.trace.rewrite import Rewriter, parse_mapping
from charging.trace.targets import (
    HttpState,
    InProcessTarget,
    RemoteTarget,
    TargetError,
    in_process_target,
    merge_setup,
)


def _error(message: str) -> Exception:
    from charging.cli import CommandError

    return CommandError(message)


def parse_address(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise _error(f"{what} {text!r}: write it as HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def load_data_file(path: str, what: str) -> dict[str, Any]:
    """A JSON or TOML file (by its extension) holding one object."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise _error(f"{what} {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise _error(f"{what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise _error(f"{what} {path}: must hold an object")
    return data


# -- charging trace record -------------------------------------------------------------------------------


def _record(args: argparse.Namespace) -> int:
    listen = parse_address(args.listen, "--listen")
    server = parse_address(args.server, "--server")
    setup = load_data_file(args.setup, "--setup") if args.setup else {}
    setup_logging("INFO" if args.verbose else "WARNING", "text")
    return eventloop.run(_record_async(listen, server, Path(args.output), setup, args.description))


async def _record_async(
    listen: tuple[str, int], server: tuple[str, int], output: Path, setup: dict[str, Any], description: str
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with open(output, "w", encoding="utf-8") as stream:
        source = {"kind": "record", "server": f"{server[0]}:{server[1]}"}
        recorder = TraceRecorder(stream, SystemClock(), source, setup, description)
        proxy = RecordingProxy(listen, server, recorder)
        try:
            await proxy.start()
        except OSError as exc:
            raise _error(f"--listen {listen[0]}:{listen[1]}: {exc.strerror or exc}") from None
        assert proxy.bound is not None
        print(
            f"recording Diameter between clients of {proxy.bound[0]}:{proxy.bound[1]} and {server[0]}:{server[1]} "
            f"into {output} (stop with Ctrl-C)",
            flush=True,
        )
        await stop.wait()
        await proxy.stop()
        print(f"{recorder.count} messages recorded in {output}", flush=True)
    return 0


# -- charging trace import -------------------------------------------------------------------------------


def _import(args: argparse.Namespace) -> int:
    setup = load_data_file(args.setup, "--setup") if args.setup else {}
    try:
        trace, report = import_capture(args.capture, time.time(), ports=args.port or (), setup=setup)
    except CaptureError as exc:
        raise _error(str(exc)) from None
    write_trace(args.output, trace)
    print(
        f"{report.messages} Diameter messages on {report.connections} connections from {args.capture} "
        f"({report.capture.format}, {report.capture.frames} frames) written to {args.output}"
    )
    if report.skipped_octets or report.gaps:
        print(f"  {report.skipped_octets} octets could not be framed as Diameter; {report.gaps} gaps in streams")
    if report.retransmitted:
        print(f"  {report.retransmitted} retransmitted segments dropped")
    return 0 if report.messages else 1


# -- charging trace show ---------------------------------------------------------------------------------


def _show(args: argparse.Namespace) -> int:
    trace = _read(args.trace)
    h = trace.header
    print(f"{args.trace}: {len(trace.records)} records, start {h.start} ({h.source.get('kind', '?')})")
    for record in trace.records:
        if isinstance(record, MessageRecord):
            msg = record.message
            arrow = "->" if record.sender == "client" else "<-"
            print(
                f"  {record.t:10.3f}  #{record.connection} {arrow} {msg.command_name:4} "
                f"{msg.get('Session-Id', '')}  rc={msg.get('Result-Code', '-')}"
            )
        else:
            print(f"  {record.t:10.3f}  check {record.name}")
    return 0


def _read(path: str) -> Trace:
    try:
        return read_trace(path)
    except TraceFormatError as exc:
        raise _error(str(exc)) from None


# -- charging replay -------------------------------------------------------------------------------------


def replay_options(args: argparse.Namespace) -> ReplayOptions:
    rules = load_data_file(args.rules, "--rules") if args.rules else {}
    try:
        hosts = {**rules.get("hosts", {}), **parse_mapping(args.rewrite_host or [], "--rewrite-host")}
        realms = {**rules.get("realms", {}), **parse_mapping(args.rewrite_realm or [], "--rewrite-realm")}
    except ValueError as exc:
        raise _error(str(exc)) from None
    suffix = args.session_suffix if args.session_suffix is not None else str(rules.get("session_suffix", ""))
    if args.speed < 0:
        raise _error("--speed must be 0 (as fast as possible) or more")
    return ReplayOptions(
        speed=args.speed,
        rewriter=Rewriter(hosts, realms, suffix),
        answer_rules=Rules.for_answers(
            [*rules.get("ignore", []), *(args.ignore or [])], [*rules.get("compare", []), *(args.compare or [])]
        ),
        cdr_rules=Rules.for_cdrs(
            [*rules.get("cdr_ignore", []), *(args.ignore or [])], [*rules.get("cdr_compare", []), *(args.compare or [])]
        ),
        answer_timeout=args.timeout,
    )


def _replay(args: argparse.Namespace) -> int:
    options = replay_options(args)
    extra_setup = load_data_file(args.setup, "--setup") if args.setup else {}
    if args.write_expected and len(args.traces) != 1:
        raise _error("--write-expected takes one trace at a time")
    if args.write_expected and options.rewriter.active:
        raise _error("--write-expected cannot be used with rewriting: the trace would mix identities")
    traces = [(path, _read(path)) for path in args.traces]
    setup_logging("INFO" if args.verbose > 1 else "WARNING", "text")
    if args.verbose < 2:
        # The replay's clients and the target come and go with each trace; their peers' comings and goings are noise.
        logging.getLogger("charging.diameter").setLevel(logging.ERROR)
    results = eventloop.run(_replay_all(traces, options, extra_setup, args))
    for result in results:
        sys.stdout.write(text_report(result, verbose=args.verbose > 0))
    if args.junit:
        Path(args.junit).write_bytes(junit_xml(results))
    return 0 if all(r.passed for r in results) else 1


async def _replay_all(
    traces: list[tuple[str, Trace]], options: ReplayOptions, extra_setup: dict[str, Any], args: argparse.Namespace
) -> list[ReplayResult]:
    results = []
    for path, trace in traces:
        results.append(await replay_trace(path, trace, options, extra_setup, args))
    return results


async def replay_trace(
    path: str, trace: Trace, options: ReplayOptions, extra_setup: dict[str, Any], args: argparse.Namespace
) -> ReplayResult:
    setup = merge_setup(trace.header.setup, extra_setup)
    plan = build_plan(trace)
    rw = options.rewriter
    target: RemoteTarget | InProcessTarget
    if args.target:
        http = HttpState(args.http, args.token) if args.http else None
        remote = RemoteTarget(parse_address(args.target, "--target"), http)
        remote.session_ids = _session_ids(plan, rw)
        target = remote
        try:
            await remote.start(setup, provision=args.provision)
        except TargetError as exc:
            await remote.stop()
            raise _error(str(exc)) from None
    else:
        target = in_process_target(trace, setup, rw, broker=args.broker, workdir=_workdir(args, path))
        try:
            await target.start(setup)
        except TargetError as exc:
            await target.stop()
            raise _error(f"{path}: setting up the in-process target failed: {exc}") from None
    try:
        replayer = Replayer(trace, target, options, name=Path(path).name, plan=plan)
        result = await replayer.run()
        if args.write_expected:
            write_trace(args.write_expected, blessed(replayer, result.cases))
    finally:
        with contextlib.suppress(Exception):
            await target.stop()
    return result


def _workdir(args: argparse.Namespace, path: str) -> Path | None:
    """Where the in-process target keeps its database and CDR files: a temporary directory unless --keep."""
    if not args.keep:
        return None
    workdir = Path(args.keep) / Path(path).stem
    workdir.mkdir(parents=True, exist_ok=True)
    for old in ("replay.db", "replay.db-wal", "replay.db-shm"):
        (workdir / old).unlink(missing_ok=True)
    return workdir


def _session_ids(plan: Plan, rw: Rewriter) -> list[str]:
    """The Session-Ids the replay sends, as rewritten: a running target's CDRs are read for these only."""
    out: set[str] = set()
    for step in plan.steps:
        if isinstance(step, Exchange | ServerRequest):
            session = step.request.message.get("Session-Id")
            if isinstance(session, str):
                out.add(rw.session_id(session))
    return sorted(out)


# -- registration ----------------------------------------------------------------------------------------


def add_commands(sub: Any) -> None:
    trace = sub.add_parser("trace", help="record and import Diameter traces (docs/traces.md)")
    trace_sub = trace.add_subparsers(dest="trace_command", required=True, metavar="COMMAND")

    record = trace_sub.add_parser("record", help="a transparent Diameter proxy that writes a trace")
    record.add_argument("--listen", required=True, help="HOST:PORT the clients connect to")
    record.add_argument("--server", required=True, help="HOST:PORT of the Diameter server")
    record.add_argument("-o", "--output", required=True, help="the trace file to write")
    record.add_argument("--setup", help="JSON/TOML object for the trace header's setup (accounts, tariffs)")
    record.add_argument("--description", default="", help="a line saying what the trace shows")
    record.add_argument("-v", "--verbose", action="store_true", help="log each connection")
    record.set_defaults(func=_record)

    imp = trace_sub.add_parser("import", help="Diameter messages of a pcap/pcapng capture as a trace")
    imp.add_argument("capture", help="the pcap or pcapng file (tcpdump, tshark, dumpcap)")
    imp.add_argument("-o", "--output", required=True, help="the trace file to write")
    imp.add_argument("--port", type=int, action="append", help="only this TCP/SCTP port (repeatable)")
    imp.add_argument("--setup", help="JSON/TOML object for the trace header's setup")
    imp.set_defaults(func=_import)

    show = trace_sub.add_parser("show", help="one line per message of a trace")
    show.add_argument("trace")
    show.set_defaults(func=_show)

    replay = sub.add_parser("replay", help="replay traces against a CDF/OCF and check the results")
    replay.add_argument("traces", nargs="+", metavar="TRACE")
    replay.add_argument("--target", help="HOST:PORT of a running CDF/OCF (default: one started in-process)")
    replay.add_argument("--http", help="base URL of the target's HTTP API, to read CDRs and balances")
    replay.add_argument("--token", help="bearer token for --http")
    replay.add_argument("--provision", action="store_true", help="create the trace's setup on the --target")
    replay.add_argument("--setup", help="JSON/TOML laid over the trace's setup (e.g. new tariffs)")
    replay.add_argument("--broker", action="store_true", help="in-process: CDRs also to an embedded broker")
    replay.add_argument("--keep", metavar="DIR", help="in-process: keep each trace's database and CDR files here")
    replay.add_argument("--speed", type=float, default=0.0, help="0: as fast as possible (default), 1: real time")
    replay.add_argument("--rewrite-host", action="append", metavar="OLD=NEW", help="Origin/Destination-Host")
    replay.add_argument("--rewrite-realm", action="append", metavar="OLD=NEW", help="Origin/Destination-Realm")
    replay.add_argument("--session-suffix", help="appended to every Session-Id")
    replay.add_argument("--rules", help="TOML with hosts, realms, session_suffix, ignore, compare")
    replay.add_argument("--ignore", action="append", metavar="PATH", help="an AVP or CDR field that may differ")
    replay.add_argument("--compare", action="append", metavar="PATH", help="compare a field ignored by default")
    replay.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer")
    replay.add_argument("--junit", help="write a JUnit XML report here")
    replay.add_argument("--write-expected", metavar="OUT", help="write the trace with the actual results as expected")
    replay.add_argument("-v", "--verbose", action="count", default=0, help="list passing cases too; -vv logs")
    replay.set_defaults(func=_replay)


def main(argv: list[str] | None = None) -> int:
    from charging.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    logging.basicConfig()
    sys.exit(main())
