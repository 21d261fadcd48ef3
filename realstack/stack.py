"""A local stack in one folder: the dev server, a client of it, the in-process relay and
a migrated SQLite ledger, for the processes a test starts against them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from temporalio.client import Client

from ledger import schema
from payload_codec import encrypted_data_converter
from realstack.deployment import COMMON_SETTINGS, deployment
from realstack.relay import Relay
from realstack.temporal import TemporalDevServer
from settings import parse_codec_keys


async def connect(server: TemporalDevServer) -> Client:
    """A client of the dev server, with the product's data converter (and the workers'
    codec key)."""
    converter = encrypted_data_converter(parse_codec_keys(COMMON_SETTINGS["codec_keys"]))
    return await Client.connect(server.address, data_converter=converter)


@dataclass
class LocalStack:
    folder: Path
    ledger_url: str
    server: TemporalDevServer
    client: Client
    relay: Relay

    def deployment(
        self, queue: str, relay: Relay | None = None, server: TemporalDevServer | None = None
    ) -> dict[str, str]:
        """The settings of a worker on ``queue`` (its data in ``folder/queue``), pointed at
        this stack's server and relay unless told others."""
        return deployment(
            temporal=(server or self.server).address,
            task_queue=queue,
            smtp_port=(relay or self.relay).port,
            ledger_url=self.ledger_url,
            data_dir=self.folder / queue,
        )


S = TypeVar("S", bound=LocalStack)


@asynccontextmanager
async def local_stack(folder: Path, kind: type[S], relay: Relay | None = None) -> AsyncIterator[S]:
    """A ``kind`` (``LocalStack`` or a subclass) on a fresh ledger in ``folder``, its dev
    server in ``folder/temporal``; the server and the relay (a ``Relay()`` unless given)
    are stopped on exit."""
    ledger_url = f"sqlite:///{folder / 'ledger.sqlite3'}"
    await schema.upgrade(ledger_url)
    server = TemporalDevServer(folder / "temporal")
    started = relay or Relay()
    started.start()
    try:
        await server.start()
        yield kind(folder, ledger_url, server, await connect(server), started)
    finally:
        server.stop()
        started.stop()
