"""ACRs for the CDF tests: built with bench.messages, encoded, decoded and parsed as the server does."""

from __future__ import annotations

from typing import Any

from bench.messages import ims_acr
from cdf.acr import Acr, parse_acr
from charging.diameter import Message

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, the ManualClock's default start
ICID = "icid-call-1@pcscf.test"
HOME_IOI = "ims.mnc001.mcc001.3gppnetwork.org"
VISITED_IOI = "ims.mnc002.mcc001.3gppnetwork.org"


def acr(
    kind: str,
    number: int,
    *,
    session: str = "scscf.test;1;1",
    node: str = "scscf.test",
    functionality: str = "S_CSCF",
    role: str | None = "ORIGINATING_ROLE",
    at: float = T0,
    received: float | None = None,
    icid: str | None = ICID,
    **fields: Any,
) -> Acr:
    """The parsed ACR of ``node``; ``at`` is its Event-Timestamp, ``received`` the CDF clock (default ``at``)."""
    msg = ims_acr(
        session_id=session,
        origin_host=node,
        record_type=kind,
        record_number=number,
        node_functionality=functionality,
        role_of_node=role,
        icid=icid,
        event_time=int(at),
        **fields,
    )
    return parse_acr(Message.decode(msg.to_bytes()), at if received is None else received)
