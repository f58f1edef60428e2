"""The Rf handler: ACR in, ACA out once the ACR is committed (TS 32.299 6.2, RFC 6733 9.7)."""

from __future__ import annotations

import logging
from typing import Any

from cdf.acr import Acr, AcrType, parse_acr
from cdf.store import AcrWriter, Verdict
from charging.clock import Clock
from charging.db import DatabaseUnavailable
from charging.diameter import DiameterError, Message
from charging.diameter.constants import ResultCode
from charging.diameter.dictionary import DICTIONARY
from charging.diameter.node import DiameterNode
from charging.diameter.peer import Peer
from charging.metrics import Registry

log = logging.getLogger("charging.cdf")

# AVPs of the ACR that RFC 6733 9.7.2 has the ACA carry back unchanged.
_ECHOED = tuple(
    DICTIONARY.avp(name).key
    for name in ("User-Name", "Accounting-Sub-Session-Id", "Acct-Session-Id", "Acct-Multi-Session-Id")
)


class RfServer:
    """Answers ACRs for application 3 on a DiameterNode."""

    def __init__(
        self,
        node: DiameterNode,
        writer: AcrWriter,
        clock: Clock,
        metrics: Registry,
        *,
        interim_interval: int = 0,
    ) -> None:
        self.node = node
        self.writer = writer
        self.clock = clock
        self.interim_interval = interim_interval
        self._acrs = metrics.counter("cdf_acr_total", "ACRs answered, by record type and outcome", ["type", "outcome"])
        self._latency = metrics.histogram("cdf_acr_seconds", "time from an ACR's arrival to its ACA")
        self.stored = 0
        self.duplicates = 0

    async def handle(self, msg: Message, peer: Peer) -> Message:
        started = self.clock.now()
        try:
            acr = parse_acr(msg, started)
        except DiameterError as exc:
            log.warning("ACR from %s refused (%d): %s", peer.host, exc.result_code, exc, extra=_ids(msg))
            self._acrs.inc("unknown", "refused")
            raise
        kind = acr.record_type.name
        try:
            verdict = await self.writer.write(acr)
        except DatabaseUnavailable as exc:
            log.warning("ACR %d from %s not stored: %s", acr.record_number, peer.host, exc, extra=_log_ids(acr))
            self._acrs.inc(kind, "too_busy")
            raise DiameterError(ResultCode.DIAMETER_TOO_BUSY, "the CDF cannot store ACRs right now") from None
        if verdict is Verdict.FAILED:
            self._acrs.inc(kind, "failed")
            raise DiameterError(ResultCode.DIAMETER_UNABLE_TO_COMPLY, "the ACR could not be stored")
        if verdict is Verdict.DUPLICATE:
            self.duplicates += 1
            self._acrs.inc(kind, "duplicate")
            log.info(
                "duplicate ACR %d from %s (T flag %s) answered again",
                acr.record_number,
                peer.host,
                "set" if acr.retransmitted else "clear",
                extra=_log_ids(acr),
            )
        else:
            self.stored += 1
            self._acrs.inc(kind, "stored")
        self._latency.observe(max(0.0, self.clock.now() - started))
        return self.answer(msg, acr)

    def answer(self, msg: Message, acr: Acr) -> Message:
        aca = self.node.make_answer(
            msg,
            ResultCode.DIAMETER_SUCCESS,
            [
                ("Accounting-Record-Type", int(acr.record_type)),
                ("Accounting-Record-Number", acr.record_number),
                ("Acct-Application-Id", 3),
            ],
        )
        for key in _ECHOED:
            for found in msg.encoded(key)[:1]:
                aca.add_raw(found)
        if self.interim_interval and acr.record_type in (AcrType.START, AcrType.INTERIM):
            aca.add("Acct-Interim-Interval", self.interim_interval)
        return aca


def _ids(msg: Message) -> dict[str, Any]:
    try:
        icid = msg.find("Service-Information/IMS-Information/IMS-Charging-Identifier")
        return {"session_id": msg.get("Session-Id"), "icid": icid}
    except DiameterError:
        return {"session_id": None, "icid": None}


def _log_ids(acr: Acr) -> dict[str, Any]:
    return {"session_id": acr.session_id, "icid": acr.icid}
