"""Structured logs: one JSON object a line, with Session-Id and ICID whenever a line concerns a session.

Code logs as usual and passes context in ``extra`` (``session_id``, ``icid``, ``peer``,
``cdr_id``...); the formatter puts every such field on the line.  Secrets never reach
a log line: the configuration is never logged whole, and tokens are not logged at all.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool | type(None)) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, context fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = [f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")]
        return f"{base} {' '.join(extra)}" if extra else base


class ClosingSocketRace(logging.Filter):
    """kafka-python 3.0 (kafka.net.transport) can read from a connection that another path of the client has
    just closed (its socket already None) and logs the AttributeError at ERROR with a traceback, typically
    when a consumer leaves its group at shutdown.  The connection is being closed anyway and nothing is lost;
    the record is kept at DEBUG (and dropped unless the logger shows DEBUG), so that an operator's ERROR
    lines mean something."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, AttributeError) and "'NoneType' object has no attribute" in str(error):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            # The logger's level was checked before this filter ran; handlers usually take every level.
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python is chatty at INFO
    transport = logging.getLogger("kafka.net.transport")
    if not any(isinstance(f, ClosingSocketRace) for f in transport.filters):
        transport.addFilter(ClosingSocketRace())
