"""tshark, with Wireshark's own Diameter dictionary, decodes every message our nodes put on the wire.

Two of our nodes run the Ro and Rf traffic of one IMS call (tests/interop/ims.py) over loopback while
tshark captures the port; then tshark decodes the capture and every message our nodes sent must be found,
neither malformed nor carrying an AVP Wireshark does not know, with the same header, the same AVPs in the
same order and nesting, and the same values.

Where capturing is impossible (no root, no ``lo``) the test writes the messages the nodes sent into a pcap
of its own, wrapped in fake IPv4/TCP headers, and checks that instead; it says which path it took.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from charging.diameter import DICTIONARY, Avp, AvpGroup, Message, MessageFormatError
from charging.diameter.node import DiameterNode, NodeConfig, PeerConfig
from charging.diameter.peer import LocalIdentity, Peer, Timers
from tests.interop import ims
from tests.support.diameter import wait_available, wait_until
from tests.support.interop import (
    TSHARK,
    CaptureUnavailable,
    DecodedAvp,
    DecodedMessage,
    LoopbackCapture,
    MessageJournal,
    decode_diameter,
    free_port,
    write_pcap,
)
from tests.test_dictionary import TYPE_EXCEPTIONS, WIRESHARK_DIR, load_wireshark

if TSHARK is None:
    if os.environ.get("CI"):
        pytest.fail("tshark is missing: CI must run scripts/bootstrap.sh --system", pytrace=False)
    pytest.skip("tshark is not installed (scripts/bootstrap.sh --system)", allow_module_level=True)

pytestmark = pytest.mark.interop

# AVPs Wireshark's dictionary does not define at all: tshark shows them as unknown, which is a gap on its
# side (Wireshark 4.0 lacks Transit-IOI-List and IMS-Emergency-Indicator of TS 32.299, for instance).
# An AVP it does define but still shows as unknown, say under another vendor, is our bug.
WIRESHARK_KNOWS = set(load_wireshark(WIRESHARK_DIR)) if (WIRESHARK_DIR / "dictionary.xml").is_file() else set()

BY_KEY = DICTIONARY.by_key

INTEGER_TYPES = {"Unsigned32", "Unsigned64", "Integer32", "Integer64", "Enumerated"}
TEXT_TYPES = {"UTF8String", "DiameterIdentity", "DiameterURI"}


def ocs_node(port: int) -> DiameterNode:
    """The OCS/CDF: answers CCR, ACR and STR; sends RAR and ASR."""
    node = DiameterNode(
        NodeConfig(
            LocalIdentity(ims.OCS, ims.OCS_REALM),
            listen=[("127.0.0.1", port)],
            peers=[PeerConfig(ims.GWF, ims.GWF_REALM, "127.0.0.1")],
            timers=Timers(watchdog=30.0),
        )
    )

    async def credit_control(msg: Message, peer: Peer) -> Message:
        return ims.cca(msg, ims.OCS, ims.OCS_REALM)

    async def accounting(msg: Message, peer: Peer) -> Message:
        return ims.aca(msg, ims.OCS, ims.OCS_REALM)

    async def session_termination(msg: Message, peer: Peer) -> Message:
        return ims.plain_answer(msg, ims.OCS, ims.OCS_REALM)

    node.register(4, 272, credit_control)
    node.register(3, 271, accounting)
    node.register(4, 275, session_termination)
    return node


def gwf_node(port: int) -> DiameterNode:
    """The IMS-GWF: sends CCR, ACR and STR; answers RAR and ASR; watches its peer with a short Tw."""
    node = DiameterNode(
        NodeConfig(
            LocalIdentity(ims.GWF, ims.GWF_REALM),
            peers=[PeerConfig(ims.OCS, ims.OCS_REALM, "127.0.0.1", port)],
            client_acct_applications=frozenset({3}),
            timers=Timers(watchdog=0.3, jitter=0.0),
        )
    )

    async def answer(msg: Message, peer: Peer) -> Message:
        return ims.plain_answer(msg, ims.GWF, ims.GWF_REALM)

    node.register(4, 258, answer)  # RAR
    node.register(4, 274, answer)  # ASR
    return node


async def run_ims_call(gwf: DiameterNode, ocs: DiameterNode, journal: MessageJournal) -> None:
    await wait_available(gwf, ims.OCS)
    await wait_available(ocs, ims.GWF)
    call = gwf.new_session_id("call")
    answers = [
        await gwf.request(ims.ccr(call, ims.INITIAL, 0)),
        await ocs.request(ims.rar(call)),
        await gwf.request(ims.ccr(call, ims.UPDATE, 1)),
        await gwf.request(ims.acr(call, ims.START_RECORD, 0)),
        await gwf.request(ims.acr(call, ims.INTERIM_RECORD, 1)),
        await ocs.request(ims.asr(call)),
        await gwf.request(ims.ccr(call, ims.TERMINATION, 2)),
        await gwf.request(ims.acr(call, ims.STOP_RECORD, 2)),
        await gwf.request(ims.str_(call)),
    ]
    message = gwf.new_session_id("message")
    answers += [
        await gwf.request(ims.ccr_event(message)),
        await gwf.request(ims.acr(message, ims.EVENT_RECORD, 0)),
    ]
    assert [a["Result-Code"] for a in answers] == [2001] * len(answers), [a.command_name for a in answers]
    # Idle now: the 0.3 s watchdog sends a DWR.
    await wait_until(lambda: len(journal.messages("recv", "DWA", node=ims.GWF)) >= 1, 5.0, "a DWA")


async def test_tshark_decodes_every_message_of_an_ims_call_as_we_encoded_it(tmp_path: Path) -> None:
    port = free_port()
    capture_file = tmp_path / "diameter.pcapng"
    capture = LoopbackCapture(port, capture_file)
    try:
        await capture.start()
        live = True
    except CaptureUnavailable as exc:
        print(f"capture path: no live capture ({exc}); writing the messages into a pcap")
        live = False
    ocs = ocs_node(port)
    gwf = gwf_node(port)
    journal = MessageJournal(ocs, gwf)
    try:
        await ocs.start()
        await gwf.start()
        await run_ims_call(gwf, ocs, journal)
    finally:
        await gwf.stop()
        await ocs.stop()
        await capture.stop()
    sent = journal.messages("send")
    if not live:
        capture_file = tmp_path / "diameter.pcap"
        segments = [(e.node == ims.GWF, e.message.to_bytes()) for e in journal.entries if e.direction == "send"]
        write_pcap(capture_file, segments, port)
    else:
        print(f"capture path: live capture on lo, {capture_file.stat().st_size} bytes")

    commands = {msg.command_name for msg in sent}
    assert {"CER", "CEA", "DWR", "DWA", "CCR", "CCA", "ACR", "ACA", "RAR", "RAA", "ASR", "ASA", "STR", "STA",
            "DPR", "DPA"} <= commands  # fmt: skip
    assert sum(m.command_name == "CCR" for m in sent) == 4 and sum(m.command_name == "ACR" for m in sent) == 4

    problems, gaps = wire_problems(sent, decode_diameter(capture_file, port))

    print(f"AVPs Wireshark's dictionary lacks: {sorted(gaps)}")
    assert not problems, "\n".join(problems)


async def test_the_wire_check_reports_missing_malformed_and_misplaced_avps(tmp_path: Path) -> None:
    """The check above is only worth something if it fails on broken messages: here are some."""
    good = ims.ccr_event("gwf.ims.test;1;1;message")
    good.hop_by_hop, good.end_to_end = 1, 1
    missing = ims.str_("gwf.ims.test;1;1;call")
    missing.hop_by_hop, missing.end_to_end = 2, 2
    # Role-Of-Node (829) sent without its 3GPP vendor id: an AVP neither dictionary defines.
    misplaced = Message.request("DWR", 0, [("Origin-Host", ims.GWF), ("Origin-Realm", ims.GWF_REALM)])
    misplaced.add_avp(Avp.from_raw(829, (0).to_bytes(4, "big"), vendor_id=0))
    misplaced.hop_by_hop, misplaced.end_to_end = 3, 3
    # An AVP whose length field runs 40 octets past the end of the message.
    malformed = Message.request("DWR", 0, [("Origin-Host", ims.GWF), ("Origin-Realm", ims.GWF_REALM)])
    malformed.hop_by_hop, malformed.end_to_end = 4, 4
    raw = bytearray(malformed.to_bytes())
    raw[20 + 5 : 20 + 8] = (int.from_bytes(raw[20 + 5 : 20 + 8], "big") + 40).to_bytes(3, "big")
    port = free_port()
    pcap = tmp_path / "broken.pcap"
    write_pcap(pcap, [(True, good.to_bytes()), (True, misplaced.to_bytes()), (True, bytes(raw))], port)

    problems, _ = wire_problems([good, missing, misplaced, malformed], decode_diameter(pcap, port))

    text = "\n".join(problems)
    assert "STR hop-by-hop 0x2 is not in the capture" in text
    assert "DWR: unknown AVP 829 vendor 0" in text
    assert any(p.startswith("frame 6 DWR: ") and "alformed" in p for p in problems), text
    assert not [p for p in problems if "CCR" in p], "the good CCR passes"


def wire_problems(sent: list[Message], decoded: list[DecodedMessage]) -> tuple[list[str], set[str]]:
    """What tshark saw differently from what we sent; and the AVPs its dictionary lacks (not our bug)."""
    by_key = {(m.code, m.is_request, m.hop_by_hop, m.end_to_end): m for m in sent}
    problems = (
        [f"{len(sent) - len(by_key)} messages sent twice with the same identifiers"] if len(by_key) < len(sent) else []
    )
    seen = {d.key for d in decoded}
    problems += [
        f"{m.command_name} hop-by-hop {m.hop_by_hop:#x} is not in the capture"
        for k, m in by_key.items()
        if k not in seen
    ]
    gaps: set[str] = set()
    for found in decoded:
        ours = by_key.get(found.key)
        if ours is None:
            problems.append(f"frame {found.frame}: command {found.command_code} that we never sent")
            continue
        where = f"frame {found.frame} {ours.command_name}"
        # An AVP tshark cannot name is Wireshark's gap when its dictionary lacks the AVP and ours defines it.
        unknown = {(a.code, a.vendor) for a in found.walk() if a.unknown}
        gap = {(c, v) for c, v in unknown if (c, v) not in WIRESHARK_KNOWS and (c | v << 32) in BY_KEY}
        gaps |= {f"{c}/{v}" for c, v in gap}
        problems += [f"{where}: unknown AVP {c} vendor {v}" for c, v in sorted(unknown - gap)]
        # tshark names the vendor in its note ("vendor=3GPP"): a note is excused by the code alone, and only
        # when no AVP of that code is reported above.
        excused = {c for c, _ in gap} - {c for c, _ in unknown - gap}
        problems += [
            f"{where}: {p}" for p in found.problems if not any(f"Unknown AVP {c} (vendor=" in p for c in excused)
        ]
        if (found.flags, found.application) != (ours.flags, ours.app_id):
            problems.append(f"{where}: header {found.flags:#x}/{found.application} != {ours.flags:#x}/{ours.app_id}")
        try:
            problems += compare_avps(list(ours), found.avps, where)
        except MessageFormatError as exc:
            problems.append(f"{where}: we cannot read it back either: {exc}")
    return problems, gaps


def compare_avps(ours: Iterable[Avp], theirs: list[DecodedAvp], where: str) -> list[str]:
    ours = list(ours)
    if [(a.code, a.vendor_id) for a in ours] != [(t.code, t.vendor) for t in theirs]:
        return [f"{where}: AVPs {[(a.name) for a in ours]} decoded as {[t.name for t in theirs]}"]
    problems: list[str] = []
    for avp, seen in zip(ours, theirs, strict=True):
        path = f"{where}/{avp.name}"
        if avp.length != seen.length:
            problems.append(f"{path}: length {avp.length} decoded as {seen.length}")
        problems += compare_value(avp, seen, path)
    return problems


def compare_value(avp: Avp, seen: DecodedAvp, path: str) -> list[str]:
    defn = avp.definition
    if defn is None:
        return []  # an AVP our dictionary lacks: tshark's verdict on it stands alone
    if seen.unknown:
        return []  # reported as unknown already
    if (defn.code, defn.vendor_id) in TYPE_EXCEPTIONS:
        return []  # Wireshark reads this AVP as another type (tests/test_dictionary.py says why)
    value: Any = avp.value
    kind = defn.type_name
    if kind == "Grouped":
        assert isinstance(value, AvpGroup)
        return compare_avps(value, seen.children, path)
    shown = seen.value
    if shown is None:
        return [f"{path}: tshark shows no value"]
    try:
        ok = same_value(kind, value, shown, seen)
    except ValueError as exc:
        ok = False
        shown += f" ({exc})"
    return [] if ok else [f"{path}: {kind} {value!r} decoded as {shown!r}"]


def same_value(kind: str, value: Any, shown: str, seen: DecodedAvp) -> bool:
    if kind in INTEGER_TYPES:
        return bool(int(shown, 0) == value)
    if kind in TEXT_TYPES:
        return bool(shown == value)
    if kind == "Time":
        return bool(wireshark_time(shown) == value)
    if kind == "Address":
        address = seen.details.get(f"diameter.{seen.name}.IPv4") or seen.details.get(f"diameter.{seen.name}.IPv6")
        return address is not None and bool(ipaddress.ip_address(address) == value)
    if kind == "OctetString":
        return bool(octets(shown) == value)
    return shown == str(value)


def wireshark_time(shown: str) -> datetime:
    """ "Mar 14, 2026 09:26:53.000000000 UTC" """
    stamp, _, _zone = shown.rpartition(" ")
    whole = stamp.split(".")[0]
    return datetime.strptime(whole, "%b %d, %Y %H:%M:%S").replace(tzinfo=UTC)


def octets(shown: str) -> bytes:
    """tshark shows octets as colon-separated hex, or as text when they print (OctetStringOrUTF8)."""
    try:
        return bytes.fromhex(shown.replace(":", ""))
    except ValueError:
        return shown.encode()
