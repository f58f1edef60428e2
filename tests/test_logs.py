"""Structured logs: one JSON object a line, with the session's identifiers when a line concerns one."""

from __future__ import annotations

import io
import json
import logging

from charging.diameter import Message
from charging.diameter.node import _log_context
from charging.diameter.peer import LocalIdentity, Peer
from charging.logs import ClosingSocketRace, JsonFormatter, setup_logging


def test_json_lines_carry_session_id_and_icid_from_extra() -> None:
    record = logging.LogRecord("charging.ocf", logging.WARNING, __file__, 1, "CCR %s refused", ("s1",), None)
    record.session_id = "as.example.net;1;1"
    record.icid = "icid-42"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "CCR s1 refused" and line["level"] == "WARNING"
    assert (line["session_id"], line["icid"]) == ("as.example.net;1;1", "icid-42")


def test_request_log_context_reads_session_id_and_icid() -> None:
    acr = Message.request(
        "ACR",
        3,
        {
            "Session-Id": "scscf;1;2",
            "Service-Information": {
                "IMS-Information": {"Node-Functionality": "S_CSCF", "IMS-Charging-Identifier": "i-9"}
            },
        },
    )
    peer = Peer(LocalIdentity("cdf.test", "test"), "scscf.test")
    assert _log_context(acr, peer) == {"peer": "scscf.test", "session_id": "scscf;1;2", "icid": "i-9"}


def test_log_context_of_a_broken_request_does_not_raise() -> None:
    header = bytearray(Message.request("ACR", 3).to_bytes()[:20])
    header[1:4] = (28).to_bytes(3, "big")
    # A Session-Id AVP (263) whose length claims 64 octets where 8 remain.
    broken = Message.decode(bytes(header) + b"\x00\x00\x01\x07\x40\x00\x00\x40")
    assert _log_context(broken, Peer(LocalIdentity("cdf.test", "test"), "x")) == {"peer": "x"}


def test_kafka_pythons_closed_socket_race_is_logged_at_debug_not_error() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())  # and no level of its own, as setup_logging's handler
    logger = logging.getLogger("test.kafka.net.transport")
    logger.setLevel(logging.WARNING)  # as setup_logging leaves kafka-python's loggers
    logger.addHandler(handler)
    logger.addFilter(ClosingSocketRace())
    logger.propagate = False
    try:
        try:
            None.recv(4096)  # type: ignore[attr-defined]  # what kafka-python's reader hits after a close
        except AttributeError:
            logger.exception("<KafkaTCPTransport [none] (closed)>: Error receiving network data closing socket")
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError:
            logger.exception("<KafkaTCPTransport>: Error receiving network data closing socket")
        logger.setLevel(logging.DEBUG)  # someone debugging kafka-python still sees it
        try:
            None.recv(4096)  # type: ignore[attr-defined]
        except AttributeError:
            logger.exception("<KafkaTCPTransport [none] (closed)>: Error receiving network data closing socket")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["level"], line["exception"].splitlines()[-1]) for line in lines] == [
        ("ERROR", "ConnectionResetError: reset by peer"),  # any other error still is one
        ("DEBUG", "AttributeError: 'NoneType' object has no attribute 'recv'"),
    ]


def test_setup_logging_puts_the_filter_on_kafka_pythons_transport_logger_once() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO", "json")
        setup_logging("INFO", "text")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    filters = logging.getLogger("kafka.net.transport").filters
    assert len([f for f in filters if isinstance(f, ClosingSocketRace)]) == 1
