"""The HTTP side of Dealflow: one small ASGI app for buyer signals that arrive over HTTP.

- ``GET /healthz``: 200 ``ok``.
- ``GET /unsubscribe/{token}``: a confirmation page with a button; changes nothing,
  because mail scanners prefetch every link in an email.
- ``POST /unsubscribe/{token}`` (RFC 8058 one-click, body ``List-Unsubscribe=One-Click``):
  puts the token's recipient on the ledger's suppression list, then tells the deal. A
  ``t2.`` token is an id the ledger resolves (``ledger.email_tokens``) to the recipient's
  keyed hash and place in the email's To list; the older tokens of emails already sent
  name the addresses themselves.
- ``POST /webhooks/fulfilment``: the ERP reports an order, a moved delivery date or a
  delivery, signed with HMAC-SHA256 (``Dealflow-Timestamp``, ``Dealflow-Signature``).

Every answer comes after the change was committed (the ledger, then Temporal), and no
state lives in the process, so any number of these can run behind a load balancer.
``python endpoints.py`` runs it alone; ``worker.py --dev`` runs it next to the worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext
from datetime import UTC, datetime
from signal import SIGINT, SIGTERM
from typing import Any, Literal

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.signed_tokens import BadToken, Unsubscribe, is_ledger_token
from codec_server import codec_routes
from connection import TemporalUnreachable, connect
from deal_intake import explain
from ledger.database import LedgerDatabase
from ledger.deal_records import DealRecords
from ledger.email_tokens import OptOutLink, TokenBook
from ledger.suppression_list import SuppressionList, SuppressionReason, SuppressionSource
from settings import Settings, load_settings
from starter import DealUnreachable, NoSuchDeal, Refused, record, workflow_id
from workflows import bounds
from workflows.deal import INBOUND_MESSAGE
from workflows.models import (
    Delivered,
    DeliveryDateChanged,
    InboundKind,
    InboundMessage,
    OrderPlaced,
    SignalPayload,
)
from workflows.stages import BuyerSignal, Stage

ONE_CLICK = ("List-Unsubscribe", "One-Click")  # RFC 8058, section 3.1
TIMESTAMP_HEADER = "Dealflow-Timestamp"
SIGNATURE_HEADER = "Dealflow-Signature"
MAX_WEBHOOK_BODY = 64 * 1024
# A deal with no worker polling never answers an update; the ERP should retry, not hang.
UPDATE_TIMEOUT = 30.0

FULFILMENT_EVENTS: dict[str, tuple[BuyerSignal, type[SignalPayload]]] = {
    BuyerSignal.ORDER_PLACED.value: (BuyerSignal.ORDER_PLACED, OrderPlaced),
    BuyerSignal.DELIVERY_DATE_CHANGED.value: (
        BuyerSignal.DELIVERY_DATE_CHANGED,
        DeliveryDateChanged,
    ),
    BuyerSignal.DELIVERED.value: (BuyerSignal.DELIVERED, Delivered),
}


class EndpointsUnavailable(Exception):
    """The HTTP endpoints cannot listen (port taken, bad host); the message says what to set."""


class FulfilmentEvent(BaseModel):
    """The webhook's body; ``data`` holds the fields of the signal's payload model."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=200)
    type: Literal["order_placed", "delivery_date_changed", "delivered"]
    deal_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    data: dict[str, Any] = Field(default_factory=dict)


class Problem(Exception):
    """An HTTP answer other than success: the status and one line saying what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``v1`` signature of a webhook body: what the ERP computes, and what we check."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    tolerance: float,
    now: float,
) -> None:
    """Raise ``Problem(401)`` unless the body was signed with the secret, recently."""
    if not timestamp or not signature:
        raise Problem(401, f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
    expected = sign(secret, timestamp, body)
    # Several v1= values: the ERP signs with the old and the new secret while both rotate.
    given = [part.strip()[3:] for part in signature.split(",") if part.strip().startswith("v1=")]
    if not any(hmac.compare_digest(expected, value) for value in given):
        raise Problem(
            401,
            f"{SIGNATURE_HEADER} does not match: send v1=<hex HMAC-SHA256 of "
            "'<timestamp>.<raw body>' with the webhook secret>",
        )
    try:
        skew = abs(now - int(timestamp))
    except ValueError:
        raise Problem(401, f"{TIMESTAMP_HEADER} must be unix seconds") from None
    if skew > tolerance:
        raise Problem(
            401,
            f"{TIMESTAMP_HEADER} is {skew:.0f} s away from our clock (tolerance {tolerance:.0f} s):"
            " a replayed request, or the sender's clock is wrong",
        )


def _page(title: str, text: str, status: int = 200, form: str = "") -> HTMLResponse:
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width">'
        '<meta name=robots content="noindex">'
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{form}</body></html>"
    )
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


# No action: the form posts back to this very URL, whatever prefix a proxy adds.
_BUTTON = (
    f'<form method=post><input type=hidden name="{ONE_CLICK[0]}" value="{ONE_CLICK[1]}">'
    "<button type=submit>Unsubscribe</button></form>"
)


def _not_valid() -> HTMLResponse:
    return _page(
        "This unsubscribe link is not valid",
        "The link may have been cut or changed on its way. Please reply to the email "
        "and ask to be unsubscribed; we will take you off the list.",
        status=400,
    )


def _try_again() -> HTMLResponse:
    return _page(
        "Please try again",
        "We could not record your request just now. Please try again in a few minutes.",
        status=503,
    )


def _unavailable(error: Exception) -> Problem:
    reason = error.message if isinstance(error, RPCError) else str(error)
    return Problem(503, f"Temporal is unavailable ({reason}); try again")


@contextmanager
def _temporal_errors() -> Iterator[None]:
    try:
        yield
    # RuntimeError: the client's (re)connect failed, before any RPC status exists.
    except (RPCError, RuntimeError) as error:
        raise _unavailable(error) from None


class Endpoints:
    """The handlers, with what they need: settings, the Temporal client, the token signer."""

    def __init__(
        self, settings: Settings, client: Client, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.client = client
        # Unix seconds now; the webhook's replay window is measured on it.
        self.clock = clock
        self.signer = settings.token_signer()
        self.database = LedgerDatabase(settings.ledger_url)
        self.suppressions = SuppressionList(self.database)
        self.records = DealRecords(self.database)
        self.tokens = TokenBook(self.database)

    # --- unsubscribe (RFC 8058) ---

    async def _named(self, request: Request) -> Unsubscribe | OptOutLink | HTMLResponse:
        token = request.path_params["token"]
        try:
            if not is_ledger_token(token):
                return self.signer.unsubscribe(token)
            token_id = self.signer.unsubscribe_token_id_of(token)
        except BadToken:
            return _not_valid()
        try:
            link = await self.tokens.opt_out_link(token_id)
        except Exception:
            return _try_again()
        # Signed by us but unknown: its email never reached the relay, or it was erased.
        return _not_valid() if link is None else link

    async def confirm_unsubscribe(self, request: Request) -> Response:
        named = await self._named(request)
        if isinstance(named, Response):
            return named
        if isinstance(named, OptOutLink):
            return _page(
                "Unsubscribe?",
                f"This address will get no more emails from {self.settings.company_name}.",
                form=_BUTTON,
            )
        who = ", ".join(named.addresses)
        return _page(
            "Unsubscribe?",
            f"{who} will get no more emails from {self.settings.company_name}, about deal "
            f"{named.deal_id} or any other.",
            form=_BUTTON,
        )

    async def unsubscribe(self, request: Request) -> Response:
        named = await self._named(request)
        if isinstance(named, Response):
            return named
        form = await request.form()
        if form.get(ONE_CLICK[0]) != ONE_CLICK[1]:
            return _page(
                "Nothing was changed",
                "This address takes a one-click unsubscribe (List-Unsubscribe=One-Click). "
                "Open the link from the email in a browser to unsubscribe.",
                status=400,
            )
        try:
            if isinstance(named, OptOutLink):
                await self._opt_out_link(named)
            else:
                await self._opt_out(named, request.path_params["token"])
        except Problem:
            return _try_again()
        who = "This address" if isinstance(named, OptOutLink) else ", ".join(named.addresses)
        return _page(
            "You are unsubscribed",
            f"{who} will get no more emails from {self.settings.company_name}.",
        )

    async def _opt_out_link(self, link: OptOutLink) -> None:
        """The list by the recipient's keyed hash first, then the deal, by the recipient's
        place in the email's To list (the deal knows who stood there)."""
        try:
            await self.suppressions.add_key(
                link.address_key,
                SuppressionReason.OPTED_OUT,
                SuppressionSource.ONE_CLICK,
                now=datetime.now(UTC),
                detail="one-click unsubscribe",
                deal_id=link.deal_id,
            )
        except Exception as error:
            raise Problem(503, f"the suppression list is unavailable ({error})") from None
        message = InboundMessage(
            kind=InboundKind.UNSUBSCRIBE,
            unsubscribed_from=link.message_id,
            recipient_position=link.position,
            event_id=f"unsubscribe:{link.token_id}",
            source="unsubscribe link",
        )
        await self._tell_the_deal(link.deal_id, message)

    async def _tell_the_deal(self, deal_id: str, message: InboundMessage) -> None:
        with _temporal_errors():
            try:
                await self.client.get_workflow_handle(workflow_id(deal_id)).signal(
                    INBOUND_MESSAGE, message
                )
            except RPCError as error:
                if error.status != RPCStatusCode.NOT_FOUND:
                    raise

    async def _opt_out(self, named: Unsubscribe, token: str) -> None:
        # The global list first: it holds even when the deal has closed or is gone.
        for address in named.addresses:
            try:
                await self.suppressions.add(
                    address,
                    SuppressionReason.OPTED_OUT,
                    SuppressionSource.ONE_CLICK,
                    now=datetime.now(UTC),
                    detail="one-click unsubscribe",
                    deal_id=named.deal_id,
                )
            except ValueError:
                continue  # not an address: nothing is mailed under it
            except Exception as error:
                raise Problem(503, f"the suppression list is unavailable ({error})") from None
        # A second click is the same event; a token for a large committee is too long
        # for an event id, so it goes in as its digest.
        if len(token) > 900:
            token = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
        message = InboundMessage(
            kind=InboundKind.UNSUBSCRIBE,
            addresses=list(named.addresses),
            event_id=f"unsubscribe:{token}",
            source="unsubscribe link",
        )
        await self._tell_the_deal(named.deal_id, message)

    # --- fulfilment / ERP webhook ---

    async def fulfilment(self, request: Request) -> Response:
        try:
            deal_id, stage = await self._fulfilment(request)
        except Problem as problem:
            # RFC 9110 wants a scheme on every 401; ours is the signature header.
            challenge = {"WWW-Authenticate": SIGNATURE_HEADER} if problem.status == 401 else None
            return JSONResponse(
                {"error": problem.message}, status_code=problem.status, headers=challenge
            )
        return JSONResponse({"deal_id": deal_id, "stage": stage})

    async def _fulfilment(self, request: Request) -> tuple[str, str]:
        secret = self.settings.webhook_secret
        if secret is None or not secret.get_secret_value():
            raise Problem(503, "the webhook is closed: set DEALFLOW_WEBHOOK_SECRET to open it")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_WEBHOOK_BODY:
                raise Problem(413, f"body over {MAX_WEBHOOK_BODY} bytes")
        verify_signature(
            secret.get_secret_value(),
            request.headers.get(TIMESTAMP_HEADER),
            request.headers.get(SIGNATURE_HEADER),
            bytes(body),
            self.settings.webhook_tolerance.total_seconds(),
            self.clock(),
        )
        try:
            event = FulfilmentEvent.model_validate_json(bytes(body))
        except ValidationError as error:
            raise Problem(400, explain(error)) from None
        signal, model = FULFILMENT_EVENTS[event.type]
        # The envelope's event id is the one the deal dedupes on; data cannot override it.
        fields = {**event.data, "source": "webhook", "event_id": event.event_id}
        try:
            payload = model.model_validate(fields)
            # Inside the bounds the deal's validator enforces too (dates, lengths).
            bounds.check_payload(payload, datetime.fromtimestamp(self.clock(), UTC).date())
        except ValidationError as error:
            raise Problem(400, f"data.{explain(error)}") from None
        except ValueError as error:
            raise Problem(400, f"data.{error}") from None
        return event.deal_id, await self._apply(event.deal_id, signal, payload)

    async def _apply(self, deal_id: str, signal: BuyerSignal, payload: SignalPayload) -> str:
        """Run the signal's update (``starter.record``) and answer by what went wrong."""
        try:
            async with asyncio.timeout(UPDATE_TIMEOUT):
                stage = await record(self.client, deal_id, signal, payload, self.records)
        except NoSuchDeal:
            raise Problem(404, f"no deal {deal_id!r}") from None
        except DealUnreachable as error:
            raise Problem(503, f"{error}; try again") from None
        except Refused as error:  # the deal's validator said no, or the deal has closed
            raise Problem(409, str(error)) from None
        except TimeoutError:
            raise Problem(
                503, f"deal {deal_id!r} did not answer in {UPDATE_TIMEOUT:.0f} s; try again"
            ) from None
        except (RPCError, RuntimeError) as error:
            raise _unavailable(error) from None
        return Stage(stage).value


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def build_app(
    settings: Settings, client: Client, clock: Callable[[], float] = time.time
) -> Starlette:
    """The ASGI app; ``client`` must use the pydantic data converter (``connection.connect``)."""
    endpoints = Endpoints(settings, client, clock)
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/unsubscribe/{token}", endpoints.confirm_unsubscribe, methods=["GET"]),
            Route("/unsubscribe/{token}", endpoints.unsubscribe, methods=["POST"]),
            Route("/webhooks/fulfilment", endpoints.fulfilment, methods=["POST"]),
            # The Temporal UI's codec server (payload_codec): off unless a token is set.
            *codec_routes(settings),
        ]
    )
    app.state.endpoints = endpoints
    return app


class _Server(uvicorn.Server):
    # Whoever runs us owns SIGINT/SIGTERM (the worker stops everything on one event).
    def capture_signals(self) -> Any:
        return nullcontext()


def _listen(host: str, port: int) -> socket.socket:
    # Bound here, not by uvicorn, which answers a taken port with sys.exit().
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise EndpointsUnavailable(
            f"cannot listen on {host}:{port} ({error.strerror}); "
            "set DEALFLOW_HTTP_HOST / DEALFLOW_HTTP_PORT"
        ) from None
    return listener


@asynccontextmanager
async def running_endpoints(
    settings: Settings, client: Client, clock: Callable[[], float] = time.time
) -> AsyncIterator[str]:
    """Serve the endpoints while the block runs; yields the URL they listen on."""
    listener = _listen(settings.http_host, settings.http_port)
    app = build_app(settings, client, clock)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        # Access logs would keep every unsubscribe token, which unsubscribes whoever it names.
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    host, port = listener.getsockname()[:2]
    try:
        yield f"http://{f'[{host}]' if ':' in host else host}:{port}"
    finally:
        server.should_exit = True
        await serving
        listener.close()
        await app.state.endpoints.database.dispose()


async def serve_endpoints(
    settings: Settings, client: Client, stop: asyncio.Event | None = None
) -> None:
    """Serve on ``settings.http_host:http_port`` until ``stop`` is set (or forever)."""
    async with running_endpoints(settings, client) as url:
        print(f"endpoints: listening on {url} (public URL {settings.public_url})", flush=True)
        await (stop or asyncio.Event()).wait()


async def _main() -> None:
    settings = load_settings()
    try:
        client = await connect(settings)
    except TemporalUnreachable as error:
        print(f"endpoints: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (SIGINT, SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    try:
        await serve_endpoints(settings, client, stop)
    except EndpointsUnavailable as error:
        print(f"endpoints: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print("endpoints: stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(_main())
