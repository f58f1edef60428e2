"""The Ro server: Credit-Control-Requests in, Credit-Control-Answers out (RFC 4006, TS 32.299 6.4).

``OcfServer.on_ccr`` reads a CCR into a ``CreditRequest`` (refusing what cannot be
served with the answer the RFCs require), hands it to the batcher, and sends the CCA the
store committed.  ``encode_answer`` turns the credit-control decision into the CCA's
AVPs; it runs in the writer thread so that the very bytes sent are the ones stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from charging.db import DatabaseUnavailable
from charging.diameter import Avp, AvpGroup, DiameterError, Message
from charging.diameter.constants import AppId, CcRequestType, Command, ResultCode
from charging.diameter.dictionary import DICTIONARY, iter_encoded
from charging.diameter.message import FLAG_PROXIABLE
from charging.diameter.node import DiameterNode
from ocf.control import CreditAnswer, CreditRequest, ServiceResult, ServiceUse, Units
from ocf.rating import UNIT_MONEY, UNIT_OCTETS, UNIT_TIME, UNIT_UNITS, destination_digits, to_minor, unit_value
from ocf.settings import OcfSettings
from ocf.store import Batcher, Outcome

log = logging.getLogger("charging.ocf")

# RFC 8506 8.58: the Subscription-Id-Extension member that stands for each Subscription-Id-Type.
_EXTENSION_TYPES = (
    ("Subscription-Id-E164", 0),
    ("Subscription-Id-IMSI", 1),
    ("Subscription-Id-SIP-URI", 2),
    ("Subscription-Id-NAI", 3),
    ("Subscription-Id-Private", 4),
)
_THRESHOLD_AVP = {
    UNIT_TIME: "Time-Quota-Threshold",
    UNIT_OCTETS: "Volume-Quota-Threshold",
    UNIT_UNITS: "Unit-Quota-Threshold",
}


def service_of_context(context: str) -> str:
    """The service part of a TS 32.299 Service-Context-Id: ``ext.MNC.MCC.rel.32260@3gpp.org`` -> ``32260@3gpp.org``."""
    local, at, domain = context.partition("@")
    return f"{local.rsplit('.', 1)[-1]}{at}{domain}"


def _failed(avp: Avp | None, missing: str = "") -> bytes:
    """The Failed-AVP content: the offending AVP as received, or a zero example of a missing one (RFC 6733 7.5)."""
    if avp is not None:
        return avp.to_bytes()
    defn = DICTIONARY.avp(missing)
    return Avp.from_raw(defn.code, b"\x00" * 4, defn.vendor_id, defn.flags).to_bytes()


def units_of(group: AvpGroup, default_currency: int, round_up: bool) -> Units | None:
    """The one unit type a Requested- or Used-Service-Unit carries (None when it carries none)."""
    value = group.get("CC-Time")
    if value is not None:
        return Units(UNIT_TIME, value)
    value = group.get("CC-Total-Octets")
    if value is not None:
        return Units(UNIT_OCTETS, value)
    inbound, outbound = group.get("CC-Input-Octets"), group.get("CC-Output-Octets")
    if inbound is not None or outbound is not None:
        return Units(UNIT_OCTETS, (inbound or 0) + (outbound or 0))
    value = group.get("CC-Service-Specific-Units")
    if value is not None:
        return Units(UNIT_UNITS, value)
    money = group.get("CC-Money")
    if money is not None:
        worth = money["Unit-Value"]
        digits = worth["Value-Digits"]
        if digits < 0:
            raise DiameterError(
                ResultCode.DIAMETER_INVALID_AVP_VALUE, "negative CC-Money", _failed(group.avp("CC-Money"))
            )
        currency = money.get("Currency-Code")
        amount = to_minor(
            digits, worth.get("Exponent", 0), default_currency if currency is None else currency, round_up
        )
        return Units(UNIT_MONEY, amount, currency)
    return None


class CcrReader:
    """Reads the parts of a CCR the OCF acts on; raises DiameterError with the answer the RFCs ask for."""

    def __init__(self, settings: OcfSettings) -> None:
        self.settings = settings
        self.served = set(settings.service_contexts)
        self.not_applicable = set(settings.not_applicable_contexts)

    def read(self, msg: Message) -> CreditRequest:
        top = _index(msg)  # one pass over the AVPs instead of a scan per name
        context = _first(top, _K["Service-Context-Id"])
        service = service_of_context(context)
        if service in self.not_applicable:
            raise DiameterError(ResultCode.DIAMETER_CREDIT_CONTROL_NOT_APPLICABLE, f"no credit control for {service}")
        if service not in self.served:
            # RFC 4006 4.1.3: an unsupported service context is a rating failure, with the AVP in Failed-AVP.
            raise DiameterError(
                ResultCode.DIAMETER_RATING_FAILED,
                f"service context {context} not served",
                _failed(msg.avp("Service-Context-Id"), "Service-Context-Id"),
            )
        request_type = _first(top, _K["CC-Request-Type"])
        if request_type not in (1, 2, 3, 4):
            raise DiameterError(
                ResultCode.DIAMETER_INVALID_AVP_VALUE, "unknown CC-Request-Type", _failed(msg.avp("CC-Request-Type"))
            )
        req = CreditRequest(
            session_id=_first(top, _K["Session-Id"]),
            request_type=request_type,
            request_number=_first(top, _K["CC-Request-Number"]),
            origin_host=_first(top, _K["Origin-Host"]),
            origin_realm=_first(top, _K["Origin-Realm"]),
            service_context=context,
            retransmit=msg.is_retransmit,
        )
        for sub in top.get(_K["Subscription-Id"], ()):
            group = sub.value
            req.subscription_ids.append((group["Subscription-Id-Type"], group["Subscription-Id-Data"]))
        for ext in top.get(_K["Subscription-Id-Extension"], ()):
            for name, id_type in _EXTENSION_TYPES:
                data = ext.value.get(name)
                if data is not None:
                    req.subscription_ids.append((id_type, data))
        ims = _first(top, _K["Service-Information"])
        ims = ims.get("IMS-Information") if ims is not None else None
        if ims is not None:
            req.icid = ims.get("IMS-Charging-Identifier") or ""
            address = ims.get("Called-Party-Address") or ims.get("Requested-Party-Address")
            req.destination = destination_digits(address)
        if request_type == CcRequestType.EVENT:
            action = _first(top, _K["Requested-Action"])
            if action is None:
                # RFC 4006 8.3: Requested-Action MUST be present in an EVENT_REQUEST.
                raise DiameterError(
                    ResultCode.DIAMETER_MISSING_AVP, "Requested-Action missing", _failed(None, "Requested-Action")
                )
            if action not in (0, 1, 2, 3):
                raise DiameterError(
                    ResultCode.DIAMETER_INVALID_AVP_VALUE,
                    "unknown Requested-Action",
                    _failed(msg.avp("Requested-Action")),
                )
            req.requested_action = action
        currency = self.settings.default_currency
        msccs = top.get(_K["Multiple-Services-Credit-Control"])
        if msccs:
            req.multiple_services = True
            for mscc in msccs:
                req.services.append(self._use(_index(mscc.value), currency, in_mscc=True))
        else:
            use = self._use(top, currency, in_mscc=False)
            if request_type == CcRequestType.INITIAL:
                use.requested_present = True  # a session start asks for credit, with or without a figure
            req.services.append(use)
        return req

    def _use(self, avps: dict[int, list[Avp]], currency: int, in_mscc: bool) -> ServiceUse:
        use = ServiceUse(_first(avps, _K["Rating-Group"]), _first(avps, _K["Service-Identifier"]))
        rsu = _first(avps, _K["Requested-Service-Unit"])
        if rsu is not None:
            use.requested_present = True
            use.requested = units_of(rsu, currency, round_up=False)
        for usu in avps.get(_K["Used-Service-Unit"], ()):
            units = units_of(usu.value, currency, round_up=True)
            if units is not None:
                use.used.append(units)
            use.reporting_reasons.extend(usu.value.all("Reporting-Reason"))
        if in_mscc:
            use.reporting_reasons.extend(avp.value for avp in avps.get(_K["Reporting-Reason"], ()))
        return use


def _index(container: Message | AvpGroup) -> dict[int, list[Avp]]:
    out: dict[int, list[Avp]] = {}
    for avp in container:
        key = avp.code | (avp.vendor_id << 32)
        found = out.get(key)
        if found is None:
            out[key] = [avp]
        else:
            found.append(avp)
    return out


def _first(avps: dict[int, list[Avp]], key: int) -> Any:
    found = avps.get(key)
    return found[0].value if found else None


_K = {
    name: DICTIONARY.avp(name).code | (DICTIONARY.avp(name).vendor_id << 32)
    for name in (
        "Session-Id",
        "Origin-Host",
        "Origin-Realm",
        "Service-Context-Id",
        "CC-Request-Type",
        "CC-Request-Number",
        "Subscription-Id",
        "Subscription-Id-Extension",
        "Service-Information",
        "Requested-Action",
        "Multiple-Services-Credit-Control",
        "Rating-Group",
        "Service-Identifier",
        "Requested-Service-Unit",
        "Used-Service-Unit",
        "Reporting-Reason",
    )
}


class AnswerEncoder:
    """Turns a credit-control decision into the CCA's AVPs (Session-Id first, Proxy-Info left to the sender)."""

    def __init__(self, settings: OcfSettings, origin_host: str, origin_realm: str) -> None:
        self.settings = settings
        self.origin_host = origin_host
        self.origin_realm = origin_realm
        # The same three AVPs in every answer: encoded once.
        self._identity = b"".join(
            iter_encoded(
                [
                    ("Origin-Host", origin_host),
                    ("Origin-Realm", origin_realm),
                    ("Auth-Application-Id", AppId.CREDIT_CONTROL),
                ],
                DICTIONARY,
            )
        )

    def __call__(self, req: CreditRequest, ans: CreditAnswer) -> bytes:
        avps: list[tuple[str, Any] | bytes] = [
            ("Session-Id", req.session_id),
            ("Result-Code", ans.result_code),
            self._identity,
            ("CC-Request-Type", req.request_type),
            ("CC-Request-Number", req.request_number),
        ]
        if ans.error_message and ans.result_code != ResultCode.DIAMETER_SUCCESS:
            avps.append(("Error-Message", ans.error_message[:200]))
        if ans.multiple_services:
            avps.extend(("Multiple-Services-Credit-Control", self._mscc(r)) for r in ans.services)
        elif ans.services:
            only = ans.services[0]
            if only.granted is not None:
                avps.append(("Granted-Service-Unit", self._gsu(only.granted)))
            if only.final:
                avps.append(("Final-Unit-Indication", self._fui()))
            if only.validity_time is not None:
                avps.append(("Validity-Time", only.validity_time))
        if ans.cost is not None and ans.currency is not None:
            avps.append(
                ("Cost-Information", {"Unit-Value": unit_value(ans.cost, ans.currency), "Currency-Code": ans.currency})
            )
        if ans.check_balance is not None:
            avps.append(("Check-Balance-Result", ans.check_balance))
        if self.settings.credit_control_failure_handling is not None and req.request_type != CcRequestType.EVENT:
            avps.append(("Credit-Control-Failure-Handling", self.settings.credit_control_failure_handling))
        if self.settings.direct_debiting_failure_handling is not None:
            avps.append(("Direct-Debiting-Failure-Handling", self.settings.direct_debiting_failure_handling))
        if ans.low_balance is not None:
            avps.append(("Low-Balance-Indication", "YES" if ans.low_balance else "NOT_APPLICABLE"))
            if ans.remaining_balance is not None and ans.currency is not None:
                worth = unit_value(max(0, ans.remaining_balance), ans.currency)
                avps.append(("Remaining-Balance", {"Unit-Value": worth, "Currency-Code": ans.currency}))
        return b"".join(iter_encoded(avps, DICTIONARY))

    def _gsu(self, granted: Units) -> dict[str, Any]:
        if granted.unit == UNIT_TIME:
            return {"CC-Time": granted.amount}
        if granted.unit == UNIT_OCTETS:
            return {"CC-Total-Octets": granted.amount}
        if granted.unit == UNIT_UNITS:
            return {"CC-Service-Specific-Units": granted.amount}
        currency = granted.currency if granted.currency is not None else self.settings.default_currency
        return {"CC-Money": {"Unit-Value": unit_value(granted.amount, currency), "Currency-Code": currency}}

    def _fui(self) -> dict[str, Any]:
        action = self.settings.final_unit_action
        fui: dict[str, Any] = {"Final-Unit-Action": action}
        if action == "REDIRECT":
            fui["Redirect-Server"] = {
                "Redirect-Address-Type": self.settings.redirect_address_type,
                "Redirect-Server-Address": self.settings.redirect_server_address,
            }
        elif action == "RESTRICT_ACCESS" and self.settings.restriction_filter_ids:
            fui["Filter-Id"] = list(self.settings.restriction_filter_ids)
        return fui

    def _mscc(self, result: ServiceResult) -> dict[str, Any]:
        mscc: dict[str, Any] = {}
        if result.granted is not None:
            mscc["Granted-Service-Unit"] = self._gsu(result.granted)
        if result.service_identifier is not None:
            mscc["Service-Identifier"] = result.service_identifier
        if result.rating_group is not None:
            mscc["Rating-Group"] = result.rating_group
        if result.validity_time is not None:
            mscc["Validity-Time"] = result.validity_time
        mscc["Result-Code"] = result.result_code
        if result.final:
            mscc["Final-Unit-Indication"] = self._fui()
        if result.threshold and result.granted is not None and result.granted.unit in _THRESHOLD_AVP:
            mscc[_THRESHOLD_AVP[result.granted.unit]] = result.threshold
        return mscc


class OcfServer:
    """The Diameter face of the OCF: registered for Credit-Control on the node."""

    def __init__(self, settings: OcfSettings, batcher: Batcher[CreditRequest, Outcome]) -> None:
        self.settings = settings
        self.batcher = batcher
        self.reader = CcrReader(settings)
        self.on_refused: list[Callable[[], None]] = []  # run after a CCA that refused credit was committed

    def register(self, node: DiameterNode) -> None:
        node.register(AppId.CREDIT_CONTROL, Command.CREDIT_CONTROL, self.on_ccr)

    async def on_ccr(self, msg: Message, peer: Any) -> Message:
        req = self.reader.read(msg)
        try:
            outcome = await self.batcher.submit(req)
        except DatabaseUnavailable as exc:
            # A transient failure: the client applies its CCFH / DDFH (RFC 4006 5.7, 6.5) and may retry.
            log.warning("CCR %s/%d not settled: %s", req.session_id, req.request_number, exc, extra=_extra(req))
            raise DiameterError(ResultCode.DIAMETER_TOO_BUSY, "credit store unavailable") from None
        answer = Message(
            msg.code, msg.app_id, msg.flags & FLAG_PROXIABLE, msg.hop_by_hop, msg.end_to_end, [outcome.body]
        )
        for proxy in msg.all("Proxy-Info"):
            answer.add("Proxy-Info", proxy)
        if outcome.result_code != ResultCode.DIAMETER_SUCCESS or _refused_service(outcome):
            self._log_refusal(req, outcome)
            if any(code == ResultCode.DIAMETER_CREDIT_LIMIT_REACHED for code in _codes(outcome)):
                for callback in self.on_refused:
                    callback()
        return answer

    def _log_refusal(self, req: CreditRequest, outcome: Outcome) -> None:
        notes = ""
        if outcome.answer is not None:
            notes = "; ".join(
                f"{s.rating_group}/{s.service_identifier}: {s.note}" for s in outcome.answer.services if s.note
            )
            if outcome.answer.error_message:
                notes = f"{outcome.answer.error_message}; {notes}" if notes else outcome.answer.error_message
        log.info(
            "CCR %s/%d type %d answered %s %s",
            req.session_id,
            req.request_number,
            req.request_type,
            list(_codes(outcome)),
            notes,
            extra=_extra(req),
        )


def _codes(outcome: Outcome) -> list[int]:
    codes = [outcome.result_code]
    if outcome.answer is not None:
        codes += [s.result_code for s in outcome.answer.services]
    return codes


def _refused_service(outcome: Outcome) -> bool:
    return any(code != ResultCode.DIAMETER_SUCCESS for code in _codes(outcome))


def _extra(req: CreditRequest) -> dict[str, Any]:
    return {"session_id": req.session_id, "icid": req.icid or None}
