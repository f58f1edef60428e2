"""Nodes talking over real TCP (and TLS): requests, watchdog failover/failback, election, DPR, duplicates."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from charging.diameter import FLAG_RETRANSMIT, Message
from charging.diameter.node import DiameterNode, NodeConfig, NoRouteError, PeerConfig, RequestTimeout, TlsConfig
from charging.diameter.peer import LocalIdentity, Peer, State, Timers
from tests.support.diameter import RawClient, client_node, server_node, wait_available, wait_until

FAST = Timers(watchdog=0.3, cea_timeout=2.0, dpa_timeout=1.0, reconnect_min=0.05, reconnect_max=0.2, jitter=0.0)


def ccr(node: DiameterNode, number: int = 0, dest_host: str | None = None) -> Message:
    avps: dict[str, object] = {
        "Session-Id": node.new_session_id(),
        "Origin-Host": node.identity.origin_host,
        "Origin-Realm": node.identity.origin_realm,
        "Destination-Realm": "test",
        "Auth-Application-Id": 4,
        "Service-Context-Id": "32260@3gpp.org",
        "CC-Request-Type": 4,
        "CC-Request-Number": number,
    }
    if dest_host:
        avps["Destination-Host"] = dest_host
    return Message.request("CCR", 4, avps)


def answering_server(host: str = "server.test", calls: list[Message] | None = None, **config: object) -> DiameterNode:
    node = server_node(host, **config)

    async def handler(msg: Message, peer: Peer) -> Message:
        if calls is not None:
            calls.append(msg)
        return node.make_answer(
            msg,
            2001,
            [("Auth-Application-Id", 4), ("CC-Request-Type", 4), ("CC-Request-Number", msg["CC-Request-Number"])],
        )

    node.register(4, 272, handler)
    return node


async def test_request_and_answer_between_two_nodes() -> None:
    server = answering_server()
    await server.start()
    client = client_node(server.port)
    await client.start()
    try:
        await wait_available(client)
        answers = await asyncio.gather(*(client.request(ccr(client, i)) for i in range(50)))
        assert [a["CC-Request-Number"] for a in answers] == list(range(50))
        assert all(a["Result-Code"] == 2001 and a["Origin-Host"] == "server.test" for a in answers)
        assert server.peers["client.test"].info.applications == {4}
    finally:
        await client.stop()
        await server.stop()


async def test_stop_sends_dpr_and_the_server_closes_the_peer() -> None:
    server = answering_server()
    await server.start()
    client = client_node(server.port)
    await client.start()
    await wait_available(client)
    await client.stop()
    await wait_until(lambda: server.peers["client.test"].state is State.CLOSED, what="server side closed")
    assert "DPR" in server.peers["client.test"].last_error
    await server.stop()


async def test_client_reconnects_after_the_server_comes_back() -> None:
    server = answering_server()
    await server.start()
    port = server.port
    client = client_node(port, timers=FAST)
    await client.start()
    try:
        await wait_available(client)
        await server.stop()
        await wait_until(lambda: not client.peers["server.test"].is_open, what="client noticed")
        again = answering_server(listen=[("127.0.0.1", port)])
        await again.start()
        await wait_available(client, timeout=5.0)
        assert (await client.request(ccr(client)))["Result-Code"] == 2001
        await again.stop()
    finally:
        await client.stop()


async def test_watchdog_fails_over_to_another_peer_and_fails_back() -> None:
    calls_a: list[Message] = []
    calls_b: list[Message] = []
    a = answering_server("a.test", calls_a)
    b = answering_server("b.test", calls_b)
    await a.start()
    await b.start()
    client = DiameterNode(
        NodeConfig(
            LocalIdentity("client.test", "test"),
            peers=[
                PeerConfig("a.test", "test", "127.0.0.1", a.port),
                PeerConfig("b.test", "test", "127.0.0.1", b.port),
            ],
            client_auth_applications=frozenset({4}),
            timers=FAST,
            request_timeout=5.0,
        )
    )
    await client.start()
    try:
        await wait_available(client, "a.test")
        await wait_available(client, "b.test")
        # a goes silent: it stops reading its socket, so neither CCRs nor DWRs get answered.
        a_conn = next(iter(a._connections.values()))
        assert a_conn.transport is not None
        a_conn.transport.pause_reading()
        answer = await client.request(ccr(client, 1), peer="a.test")
        assert answer["Origin-Host"] == "b.test", "the request moved to b"
        assert calls_b and calls_b[0].is_retransmit, "sent again with the T flag"
        assert not client.peers["a.test"].available
        a_conn.transport.resume_reading()
        await wait_available(client, "a.test", timeout=3.0)
    finally:
        await client.stop()
        await a.stop()
        await b.stop()


async def test_simultaneous_connections_are_resolved_by_election() -> None:
    x = answering_server("aaa.test", timers=FAST)
    y = answering_server("zzz.test", timers=FAST)
    await x.start()
    await y.start()
    x.config.peers.append(PeerConfig("zzz.test", "test", "127.0.0.1", y.port))
    y.config.peers.append(PeerConfig("aaa.test", "test", "127.0.0.1", x.port))
    x._peer_configs = {p.host: p for p in x.config.peers}
    y._peer_configs = {p.host: p for p in y.config.peers}
    now = x.now()
    x._run(x._peer("zzz.test", dial=True), x.peers["zzz.test"].start(now))
    y._run(y._peer("aaa.test", dial=True), y.peers["aaa.test"].start(now))
    try:
        await wait_until(lambda: x.peers["zzz.test"].is_open and y.peers["aaa.test"].is_open, what="both open")
        await asyncio.sleep(0.3)
        # The winner (zzz) keeps the connection it accepted, which is the one aaa initiated.
        assert y.peers["aaa.test"].state is State.R_OPEN
        assert x.peers["zzz.test"].state is State.I_OPEN
        assert len([c for c in x._connections.values() if not c.closed]) == 1
        answer = await x.request(ccr(x, 3), peer="zzz.test")
        assert answer["Result-Code"] == 2001
    finally:
        await x.stop()
        await y.stop()


async def test_retransmission_is_answered_from_the_cache_and_served_once() -> None:
    calls: list[Message] = []
    server = answering_server(calls=calls)
    await server.start()
    raw = RawClient()
    await raw.connect(server.port)
    await raw.handshake()
    try:
        request = ccr(server, 5)
        request.hop_by_hop, request.end_to_end = 77, 4242
        await raw.send(request.to_bytes())
        first = await raw.recv()
        request.flags |= FLAG_RETRANSMIT
        request.hop_by_hop = 78
        await raw.send(request.to_bytes())
        second = await raw.recv()
        assert len(calls) == 1
        assert second.hop_by_hop == 78 and first.hop_by_hop == 77
        assert second.to_bytes()[16:] == first.to_bytes()[16:]
    finally:
        await raw.close()
        await server.stop()


async def test_routing_by_destination_host_and_no_route() -> None:
    a = answering_server("a.test")
    await a.start()
    client = client_node(a.port, server_host="a.test")
    await client.start()
    try:
        await wait_available(client, "a.test")
        assert (await client.request(ccr(client, dest_host="a.test")))["Origin-Host"] == "a.test"
        msg = ccr(client)
        msg.set("Destination-Realm", "elsewhere.test")
        with pytest.raises(NoRouteError):
            await client.request(msg)
    finally:
        await client.stop()
        await a.stop()


async def test_request_times_out_when_nobody_answers() -> None:
    server = server_node()

    async def never(msg: Message, peer: Peer) -> None:
        await asyncio.sleep(10)

    server.register(4, 272, never)
    await server.start()
    client = client_node(server.port)
    await client.start()
    try:
        await wait_available(client)
        with pytest.raises(RequestTimeout):
            await client.request(ccr(client), timeout=0.2)
    finally:
        await client.stop()
        await server.stop()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
         "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    for name in ("server", "client"):
        subprocess.run(
            ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}.test",
             "-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.csr")],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            ["openssl", "x509", "-req", "-in", str(folder / f"{name}.csr"), "-CA", str(folder / "ca.pem"),
             "-CAkey", str(folder / "ca.key"), "-CAcreateserial", "-days", "2", "-out", str(folder / f"{name}.pem")],
            check=True, capture_output=True,
        )  # fmt: skip
    return folder


async def test_tls_connection_with_mutual_certificates(certificates: Path) -> None:
    c = certificates
    server = answering_server(
        listen=[],
        tls_listen=[("127.0.0.1", 0)],
        tls=TlsConfig(str(c / "server.pem"), str(c / "server.key"), str(c / "ca.pem")),
    )
    await server.start()
    client = DiameterNode(
        NodeConfig(
            LocalIdentity("client.test", "test"),
            peers=[PeerConfig("server.test", "test", "127.0.0.1", server.port, tls=True)],
            tls=TlsConfig(str(c / "client.pem"), str(c / "client.key"), str(c / "ca.pem")),
            client_auth_applications=frozenset({4}),
        )
    )
    await client.start()
    try:
        await wait_available(client)
        assert (await client.request(ccr(client)))["Result-Code"] == 2001
    finally:
        await client.stop()
        await server.stop()


async def test_tls_server_refuses_a_client_without_a_trusted_certificate(certificates: Path) -> None:
    c = certificates
    server = answering_server(
        listen=[],
        tls_listen=[("127.0.0.1", 0)],
        tls=TlsConfig(str(c / "server.pem"), str(c / "server.key"), str(c / "ca.pem")),
    )
    await server.start()
    try:
        raw = RawClient()
        await raw.connect(server.port)  # plain TCP to a TLS port
        await raw.send(b"\x01\x00\x00\x14" + b"\x00" * 16)
        assert await raw.closed_by_peer()
        assert not server.peers
    finally:
        await server.stop()
