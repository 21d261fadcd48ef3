"""The deal's custom search attributes: what the pipeline report and the Temporal UI filter on.

The dev server, the test environments and docker-compose register exactly these.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

DEAL_STAGE = SearchAttributeKey.for_keyword("DealStage")
DEAL_VALUE = SearchAttributeKey.for_float("DealValue")
DEAL_OWNER = SearchAttributeKey.for_keyword("DealOwner")
DEAL_NEXT_TOUCH = SearchAttributeKey.for_datetime("DealNextTouch")
# Set once, at start: pipeline totals never add two currencies.
DEAL_CURRENCY = SearchAttributeKey.for_keyword("DealCurrency")

ALL = (DEAL_STAGE, DEAL_VALUE, DEAL_OWNER, DEAL_NEXT_TOUCH, DEAL_CURRENCY)
