"""Ro messages of the IMS-GWF (TS 32.299 6.4, RFC 4006 section 3): CCRs built, CCAs read.  No I/O.

A CCR carries, for the session's one service: Multiple-Services-Credit-Control with the Rating-Group and
Service-Identifier configured, a Requested-Service-Unit (CC-Time when configured) on CCR-I and CCR-U,
and on CCR-U and CCR-T the Used-Service-Unit in CC-Time seconds with its Reporting-Reason.  Following
TS 32.299 7.2.175, THRESHOLD and QUOTA_EXHAUSTED, which concern the time quota, go inside the
Used-Service-Unit; VALIDITY_TIME, FORCED_REAUTHORISATION and FINAL, which concern the whole
credit-control instance, go in the MSCC.  Service-Information / IMS-Information (TS 32.299 7.2.77)
describes the session: Event-Type with SIP-Method, Role-Of-Node, Node-Functionality AS, User-Session-Id
(the Call-ID), the parties, SIP-Request-Timestamp, the IOIs and the ICID.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from charging.diameter import Message
from charging.diameter.constants import AppId, ResultCode
from charging.gwf.credit import (
    CCFH_VALUES,
    QUOTA_EXHAUSTED,
    THRESHOLD,
    CreditAnswer,
    Kind,
    SendCcr,
)
from charging.gwf.ims import SessionData

NODE_FUNCTIONALITY_AS = 6


@dataclass(slots=True, frozen=True)
class RoProfile:
    origin_host: str
    origin_realm: str
    destination_realm: str
    destination_host: str | None = None
    service_context: str = "32260@3gpp.org"
    rating_group: int | None = 100
    service_identifier: int | None = None
    requested_seconds: int | None = 60


def ims_information(data: SessionData, method: str = "INVITE") -> dict[str, Any]:
    info: dict[str, Any] = {
        "Event-Type": {"SIP-Method": method},
        "Role-Of-Node": data.role,
        "Node-Functionality": NODE_FUNCTIONALITY_AS,
        "User-Session-Id": data.call_id,
        "Calling-Party-Address": list(data.calling_parties),
        "Called-Party-Address": data.called_party,
        "Time-Stamps": {"SIP-Request-Timestamp": int(data.request_time)},
    }
    ioi: dict[str, Any] = {}
    if data.orig_ioi:
        ioi["Originating-IOI"] = data.orig_ioi
    if data.term_ioi:
        ioi["Terminating-IOI"] = data.term_ioi
    if ioi:
        info["Inter-Operator-Identifier"] = [ioi]
    if data.icid:
        info["IMS-Charging-Identifier"] = data.icid
    return info


def build_ccr(
    profile: RoProfile,
    session_id: str,
    data: SessionData,
    ccr: SendCcr,
    now: float,
    server_host: str | None = None,
) -> Message:
    """A CCR; ``server_host`` is the Origin-Host of the OCF that answered the CCR-I, which later requests
    of the session name as Destination-Host so that they reach the same server (RFC 4006 section 7)."""
    id_type, id_data = data.subscription_id()
    avps: list[tuple[str, Any]] = [
        ("Session-Id", session_id),
        ("Origin-Host", profile.origin_host),
        ("Origin-Realm", profile.origin_realm),
        ("Destination-Realm", profile.destination_realm),
        ("Auth-Application-Id", AppId.CREDIT_CONTROL),
        ("Service-Context-Id", profile.service_context),
        ("CC-Request-Type", int(ccr.kind)),
        ("CC-Request-Number", ccr.number),
    ]
    destination_host = server_host if ccr.kind is not Kind.INITIAL and server_host else profile.destination_host
    if destination_host:
        avps.append(("Destination-Host", destination_host))
    avps.append(("Event-Timestamp", int(now)))
    avps.append(("Subscription-Id", {"Subscription-Id-Type": id_type, "Subscription-Id-Data": id_data}))
    if ccr.termination_cause is not None:
        avps.append(("Termination-Cause", ccr.termination_cause))
    if ccr.kind is Kind.INITIAL:
        avps.append(("Multiple-Services-Indicator", 1))  # MULTIPLE_SERVICES_SUPPORTED
    avps.append(("Multiple-Services-Credit-Control", _mscc(profile, ccr)))
    avps.append(("Service-Information", {"IMS-Information": ims_information(data)}))
    return Message.request("CCR", AppId.CREDIT_CONTROL, avps)


def _mscc(profile: RoProfile, ccr: SendCcr) -> dict[str, Any]:
    mscc: dict[str, Any] = {}
    if ccr.request_units:
        rsu: dict[str, Any] = {}
        if profile.requested_seconds:
            rsu["CC-Time"] = profile.requested_seconds
        mscc["Requested-Service-Unit"] = rsu
    if ccr.used_seconds is not None:
        usu: dict[str, Any] = {}
        if ccr.reporting_reason in (THRESHOLD, QUOTA_EXHAUSTED):
            usu["Reporting-Reason"] = ccr.reporting_reason
        usu["CC-Time"] = ccr.used_seconds
        mscc["Used-Service-Unit"] = [usu]
    if profile.service_identifier is not None:
        mscc["Service-Identifier"] = [profile.service_identifier]
    if profile.rating_group is not None:
        mscc["Rating-Group"] = profile.rating_group
    if ccr.reporting_reason is not None and ccr.reporting_reason not in (THRESHOLD, QUOTA_EXHAUSTED):
        mscc["Reporting-Reason"] = [ccr.reporting_reason]
    return mscc


def result_code(msg: Message) -> int:
    code = msg.get("Result-Code")
    if code is None:
        experimental = msg.get("Experimental-Result")
        code = experimental.get("Experimental-Result-Code") if experimental is not None else None
    return int(code) if code is not None else ResultCode.DIAMETER_UNABLE_TO_COMPLY


def parse_cca(msg: Message, profile: RoProfile) -> CreditAnswer:
    """The parts of a CCA the client acts on, from the MSCC of our rating group (or service), else the
    command level (RFC 4006 answers without MSCC)."""
    code = result_code(msg)
    mscc = _our_mscc(msg, profile)
    scope: Any = mscc if mscc is not None else msg
    if mscc is not None and 2000 <= code < 3000:
        inner = mscc.get("Result-Code")
        if inner is not None and not 2000 <= int(inner) < 3000:
            code = int(inner)  # a refusal of this service inside a successful answer
    gsu = scope.get("Granted-Service-Unit") or msg.get("Granted-Service-Unit")
    granted = gsu.get("CC-Time") if gsu is not None else None
    validity = scope.get("Validity-Time") or msg.get("Validity-Time")
    fui = scope.get("Final-Unit-Indication") or msg.get("Final-Unit-Indication")
    action = fui.get("Final-Unit-Action") if fui is not None else None
    threshold = scope.get("Time-Quota-Threshold") if mscc is not None else None
    ccfh = msg.get("Credit-Control-Failure-Handling")
    return CreditAnswer(
        result_code=code,
        granted_seconds=int(granted) if granted is not None else None,
        validity_time=int(validity) if validity is not None else None,
        final_unit_action=int(action) if action is not None else None,
        time_threshold=int(threshold) if threshold is not None else None,
        failure_handling=CCFH_VALUES.get(int(ccfh)) if ccfh is not None else None,
    )


def _our_mscc(msg: Message, profile: RoProfile) -> Any:
    blocks = msg.all("Multiple-Services-Credit-Control")
    if not blocks:
        return None
    for block in blocks:
        if profile.rating_group is not None and block.get("Rating-Group") == profile.rating_group:
            return block
        if profile.service_identifier is not None and profile.service_identifier in block.all("Service-Identifier"):
            return block
    return blocks[0]
