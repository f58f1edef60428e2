"""Diameter test helpers: a node started on a free port, and a raw TCP client that sends any bytes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from charging.diameter import Message
from charging.diameter.framing import Framer
from charging.diameter.node import DiameterNode, NodeConfig, PeerConfig
from charging.diameter.peer import LocalIdentity, Timers

Handler = Callable[[Message, Any], Awaitable[Message | None]]


def server_node(
    host: str = "server.test",
    realm: str = "test",
    handlers: dict[tuple[int, int], Handler] | None = None,
    **config: Any,
) -> DiameterNode:
    config.setdefault("listen", [("127.0.0.1", 0)])
    config.setdefault("allowed_networks", ["127.0.0.0/8"])
    node = DiameterNode(NodeConfig(LocalIdentity(host, realm), **config))
    for (app, code), handler in (handlers or {}).items():
        node.register(app, code, handler)
    return node


def client_node(
    server_port: int,
    host: str = "client.test",
    realm: str = "test",
    server_host: str = "server.test",
    auth_apps: frozenset[int] = frozenset({4}),
    acct_apps: frozenset[int] = frozenset(),
    timers: Timers | None = None,
    **config: Any,
) -> DiameterNode:
    return DiameterNode(
        NodeConfig(
            LocalIdentity(host, realm),
            peers=[PeerConfig(server_host, realm, "127.0.0.1", server_port)],
            client_auth_applications=auth_apps,
            client_acct_applications=acct_apps,
            timers=timers or Timers(),
            **config,
        )
    )


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_available(node: DiameterNode, peer: str = "server.test", timeout: float = 5.0) -> None:
    await wait_until(lambda: peer in node.peers and node.peers[peer].available, timeout, f"{peer} available")


class RawClient:
    """Speaks Diameter by hand: sends whatever bytes a test crafts and reads whole answers."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.framer = Framer()
        self._frames: list[bytes] = []
        self._hbh = 1000

    async def connect(self, port: int, host: str = "127.0.0.1") -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port)

    def next_ids(self, msg: Message) -> Message:
        self._hbh += 1
        msg.hop_by_hop = self._hbh
        msg.end_to_end = 0x5000000 + self._hbh
        return msg

    async def send(self, data: bytes | Message) -> None:
        assert self.writer is not None
        if isinstance(data, Message):
            data = self.next_ids(data).to_bytes()
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self, timeout: float = 5.0) -> Message:
        assert self.reader is not None
        while not self._frames:
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not chunk:
                raise ConnectionError("closed by the node")
            self._frames += self.framer.feed(chunk)
        return Message.decode(self._frames.pop(0))

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        assert self.reader is not None
        try:
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
        except (ConnectionError, TimeoutError):
            return True
        return chunk == b""

    async def handshake(
        self,
        origin_host: str = "raw.test",
        realm: str = "test",
        auth_apps: tuple[int, ...] = (4,),
        acct_apps: tuple[int, ...] = (),
    ) -> Message:
        cer = Message.request(
            "CER",
            0,
            [
                ("Origin-Host", origin_host),
                ("Origin-Realm", realm),
                ("Host-IP-Address", "127.0.0.1"),
                ("Vendor-Id", 0),
                ("Product-Name", "raw-test-client"),
                *[("Auth-Application-Id", a) for a in auth_apps],
                *[("Acct-Application-Id", a) for a in acct_apps],
            ],
        )
        await self.send(cer)
        return await self.recv()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()
