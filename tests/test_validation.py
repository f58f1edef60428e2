"""RFC 6733 section 7 answers, seen on the wire: a raw TCP client sends broken requests to a real node."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from charging.diameter import Avp, Message
from charging.diameter.node import DiameterNode
from charging.diameter.peer import Peer
from tests.support.diameter import RawClient, server_node


async def answer_ccr(node: DiameterNode, msg: Message) -> Message:
    return node.make_answer(
        msg,
        2001,
        [
            ("Auth-Application-Id", 4),
            ("CC-Request-Type", msg["CC-Request-Type"]),
            ("CC-Request-Number", msg["CC-Request-Number"]),
        ],
    )


async def start(strict: bool = False, **config: Any) -> DiameterNode:
    node = server_node(strict=strict, **config)

    async def handler(msg: Message, peer: Peer) -> Message:
        return await answer_ccr(node, msg)

    node.register(4, 272, handler)
    await node.start()
    return node


@pytest.fixture
async def node() -> AsyncIterator[DiameterNode]:
    n = await start()
    yield n
    await n.stop()


@pytest.fixture
async def strict_node() -> AsyncIterator[DiameterNode]:
    n = await start(strict=True)
    yield n
    await n.stop()


async def client_of(node: DiameterNode) -> RawClient:
    client = RawClient()
    await client.connect(node.port)
    cea = await client.handshake()
    assert cea["Result-Code"] == 2001
    return client


def ccr(**drop_or_replace: Any) -> Message:
    avps: dict[str, Any] = {
        "Session-Id": "raw.test;1;1",
        "Origin-Host": "raw.test",
        "Origin-Realm": "test",
        "Destination-Realm": "test",
        "Auth-Application-Id": 4,
        "Service-Context-Id": "32260@3gpp.org",
        "CC-Request-Type": 4,
        "CC-Request-Number": 0,
    }
    for name, value in drop_or_replace.items():
        name = name.replace("_", "-")
        if value is None:
            avps.pop(name)
        else:
            avps[name] = value
    return Message.request("CCR", 4, avps)


def failed_avp_codes(ans: Message) -> list[tuple[int, int]]:
    failed = ans["Failed-AVP"]
    return [(a.code, a.vendor_id) for a in failed.avps]


async def test_well_formed_request_is_served(node: DiameterNode) -> None:
    client = await client_of(node)
    await client.send(ccr())
    ans = await client.recv()
    assert ans["Result-Code"] == 2001 and not ans.is_error
    await client.close()


async def test_unknown_command_answers_3001_with_e_bit(node: DiameterNode) -> None:
    client = await client_of(node)
    await client.send(Message(9999, 4, 0x80, avps={"Session-Id": "s", "Origin-Host": "raw.test"}))
    ans = await client.recv()
    assert ans["Result-Code"] == 3001 and ans.is_error and ans.code == 9999
    await client.close()


async def test_unsupported_application_answers_3007(node: DiameterNode) -> None:
    client = await client_of(node)
    msg = ccr()
    msg.app_id = 16777238
    await client.send(msg)
    ans = await client.recv()
    assert ans["Result-Code"] == 3007 and ans.is_error
    await client.close()


async def test_error_bit_on_a_request_answers_3008(node: DiameterNode) -> None:
    client = await client_of(node)
    msg = ccr()
    msg.flags |= 0x20
    await client.send(msg)
    ans = await client.recv()
    assert ans["Result-Code"] == 3008 and ans.is_error
    await client.close()


async def test_m_bit_where_forbidden_answers_3009_in_strict_mode(strict_node: DiameterNode) -> None:
    client = await client_of(strict_node)
    msg = ccr()
    msg.add_avp(Avp.from_raw(269, b"prod", flags=0x40))  # Product-Name must not carry the M bit
    await client.send(msg)
    ans = await client.recv()
    assert ans["Result-Code"] == 3009 and ans.is_error
    assert failed_avp_codes(ans) == [(269, 0)]
    await client.close()


async def test_m_bit_where_forbidden_is_served_in_tolerant_mode(node: DiameterNode) -> None:
    client = await client_of(node)
    msg = ccr()
    msg.add_avp(Avp.from_raw(269, b"prod", flags=0x40))
    await client.send(msg)
    assert (await client.recv())["Result-Code"] == 2001
    await client.close()


async def test_unknown_avp_with_m_bit_answers_5001_naming_it(node: DiameterNode) -> None:
    client = await client_of(node)
    msg = ccr()
    msg.add_avp(Avp.from_raw(65000, b"what", vendor_id=99, flags=0xC0))
    await client.send(msg)
    ans = await client.recv()
    assert ans["Result-Code"] == 5001 and not ans.is_error
    assert failed_avp_codes(ans) == [(65000, 99)]
    assert ans["CC-Request-Type"] == 4, "required answer AVPs are echoed from the request"
    await client.close()


async def test_unknown_avp_without_m_bit_is_ignored(node: DiameterNode) -> None:
    client = await client_of(node)
    msg = ccr()
    msg.add_avp(Avp.from_raw(65000, b"what", vendor_id=99, flags=0x80))
    await client.send(msg)
    assert (await client.recv())["Result-Code"] == 2001
    await client.close()


async def test_unknown_m_bit_avp_inside_a_group_is_reported_inside_its_group(node: DiameterNode) -> None:
    client = await client_of(node)
    inner = Avp.from_raw(65001, b"x", flags=0x40).to_bytes()
    msg = ccr()
    msg.add_avp(Avp.from_raw(456, inner + Avp.build("Rating-Group", 1).to_bytes(), flags=0x40))
    await client.send(msg)
    ans = await client.recv()
    assert ans["Result-Code"] == 5001
    wrapper = ans["Failed-AVP"].avps[0]
    assert wrapper.code == 456 and [a.code for a in wrapper.value.avps] == [65001]
    await client.close()


async def test_invalid_utf8_answers_5004(node: DiameterNode) -> None:
    client = await client_of(node)
    msg = ccr(Service_Context_Id=None)
    msg.add_avp(Avp.from_raw(461, b"\xff\xfe32260@3gpp.org", flags=0x40))
    await client.send(msg)
    ans = await client.recv()
    assert ans["Result-Code"] == 5004
    assert failed_avp_codes(ans) == [(461, 0)]
    await client.close()


async def test_missing_required_avp_answers_5005_with_an_example(node: DiameterNode) -> None:
    client = await client_of(node)
    await client.send(ccr(Service_Context_Id=None))
    ans = await client.recv()
    assert ans["Result-Code"] == 5005
    example = ans["Failed-AVP"].avps[0]
    assert (example.code, example.data) == (461, b"")
    await client.close()


async def test_missing_application_id_is_served_when_the_header_gives_it(node: DiameterNode) -> None:
    client = await client_of(node)
    await client.send(ccr(Auth_Application_Id=None))
    assert (await client.recv())["Result-Code"] == 2001
    await client.close()


async def test_missing_application_id_answers_5005_in_strict_mode(strict_node: DiameterNode) -> None:
    client = await client_of(strict_node)
    await client.send(ccr(Auth_Application_Id=None))
    ans = await client.recv()
    assert ans["Result-Code"] == 5005 and failed_avp_codes(ans) == [(258, 0)]
    await client.close()


async def test_conflicting_repeats_answer_5009(node: DiameterNode) -> None:
    client = await client_of(node)
    msg = ccr()
    msg.add("CC-Request-Type", 2)
    await client.send(msg)
    ans = await client.recv()
    assert ans["Result-Code"] == 5009 and failed_avp_codes(ans) == [(416, 0)]
    await client.close()


async def test_identical_repeats_are_served_tolerantly_and_refused_strictly(
    node: DiameterNode, strict_node: DiameterNode
) -> None:
    for target, expected in ((node, 2001), (strict_node, 5009)):
        client = await client_of(target)
        msg = ccr()
        msg.add("Service-Context-Id", "32260@3gpp.org")
        await client.send(msg)
        assert (await client.recv())["Result-Code"] == expected
        await client.close()


async def test_wrong_length_of_a_fixed_size_value_answers_5014(node: DiameterNode) -> None:
    client = await client_of(node)
    msg = ccr(CC_Request_Number=None)
    msg.add_avp(Avp.from_raw(415, b"\x00\x00\x01", flags=0x40))
    await client.send(msg)
    ans = await client.recv()
    assert ans["Result-Code"] == 5014 and failed_avp_codes(ans) == [(415, 0)]
    await client.close()


async def test_avp_running_past_the_message_answers_5014(node: DiameterNode) -> None:
    client = await client_of(node)
    raw = bytearray(client.next_ids(ccr()).to_bytes())
    last = len(raw) - 12  # CC-Request-Number is last: 12 octets
    struct.pack_into(">I", raw, last + 4, (0x40 << 24) | 40)
    await client.send(bytes(raw))
    ans = await client.recv()
    assert ans["Result-Code"] == 5014
    await client.close()


async def test_invalid_message_length_answers_5015_and_closes(node: DiameterNode) -> None:
    client = await client_of(node)
    raw = bytearray(client.next_ids(ccr()).to_bytes())
    raw[1:4] = (len(raw) + 2).to_bytes(3, "big")  # not a multiple of four
    await client.send(bytes(raw))
    ans = await client.recv()
    assert ans["Result-Code"] == 5015
    assert await client.closed_by_peer()


async def test_node_survives_garbage_and_keeps_serving(node: DiameterNode) -> None:
    bad = RawClient()
    await bad.connect(node.port)
    await bad.send(b"\x07" * 64)  # not Diameter at all
    assert await bad.closed_by_peer()
    good = await client_of(node)
    await good.send(ccr())
    assert (await good.recv())["Result-Code"] == 2001
    await good.close()


async def test_unknown_peer_gets_3010_and_is_disconnected() -> None:
    closed = await start(allowed_networks=[])
    try:
        client = RawClient()
        await client.connect(closed.port)
        cea = await client.handshake("stranger.test")
        assert cea["Result-Code"] == 3010 and cea.is_error
        assert await client.closed_by_peer()
    finally:
        await closed.stop()


async def test_no_common_application_gets_5010(node: DiameterNode) -> None:
    client = RawClient()
    await client.connect(node.port)
    cea = await client.handshake(auth_apps=(16777238,))
    assert cea["Result-Code"] == 5010
    assert await client.closed_by_peer()


async def test_request_before_cer_closes_the_connection(node: DiameterNode) -> None:
    client = RawClient()
    await client.connect(node.port)
    await client.send(ccr())
    assert await client.closed_by_peer()
