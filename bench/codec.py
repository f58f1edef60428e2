"""Diameter codec benchmark: the project's codec against python-diameter 0.9.0, in one process.

Run from the repository root::

    .venv/bin/python -m bench.codec              # 5 rounds of 1 s for every case
    .venv/bin/python -m bench.codec --quick      # a smoke test of a few seconds (CI)
    .venv/bin/python -m bench.codec --profile    # cProfile of our encode and decode, no benchmark

Two messages of an IMS voice call (``bench.messages``): a Ro CCR-Initial and a Rf
ACR-Interim, about 1.2 kB each.  For each message and each library:

* decode: bytes -> message, then read one field deep inside (the CCR's
  MSCC/Rating-Group, the ACR's Service-Information/IMS-Information/IMS-Charging-Identifier).
  Both libraries decode the same bytes, made once by our encoder; before any timing
  the bytes of each library are decoded by both and compared AVP by AVP.
* decode-all: the same, then every AVP value of the message is read (our codec
  decodes lazily, so the one-field figure alone would flatter it).
* encode: a message built in code from values that change on every call (Session-Id,
  identifiers, timestamps, Call-ID, ICID), then turned into bytes.

Every round of every case runs for about ``--seconds``; rounds of the cases are
interleaved, and the figure reported is the median round (the spread is min..max).
One core, the garbage collector on, as in a server.  The last line printed is one
JSON object with our CCR-I figures and the speedups over python-diameter used the
way its documentation shows (``Message.from_bytes`` then attributes; ``as_bytes``);
the human lines also give its faster ``plain_msg=True`` decode.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import platform
import pstats
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

from diameter.message import Message as PdMessage
from diameter.message import constants as pdc
from diameter.message.avp import Avp as PdAvp
from diameter.message.avp import AvpGrouped as PdAvpGrouped
from diameter.message.avp.generator import AvpGenDef, generate_avps_from_defs
from diameter.message.avp.grouped import (
    EventType,
    ImsInformation,
    InterOperatorIdentifier,
    RequestedServiceUnit,
    SdpMediaComponent,
    ServiceInformation,
    SubscriptionId,
    TimeStamps,
)
from diameter.message.commands import AccountingRequest, CreditControlRequest

from bench import messages
from charging.diameter import AvpGroup, Message
from charging.diameter.message import AvpContainer

CCR = "CCR-I"
ACR = "ACR-Interim"
OURS = "ours"
PD = "python-diameter"
PD_PLAIN = "python-diameter plain_msg=True"

ICID_PATH = "Service-Information/IMS-Information/IMS-Charging-Identifier"
PD_RATING_GROUP_PATH = ((pdc.AVP_MULTIPLE_SERVICES_CREDIT_CONTROL, 0), (pdc.AVP_RATING_GROUP, 0))
PD_ICID_PATH = (
    (pdc.AVP_TGPP_SERVICE_INFORMATION, pdc.VENDOR_TGPP),
    (pdc.AVP_TGPP_IMS_INFORMATION, pdc.VENDOR_TGPP),
    (pdc.AVP_TGPP_IMS_CHARGING_IDENTIFIER, pdc.VENDOR_TGPP),
)

Bench = Callable[[int], object]


class CrossCheckError(Exception):
    """The two libraries disagree about a message: the benchmark would compare different work."""


# ---------------------------------------------------------------------------------------------
# python-diameter: the same two messages, built the way its documentation shows
# ---------------------------------------------------------------------------------------------


class TgppEventType(EventType):  # type: ignore[misc]
    """Event-Type whose SIP-Method is TS 32.299's 824/10415.

    python-diameter 0.9.0's ``EventType`` maps ``sip_method`` to RFC 4740's SIP-Method
    (393, no vendor), which a 3GPP CDF or OCS does not know; only the encoder is
    corrected here (its typed decoder still drops 824/10415, see the cross-check).
    """

    avp_def = (
        AvpGenDef("sip_method", pdc.AVP_TGPP_3GPP_SIP_METHOD, pdc.VENDOR_TGPP),
        AvpGenDef("event", pdc.AVP_TGPP_EVENT, pdc.VENDOR_TGPP),
        AvpGenDef("expires", pdc.AVP_TGPP_EXPIRES, pdc.VENDOR_TGPP),
    )


_ORIGIN_HOST_B = messages.ORIGIN_HOST.encode()
_ORIGIN_REALM_B = messages.ORIGIN_REALM.encode()
_OCS_REALM_B = messages.OCS_REALM.encode()
_CDF_REALM_B = messages.CDF_REALM.encode()


def _pd_time(unix_seconds: int) -> datetime:
    return datetime.fromtimestamp(unix_seconds, UTC)


def _pd_ims_information(v: messages.CallValues, *, answered: bool) -> Any:
    time_stamps = TimeStamps(
        sip_request_timestamp=_pd_time(v.invite_time),
        sip_request_timestamp_fraction=v.invite_fraction,
    )
    if answered:
        time_stamps.sip_response_timestamp = _pd_time(v.answer_time)
        time_stamps.sip_response_timestamp_fraction = v.answer_fraction
    return ImsInformation(
        event_type=TgppEventType(sip_method="INVITE"),
        role_of_node=pdc.E_ROLE_OF_NODE_ORIGINATING_ROLE,
        node_functionality=pdc.E_NODE_FUNCTIONALITY_AS,
        user_session_id=v.user_session_id,
        calling_party_address=[messages.IMPU],
        called_party_address=messages.CALLED_PARTY,
        time_stamps=time_stamps,
        inter_operator_identifier=[
            InterOperatorIdentifier(
                originating_ioi=messages.ORIGINATING_IOI,
                terminating_ioi=messages.TERMINATING_IOI,
            )
        ],
        ims_charging_identifier=v.icid,
        sdp_media_component=[
            SdpMediaComponent(
                sdp_media_name=messages.SDP_MEDIA_NAME,
                sdp_media_description=list(messages.SDP_MEDIA_DESCRIPTIONS),
                media_initiator_flag=pdc.E_MEDIA_INITIATOR_FLAG_CALLING_PARTY,
                sdp_type=pdc.E_SDP_TYPE_SDP_ANSWER if answered else pdc.E_SDP_TYPE_SDP_OFFER,
            )
        ],
    )


def pd_ccr_initial(n: int) -> Any:
    """Call ``n``'s CCR-Initial as a python-diameter ``CreditControlRequest``."""
    v = messages.call_values(n)
    ccr = CreditControlRequest()
    ccr.header.application_id = messages.CCA_APPLICATION_ID
    ccr.header.hop_by_hop_identifier = v.hop_by_hop
    ccr.header.end_to_end_identifier = v.end_to_end
    ccr.session_id = v.session_id
    ccr.origin_host = _ORIGIN_HOST_B
    ccr.origin_realm = _ORIGIN_REALM_B
    ccr.destination_realm = _OCS_REALM_B
    ccr.auth_application_id = messages.CCA_APPLICATION_ID
    ccr.service_context_id = messages.SERVICE_CONTEXT_ID
    ccr.cc_request_type = pdc.E_CC_REQUEST_TYPE_INITIAL_REQUEST
    ccr.cc_request_number = 0
    ccr.event_timestamp = _pd_time(v.invite_time)
    ccr.add_subscription_id(pdc.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, messages.MSISDN)
    ccr.add_subscription_id(pdc.E_SUBSCRIPTION_ID_TYPE_END_USER_SIP_URI, messages.IMPU)
    ccr.multiple_services_indicator = pdc.E_MULTIPLE_SERVICES_INDICATOR_MULTIPLE_SERVICES_SUPPORTED
    ccr.add_multiple_services_credit_control(
        requested_service_unit=RequestedServiceUnit(cc_time=messages.REQUESTED_CC_TIME),
        service_identifier=messages.SERVICE_IDENTIFIER,
        rating_group=messages.RATING_GROUP,
    )
    ccr.service_information = ServiceInformation(ims_information=_pd_ims_information(v, answered=False))
    return ccr


def pd_acr_interim(n: int) -> Any:
    """Call ``n``'s ACR-Interim as a python-diameter ``AccountingRequest``.

    Its ``AccountingRequest`` has neither Service-Context-Id nor Service-Information
    (it lists the IMS AVPs at the top, as TS 32.225 once did), so both are appended
    as AVPs, Service-Information from the library's own ``ServiceInformation`` class.
    """
    v = messages.call_values(n)
    acr = AccountingRequest()
    acr.header.application_id = messages.ACCOUNTING_APPLICATION_ID
    acr.header.hop_by_hop_identifier = v.hop_by_hop
    acr.header.end_to_end_identifier = v.end_to_end
    acr.session_id = v.session_id
    acr.origin_host = _ORIGIN_HOST_B
    acr.origin_realm = _ORIGIN_REALM_B
    acr.destination_realm = _CDF_REALM_B
    acr.accounting_record_type = pdc.E_ACCOUNTING_RECORD_TYPE_INTERIM_RECORD
    acr.accounting_record_number = v.record_number
    acr.acct_application_id = messages.ACCOUNTING_APPLICATION_ID
    acr.event_timestamp = _pd_time(v.event_time)
    acr.append_avp(PdAvp.new(pdc.AVP_SERVICE_CONTEXT_ID, value=messages.SERVICE_CONTEXT_ID))
    service_information = ServiceInformation(
        subscription_id=[
            SubscriptionId(pdc.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, messages.MSISDN),
            SubscriptionId(pdc.E_SUBSCRIPTION_ID_TYPE_END_USER_SIP_URI, messages.IMPU),
        ],
        ims_information=_pd_ims_information(v, answered=True),
    )
    acr.append_avp(
        PdAvp.new(
            pdc.AVP_TGPP_SERVICE_INFORMATION,
            pdc.VENDOR_TGPP,
            value=generate_avps_from_defs(service_information),
        )
    )
    return acr


# ---------------------------------------------------------------------------------------------
# The timed operations
# ---------------------------------------------------------------------------------------------


def ours_read_rating_group(raw: bytes) -> Any:
    return Message.decode(raw)["Multiple-Services-Credit-Control"]["Rating-Group"]


def ours_read_icid(raw: bytes) -> Any:
    return Message.decode(raw).find(ICID_PATH)


def pd_read_rating_group(raw: bytes) -> Any:
    return PdMessage.from_bytes(raw).multiple_services_credit_control[0].rating_group


def pd_read_icid(raw: bytes) -> Any:
    # AccountingRequest has no attribute for Service-Information: find_avps is the documented way.
    return PdMessage.from_bytes(raw).find_avps(*PD_ICID_PATH)[0].value


def pd_plain_read_rating_group(raw: bytes) -> Any:
    return PdMessage.from_bytes(raw, plain_msg=True).find_avps(*PD_RATING_GROUP_PATH)[0].value


def pd_plain_read_icid(raw: bytes) -> Any:
    return PdMessage.from_bytes(raw, plain_msg=True).find_avps(*PD_ICID_PATH)[0].value


def _ours_walk(container: AvpContainer) -> int:
    count = 0
    for avp in container:
        value = avp.value
        if isinstance(value, AvpGroup):
            count += _ours_walk(value)
        count += 1
    return count


def _pd_walk(avps: Sequence[Any]) -> int:
    count = 0
    for avp in avps:
        value = avp.value
        if isinstance(avp, PdAvpGrouped):
            count += _pd_walk(value)
        count += 1
    return count


def ours_read_all(raw: bytes) -> int:
    return _ours_walk(Message.decode(raw))


def pd_plain_read_all(raw: bytes) -> int:
    return _pd_walk(PdMessage.from_bytes(raw, plain_msg=True).avps)


# ---------------------------------------------------------------------------------------------
# Cross-check: both libraries must see the same message in the same bytes
# ---------------------------------------------------------------------------------------------

Tree = list[tuple[int, int, Any]]


def _normal(value: Any) -> Any:
    """A value in a form both libraries' decoders reach: str for text, int seconds for Time."""
    if isinstance(value, datetime):
        return round(value.timestamp())  # ours: aware UTC; python-diameter: naive local time
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value.hex()
    return value


def ours_tree(container: AvpContainer) -> Tree:
    out: Tree = []
    for avp in container:
        value = avp.value
        out.append((avp.code, avp.vendor_id, ours_tree(value) if isinstance(value, AvpGroup) else _normal(value)))
    return out


def pd_tree(avps: Sequence[Any]) -> Tree:
    out: Tree = []
    for avp in avps:
        nested = isinstance(avp, PdAvpGrouped)
        out.append((avp.code, avp.vendor_id, pd_tree(avp.value) if nested else _normal(avp.value)))
    return out


def _flags(container: AvpContainer, prefix: str = "") -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for avp in container:
        path = f"{prefix}/{avp.name}"
        out.append((path, avp.flags))
        if isinstance(avp.value, AvpGroup):
            out += _flags(avp.value, path)
    return out


def _flag_offsets(raw: bytes, start: int, end: int, tree: Tree) -> set[int]:
    """Where the flags octet of every AVP of ``tree`` stands in ``raw[start:end]``."""
    offsets: set[int] = set()
    offset = start
    for _, _, value in tree:
        flags = raw[offset + 4]
        length = int.from_bytes(raw[offset + 5 : offset + 8], "big")
        offsets.add(offset + 4)
        if isinstance(value, list):
            offsets |= _flag_offsets(raw, offset + (12 if flags & 0x80 else 8), offset + length, value)
        offset += (length + 3) & ~3
    if offset < end:
        raise CrossCheckError(f"{end - offset} octets after the last AVP at {offset}")
    return offsets


def _first_difference(a: Tree, b: Tree, path: str = "") -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        here = f"{path}/{x[0]}:{x[1]}[{i}]"
        if x[:2] != y[:2]:
            return f"{here}: AVP {x[0]}/{x[1]} against {y[0]}/{y[1]}"
        if isinstance(x[2], list) and isinstance(y[2], list):
            found = _first_difference(x[2], y[2], here)
            if found:
                return found
        elif x[2] != y[2]:
            return f"{here}: {x[2]!r} against {y[2]!r}"
    if len(a) != len(b):
        return f"{path}: {len(a)} AVPs against {len(b)}"
    return ""


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise CrossCheckError(what)


def _same_tree(a: Tree, b: Tree, what: str) -> None:
    _require(a == b, f"{what}: {_first_difference(a, b) or 'trees differ'}")


def _header(raw: bytes) -> tuple[int, int, int, int, int]:
    ours = Message.decode(raw)
    theirs = PdMessage.from_bytes(raw, plain_msg=True).header
    mine = (ours.code, ours.flags, ours.app_id, ours.hop_by_hop, ours.end_to_end)
    other = (
        theirs.command_code,
        theirs.command_flags,
        theirs.application_id,
        theirs.hop_by_hop_identifier,
        theirs.end_to_end_identifier,
    )
    _require(mine == other, f"header read as {mine} by ours and {other} by python-diameter")
    return mine


@dataclass
class Subject:
    """One message kind: how each library builds it and reads the field back."""

    name: str
    field_name: str
    expected: Any
    build_ours: Callable[[int], Message]
    build_pd: Callable[[int], Any]
    read_ours: Callable[[bytes], Any]
    read_pd: Callable[[bytes], Any]
    read_pd_plain: Callable[[bytes], Any]
    raw: bytes = b""
    avp_count: int = 0
    notes: list[str] = field(default_factory=list)


def cross_check(subject: Subject) -> None:
    """Decode each library's bytes with both libraries and demand the same AVPs and values."""
    ours_raw = subject.build_ours(0).to_bytes()
    pd_raw = subject.build_pd(0).as_bytes()
    trees: dict[str, Tree] = {}
    for label, raw in (("our bytes", ours_raw), ("python-diameter's bytes", pd_raw)):
        by_ours = ours_tree(Message.decode(raw))
        by_pd = pd_tree(PdMessage.from_bytes(raw, plain_msg=True).avps)
        _same_tree(by_ours, by_pd, f"{subject.name}, {label} decoded by ours vs by python-diameter")
        trees[label] = by_ours
        _header(raw)
        for reader_name, reader in (
            ("ours", subject.read_ours),
            ("python-diameter", subject.read_pd),
            ("python-diameter plain_msg", subject.read_pd_plain),
        ):
            got = reader(raw)
            _require(
                got == subject.expected,
                f"{subject.name}, {label}: {reader_name} reads {subject.field_name} as {got!r}, "
                f"expected {subject.expected!r}",
            )
    _same_tree(trees["our bytes"], trees["python-diameter's bytes"], f"{subject.name}: our encoding vs theirs")
    _require(_header(ours_raw) == _header(pd_raw), f"{subject.name}: headers differ between the encoders")

    for label, encode in (("ours", _encoder(subject.build_ours)), ("python-diameter", _pd_encoder(subject.build_pd))):
        _require(encode(1) != encode(2), f"{subject.name}: {label} encodes calls 1 and 2 to the same bytes")

    subject.raw = ours_raw
    subject.avp_count = _ours_walk(Message.decode(ours_raw))
    if ours_raw == pd_raw:
        subject.notes.append("both encoders give identical bytes")
        return
    differing = {i for i, (x, y) in enumerate(zip(ours_raw, pd_raw, strict=False)) if x != y}
    tree = trees["our bytes"]
    if len(ours_raw) == len(pd_raw) and differing <= _flag_offsets(ours_raw, 20, len(ours_raw), tree):
        pairs = zip(_flags(Message.decode(ours_raw)), _flags(Message.decode(pd_raw)), strict=True)
        shown = [f"{path} {mine:#04x}/{theirs:#04x}" for (path, mine), (_, theirs) in pairs if mine != theirs]
        subject.notes.append("same AVPs and values; bytes differ only in AVP flags (ours/theirs): " + ", ".join(shown))
    else:
        subject.notes.append(f"same AVPs and values; {len(differing)} octets differ, not only flags")
    if subject.name == CCR:  # the ACR's Service-Information stays a raw AVP in python-diameter
        event_type = PdMessage.from_bytes(ours_raw).service_information.ims_information.event_type
        sip_method = event_type.sip_method if event_type is not None else None
        if sip_method != "INVITE":
            subject.notes.append(
                f"python-diameter's typed decode drops the 3GPP SIP-Method (824/10415): sip_method={sip_method!r}"
            )


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One timed operation of one library on one message, with its rate in each round."""

    subject: str
    op: str
    library: str
    fn: Bench
    per_round: int = 0
    counter: int = 1000  # encode counters start past the cross-check's
    rates: list[float] = field(default_factory=list)

    def run(self, count: int) -> float:
        fn = self.fn
        start = self.counter
        self.counter += count
        t0 = time.perf_counter()
        for i in range(start, start + count):
            fn(i)
        return time.perf_counter() - t0

    def calibrate(self, warmup: float, seconds: float) -> None:
        count, elapsed = 1, 0.0
        while True:
            elapsed = self.run(count)
            if elapsed >= warmup:
                break
            count *= 2
        self.per_round = max(1, round(count * seconds / elapsed))

    def round(self) -> None:
        self.rates.append(self.per_round / self.run(self.per_round))

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def spread(self) -> str:
        return f"{min(self.rates):,.0f}..{max(self.rates):,.0f}"


def _decoder(read: Callable[[bytes], Any], raw: bytes) -> Bench:
    def bench(_: int) -> object:
        return read(raw)

    return bench


def _encoder(build: Callable[[int], Message]) -> Bench:
    def bench(i: int) -> object:
        return build(i).to_bytes()

    return bench


def _pd_encoder(build: Callable[[int], Any]) -> Bench:
    def bench(i: int) -> object:
        return build(i).as_bytes()

    return bench


def make_cases(subjects: Sequence[Subject]) -> list[Case]:
    cases: list[Case] = []
    for s in subjects:
        cases += [
            Case(s.name, "decode", OURS, _decoder(s.read_ours, s.raw)),
            Case(s.name, "decode", PD, _decoder(s.read_pd, s.raw)),
            Case(s.name, "decode", PD_PLAIN, _decoder(s.read_pd_plain, s.raw)),
            Case(s.name, "decode-all", OURS, _decoder(ours_read_all, s.raw)),
            Case(s.name, "decode-all", PD_PLAIN, _decoder(pd_plain_read_all, s.raw)),
            Case(s.name, "encode", OURS, _encoder(s.build_ours)),
            Case(s.name, "encode", PD, _pd_encoder(s.build_pd)),
        ]
    return cases


def run_cases(cases: Sequence[Case], rounds: int, seconds: float) -> None:
    warmup = min(0.25, seconds / 2)
    for case in cases:
        case.calibrate(warmup, seconds)
    for _ in range(rounds):
        for case in cases:
            case.round()


def _find(cases: Sequence[Case], subject: str, op: str, library: str) -> Case:
    for case in cases:
        if (case.subject, case.op, case.library) == (subject, op, library):
            return case
    raise KeyError((subject, op, library))


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


def _keep_ours(read: Callable[[Message], Any]) -> Callable[[bytes], object]:
    def decode(raw: bytes) -> object:
        msg = Message.decode(raw)
        read(msg)
        return msg

    return decode


def _keep_pd(read: Callable[[Any], Any], plain: bool = False) -> Callable[[bytes], object]:
    def decode(raw: bytes) -> object:
        msg = PdMessage.from_bytes(raw, plain_msg=plain)
        read(msg)
        return msg

    return decode


def peak_memory(decode: Callable[[bytes], object], inputs: Sequence[bytes]) -> int:
    """Peak traced bytes while decoding every input and keeping every decoded message."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        kept = [decode(raw) for raw in inputs]
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    del kept
    return peak


def memory_section(count: int) -> list[str]:
    lines = [
        f"== peak memory: decode {count:,} distinct messages, read the field, keep them all (tracemalloc) ==",
    ]
    plans: list[tuple[str, Callable[[int], Message], list[tuple[str, Callable[[bytes], object]]]]] = [
        (
            CCR,
            messages.ccr_initial,
            [
                (OURS, _keep_ours(lambda m: m["Multiple-Services-Credit-Control"]["Rating-Group"])),
                (PD, _keep_pd(lambda m: m.multiple_services_credit_control[0].rating_group)),
                (PD_PLAIN, _keep_pd(lambda m: m.find_avps(*PD_RATING_GROUP_PATH)[0].value, plain=True)),
            ],
        ),
        (
            ACR,
            messages.acr_interim,
            [
                (OURS, _keep_ours(lambda m: m.find(ICID_PATH))),
                (PD, _keep_pd(lambda m: m.find_avps(*PD_ICID_PATH)[0].value)),
                (PD_PLAIN, _keep_pd(lambda m: m.find_avps(*PD_ICID_PATH)[0].value, plain=True)),
            ],
        ),
    ]
    for name, build, decoders in plans:
        inputs = [build(i).to_bytes() for i in range(count)]
        input_bytes = sum(len(raw) for raw in inputs)
        peaks = {label: peak_memory(decode, inputs) for label, decode in decoders}
        ours = peaks[OURS]
        for label in (PD, PD_PLAIN):
            lines.append(
                f"{name:<12} ours {ours / 1024:>9,.0f} KiB ({ours / count:>6,.0f} B/msg)   "
                f"vs {label} {peaks[label] / 1024:>9,.0f} KiB ({peaks[label] / count:>6,.0f} B/msg)   "
                f"theirs/ours {peaks[label] / ours:.1f}"
            )
        lines.append(
            f"{'':<12} inputs held by the caller, not counted: {input_bytes / 1024:,.0f} KiB "
            "(ours keeps referring to them; python-diameter copies each AVP's data)"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# Profile
# ---------------------------------------------------------------------------------------------


def profile(subjects: Sequence[Subject], count: int) -> None:
    """cProfile our codec's encode and decode (deterministic profiling inflates small calls)."""
    for s in subjects:
        for title, bench in (
            (f"{s.name} encode (build + to_bytes), {count:,} calls", _encoder(s.build_ours)),
            (f"{s.name} decode + read {s.field_name}, {count:,} calls", _decoder(s.read_ours, s.raw)),
            (f"{s.name} decode + read every AVP, {count:,} calls", _decoder(ours_read_all, s.raw)),
        ):
            profiler = cProfile.Profile()
            profiler.enable()
            for i in range(count):
                bench(i)
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.strip_dirs().sort_stats(pstats.SortKey.TIME).print_stats(14)
            print(f"==== {title} ====")
            print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))
            print()


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def subjects() -> list[Subject]:
    return [
        Subject(
            CCR,
            "MSCC/Rating-Group",
            messages.RATING_GROUP,
            messages.ccr_initial,
            pd_ccr_initial,
            ours_read_rating_group,
            pd_read_rating_group,
            pd_plain_read_rating_group,
        ),
        Subject(
            ACR,
            "IMS-Charging-Identifier",
            messages.icid(0),
            messages.acr_interim,
            pd_acr_interim,
            ours_read_icid,
            pd_read_icid,
            pd_plain_read_icid,
        ),
    ]


def _line(case: Case, base: Case) -> str:
    return (
        f"{case.subject:<12} {case.op:<10} ours {case.median:>10,.0f}/s [{case.spread}]   "
        f"vs {base.library} {base.median:>8,.0f}/s [{base.spread}]   x{case.median / base.median:.1f}"
    )


def report(cases: Sequence[Case], subs: Sequence[Subject], rounds: int, seconds: float) -> list[str]:
    lines = [f"== calls per second, median of {rounds} rounds of ~{seconds:g} s [min..max round] =="]
    lines.append("-- decode: bytes -> message -> read one field deep inside")
    for s in subs:
        ours = _find(cases, s.name, "decode", OURS)
        lines.append(_line(ours, _find(cases, s.name, "decode", PD)) + f"   ({s.field_name})")
        lines.append(_line(ours, _find(cases, s.name, "decode", PD_PLAIN)))
    lines.append("-- decode-all: bytes -> message -> read every AVP value, nested ones included")
    for s in subs:
        ours = _find(cases, s.name, "decode-all", OURS)
        lines.append(_line(ours, _find(cases, s.name, "decode-all", PD_PLAIN)) + f"   ({s.avp_count} AVPs)")
    lines.append("-- encode: build from fresh values -> bytes")
    for s in subs:
        lines.append(_line(_find(cases, s.name, "encode", OURS), _find(cases, s.name, "encode", PD)))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timed round (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per case (default 5)")
    parser.add_argument("--memory-count", type=int, default=2000, help="messages decoded for the memory figure")
    parser.add_argument("--quick", action="store_true", help="short run for a smoke test: 3 rounds of 0.05 s")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of our codec instead")
    args = parser.parse_args(argv)
    seconds, rounds, memory_count = args.seconds, args.rounds, args.memory_count
    if args.quick:
        seconds, rounds, memory_count = 0.05, 3, 200
    if seconds <= 0 or rounds < 1 or memory_count < 1:
        parser.error("--seconds, --rounds and --memory-count must be positive")

    subs = subjects()
    try:
        for s in subs:
            cross_check(s)
    except CrossCheckError as exc:
        print(f"CROSS-CHECK FAILED: {exc}", file=sys.stderr)
        return 1

    if args.profile:
        profile(subs, 2000 if args.quick else 20000)
        return 0

    print(
        f"Diameter codec benchmark: python {platform.python_version()} ({platform.python_implementation()}), "
        f"python-diameter {version('python-diameter')}, one core, gc on"
    )
    for s in subs:
        print(f"{s.name:<12} {len(s.raw):,} bytes, {s.avp_count} AVPs; cross-check ok: {'; '.join(s.notes)}")

    cases = make_cases(subs)
    run_cases(cases, rounds, seconds)
    for line in report(cases, subs, rounds, seconds):
        print(line)
    for line in memory_section(memory_count):
        print(line)

    decode = _find(cases, CCR, "decode", OURS)
    encode = _find(cases, CCR, "encode", OURS)
    summary = {
        "decode_per_s": round(decode.median),
        "encode_per_s": round(encode.median),
        "decode_speedup": round(decode.median / _find(cases, CCR, "decode", PD).median, 2),
        "encode_speedup": round(encode.median / _find(cases, CCR, "encode", PD).median, 2),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
