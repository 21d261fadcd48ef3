"""A workflow's payloads skip the per-payload context look-up when no converter uses it.

temporalio 1.35 wraps a workflow's data converter, for every activation it decodes and
every completion it encodes, in a converter that asks the workflow for the
serialization context of each payload's command. In a sandboxed workflow that question
is a snippet run inside the sandbox, with its import hooks put on and taken off: on a
check-in burst, a fifth of the deal worker's CPU. The answer only matters to a payload
converter, codec, failure converter or external storage that reads the context
(``WithSerializationContext``). Dealflow's (pydantic, the encryption codec, encoded
failure attributes, no external storage) read none: every context gives back the very
same converter, so the wrapper's choice is always that converter.

``apply()`` makes the SDK hand such a converter over as it is, unwrapped. A converter
that reads the context (or stores payloads externally) still gets the SDK's wrapper.
It patches the private ``_CommandAwareDataConverter.create``, so it applies only to the
SDK versions it was checked against; on any other it does nothing and says so once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    WorkflowSerializationContext,
)
from temporalio.worker import _workflow

from sandbox_code_cache import sdk_checked

# Versions whose ``_CommandAwareDataConverter`` only chooses among ``context_free_dc``,
# ``workflow_context_dc`` and ``context_free_dc.with_context(...)`` (read before adding).
CHECKED_VERSIONS = frozenset({"1.35.0"})

# One context of each kind a workflow's commands ask for: a converter that answers
# both with itself reads no context.
_PROBES = (
    WorkflowSerializationContext(namespace="probe", workflow_id="probe"),
    ActivitySerializationContext(
        namespace="probe",
        activity_id="probe",
        activity_type="probe",
        activity_task_queue="probe",
        workflow_id="probe",
        workflow_type="probe",
        is_local=False,
    ),
)


def reads_no_context(converter: DataConverter) -> bool:
    """True when every serialization context leaves ``converter`` as it is."""
    if converter.external_storage is not None:
        return False
    return all(converter.with_context(probe) is converter for probe in _PROBES)


def apply() -> bool:
    """Patch the SDK (once per process); False when this SDK version is not known."""
    wrapper = _workflow._CommandAwareDataConverter
    create: Callable[..., DataConverter] = wrapper.create
    if getattr(create, "skips_unread_context", False):
        return True
    if not sdk_checked(CHECKED_VERSIONS, "workflow payloads look up their context one by one"):
        return False
    # A worker keeps one converter for its life: remember the last one's answer.
    last: list[tuple[DataConverter, bool]] = []

    @functools.wraps(create)
    def create_unless_unread(
        instance: Any,
        context_free_dc: DataConverter,
        workflow_context_dc: DataConverter,
        workflow_context: WorkflowSerializationContext,
    ) -> DataConverter:
        if workflow_context_dc is context_free_dc:
            if not last or last[0][0] is not context_free_dc:
                last[:] = [(context_free_dc, reads_no_context(context_free_dc))]
            if last[0][1]:
                return context_free_dc
        return create(instance, context_free_dc, workflow_context_dc, workflow_context)

    create_unless_unread.skips_unread_context = True  # type: ignore[attr-defined]
    wrapper.create = staticmethod(create_unless_unread)  # type: ignore[method-assign,assignment]
    return True
