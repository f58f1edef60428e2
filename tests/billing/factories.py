"""CDRs and tariff plans for billing tests, made with the shared schema itself."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from billing.rating import InterconnectPartner, InterconnectTariff, ServiceTariff, TariffPlan, TimeBand
from charging.cdr import CauseForRecordClosing, Cdr, InterOperatorIdentifiers, RecordType, cdr_id_for

_sessions = itertools.count(1)


def make_cdr(
    *,
    served_party: str = "sip:alice@home.net",
    start: datetime = datetime(2026, 3, 10, 9, 0, tzinfo=UTC),
    duration: float = 90.0,
    called: str | None = "tel:+4930123456",
    method: str = "INVITE",
    record_type: RecordType = RecordType.S_CSCF,
    node: str = "scscf.home.net",
    session_id: str | None = None,
    sequence: int | None = None,
    iois: tuple[str | None, str | None] | None = None,
    extensions: dict[str, Any] | None = None,
    icsi: str | None = None,
) -> Cdr:
    session = session_id or f"session-{next(_sessions)}"
    return Cdr(
        cdr_id=cdr_id_for(node, session, sequence),
        record_type=record_type,
        node_functionality=record_type.name,
        node_address=node,
        session_id=session,
        ims_charging_identifier=f"icid-{session}",
        inter_operator_identifiers=(
            [InterOperatorIdentifiers(originating_ioi=iois[0], terminating_ioi=iois[1])] if iois else []
        ),
        sip_method=method,
        called_party_address=called,
        served_party=served_party,
        service_delivery_start_time_stamp=start,
        record_opening_time=start,
        record_closure_time=start + timedelta(seconds=duration),
        duration_seconds=duration,
        cause_for_record_closing=CauseForRecordClosing.SERVICE_DELIVERY_END_SUCCESSFULLY,
        local_record_sequence_number=1,
        record_sequence_number=sequence,
        ims_communication_service_identifier=icsi,
        extensions=extensions or {},
    )


def voice_plan(peak: bool = True, **overrides: Any) -> TariffPlan:
    """Voice per minute (10/6 minor units peak/off-peak), 5 set-up; messages 9 each; data 2 per MB.

    ``peak=False``: no peak band, voice is 6 per minute around the clock.
    """
    voice_prices = {"peak": Decimal(10), "offpeak": Decimal(6)} if peak else {"offpeak": Decimal(6)}
    plan: dict[str, Any] = {
        "currency": "EUR",
        "time_zone": "Europe/Berlin",
        "default_band": "offpeak",
        "bands": [TimeBand(name="peak", weekdays=[0, 1, 2, 3, 4], start=time(8), end=time(20))] if peak else [],
        "services": [
            ServiceTariff(
                service="voice",
                methods=["INVITE"],
                basis="duration",
                increment_seconds=60,
                prices=voice_prices,
                setup_minor=5,
                destinations=[],
            ),
            ServiceTariff(service="messaging", methods=["MESSAGE"], basis="event", prices={"offpeak": Decimal(9)}),
            ServiceTariff(
                service="data",
                icsi=["urn:example:data"],
                basis="volume",
                unit_octets=1_000_000,
                prices={"offpeak": Decimal(2)},
            ),
        ],
        "interconnect": InterconnectTariff(
            home_ioi="home.net",
            partners=[
                InterconnectPartner(
                    ioi="other.net", payable_per_increment=Decimal(3), receivable_per_increment=Decimal(2)
                )
            ],
        ),
    }
    plan.update(overrides)
    return TariffPlan.model_validate(plan)
