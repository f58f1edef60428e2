"""The Ro server: Credit-Control-Requests in, Credit-Control-Answers out (RFC 4006, TS 32.299 6.4).

``OcfServer.on_ccr`` reads a CCR into a ``CreditRequest`` (refusing what cannot be
served with the answer the RFCs require), hands it to the batcher, and sends the CCA the
store committed.  ``CcrReader`` reads the common CCRs straight from their bytes and leaves
anything unusual to the general way over the node's AVP objects.  ``AnswerEncoder`` turns
the credit-control decision into the CCA's AVPs while the batch is settled, so that the very
bytes sent are the ones stored; AVPs that repeat from answer to answer are encoded once.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

from charging.db import DatabaseUnavailable
from charging.diameter import Avp, AvpGroup, DiameterError, Message
from charging.diameter.constants import AppId, CcRequestType, Command, ResultCode
from charging.diameter.dictionary import DECODERS, DICTIONARY, iter_encoded
from charging.diameter.message import FLAG_PROXIABLE, HEADER_LENGTH, PLACE_END, AvpIndex, AvpPlaces
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
_ENCODED_CACHE = 4096  # encoded AVPs kept by AnswerEncoder
_CONTEXTS_KEPT = 1024  # served Service-Context-Ids the reader remembers
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
        self._servable: set[str] = set()  # Service-Context-Ids seen that are served

    def _learn_context(self, context: str) -> bool:
        """Whether requests with this Service-Context-Id are served (and remember it when they are)."""
        service = service_of_context(context)
        if service not in self.served or service in self.not_applicable:
            return False
        if len(self._servable) < _CONTEXTS_KEPT:
            self._servable.add(context)
        return True

    def read(self, msg: Message) -> CreditRequest:
        return self.read_with_proxies(msg)[0]

    def read_with_proxies(self, msg: Message) -> tuple[CreditRequest, bool]:
        """The request, and whether the CCR carries Proxy-Info (which the answer must echo)."""
        fast = self._fast(msg)
        if fast is not None:
            return fast
        return self._read(msg), bool(msg.all("Proxy-Info"))

    def _fast(self, msg: Message) -> tuple[CreditRequest, bool] | None:
        """The common CCR read from where the validator found its AVPs; None for anything unusual, which
        ``_read`` handles, and for a message the node's validator has not seen (no ``avp_index``).

        Only the AVPs the OCF acts on are decoded, with the dictionary's own decoders, and no AVP
        objects are made.  Whatever this does not know how to take (a refusal, CC-Money, the RFC 8506
        Subscription-Id-Extension, a malformed member) goes the general way, so both ways give the
        same request or raise the same error.
        """
        index = msg.avp_index
        if index is None:
            return None
        buf = msg.to_bytes()
        try:
            top = index[HEADER_LENGTH]
            if _EXTENSION in top:
                return None
            context = _value(buf, top, _CONTEXT)
            request_type = _value(buf, top, _REQUEST_TYPE)
            if request_type not in (1, 2, 3, 4) or context is None:
                return None
            if context not in self._servable and not self._learn_context(context):
                return None
            req = CreditRequest(
                session_id=_value(buf, top, _SESSION_ID),
                request_type=request_type,
                request_number=_value(buf, top, _REQUEST_NUMBER),
                origin_host=_value(buf, top, _ORIGIN_HOST),
                origin_realm=_value(buf, top, _ORIGIN_REALM),
                service_context=context,
                retransmit=msg.is_retransmit,
            )
            for place in top.get(_SUBSCRIPTION_ID, _NONE):
                group = index[place >> 32]
                if _SUB_TYPE not in group or _SUB_DATA not in group:
                    return None
                req.subscription_ids.append((_value(buf, group, _SUB_TYPE), _value(buf, group, _SUB_DATA)))
            info = top.get(_SERVICE_INFORMATION)
            if info is not None:
                ims_at = index[info[0] >> 32].get(_IMS_INFORMATION)
                if ims_at is not None:
                    ims = index[ims_at[0] >> 32]
                    req.icid = _value(buf, ims, _ICID) or ""
                    address = _value(buf, ims, _CALLED) or _value(buf, ims, _REQUESTED_PARTY)
                    req.destination = destination_digits(address)
            if request_type == CcRequestType.EVENT:
                action = _value(buf, top, _REQUESTED_ACTION)
                if action not in (0, 1, 2, 3):
                    return None
                req.requested_action = action
            msccs = top.get(_MSCC)
            if msccs:
                req.multiple_services = True
                for place in msccs:
                    use = _fast_use(buf, index, index[place >> 32], in_mscc=True)
                    if use is None:
                        return None
                    req.services.append(use)
            else:
                use = _fast_use(buf, index, top, in_mscc=False)
                if use is None:
                    return None
                if request_type == CcRequestType.INITIAL:
                    use.requested_present = True  # a session start asks for credit, with or without a figure
                req.services.append(use)
            return req, _PROXY_INFO in top
        except (DiameterError, ValueError, struct.error, KeyError):
            return None  # the general way raises the answer the RFCs ask for

    def _read(self, msg: Message) -> CreditRequest:
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
        key = avp.key
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
    name: DICTIONARY.avp(name).key
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


# -- the fast way: AVPs where the validator found them ----------------------------------------------------------
_NONE: list[int] = []


def _key(name: str) -> int:
    return DICTIONARY.avp(name).key


def _value(buf: bytes, found: AvpPlaces, key: int) -> Any:
    """The first instance's value, decoded as the dictionary decodes it; None when absent."""
    places = found.get(key)
    if places is None:
        return None
    place = places[0]
    return DECODERS[key](buf, place >> 32, place & PLACE_END)


def _values(buf: bytes, found: AvpPlaces, key: int) -> list[Any]:
    decode = DECODERS[key]
    return [decode(buf, place >> 32, place & PLACE_END) for place in found.get(key, _NONE)]


def _fast_units(buf: bytes, group: AvpPlaces) -> Units | bool | None:
    """``units_of`` on a group; False when it needs the general way (CC-Money)."""
    if _CC_TIME in group:
        return Units(UNIT_TIME, _value(buf, group, _CC_TIME))
    if _CC_TOTAL in group:
        return Units(UNIT_OCTETS, _value(buf, group, _CC_TOTAL))
    if _CC_INPUT in group or _CC_OUTPUT in group:
        return Units(UNIT_OCTETS, (_value(buf, group, _CC_INPUT) or 0) + (_value(buf, group, _CC_OUTPUT) or 0))
    if _CC_SSU in group:
        return Units(UNIT_UNITS, _value(buf, group, _CC_SSU))
    if _CC_MONEY in group:
        return False
    return None


def _fast_use(buf: bytes, index: AvpIndex, avps: AvpPlaces, in_mscc: bool) -> ServiceUse | None:
    use = ServiceUse(_value(buf, avps, _RATING_GROUP), _value(buf, avps, _SERVICE_IDENTIFIER))
    rsu = avps.get(_RSU)
    if rsu is not None:
        use.requested_present = True
        requested = _fast_units(buf, index[rsu[0] >> 32])
        if requested is False:
            return None
        use.requested = requested  # type: ignore[assignment]
    for place in avps.get(_USU, _NONE):
        group = index[place >> 32]
        used = _fast_units(buf, group)
        if used is False:
            return None
        if used is not None:
            use.used.append(used)  # type: ignore[arg-type]
        if _REASON in group:
            use.reporting_reasons.extend(_values(buf, group, _REASON))
    if in_mscc:
        use.reporting_reasons.extend(_values(buf, avps, _REASON))
    return use


(
    _SESSION_ID,
    _ORIGIN_HOST,
    _ORIGIN_REALM,
    _CONTEXT,
    _REQUEST_TYPE,
    _REQUEST_NUMBER,
    _SUBSCRIPTION_ID,
    _EXTENSION,
    _SERVICE_INFORMATION,
    _REQUESTED_ACTION,
    _MSCC,
    _PROXY_INFO,
) = (
    _key(name)
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
        "Proxy-Info",
    )
)
_SUB_TYPE, _SUB_DATA = _key("Subscription-Id-Type"), _key("Subscription-Id-Data")
_IMS_INFORMATION = _key("IMS-Information")
_ICID, _CALLED, _REQUESTED_PARTY = (
    _key("IMS-Charging-Identifier"),
    _key("Called-Party-Address"),
    _key("Requested-Party-Address"),
)
_RATING_GROUP, _SERVICE_IDENTIFIER = _key("Rating-Group"), _key("Service-Identifier")
_RSU, _USU, _REASON = _key("Requested-Service-Unit"), _key("Used-Service-Unit"), _key("Reporting-Reason")
_CC_TIME, _CC_TOTAL, _CC_INPUT, _CC_OUTPUT, _CC_SSU, _CC_MONEY = (
    _key(name)
    for name in (
        "CC-Time",
        "CC-Total-Octets",
        "CC-Input-Octets",
        "CC-Output-Octets",
        "CC-Service-Specific-Units",
        "CC-Money",
    )
)


def _units_key(units: Units | None) -> tuple[str | None, int | None, int | None]:
    """Units as plain values, quicker to hash and compare than the dataclass."""
    if units is None:
        return None, None, None
    return units.unit, units.amount, units.currency


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

        by_name = DICTIONARY.by_name
        self._encode_session_id = by_name["Session-Id"].encode
        self._encode = {name: defn.encode for name, defn in by_name.items()}
        # Encoded AVPs by (name, value), and grouped ones by the figures they carry: most answers
        # repeat a few shapes (2001, request numbers, the usual grant), so they are encoded once.
        self._cache: dict[Any, bytes] = {}

    def _cached(self, key: Any, make: Callable[[], bytes]) -> bytes:
        cache = self._cache
        found = cache.get(key)
        if found is None:
            if len(cache) >= _ENCODED_CACHE:
                cache.clear()
            found = cache[key] = make()
        return found

    def _avp(self, name: str, value: Any) -> bytes:
        found = self._cache.get((name, value))
        if found is None:
            found = self._cached((name, value), lambda: self._encode[name](value))
        return found

    def __call__(self, req: CreditRequest, ans: CreditAnswer) -> bytes:
        avp = self._avp
        parts = [
            self._encode_session_id(req.session_id),
            avp("Result-Code", ans.result_code),
            self._identity,
            avp("CC-Request-Type", req.request_type),
            avp("CC-Request-Number", req.request_number),
        ]
        if ans.error_message and ans.result_code != ResultCode.DIAMETER_SUCCESS:
            parts.append(self._encode["Error-Message"](ans.error_message[:200]))
        if ans.multiple_services:
            parts.extend(self._mscc(r) for r in ans.services)
        elif ans.services:
            only = ans.services[0]
            if only.granted is not None:
                granted = only.granted
                parts.append(
                    self._cached(
                        ("GSU", *_units_key(granted)), lambda: self._encode["Granted-Service-Unit"](self._gsu(granted))
                    )
                )
            if only.final:
                parts.append(self._cached(("FUI",), lambda: self._encode["Final-Unit-Indication"](self._fui())))
            if only.validity_time is not None:
                parts.append(avp("Validity-Time", only.validity_time))
        if ans.cost is not None and ans.currency is not None:
            parts.append(self._money("Cost-Information", ans.cost, ans.currency))
        if ans.check_balance is not None:
            parts.append(avp("Check-Balance-Result", ans.check_balance))
        if self.settings.credit_control_failure_handling is not None and req.request_type != CcRequestType.EVENT:
            parts.append(avp("Credit-Control-Failure-Handling", self.settings.credit_control_failure_handling))
        if self.settings.direct_debiting_failure_handling is not None:
            parts.append(avp("Direct-Debiting-Failure-Handling", self.settings.direct_debiting_failure_handling))
        if ans.low_balance is not None:
            parts.append(avp("Low-Balance-Indication", "YES" if ans.low_balance else "NOT_APPLICABLE"))
            if ans.remaining_balance is not None and ans.currency is not None:
                parts.append(self._money("Remaining-Balance", max(0, ans.remaining_balance), ans.currency))
        return b"".join(parts)

    def _money(self, name: str, amount: int, currency: int) -> bytes:
        """Cost-Information or Remaining-Balance: a Unit-Value and a Currency-Code."""
        return self._cached(
            (name, amount, currency),
            lambda: self._encode[name]({"Unit-Value": unit_value(amount, currency), "Currency-Code": currency}),
        )

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

    def _mscc(self, result: ServiceResult) -> bytes:
        key = (
            "MSCC",
            *_units_key(result.granted),
            result.service_identifier,
            result.rating_group,
            result.validity_time,
            result.result_code,
            result.final,
            result.threshold,
        )
        return self._cached(key, lambda: self._encode["Multiple-Services-Credit-Control"](self._mscc_group(result)))

    def _mscc_group(self, result: ServiceResult) -> dict[str, Any]:
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
        req, proxied = self.reader.read_with_proxies(msg)
        try:
            outcome = await self.batcher.submit(req)
        except DatabaseUnavailable as exc:
            # A transient failure: the client applies its CCFH / DDFH (RFC 4006 5.7, 6.5) and may retry.
            log.warning("CCR %s/%d not settled: %s", req.session_id, req.request_number, exc, extra=_extra(req))
            raise DiameterError(ResultCode.DIAMETER_TOO_BUSY, "credit store unavailable") from None
        answer = Message(
            msg.code, msg.app_id, msg.flags & FLAG_PROXIABLE, msg.hop_by_hop, msg.end_to_end, [outcome.body]
        )
        if proxied:
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
