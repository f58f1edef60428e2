"""The ``charging`` command line.

Each package adds its own commands: a module ``<package>.cli`` with
``add_commands(subparsers)`` that registers sub-commands whose ``func(args)``
returns the exit status.  Errors a user can fix are printed as one clear line
on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from sqlalchemy import Engine

from charging.config import ConfigError, Settings, example_toml, load_settings
from charging.db import make_engine, migrate

COMMAND_MODULES = (
    "charging.serve",
    "ocf.cli",
    "cdf.cli",
    "cdf.bx.cli",
    "billing.cli",
    "charging.trace.cli",
    "charging.gwf.cli",
)


class CommandError(Exception):
    """A failure to report to the user in one line, exit status 2."""


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def engine_from(settings: Settings, migrate_schema: bool = True) -> Engine:
    url = settings.database.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        os.makedirs(os.path.dirname(url[len("sqlite:///") :]) or ".", exist_ok=True)
    engine = make_engine(url, pool_size=settings.database.pool_size)
    if migrate_schema:
        migrate(engine)
    return engine


def _db_upgrade(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    engine = engine_from(settings, migrate_schema=False)
    migrate(engine, args.revision)
    print(f"database at {settings.database.url} is at {args.revision}")
    return 0


def _config_example(args: argparse.Namespace) -> int:
    print(example_toml(), end="")
    return 0


def _config_check(args: argparse.Namespace) -> int:
    settings_from(args)
    print("configuration is valid")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="charging", description="IMS charging and billing engine")
    parser.add_argument("-c", "--config", default=os.environ.get("CHARGING_CONFIG"), help="TOML configuration file")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply the Alembic migrations")
    upgrade.add_argument("revision", nargs="?", default="heads")
    upgrade.set_defaults(func=_db_upgrade)
    config = sub.add_parser("config", help="configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_sub.add_parser("example", help="print every key with its default and meaning").set_defaults(
        func=_config_example
    )
    config_sub.add_parser("check", help="validate the configuration (file and environment)").set_defaults(
        func=_config_check
    )
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that package has no commands yet
            raise
        module.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except (ConfigError, CommandError) as exc:
        print(f"charging: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: the packages' commands raise
    # charging.cli.CommandError, which a second copy of this module would not recognise.
    from charging.cli import main as cli_main

    sys.exit(cli_main())
