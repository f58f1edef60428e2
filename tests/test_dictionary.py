"""The AVP and command dictionary: it loads, its ABNF is complete, and it agrees with Wireshark.

The cross-checks read Wireshark's Diameter dictionary, an independent transcription of the
RFCs and 3GPP specifications, and match AVPs by (code, vendor) because the names sometimes
differ (Wireshark calls SIP-Method "3GPP-SIP-Method").  Where Wireshark and the standard
disagree our tables follow the standard; every such case is listed below with its reason, and
any difference that is not listed fails the test.  The list was drawn up against Wireshark
4.0; a newer Wireshark that has caught up with the standard only makes it partly unnecessary.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from charging.diameter.dictionary import DICTIONARY, AvpDef, Dictionary

WIRESHARK_DIR = Path("/usr/share/wireshark/diameter")
TGPP = 10415

# --- differences from Wireshark, each one checked against the standard ----------------------

# Wireshark type definitions whose type-parent is the RFC 6733 type: they only choose how
# Wireshark displays the value, the bytes on the wire are those of the parent.
WIRESHARK_DISPLAY_TYPES = {
    "OctetStringOrUTF8": "OctetString",  # printed as text when it is printable
    "AppId": "Unsigned32",  # printed with the application's name
    "VendorId": "Unsigned32",  # printed with the vendor's name
}

# (our type, Wireshark type) pairs that are the same on the wire.
COMPATIBLE_TYPES = {
    ("Enumerated", "Enumerated"),
    ("Enumerated", "Unsigned32"),  # Wireshark declares some enumerations as plain numbers
    ("Address", "IPAddress"),  # Wireshark's name for the RFC 6733 Address type
}

# AVPs whose type is not Wireshark's.  (code, vendor): (our type, Wireshark's type, why)
TYPE_EXCEPTIONS: dict[tuple[int, int], tuple[str, str, str]] = {
    (268, 0): ("Unsigned32", "Enumerated", "RFC 6733 7.1 Result-Code; Wireshark enumerates it to print names"),
    (270, 0): ("Unsigned32", "Enumerated", "RFC 6733 8.17 Session-Binding is a bit mask"),
    (291, 0): ("Unsigned32", "Integer32", "RFC 6733 8.9 Authorization-Lifetime"),
    (298, 0): ("Unsigned32", "Enumerated", "RFC 6733 7.7 Experimental-Result-Code"),
    (299, 0): ("Unsigned32", "Enumerated", "RFC 6733 6.10 Inband-Security-Id"),
    (861, TGPP): ("Integer32", "Enumerated", "TS 32.299 Cause-Code; Wireshark enumerates it to print causes"),
    (1263, TGPP): ("OctetString", "UTF8String", "TS 32.299 table 7.2.0.1 Access-Network-Information"),
    (2708, TGPP): ("UTF8String", "IPAddress", "TS 32.299 From-Address carries a SIP From header"),
}

# Enumerations whose values are not Wireshark's.
# (code, vendor): (values we define that Wireshark lacks, values of Wireshark's we leave out, why)
ENUM_EXCEPTIONS: dict[tuple[int, int], tuple[frozenset[int], frozenset[int], str]] = {
    (295, 0): (
        frozenset(),
        frozenset(range(11, 33)),
        "RFC 6733 8.15 defines 1-8; Wireshark adds the RFC 7155 mapping of RADIUS Acct-Terminate-Cause",
    ),
    (829, TGPP): (
        frozenset(),
        frozenset({3}),
        "TS 32.299 7.2.177 defines 0-2 (2 is FORWARDING_ROLE); Wireshark has older PROXY_ROLE 2, B2BUA_ROLE 3",
    ),
    (862, TGPP): (frozenset({18, 19, 20, 21}), frozenset(), "TS 32.299 7.2.113 added TDF, TWAG, SCEF, IWK-SCEF"),
    (870, TGPP): (frozenset({76}), frozenset(), "TS 32.299 7.2.236 added CHANGE_IN_3GPP_PS_DATA_OFF 76"),
    (872, TGPP): (frozenset({9}), frozenset(), "TS 32.299 7.2.175 added UNUSED_QUOTA_TIMER 9"),
}

# Wireshark fills gaps in some enumerations with entries of these names (Trigger-Type 6-9,
# Termination-Cause 9-10, Accounting-Realtime-Required 0); they are not values of the standard.
WIRESHARK_PLACEHOLDER_NAMES = {"undefined", "unassigned", "reserved"}

# --- reading Wireshark's dictionary ----------------------------------------------------------

_ENTITY_DECLARATION = re.compile(r'<!ENTITY\s+(\w+)\s+SYSTEM\s+"([^"]+)"\s*>')
_ENTITY_REFERENCE = re.compile(r"&(\w+);")
_DOCTYPE = re.compile(r"<!DOCTYPE.*?\]>", re.DOTALL)
_XML_DECLARATION = re.compile(r"<\?xml[^>]*\?>")


@dataclass(frozen=True)
class WiresharkAvp:
    name: str
    type_name: str | None
    values: frozenset[int]


WiresharkTable = dict[tuple[int, int], list[WiresharkAvp]]


def _expand_entities(directory: Path) -> str:
    """dictionary.xml with its external entities (&TGPP; and the like) replaced by the files they name."""
    text = (directory / "dictionary.xml").read_text(encoding="utf-8")
    files = dict(_ENTITY_DECLARATION.findall(text))
    text = _DOCTYPE.sub("", text, count=1)

    def include(match: re.Match[str]) -> str:
        file_name = files.get(match.group(1))
        if file_name is None:  # a predefined entity such as &amp;
            return match.group(0)
        return _XML_DECLARATION.sub("", (directory / file_name).read_text(encoding="utf-8"))

    return _ENTITY_REFERENCE.sub(include, text)


def load_wireshark(directory: Path) -> WiresharkTable:
    root = ET.fromstring(_expand_entities(directory))
    vendor_codes = {v.get("vendor-id"): int(v.get("code", "0")) for v in root.iter("vendor")}
    table: WiresharkTable = {}

    def walk(element: ET.Element, vendor: int) -> None:
        for child in element:
            if child.tag == "vendor":
                walk(child, vendor_codes.get(child.get("vendor-id"), vendor))
            elif child.tag == "avp":
                vendor_attr = child.get("vendor-id")
                avp_vendor = vendor_codes[vendor_attr] if vendor_attr else vendor
                type_element = child.find("type")
                if type_element is not None:
                    type_name = type_element.get("type-name")
                elif child.find("grouped") is not None:
                    type_name = "Grouped"
                else:
                    type_name = None
                values = frozenset(
                    int(e.get("code", ""))
                    for e in child.findall("enum")
                    if e.get("name", "").strip().lower() not in WIRESHARK_PLACEHOLDER_NAMES
                )
                entry = WiresharkAvp(child.get("name", ""), type_name, values)
                table.setdefault((int(child.get("code", "")), avp_vendor), []).append(entry)
            else:
                walk(child, vendor)

    walk(root, 0)
    return table


@pytest.fixture(scope="module")
def wireshark() -> WiresharkTable:
    if not (WIRESHARK_DIR / "dictionary.xml").is_file():
        pytest.skip(f"Wireshark's Diameter dictionary is not installed at {WIRESHARK_DIR} (apt install tshark)")
    return load_wireshark(WIRESHARK_DIR)


def known_to_wireshark(wireshark: WiresharkTable) -> Iterator[tuple[AvpDef, list[WiresharkAvp]]]:
    for defn in DICTIONARY.by_name.values():
        entries = wireshark.get((defn.code, defn.vendor_id))
        if entries:
            yield defn, entries


def types_agree(ours: str, theirs: str | None) -> bool:
    if theirs is None:
        return True  # Wireshark gives no type to compare with
    theirs = WIRESHARK_DISPLAY_TYPES.get(theirs, theirs)
    return ours == theirs or (ours, theirs) in COMPATIBLE_TYPES


# --- the dictionary itself ---------------------------------------------------------------------

COMMANDS = [
    (257, "CER", "CEA"),
    (280, "DWR", "DWA"),
    (282, "DPR", "DPA"),
    (271, "ACR", "ACA"),
    (272, "CCR", "CCA"),
    (258, "RAR", "RAA"),
    (274, "ASR", "ASA"),
    (275, "STR", "STA"),
]


def test_standard_dictionary_loads_with_every_abnf_name_defined() -> None:
    loaded = Dictionary.standard()
    assert loaded.unresolved() == []
    assert set(loaded.by_name) == set(DICTIONARY.by_name)
    assert {0, TGPP} <= {defn.vendor_id for defn in loaded.by_name.values()}


def test_every_grouped_avp_has_an_abnf() -> None:
    missing = [defn.name for defn in DICTIONARY.by_name.values() if defn.is_grouped and defn.rule is None]
    assert missing == []


def test_every_abnf_entry_is_bound_to_its_avp_code_and_vendor() -> None:
    rules = [(defn.name, defn.rule) for defn in DICTIONARY.by_name.values() if defn.rule is not None]
    for cmd in DICTIONARY.commands.values():
        rules += [(cmd.request_abbrev, cmd.request), (cmd.answer_abbrev, cmd.answer)]
    for owner, rule in rules:
        assert rule is not None, owner
        for entry in rule.entries:
            assert entry.key == DICTIONARY.avp(entry.name).key, f"{owner}: {entry.name}"
            assert rule.by_key[entry.key] is entry


@pytest.mark.parametrize(("code", "request_abbrev", "answer_abbrev"), COMMANDS)
def test_command_is_defined_with_request_and_answer_rules(code: int, request_abbrev: str, answer_abbrev: str) -> None:
    cmd = DICTIONARY.command(code)
    assert cmd is not None
    assert (cmd.request_abbrev, cmd.answer_abbrev) == (request_abbrev, answer_abbrev)
    assert DICTIONARY.command_by_abbrev(request_abbrev) is cmd
    assert DICTIONARY.command_by_abbrev(answer_abbrev) is cmd
    assert cmd.request is not None and cmd.request.entries
    assert cmd.answer is not None and cmd.answer.entries
    assert cmd.request is not cmd.answer


def test_enumerated_value_names_are_upper_case_with_underscores() -> None:
    pattern = re.compile(r"[A-Z0-9][A-Z0-9_]*")
    bad = [
        f"{defn.name}: {value_name}"
        for defn in DICTIONARY.by_name.values()
        for value_name in defn.enum_by_name
        if not pattern.fullmatch(value_name)
    ]
    assert bad == []


def test_enumerated_avps_define_their_values() -> None:
    empty = [defn.name for defn in DICTIONARY.by_name.values() if defn.is_enumerated and not defn.enum_by_value]
    assert empty == []


# TS 32.299 7.2.77 (Rel-17), in the standard's order.
IMS_INFORMATION_MEMBERS = [
    "Event-Type", "Role-Of-Node", "Node-Functionality", "User-Session-Id", "Outgoing-Session-Id",
    "Session-Priority", "Calling-Party-Address", "Called-Party-Address", "Called-Asserted-Identity",
    "Called-Identity-Change", "Number-Portability-Routing-Information", "Carrier-Select-Routing-Information",
    "Alternate-Charged-Party-Address", "Requested-Party-Address", "Associated-URI", "Time-Stamps",
    "Application-Server-Information", "Inter-Operator-Identifier", "Transit-IOI-List",
    "IMS-Charging-Identifier", "SDP-Session-Description", "SDP-Media-Component", "Served-Party-IP-Address",
    "Server-Capabilities", "Trunk-Group-Id", "Bearer-Service", "Service-Id", "Service-Specific-Info",
    "Message-Body", "Cause-Code", "Reason-Header", "Access-Network-Information",
    "Cellular-Network-Information", "Early-Media-Description", "IMS-Communication-Service-Identifier",
    "IMS-Application-Reference-Identifier", "Online-Charging-Flag", "Real-Time-Tariff-Information",
    "Account-Expiration", "Initial-IMS-Charging-Identifier", "NNI-Information", "From-Address",
    "IMS-Emergency-Indicator", "IMS-Visited-Network-Identifier", "Access-Network-Info-Change",
    "Access-Transfer-Information", "Related-IMS-Charging-Identifier", "Related-IMS-Charging-Identifier-Node",
    "Route-Header-Received", "Route-Header-Transmitted", "Instance-Id", "TAD-Identifier", "FE-Identifier-List",
]  # fmt: skip


def test_ims_information_lists_every_member_of_ts_32_299_in_order() -> None:
    rule = DICTIONARY.avp("IMS-Information").rule
    assert rule is not None
    assert [entry.name for entry in rule.entries] == IMS_INFORMATION_MEMBERS
    assert not rule.any_avp  # the standard's grammar ends without "* [ AVP ]"
    node = next(entry for entry in rule.entries if entry.name == "Node-Functionality")
    assert (node.minimum, node.maximum) == (1, 1)


@pytest.mark.parametrize(
    ("group", "member"),
    [
        ("Service-Information", "IMS-Information"),
        ("Service-Information", "Subscription-Id"),
        ("Service-Information", "AoC-Information"),
        ("Application-Server-Information", "Status-AS-Code"),
        ("SDP-Media-Component", "Local-GW-Inserted-Indication"),
        ("SDP-Media-Component", "IP-Realm-Default-Indication"),
        ("SDP-Media-Component", "Transcoder-Inserted-Indication"),
        ("SDP-Media-Component", "Access-Network-Charging-Identifier-Value"),
        ("SDP-Media-Component", "3GPP-Charging-Id"),
        ("Multiple-Services-Credit-Control", "Time-Quota-Mechanism"),
        ("Multiple-Services-Credit-Control", "Envelope-Reporting"),
        ("Multiple-Services-Credit-Control", "Refund-Information"),
        ("Multiple-Services-Credit-Control", "AF-Correlation-Information"),
        ("Multiple-Services-Credit-Control", "QoS-Final-Unit-Indication"),
        ("Used-Service-Unit", "Event-Charging-TimeStamp"),
        ("Time-Quota-Mechanism", "Base-Time-Interval"),
        ("AoC-Information", "AoC-Cost-Information"),
        ("AoC-Cost-Information", "Accumulated-Cost"),
        ("AoC-Cost-Information", "Incremental-Cost"),
    ],
)
def test_grouped_avp_names_its_ts_32_299_or_rfc_8506_member(group: str, member: str) -> None:
    rule = DICTIONARY.avp(group).rule
    assert rule is not None
    assert member in {entry.name for entry in rule.entries}


@pytest.mark.parametrize(
    ("command", "member"),
    [
        ("CCR", "AoC-Request-Type"),
        ("CCR", "Subscription-Id-Extension"),
        ("CCR", "User-Equipment-Info-Extension"),
        ("CCA", "QoS-Final-Unit-Indication"),
        ("CCA", "Low-Balance-Indication"),
        ("CCA", "Remaining-Balance"),
        ("ACR", "Service-Information"),
    ],
)
def test_command_names_its_ts_32_299_or_rfc_8506_member(command: str, member: str) -> None:
    cmd = DICTIONARY.command_by_abbrev(command)
    rule = cmd.rule(command == cmd.request_abbrev)
    assert rule is not None
    assert member in {entry.name for entry in rule.entries}


def test_documented_wireshark_differences_describe_our_tables() -> None:
    for (code, vendor), (ours, _theirs, why) in TYPE_EXCEPTIONS.items():
        defn = DICTIONARY.lookup(code, vendor)
        assert defn is not None, why
        assert defn.type_name == ours, why
    for (code, vendor), (extra, left_out, why) in ENUM_EXCEPTIONS.items():
        defn = DICTIONARY.lookup(code, vendor)
        assert defn is not None, why
        assert extra <= set(defn.enum_by_value), why
        assert not left_out & set(defn.enum_by_value), why


# --- cross-checks against Wireshark ----------------------------------------------------------


@pytest.mark.interop
def test_wireshark_dictionary_is_read_with_its_included_files(wireshark: WiresharkTable) -> None:
    assert [e.type_name for e in wireshark[(263, 0)]] == ["UTF8String"]  # Session-Id, dictionary.xml
    assert [e.type_name for e in wireshark[(416, 0)]] == ["Enumerated"]  # CC-Request-Type, chargecontrol.xml
    assert [e.type_name for e in wireshark[(876, TGPP)]] == ["Grouped"]  # IMS-Information, TGPP.xml
    assert sum(1 for _ in known_to_wireshark(wireshark)) > len(DICTIONARY.by_name) * 3 // 4


@pytest.mark.interop
def test_avp_types_match_wireshark_for_every_avp_it_knows(wireshark: WiresharkTable) -> None:
    mismatches = []
    for defn, entries in known_to_wireshark(wireshark):
        if any(types_agree(defn.type_name, entry.type_name) for entry in entries):
            continue
        exception = TYPE_EXCEPTIONS.get((defn.code, defn.vendor_id))
        if exception and any(entry.type_name == exception[1] for entry in entries):
            continue
        theirs = ", ".join(f"{e.name} {e.type_name}" for e in entries)
        mismatches.append(f"{defn.name} ({defn.code}/{defn.vendor_id}) is {defn.type_name}; Wireshark: {theirs}")
    assert mismatches == []


@pytest.mark.interop
def test_enumerated_values_match_wireshark_where_it_lists_them(wireshark: WiresharkTable) -> None:
    mismatches = []
    for defn, entries in known_to_wireshark(wireshark):
        ours = set(defn.enum_by_value)
        if not ours:
            continue
        allowed_extra, allowed_left_out, _ = ENUM_EXCEPTIONS.get(
            (defn.code, defn.vendor_id), (frozenset(), frozenset(), "")
        )
        for entry in entries:
            if not entry.values:
                continue  # Wireshark shows the number only
            extra = ours - entry.values - allowed_extra
            left_out = entry.values - ours - allowed_left_out
            if extra or left_out:
                mismatches.append(
                    f"{defn.name} ({defn.code}/{defn.vendor_id}): ours only {sorted(extra)}, "
                    f"Wireshark's {entry.name} only {sorted(left_out)}"
                )
    assert mismatches == []
