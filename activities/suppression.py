"""The deal's own write to the suppression list (``ledger.suppression_list``).

Whoever learns of an opt-out or a hard bounce writes the list before telling the
deal, so this write, made when the deal applies the signal, finds the entry there
and changes nothing. It stays as the deal's receipt: a deal told by some path that
did not write first (an older worker, a raw signal) still suppresses the address.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel
from temporalio import activity

if TYPE_CHECKING:
    # SQLAlchemy is imported where the list is used: workflows import this module.
    from ledger.suppression_list import SuppressionList

SUPPRESS_ADDRESS = "suppress_address"


class Suppression(BaseModel):
    """An entry as the deal hands it to the list."""

    address: str
    reason: Literal["opted_out", "bounced"]
    detail: str = ""
    deal_id: str = ""
    at: datetime


class SuppressionWriter:
    def __init__(self, suppressions: SuppressionList | None) -> None:
        self.suppressions = suppressions

    @activity.defn(name=SUPPRESS_ADDRESS)
    async def suppress(self, entry: Suppression) -> None:
        if self.suppressions is None:
            return
        from ledger.suppression_list import SuppressionReason, SuppressionSource

        try:
            await self.suppressions.add(
                entry.address,
                SuppressionReason(entry.reason),
                SuppressionSource.DEAL,
                now=entry.at,
                detail=entry.detail,
                deal_id=entry.deal_id,
            )
        except ValueError:
            # Not an address the list can key (the deal accepted it as a contact, so this
            # is unlikely): nothing could be mailed under it either.
            activity.logger.warning("not suppressed, not an address: %r", entry.address)
