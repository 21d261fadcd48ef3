"""Inputs of the baseline workflows, imported by them through the sandbox's pass-through."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel


class BurstInput(BaseModel):
    """When a parked ``BurstSkeleton`` comes due, and how long it then stays quiet."""

    due: datetime
    quiet: timedelta = timedelta(hours=1)
