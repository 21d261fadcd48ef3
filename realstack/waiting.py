"""Waiting for a condition with a generous bound, never for a fixed time.

A loaded 2-core machine is slow, not broken: the bound says "something is broken".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# Bound on waiting for a condition: "something is broken", never "this machine is slow".
WITHIN = 120.0


async def wait_for(
    condition: Callable[[], Any | Awaitable[Any]],
    what: str,
    within: float = WITHIN,
    every: float = 0.1,
) -> Any:
    """Poll ``condition`` (sync or async) until it returns something truthy; return that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"not within {within:.0f} s: {what}")
        await asyncio.sleep(every)


def tail(path: Path, characters: int = 3000) -> str:
    """The end of a log file ("" while it does not exist)."""
    return path.read_text(errors="replace")[-characters:] if path.exists() else ""
