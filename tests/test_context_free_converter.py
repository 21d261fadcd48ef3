"""Workflow payloads skip the context look-up only when no converter reads a context
(``context_free_converter``), on a real test server."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest
import temporalio
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import (
    DataConverter,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
)
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker, _workflow

import context_free_converter
from tests.conftest import codec_data_converter
from tests.test_sandbox_code_cache import Greeting, greet
from worker import workflow_runner


class ContextNoting(PayloadCodec, WithSerializationContext):
    """Passes payloads through, noting the context each was encoded under."""

    def __init__(self, seen: list[tuple[bytes, str]], context: object = None) -> None:
        self.seen, self.context = seen, context

    def with_context(self, context: SerializationContext) -> ContextNoting:
        return ContextNoting(self.seen, context)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        self.seen.extend((p.data, type(self.context).__name__) for p in payloads)
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)


@pytest.fixture
def look_ups(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Each time the SDK's wrapper looks up a payload's context."""
    calls: list[object] = []
    wrapper = _workflow._CommandAwareDataConverter
    original = wrapper._get_current_dc

    def counted(self: _workflow._CommandAwareDataConverter) -> DataConverter:
        calls.append(self)
        return original(self)

    monkeypatch.setattr(wrapper, "_get_current_dc", counted)
    return calls


async def greet_twice(client: Client) -> None:
    runner = workflow_runner()
    queue = f"greeting-{uuid.uuid4()}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[Greeting],
        activities=[greet],
        workflow_runner=runner.__class__(
            restrictions=runner.restrictions.with_passthrough_modules("tests")
        ),
    ):
        for name in ("Ada", "Grace"):
            result = await client.execute_workflow(
                Greeting.run, name, id=f"{queue}-{name}", task_queue=queue
            )
            assert result == f"hello {name}"


def test_our_converter_reads_no_context_and_a_context_reading_one_does() -> None:
    assert context_free_converter.reads_no_context(codec_data_converter())
    noting = DataConverter(payload_codec=ContextNoting([]))
    assert not context_free_converter.reads_no_context(noting)


async def test_our_converter_runs_a_workflow_with_no_context_look_up(
    env: WorkflowEnvironment, look_ups: list[object]
) -> None:
    await greet_twice(env.client)
    assert look_ups == []


async def test_a_converter_that_reads_contexts_still_gets_each_payloads_own(
    env: WorkflowEnvironment, look_ups: list[object]
) -> None:
    seen: list[tuple[bytes, str]] = []
    config = env.client.config()
    config["data_converter"] = DataConverter(payload_codec=ContextNoting(seen))
    await greet_twice(Client(**config))
    assert look_ups
    # The workflow hands "Ada" to its activity: encoded under the activity's context.
    assert (b'"Ada"', "ActivitySerializationContext") in seen


def test_an_sdk_version_it_was_not_checked_against_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrapper = _workflow._CommandAwareDataConverter
    original = getattr(wrapper.create, "__wrapped__", wrapper.create)
    monkeypatch.setattr(wrapper, "create", staticmethod(original))
    monkeypatch.setattr(temporalio, "__version__", "99.0.0")
    assert context_free_converter.apply() is False
    assert wrapper.create is original
