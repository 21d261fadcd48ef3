"""The HTTP endpoints, served by uvicorn on loopback and called over real HTTP, in front of
the time-skipping Temporal server and a worker: one-click unsubscribe and the ERP webhook."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from temporalio.client import Client

from activities.signed_tokens import TokenSigner
from devstack import free_port
from endpoints import running_endpoints, sign
from ledger.suppression_list import SuppressionList
from settings import Settings
from tests.conftest import Deals, codec_data_converter, on_both_databases, only, steps
from tests.test_inbound_signals import eventually
from tests.test_lifecycle import deal_id, stage_is, status
from workflows.stages import BuyerSignal, Stage

# At least 32 bytes, as settings demand of a webhook secret.
SECRET = "the-erp-and-the-tests-share-this-webhook-secret"
# The endpoints' clock in these tests (2027-01-15 08:00 UTC): signatures are made against it.
NOW = 1_800_000_000.0
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@dataclass
class Site:
    http: httpx.AsyncClient
    deals: Deals
    suppressions: SuppressionList


async def serve(
    deals: Deals, suppressions: SuppressionList, **settings: Any
) -> AsyncIterator[Site]:
    configured = deals.settings.model_copy(update={"http_port": free_port(), **settings})
    async with (
        running_endpoints(configured, deals.client, clock=lambda: NOW) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        yield Site(http, deals, suppressions)


@pytest.fixture
async def site(deals: Deals, suppressions: SuppressionList) -> AsyncIterator[Site]:
    async for running in serve(deals, suppressions, webhook_secret=SecretStr(SECRET)):
        yield running


@pytest.fixture
async def closed_site(deals: Deals, suppressions: SuppressionList) -> AsyncIterator[Site]:
    async for running in serve(deals, suppressions, webhook_secret=None):
        yield running


async def unsubscribe_path(deals: Deals) -> tuple[str, str]:
    """A new RFP deal's id and the path of its proposal's one-click unsubscribe link."""
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    proposal = only(await deals.mail(1), "proposal")
    link = str(proposal["List-Unsubscribe"]).split(",")[0].strip(" <>")
    return deal_id(handle), "/unsubscribe/" + link.rsplit("/", 1)[1]


async def test_health_check_answers_ok(site: Site) -> None:
    answer = await site.http.get("/healthz")
    assert answer.status_code == 200 and answer.text == "ok"


async def test_one_click_unsubscribe_opts_the_deal_out_and_suppresses_the_address(
    site: Site,
) -> None:
    deals = site.deals
    deal, path = await unsubscribe_path(deals)
    answer = await site.http.post(path, data=ONE_CLICK)
    assert answer.status_code == 200, answer.text
    # Whoever holds the link learns no address from the page either.
    assert "You are unsubscribed" in answer.text and "bea@" not in answer.text
    handle = deals.client.get_workflow_handle(f"deal-{deal}")
    # Polled through the query: the test server cannot describe a deal whose next touch was unset.
    current = await eventually(handle, lambda s: s.stage is Stage.OPTED_OUT)
    assert current.history[-1].source == "unsubscribe link"
    # The deal knew who from the link's place in the email's To list.
    assert current.outcome_reason == "bea@buyer.example.org opted out"

    # The address is on the global list: a deal started a moment before sends nothing.
    other = await deals.start_unchecked(kind="rfp")
    await eventually(other, lambda s: bool(s.messages) and s.messages[0].outcome == "skipped")
    assert steps(await deals.settle(1)) == ["proposal"]


async def test_one_click_in_a_committee_email_opts_out_only_the_one_who_clicked(
    site: Site,
) -> None:
    deals = site.deals
    committee = [
        {"name": "Eve Economic", "email": "eve@buyer.example.org", "role": "economic_buyer"},
        {"name": "Tom Technical", "email": "tom@buyer.example.org", "role": "technical"},
    ]
    handle = await deals.start(kind="rfp", contacts=committee)
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(2)
    toms = next(m for m in deals.sink.received if m.rcpt_tos == ["tom@buyer.example.org"])
    link = str(toms.message["List-Unsubscribe"]).split(",")[0].strip(" <>")
    # Tom's link is an id and a MAC: it names neither him nor the deal.
    token = link.rsplit("/", 1)[1]
    assert token.startswith("t2.") and "tom" not in link.lower() and deal_id(handle) not in link
    answer = await site.http.post("/unsubscribe/" + token, data=ONE_CLICK)
    assert answer.status_code == 200, answer.text
    assert "tom@" not in answer.text and "eve@" not in answer.text
    found = await site.suppressions.find(["tom@buyer.example.org", "eve@buyer.example.org"])
    assert set(found) == {"tom@buyer.example.org"}
    # Put there by the keyed hash alone: the link's row holds no address to copy.
    assert found["tom@buyer.example.org"].address is None
    current = await eventually(handle, lambda s: s.stage is Stage.OPTED_OUT)
    assert current.history[-1].source == "unsubscribe link"
    assert current.outcome_reason == "tom@buyer.example.org opted out"


async def test_opening_the_link_shows_a_confirmation_and_changes_nothing(site: Site) -> None:
    deals = site.deals
    deal, path = await unsubscribe_path(deals)
    page = await site.http.get(path)
    assert page.status_code == 200
    assert "Unsubscribe?" in page.text
    assert "bea@" not in page.text and deal not in page.text
    assert '<form method=post><input type=hidden name="List-Unsubscribe"' in page.text
    handle = deals.client.get_workflow_handle(f"deal-{deal}")
    assert (await status(handle)).stage is Stage.PROPOSAL_RECEIVED
    assert await site.suppressions.find(["bea@buyer.example.org"]) == {}


async def test_a_tampered_unsubscribe_link_is_refused_and_says_to_reply(site: Site) -> None:
    deal, path = await unsubscribe_path(site.deals)
    tampered = path[:-2] + ("AA" if not path.endswith("AA") else "BB")
    for answer in (
        await site.http.post(tampered, data=ONE_CLICK),
        await site.http.get(tampered),
    ):
        assert answer.status_code == 400
        assert "not valid" in answer.text and "reply to the email" in answer.text
    handle = site.deals.client.get_workflow_handle(f"deal-{deal}")
    assert (await status(handle)).stage is Stage.PROPOSAL_RECEIVED


async def test_a_signed_link_the_ledger_does_not_know_is_refused_and_writes_nothing(
    site: Site,
) -> None:
    deal, _ = await unsubscribe_path(site.deals)
    signer = site.deals.settings.token_signer()
    # Made with our own secret, for an email that never went out: no row, so no opt-out.
    token_id = signer.unsubscribe_token_id("<nothing.001-x@seller.example.com>", 0, "x@y.example")
    path = "/unsubscribe/" + signer.ledger_unsubscribe_token(token_id)
    for answer in (await site.http.post(path, data=ONE_CLICK), await site.http.get(path)):
        assert answer.status_code == 400 and "not valid" in answer.text
    assert await site.suppressions.entries(lifted=True) == []
    handle = site.deals.client.get_workflow_handle(f"deal-{deal}")
    assert (await status(handle)).stage is Stage.PROPOSAL_RECEIVED


async def test_an_old_u1_link_of_an_email_already_sent_still_opts_out(site: Site) -> None:
    deals = site.deals
    deal, _ = await unsubscribe_path(deals)
    # What a link in an email sent before the ledger's tokens looks like.
    old = deals.settings.token_signer().unsubscribe_token(deal, ["bea@buyer.example.org"])
    answer = await site.http.post(f"/unsubscribe/{old}", data=ONE_CLICK)
    assert answer.status_code == 200, answer.text
    assert set(await site.suppressions.find(["bea@buyer.example.org"])) == {"bea@buyer.example.org"}
    handle = deals.client.get_workflow_handle(f"deal-{deal}")
    current = await eventually(handle, lambda s: s.stage is Stage.OPTED_OUT)
    assert current.outcome_reason == "bea@buyer.example.org opted out"


async def test_a_link_signed_with_the_previous_secret_still_opts_out_after_rotation(
    deals: Deals, suppressions: SuppressionList
) -> None:
    deal, path = await unsubscribe_path(deals)
    old, new = deals.settings.signing_key(), "n" * 40
    # Dropped from DEALFLOW_SIGNING_SECRET_PREVIOUS, the old secret's links stop working.
    async for dropped in serve(deals, suppressions, signing_secret=SecretStr(new)):
        answer = await dropped.http.post(path, data=ONE_CLICK)
        assert answer.status_code == 400 and "not valid" in answer.text
    assert await suppressions.find(["bea@buyer.example.org"]) == {}
    rotated = {"signing_secret": SecretStr(new), "signing_secret_previous": SecretStr(old)}
    async for site in serve(deals, suppressions, **rotated):
        answer = await site.http.post(path, data=ONE_CLICK)
        assert answer.status_code == 200, answer.text
    assert set(await suppressions.find(["bea@buyer.example.org"])) == {"bea@buyer.example.org"}
    handle = deals.client.get_workflow_handle(f"deal-{deal}")
    await eventually(handle, lambda s: s.stage is Stage.OPTED_OUT)


async def test_unsubscribing_twice_answers_ok_and_opts_out_once(site: Site) -> None:
    deals = site.deals
    deal, path = await unsubscribe_path(deals)
    first = await site.http.post(path, data=ONE_CLICK)
    handle = deals.client.get_workflow_handle(f"deal-{deal}")
    await eventually(handle, lambda s: s.stage is Stage.OPTED_OUT)
    # The confirmation page's button posts the same field, as multipart here.
    second = await site.http.post(path, files={"List-Unsubscribe": (None, "One-Click")})
    assert (first.status_code, second.status_code) == (200, 200)
    history = (await status(handle)).history
    assert [h.signal for h in history].count(BuyerSignal.OPTED_OUT.value) == 1


async def test_a_post_without_the_one_click_field_changes_nothing(site: Site) -> None:
    deal, path = await unsubscribe_path(site.deals)
    answer = await site.http.post(path, data={"List-Unsubscribe": "yes"})
    assert answer.status_code == 400
    handle = site.deals.client.get_workflow_handle(f"deal-{deal}")
    assert (await status(handle)).stage is Stage.PROPOSAL_RECEIVED


# --- fulfilment webhook ---


def signed(body: bytes, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    timestamp = str(int(NOW if at is None else at))
    return {
        "Content-Type": "application/json",
        "Dealflow-Timestamp": timestamp,
        "Dealflow-Signature": f"v1={sign(secret, timestamp, body)}",
    }


def event(deal: str, kind: str = "order_placed", event_id: str = "erp-1", **data: Any) -> bytes:
    body = {"event_id": event_id, "type": kind, "deal_id": deal, "data": data}
    return json.dumps(body).encode()


async def post(site: Site, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return await site.http.post(
        "/webhooks/fulfilment", content=body, headers=signed(body) if headers is None else headers
    )


async def proposal_deal(deals: Deals) -> tuple[str, str]:
    """A deal in Proposal Received, and a delivery date ahead of the deal's clock."""
    handle = await deals.start(kind="rfp")
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.mail(1)
    return deal_id(handle), ((await deals.now()).date() + timedelta(days=10)).isoformat()


async def test_a_signed_order_moves_the_deal_and_the_confirmation_goes_out(site: Site) -> None:
    deals = site.deals
    deal, delivery = await proposal_deal(deals)
    answer = await post(site, event(deal, delivery_date=delivery, purchase_order="PO-9"))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"deal_id": deal, "stage": Stage.ORDER_PLACED.value}
    confirmation = only(await deals.mail(3), "order_confirmation")
    assert "bea@buyer.example.org" in str(confirmation["To"])
    current = await status(deals.client.get_workflow_handle(f"deal-{deal}"))
    assert str(current.delivery_date) == delivery
    placed = [h for h in current.history if h.signal == BuyerSignal.ORDER_PLACED.value]
    assert placed[0].source == "webhook"


async def test_a_replayed_event_is_refused_even_freshly_signed(site: Site) -> None:
    deal, delivery = await proposal_deal(site.deals)
    body = event(deal, delivery_date=delivery, event_id="erp-42")
    assert (await post(site, body)).status_code == 200
    later = event(deal, "delivered", event_id="erp-42")
    again = await post(site, later)
    assert again.status_code == 409
    assert "event erp-42 was already applied to this deal" in again.json()["error"]


async def test_a_signal_the_stage_does_not_accept_is_refused_with_the_reason(site: Site) -> None:
    deal, _ = await proposal_deal(site.deals)
    answer = await post(site, event(deal, "delivered"))
    assert answer.status_code == 409
    assert "not accepted while the deal is 'Proposal Received'" in answer.json()["error"]


async def stage_events(site: Site, deal: str, **where: Any) -> list[dict[str, Any]]:
    """The deal's rows in the ledger's audit trail (those matching ``where``)."""
    from sqlalchemy import select

    from ledger.tables import STAGE_EVENTS

    query = select(STAGE_EVENTS).where(
        STAGE_EVENTS.c.deal_id == deal, *(STAGE_EVENTS.c[k] == v for k, v in where.items())
    )
    found = await site.suppressions.database.run(lambda c: list(c.execute(query).mappings()))
    return [dict(row) for row in found]


@on_both_databases
async def test_an_order_from_the_webhook_keeps_its_event_id_in_the_ledger(site: Site) -> None:
    deal, delivery = await proposal_deal(site.deals)
    body = event(deal, delivery_date=delivery, event_id="erp-order-4711")
    assert (await post(site, body)).status_code == 200
    handle = site.deals.client.get_workflow_handle(f"deal-{deal}")
    await eventually(handle, lambda s: s.stage is Stage.ORDER_CONFIRMED)
    await site.deals.quiet()  # the recorder has handed the ledger what the deal did

    [placed] = await stage_events(site, deal, signal=BuyerSignal.ORDER_PLACED.value)
    assert placed["source_event_id"] == "erp-order-4711"
    assert (placed["accepted"], placed["source"]) == (True, "webhook")
    assert placed["to_stage"] == Stage.ORDER_PLACED.value
    # The deal's own moves (the proposal and the confirmation going out) carry no id.
    others = await stage_events(site, deal)
    assert [e["source_event_id"] for e in others if e["event_key"] != placed["event_key"]] == [
        None
    ] * (len(others) - 1)


@on_both_databases
async def test_a_refused_webhook_event_is_kept_once_with_its_reason(site: Site) -> None:
    """The ERP retries an event the deal refused (it got no 2xx): the audit trail holds
    the refusal and why, once."""
    deal, _ = await proposal_deal(site.deals)
    body = event(deal, "delivered", event_id="erp-early-delivery-9")
    first = await post(site, body)
    retried = await post(site, body)
    assert first.status_code == retried.status_code == 409
    assert first.json() == retried.json()

    [kept] = await stage_events(site, deal, accepted=False)
    assert (kept["signal"], kept["source"]) == (BuyerSignal.DELIVERED.value, "webhook")
    assert kept["source_event_id"] == "erp-early-delivery-9"
    assert "not accepted while the deal is 'Proposal Received'" in kept["refusal"]
    assert kept["refusal"] in first.json()["error"]
    assert (kept["from_stage"], kept["to_stage"]) == (None, None)


async def test_an_unknown_deal_is_not_found(site: Site) -> None:
    answer = await post(site, event("NO-SUCH-DEAL", delivery_date="2030-01-01"))
    assert answer.status_code == 404
    assert answer.json() == {"error": "no deal 'NO-SUCH-DEAL'"}


async def test_a_bad_or_missing_signature_is_unauthorized(site: Site) -> None:
    body = event("D-1", delivery_date="2030-01-01")
    for headers in (signed(body, secret="someone-else"), {"Content-Type": "application/json"}):
        answer = await post(site, body, headers)
        assert answer.status_code == 401
        assert "Dealflow-" in answer.json()["error"]
    # One of several v1= values may match: the ERP rotates its secret.
    rotating = signed(body)
    rotating["Dealflow-Signature"] = "v1=00ff," + rotating["Dealflow-Signature"]
    assert (await post(site, body, rotating)).status_code == 404


async def test_a_stale_timestamp_is_unauthorized(site: Site) -> None:
    body = event("D-1", delivery_date="2030-01-01")
    answer = await post(site, body, signed(body, at=NOW - 3600))
    assert answer.status_code == 401
    assert "away from our clock" in answer.json()["error"]


async def test_a_malformed_body_is_a_bad_request(site: Site) -> None:
    cases = {
        b"{not json": "Invalid JSON",
        event("D-1", "cancelled"): "type:",
        event("D-1"): "data.delivery_date: Field required",
        event("D-1", delivery_date="soon"): "data.delivery_date:",
        # The deal's bounds, on the endpoints' clock (2027-01-15), before Temporal is asked.
        event("D-1", delivery_date="9999-12-31"): "data.delivery_date 9999-12-31 is after "
        "2037-01-15 (at most 10 years ahead)",
        event("D-1", delivery_date="2030-01-01", note="x" * 3000): "data.note is 3,000 "
        "characters long; at most 2,000",
        event("D-1", delivery_date="2030-01-01", purchase_order="PO\n1"): "data.purchase_order "
        "holds a line break",
    }
    for body, says in cases.items():
        answer = await post(site, body)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert says in error and "\n" not in error


async def test_the_webhook_is_closed_without_a_secret(closed_site: Site) -> None:
    body = event("D-1", delivery_date="2030-01-01")
    answer = await post(closed_site, body)
    assert answer.status_code == 503
    assert "DEALFLOW_WEBHOOK_SECRET" in answer.json()["error"]


async def test_both_endpoints_ask_to_try_again_while_temporal_is_unreachable(
    settings: Settings,
) -> None:
    nowhere = await Client.connect(
        f"127.0.0.1:{free_port()}", lazy=True, data_converter=codec_data_converter()
    )
    configured = settings.model_copy(
        update={"http_port": free_port(), "webhook_secret": SecretStr(SECRET)}
    )
    token = TokenSigner(settings.signing_key()).unsubscribe_token("D-1", "bea@buyer.example.org")
    body = event("D-1", "delivered")
    async with (
        running_endpoints(configured, nowhere, clock=lambda: NOW) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as http,
    ):
        hook = await http.post("/webhooks/fulfilment", content=body, headers=signed(body))
        assert hook.status_code == 503 and "try again" in hook.json()["error"]
        page = await http.post(f"/unsubscribe/{token}", data=ONE_CLICK)
        assert page.status_code == 503 and "try again" in page.text
