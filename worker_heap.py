"""The worker's garbage collector, set for a process that lives long and holds many deals.

CPython's cyclic collector starts a young collection every 700 new container objects,
and now and then a full one that walks every object the process holds. A worker makes
objects fast (each activation, send and record batch builds models and protobufs) and
keeps a large heap (the cached deals, and everything imported at start). Measured over
a benchmark run of 600 deals (parked, then their check-ins due at once), the collector
took 1.7 s of the worker's CPU, and each full collection held the event loop for up to
0.24 s: every SMTP reply, heartbeat and poll waited meanwhile.

So, once the worker has built what it needs for its whole life and before it polls:

- everything built so far is frozen (``gc.freeze``): modules, classes, compiled
  templates and the schemas are never garbage, and a full collection no longer walks
  them. Objects frozen are still freed when their last reference goes; only a cycle
  among them would be kept, and a collection right before the freeze clears those.
- a young collection comes every ``YOUNG_COLLECTION_EVERY`` objects instead of 700:
  most objects of an activation die with it, by their reference count, before any
  collection looks at them.

The collector still runs: a cycle made later (an evicted deal's, say) is collected.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_COLLECTION_EVERY = 10_000


def settle() -> None:
    """Freeze what the worker built at start and space out young collections."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, old)


@contextmanager
def settled() -> Iterator[None]:
    """``settle`` for a while, then the collector as it was (a process that does more)."""
    threshold = gc.get_threshold()
    settle()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
