"""Shared fixtures: a real Temporal test server, a real SMTP server on loopback, a worker.

Each test gets its own time-skipping server (function scope, as the SDK
advises), its own SMTP sink on a free port and its own task queue.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from deal_intake import build_deal
from devstack import OutboxSink, installed_binary, register_search_attributes
from settings import Settings, load_settings
from starter import start_deal
from worker import build_worker
from workflows.models import DealInput


@pytest.fixture
def sink() -> Any:
    outbox = OutboxSink().start()
    yield outbox
    outbox.stop()


@pytest.fixture
def settings(sink: OutboxSink) -> Settings:
    return load_settings(
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        temporal_task_queue=f"deals-{uuid.uuid4().hex[:8]}",
        rep_address="rep@seller.example.com",
        fulfilment_address="fulfilment@seller.example.com",
        sender_address="sales@seller.example.com",
        company_name="Seller GmbH",
        company_postal_address="Seller GmbH\nHauptstrasse 1\n10115 Berlin",
        send_window="always",
        signing_secret="test-signing-secret",
        _env_file=None,
    )


@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=str(installed_binary("temporal-test-server")),
    )
    await register_search_attributes(environment.client, environment.client.namespace)
    async with environment:
        yield environment


@pytest.fixture
async def client(env: WorkflowEnvironment, settings: Settings) -> AsyncIterator[Client]:
    worker = build_worker(env.client, settings)
    async with worker:
        yield env.client


@dataclass
class Deals:
    """Starts deals and reads what the SMTP server received, for one test."""

    client: Client
    env: WorkflowEnvironment
    settings: Settings
    sink: OutboxSink

    def input(self, **fields: Any) -> DealInput:
        defaults: dict[str, Any] = {
            "deal_id": f"D-{uuid.uuid4().hex[:8]}",
            "company": "Buyer & Sons",
            "contacts": [
                {
                    "name": "Bea Buyer",
                    "email": "bea@buyer.example.org",
                    "time_zone": "Europe/Berlin",
                }
            ],
            "kind": "rfp",
            "currency": "EUR",
            "items": [
                {"name": "Conveyor <X1>", "quantity": 2, "list_price": "5000.00"},
                {"name": "Installation", "quantity": 1, "list_price": "1000.00"},
            ],
        }
        return build_deal(self.settings, {**defaults, **fields})

    async def start(self, **fields: Any) -> WorkflowHandle:
        return await start_deal(self.client, self.settings, self.input(**fields))

    async def mail(self, count: int, within: float = 15.0) -> list[EmailMessage]:
        """Wait (real time) until the SMTP server holds ``count`` messages; return them all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(self.sink.received) < count:
            if loop.time() > deadline:
                got = [m.message["X-Dealflow-Step"] for m in self.sink.received]
                raise AssertionError(f"expected {count} emails, the server has {got}")
            await asyncio.sleep(0.05)
        return [m.message for m in self.sink.received]

    async def settle(self, count: int) -> list[EmailMessage]:
        """Exactly ``count`` messages, and no more arriving shortly after."""
        messages = await self.mail(count)
        await asyncio.sleep(0.5)
        steps = [m["X-Dealflow-Step"] for m in messages]
        assert len(self.sink.received) == count, f"more mail than expected after {steps}"
        return messages

    async def skip(self, duration: timedelta) -> None:
        await self.env.sleep(duration)

    async def now(self) -> datetime:
        return await self.env.get_current_time()


@pytest.fixture
def deals(client: Client, env: WorkflowEnvironment, settings: Settings, sink: OutboxSink) -> Deals:
    return Deals(client, env, settings, sink)


def sent_at(message: EmailMessage) -> datetime:
    return parsedate_to_datetime(str(message["Date"]))


def steps(messages: list[EmailMessage]) -> list[str]:
    return [str(m["X-Dealflow-Step"]) for m in messages]


def body(message: EmailMessage, subtype: str = "plain") -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part"
    return str(part.get_content())


def money(value: str) -> Decimal:
    return Decimal(value)


Finder = Callable[[list[EmailMessage], str], EmailMessage]


def only(messages: list[EmailMessage], step: str) -> EmailMessage:
    found = [m for m in messages if m["X-Dealflow-Step"] == step]
    assert len(found) == 1, f"expected one {step}, got {len(found)} in {steps(messages)}"
    return found[0]
