"""The worker's collector settings (``worker_heap.settle``), in a fresh interpreter each:
they are process-wide, and the test process must keep its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

SETTLED = """
import gc, json, weakref
import worker
import worker_heap

before = gc.get_threshold()
worker_heap.settle()
frozen = gc.get_freeze_count()


class Node:
    pass


# A cycle made after the worker settled, as an evicted deal leaves one: still collected.
first, second = Node(), Node()
first.other, second.other = second, first
watch = weakref.ref(first)
del first, second
gc.collect()
print(json.dumps({
    "before": before,
    "after": gc.get_threshold(),
    "frozen": frozen,
    "young": worker_heap.YOUNG_COLLECTION_EVERY,
    "cycle_collected": watch() is None,
    "enabled": gc.isenabled(),
}))
"""

FOR_A_WHILE = """
import gc, json
import worker_heap

before = gc.get_threshold()
with worker_heap.settled():
    inside = gc.get_threshold(), gc.get_freeze_count()
print(json.dumps({"before": before, "inside": inside,
                  "after": [gc.get_threshold(), gc.get_freeze_count()]}))
"""


def run(script: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_worker_freezes_what_it_built_at_start_and_still_collects_cycles() -> None:
    found = run(SETTLED)
    # Imports alone (Temporal, pydantic, SQLAlchemy, jinja2) are well over 50,000 objects.
    assert found["frozen"] > 50_000
    assert found["before"][0] == 700  # CPython's default, so the setting below is ours
    assert found["after"] == [found["young"], *found["before"][1:]]
    assert found["young"] > 700
    assert found["cycle_collected"] and found["enabled"]


def test_a_process_that_settles_for_a_while_gets_its_collector_back() -> None:
    """What the send-path benchmark does: its process runs other scenarios afterwards."""
    found = run(FOR_A_WHILE)
    (young, *_), frozen = found["inside"]
    assert young > 700 and frozen > 0
    assert found["after"] == [found["before"], 0]
