"""The sandbox's snippets compiled once (``sandbox_code_cache``), on a real test server."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import temporalio
from temporalio import activity, workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import _runner

import sandbox_code_cache
from worker import workflow_runner


@activity.defn
async def greet(name: str) -> str:
    return f"hello {name}"


@workflow.defn(sandboxed=True)
class Greeting:
    @workflow.run
    async def run(self, name: str) -> str:
        greeting = await workflow.execute_activity(
            greet, name, start_to_close_timeout=timedelta(seconds=30)
        )
        await workflow.sleep(timedelta(hours=1))
        return greeting


async def test_the_pinned_sdk_runs_workflows_on_compiled_snippets(
    env: WorkflowEnvironment,
) -> None:
    """The worker's runner patches the sandbox, and a workflow that schedules an
    activity and a timer runs through it, each snippet compiled once and reused."""
    runner = workflow_runner()
    assert getattr(_runner._Instance._run_code, "compiles_once", False)
    before = sandbox_code_cache.compiled.cache_info()
    queue = f"greeting-{uuid.uuid4()}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[Greeting],
        activities=[greet],
        workflow_runner=runner.__class__(
            restrictions=runner.restrictions.with_passthrough_modules(__name__)
        ),
    ):
        for name in ("Ada", "Grace"):
            result = await env.client.execute_workflow(
                Greeting.run, name, id=f"{queue}-{name}", task_queue=queue
            )
            assert result == f"hello {name}"
    after = sandbox_code_cache.compiled.cache_info()
    # Each activation and each payload's context is one snippet run: most came from
    # the cache (the second workflow's import line is the only new one it needs).
    assert after.hits - before.hits > after.misses - before.misses
    assert after.hits - before.hits >= 10


def test_an_sdk_version_it_was_not_checked_against_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = getattr(_runner._Instance._run_code, "__wrapped__", _runner._Instance._run_code)
    monkeypatch.setattr(_runner._Instance, "_run_code", original)
    monkeypatch.setattr(temporalio, "__version__", "99.0.0")
    assert sandbox_code_cache.apply() is False
    assert _runner._Instance._run_code is original
