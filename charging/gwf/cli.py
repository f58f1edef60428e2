"""``charging gwf``: run the IMS-GWF application server.

Settings come from the ``[gwf]`` section of the configuration file (``charging -c FILE gwf``), then from
the command-line flags, which win.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

from pydantic import ValidationError

from charging import eventloop
from charging.config import ConfigError, load_settings
from charging.gwf.server import Gwf, node_for
from charging.gwf.settings import GwfSettings
from charging.logs import setup_logging

_FLAGS: list[tuple[str, str, type, str]] = [
    ("--sip-address", "sip_address", str, "address the SIP listeners bind to"),
    ("--sip-host", "sip_host", str, "host put in Via and Record-Route"),
    ("--udp-port", "udp_port", int, "SIP UDP port (0 picks one)"),
    ("--tcp-port", "tcp_port", int, "SIP TCP port (0 picks one)"),
    ("--next-hop", "next_hop", str, "SIP URI where initial requests without a Route go"),
    ("--origin-host", "origin_host", str, "Diameter Origin-Host of the GWF"),
    ("--origin-realm", "origin_realm", str, "Diameter Origin-Realm of the GWF"),
    ("--failure-handling", "failure_handling", str, "TERMINATE, CONTINUE or RETRY_AND_TERMINATE"),
    ("--tx", "tx_seconds", float, "RFC 4006 Tx in seconds"),
    ("--rating-group", "rating_group", int, "Rating-Group of the session's MSCC"),
]


def load_gwf_settings(path: str | None, overrides: dict[str, Any]) -> GwfSettings:
    """The [gwf] section of the configuration (file and CHARGING_GWF__* variables), then the flags."""
    data = load_settings(path).gwf.model_dump(exclude_unset=True)
    for key, value in overrides.items():
        if key == "ocf":
            data["ocf"] = {**data.get("ocf", {}), **value}
        else:
            data[key] = value
    try:
        return GwfSettings.model_validate(data)
    except ValidationError as exc:
        lines = [f"gwf.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError("gwf settings are invalid:\n  " + "\n  ".join(lines)) from None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _, dest, _, _ in _FLAGS:
        value = getattr(args, dest, None)
        if value is not None:
            out[dest] = value
    if args.ocf:
        host, _, port = args.ocf.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--ocf {args.ocf}: expected ADDRESS:PORT")
        out["ocf"] = {"address": host, "port": int(port)}
    if args.ocf_host:
        out.setdefault("ocf", {})["host"] = args.ocf_host
    if args.ocf_realm:
        out.setdefault("ocf", {})["realm"] = args.ocf_realm
    return out


async def _serve(settings: GwfSettings) -> None:
    gwf = Gwf(settings, node_for(settings))
    await gwf.start()
    print(
        f"charging gwf: SIP on {settings.sip_address} (UDP {gwf.udp_port}, TCP {gwf.tcp_port}), "
        f"OCF {settings.ocf.host} at {settings.ocf.address}:{settings.ocf.port}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await gwf.stop()


def _run(args: argparse.Namespace) -> int:
    settings = load_gwf_settings(getattr(args, "config", None), _overrides(args))
    setup_logging(args.log_level, args.log_format)
    eventloop.run(_serve(settings))
    return 0


def add_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser("gwf", help="run the IMS-GWF SIP application server (Ro client of the OCF)")
    for flag, dest, kind, text in _FLAGS:
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    parser.add_argument("--ocf", default=None, metavar="ADDRESS:PORT", help="where the OCF's Diameter listens")
    parser.add_argument("--ocf-host", default=None, help="the OCF's Origin-Host")
    parser.add_argument("--ocf-realm", default=None, help="the OCF's realm")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-format", default="json", choices=["json", "text"])
    parser.set_defaults(func=_run)
