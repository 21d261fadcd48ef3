"""The workflow sandbox compiles each snippet it runs once, not once a call.

temporalio's sandbox runs every step of a sandboxed workflow (each activation, and
each payload's serialization context, three or four times a command) as a short
Python source string passed to ``exec``, which compiles the string every time.
Measured on the lifecycle benchmark, that compiling was about a fifth of a deal
worker's CPU: more than the deal's own code, and more than its ledger writes.

``apply()`` hands the sandbox the same snippets already compiled (``exec`` runs a
code object exactly as it runs the source it came from). It patches the SDK's own
``_Instance._run_code``, a private method, so it applies only to the SDK versions it
was checked against; on any other it does nothing and says so once, in the log.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from types import CodeType
from typing import Any

import temporalio
from temporalio.worker.workflow_sandbox import _runner

# Versions whose ``_Instance._run_code(self, code, **globals)`` only hands ``code`` to
# ``exec`` (read before adding one).
CHECKED_VERSIONS = frozenset({"1.35.0"})
# The snippets are the SDK's own constants, and one import line per workflow class.
SNIPPETS_KEPT = 256

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=SNIPPETS_KEPT)
def compiled(source: str) -> CodeType:
    # The file name ``exec`` gives a string, so tracebacks read as before.
    return compile(source, "<string>", "exec")


def sdk_checked(checked: frozenset[str], otherwise: str) -> bool:
    """Whether this temporalio is one a patch of its private parts was checked against;
    if not, one line says what happens ``otherwise`` (the patch is left out)."""
    if temporalio.__version__ in checked:
        return True
    log.info(
        "temporalio %s: %s (checked: %s)",
        temporalio.__version__,
        otherwise,
        ", ".join(sorted(checked)),
    )
    return False


def apply() -> bool:
    """Patch the sandbox (once per process); False when this SDK version is not known."""
    run_code: Callable[..., None] = _runner._Instance._run_code
    if getattr(run_code, "compiles_once", False):
        return True
    if not sdk_checked(CHECKED_VERSIONS, "the sandbox compiles its snippets on each call"):
        return False

    @functools.wraps(run_code)
    def run_compiled(self: Any, code: str, **extra_globals: Any) -> None:
        run_code(self, compiled(code), **extra_globals)

    run_compiled.compiles_once = True  # type: ignore[attr-defined]
    _runner._Instance._run_code = run_compiled  # type: ignore[method-assign]
    return True
