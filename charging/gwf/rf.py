"""Rf accounting of the IMS-GWF as an AS (TS 32.299 6.2, TS 32.260 5.1.2): ACRs built.  No I/O.

The GWF reports the session it charges online also offline, when configured: ACR START when the call is
answered, INTERIM every Acct-Interim-Interval (the CDF's value from the ACA, else the configured one),
STOP when it ends, each with the IMS-Information of the Ro requests (so the CDF correlates the AS records
with the other nodes' by the same ICID and IOIs), Node-Functionality AS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from charging.diameter import Message
from charging.diameter.constants import AccountingRecordType, AppId
from charging.gwf.ims import SessionData
from charging.gwf.ro import ims_information


@dataclass(slots=True, frozen=True)
class RfProfile:
    origin_host: str
    origin_realm: str
    destination_realm: str
    destination_host: str | None = None
    service_context: str = "32260@3gpp.org"
    interim_interval: int = 0  # seconds; 0: only what the CDF asks for


def build_acr(
    profile: RfProfile,
    session_id: str,
    data: SessionData,
    record_type: AccountingRecordType,
    number: int,
    now: float,
    answered_at: float | None = None,
    cause_code: int | None = None,
) -> Message:
    stop = record_type is AccountingRecordType.STOP
    info = ims_information(data, "BYE" if stop else "INVITE")
    if stop:
        # TS 32.299 7.2.206: in a STOP the time stamps are those of the request that ended the session.
        info["Time-Stamps"] = {"SIP-Request-Timestamp": int(now)}
    elif answered_at is not None:
        info["Time-Stamps"] = {
            "SIP-Request-Timestamp": int(data.request_time),
            "SIP-Response-Timestamp": int(answered_at),
        }
    if cause_code is not None:
        info["Cause-Code"] = cause_code
    avps: list[tuple[str, Any]] = [
        ("Session-Id", session_id),
        ("Origin-Host", profile.origin_host),
        ("Origin-Realm", profile.origin_realm),
        ("Destination-Realm", profile.destination_realm),
        ("Accounting-Record-Type", int(record_type)),
        ("Accounting-Record-Number", number),
        ("Acct-Application-Id", AppId.ACCOUNTING),
    ]
    if profile.destination_host:
        avps.append(("Destination-Host", profile.destination_host))
    if profile.interim_interval and record_type in (AccountingRecordType.START, AccountingRecordType.INTERIM):
        avps.append(("Acct-Interim-Interval", profile.interim_interval))
    avps.append(("Event-Timestamp", int(now)))
    avps.append(("Service-Context-Id", profile.service_context))
    id_type, id_data = data.subscription_id()
    subscription = {"Subscription-Id-Type": id_type, "Subscription-Id-Data": id_data}
    avps.append(("Service-Information", {"Subscription-Id": [subscription], "IMS-Information": info}))
    return Message.request("ACR", AppId.ACCOUNTING, avps)
