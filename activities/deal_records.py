"""The recording activity: a deal's batch of records into the ledger (``ledger.deal_records``).

The deal starts it without waiting for it and retries it without end, so a ledger
that is down delays only the records, never a buyer email. While the database is
down each attempt fails with one line saying what is wrong (Temporal retries it);
every row is written by its key, so an attempt that committed and then lost its
answer writes nothing twice when it runs again.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from workflows.deal_record import DealRecordBatch

if TYPE_CHECKING:
    # SQLAlchemy is imported where the ledger is used: workflows import this module.
    from ledger.database import LedgerDatabase
    from ledger.deal_records import DealRecords

RECORD_DEAL = "record_deal"
# An attempt gives up on a ledger that does not answer (a SQLite file another process
# holds locked waits 15 s) at this share of its time-out, so that it fails with its own
# line instead of being cancelled by the SDK, which logs a traceback.
GIVE_UP_AT = 0.8


class DealRecorder:
    def __init__(self, database: LedgerDatabase | None) -> None:
        self.database = database
        self._records: DealRecords | None = None

    @activity.defn(name=RECORD_DEAL)
    async def record(self, batch: DealRecordBatch) -> None:
        if self.database is None:
            return
        from ledger.database import explain, too_slow
        from ledger.deal_records import DealRecords

        if self._records is None:
            self._records = DealRecords(self.database)
        limit = activity.info().start_to_close_timeout
        seconds = limit.total_seconds() * GIVE_UP_AT if limit else None
        try:
            async with asyncio.timeout(seconds) as deadline:
                await self._records.record(batch)
        except Exception as error:
            if deadline.expired():
                problem = too_slow(self.database.url, seconds or 0.0)
            else:
                problem = explain(error, self.database.url)
            activity.logger.warning("deal %s not recorded yet: %s", batch.deal.deal_id, problem)
            # Expected while the database is down: benign, so the SDK adds no traceback.
            raise ApplicationError(
                str(problem), type="LedgerUnavailable", category=ApplicationErrorCategory.BENIGN
            ) from None
