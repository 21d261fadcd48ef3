"""Personal data out of Temporal's sight, and no secret anywhere a run leaves traces.

On the time-skipping server with the worker, real SMTP on loopback and the endpoints
over real HTTP. This module's deals run with canary values: a contact, prices and
interview answers that must never reach Temporal in the clear, and secrets (signing,
webhook, SMTP, IMAP and database passwords, the codec key and the codec server's token)
that must reach nothing at all. One canary test runs them as production does: ``python
worker.py`` and ``python starter.py`` as processes on the dev server, an SMTP relay that
wants a login and Dovecot, each refusing the first logins.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from decimal import Decimal
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from google.protobuf import json_format
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.signed_tokens import TokenSigner
from connection import connect
from devstack import (
    LocalMailbox,
    OutboxSink,
    free_port,
    installed_binary,
    register_search_attributes,
)
from endpoints import running_endpoints, sign
from payload_codec import ENCODING, KEY_ID, EncryptionCodec, UndecryptablePayload
from realstack.deployment import environment
from realstack.relay import own_parts
from realstack.temporal import TemporalDevServer
from realstack.waiting import tail, wait_for
from realstack.worker import WorkerProcess
from settings import Settings, load_settings, parse_codec_keys
from starter import Refused, inbox, record
from tests.clock import StartInstant
from tests.conftest import Deals, on_both_databases
from tests.test_lifecycle import deal_id, stage_is
from workflows.deal import KEEP_FAILED_FOR_RESEND, RESEND_SAME_MESSAGE_ID, VERIFIED_SENDER
from workflows.deal_recording import RECORD_DEAL
from workflows.mailbox_poller import MAILBOX_POLLER_ID
from workflows.models import Delivered, InterviewRecorded, PriceAgreed
from workflows.search_attributes import ALL as SEARCH_ATTRIBUTES
from workflows.stages import BuyerSignal, Stage

HISTORIES = Path(__file__).parent / "histories"
ROOT = Path(__file__).resolve().parents[1]

# --- the canaries ---

CODEC_KEY = secrets.token_bytes(32)
CODEC_KEYS = f"canary-1={base64.b64encode(CODEC_KEY).decode()}"
SECRETS = {
    "signing_secret": f"CANARY-SIGNING-{secrets.token_hex(16)}",
    "webhook_secret": f"CANARY-WEBHOOK-{secrets.token_hex(16)}",
    "codec_server_token": f"CANARY-TOKEN-{secrets.token_hex(16)}",
    "smtp_password": f"CANARY-SMTP-{secrets.token_hex(8)}",
}
DATABASE_PASSWORD = f"CANARY-DB-{secrets.token_hex(8)}"
IMAP_PASSWORD = f"CANARY-IMAP-{secrets.token_hex(8)}"
SMTP_USERNAME = "sales@seller.example.com"
UI_ORIGIN = "http://localhost:8233"

CONTACT_NAME = "Cornelia Canaryfield"
CONTACT_EMAIL = "cornelia.canaryfield@canary-buyer.example.org"
COMPANY = "Canaryfield Conveyors"
ITEM_PRICES = ("4321.87", "987.65")
PURCHASE_ORDER = "PO-CANARY-8812"
ANSWERS = InterviewRecorded(
    why_decided="canary answer: the yellow conveyor sang best",
    decision_process="canary answer: Cornelia and her CFO, three calls",
    rep_rating=4,
    cooperation_rating=5,
    participants="canary answer: Cornelia and the CFO",
    note="canary answer: the fitters were quick",
)
BUYER_DATA = (
    CONTACT_NAME,
    CONTACT_EMAIL,
    COMPANY,
    *ITEM_PRICES,
    PURCHASE_ORDER,
    ANSWERS.why_decided,
    ANSWERS.decision_process,
    ANSWERS.participants,
    ANSWERS.note,
)


@pytest.fixture
def settings(sink: OutboxSink, ledger_url: str) -> Settings:
    """Production-like settings (no DEALFLOW_DEV), with the canary secrets."""
    if ledger_url.startswith("postgresql://postgres@"):
        # The test cluster trusts loopback: a password is carried everywhere, and ignored.
        ledger_url = ledger_url.replace("postgres@", f"postgres:{DATABASE_PASSWORD}@", 1)
    return load_settings(
        database_url=ledger_url,
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        temporal_task_queue=f"deals-{uuid.uuid4().hex[:8]}",
        rep_address="rep@seller.example.com",
        fulfilment_address="fulfilment@seller.example.com",
        sender_address="sales@seller.example.com",
        company_name="Seller GmbH",
        company_postal_address="Seller GmbH\nHauptstrasse 1\n10115 Berlin",
        send_window="always",
        codec_keys=CODEC_KEYS,
        codec_cors_origins=UI_ORIGIN,
        **SECRETS,
        _env_file=None,
    )


@pytest.fixture
async def env(
    start_instant: StartInstant, settings: Settings
) -> AsyncIterator[WorkflowEnvironment]:
    """As conftest's, with the product's data converter made from these settings."""
    from connection import data_converter

    environment = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(settings),
        test_server_existing_path=str(installed_binary("temporal-test-server")),
    )
    await register_search_attributes(environment.client, environment.client.namespace)
    async with environment:
        now = await environment.get_current_time()
        await environment.sleep(start_instant.after(now) - now)
        yield environment


def canary_deal() -> dict[str, Any]:
    return {
        "deal_id": f"D-{uuid.uuid4().hex[:8]}",
        "company": COMPANY,
        "contacts": [{"name": CONTACT_NAME, "email": CONTACT_EMAIL, "time_zone": "Europe/Berlin"}],
        "kind": "rfp",
        "currency": "EUR",
        "items": [
            {"name": "Conveyor", "quantity": 2, "list_price": ITEM_PRICES[0]},
            {"name": "Installation", "quantity": 1, "list_price": ITEM_PRICES[1]},
        ],
    }


class DealClock:
    """The endpoints' clock, set to the deal's own (the time-skipping server's) before
    each webhook: the webhook's replay window is measured on it, not on the wall."""

    def __init__(self) -> None:
        self.at = 0.0

    def __call__(self) -> float:
        return self.at

    async def follow(self, deals: Deals) -> str:
        self.at = (await deals.now()).timestamp()
        return str(int(self.at))


async def whole_life(
    deals: Deals, webhook: httpx.AsyncClient | None = None, clock: DealClock | None = None
) -> WorkflowHandle:
    """An RFP from proposal to a recorded win-loss interview; the order comes through the
    ERP webhook when one is given."""
    handle = await deals.start(**canary_deal())
    deal = deal_id(handle)
    start = await deals.now()
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    await deals.skip(timedelta(days=1))
    await record(deals.client, deal, BuyerSignal.PRICE_AGREED, PriceAgreed())
    await stage_is(handle, Stage.OFFER_RECEIVED)
    await deals.skip(timedelta(days=1))
    delivery = (start + timedelta(days=10)).date().isoformat()
    data = {"delivery_date": delivery, "purchase_order": PURCHASE_ORDER}
    if webhook is not None:
        assert clock is not None
        body = json.dumps(
            {"event_id": "erp-1", "type": "order_placed", "deal_id": deal, "data": data}
        ).encode()
        timestamp = await clock.follow(deals)
        secret = deals.settings.webhook_secret
        assert secret is not None
        headers = {
            "Content-Type": "application/json",
            "Dealflow-Timestamp": timestamp,
            "Dealflow-Signature": f"v1={sign(secret.get_secret_value(), timestamp, body)}",
        }
        answer = await webhook.post("/webhooks/fulfilment", content=body, headers=headers)
        assert answer.status_code == 200, answer.text
    else:
        from workflows.models import OrderPlaced

        order = OrderPlaced.model_validate(data)
        await record(deals.client, deal, BuyerSignal.ORDER_PLACED, order)
    await stage_is(handle, Stage.ORDER_CONFIRMED)
    await deals.skip(timedelta(days=8))
    await record(deals.client, deal, BuyerSignal.DELIVERED, Delivered())
    await stage_is(handle, Stage.DELIVERED)
    await deals.skip(timedelta(days=1, hours=1))
    await stage_is(handle, Stage.CHECKED_IN)
    await deals.skip(timedelta(days=21))
    await stage_is(handle, Stage.WIN_LOSS_INVITED)
    await deals.settle(10)
    await record(deals.client, deal, BuyerSignal.INTERVIEW_RECORDED, ANSWERS)
    final = await handle.result()
    assert final.stage is Stage.WON and final.interview == ANSWERS
    return handle


def without_codec(client: Client) -> Client:
    """A client of the same server that sees payloads as Temporal stores them."""
    return Client(
        client.service_client, namespace=client.namespace, data_converter=pydantic_data_converter
    )


def payloads_in(message: Message, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Payload]]:
    """Every Payload inside a protobuf message, with the dotted path of fields to it."""
    if isinstance(message, Payload):
        yield ".".join(path), message
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if isinstance(value, Message):
            yield from payloads_in(value, (*path, field.name))
        elif hasattr(value, "values"):  # a map
            for key, item in value.items():
                if isinstance(item, Message):
                    yield from payloads_in(item, (*path, field.name, str(key)))
        else:
            for item in value:
                yield from payloads_in(item, (*path, field.name))


def stored_text(history: WorkflowHistory, *, skip_search_attributes: bool = False) -> str:
    """What Temporal holds of a history, readable: its JSON (ids, names, plain fields) and
    each payload's bytes as text (in the JSON they are base64)."""
    parts = [history.to_json()] if not skip_search_attributes else []
    for event in history.events:
        for path, payload in payloads_in(event):
            if skip_search_attributes and "search_attributes" in path:
                continue
            parts.append(payload.data.decode("utf-8", errors="replace"))
            parts += [
                value.decode("utf-8", errors="replace") for value in payload.metadata.values()
            ]
    return "\n".join(parts)


def search_attributes_of(history: WorkflowHistory) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for event in history.events:
        for path, payload in payloads_in(event):
            if "search_attributes" in path:
                name = path.rsplit(".", 1)[1]
                found.setdefault(name, []).append(payload.data.decode())
    return found


# --- the codec on its own ---


async def test_the_codec_seals_with_the_first_key_and_opens_with_any() -> None:
    old_key, new_key = secrets.token_bytes(32), secrets.token_bytes(32)
    old = EncryptionCodec([("old", old_key)])
    rotated = EncryptionCodec([("new", new_key), ("old", old_key)])
    plain = Payload(metadata={"encoding": b"json/plain"}, data=CONTACT_EMAIL.encode())
    [sealed_old] = await old.encode([plain])
    [sealed_new] = await rotated.encode([plain])
    for sealed, key_id in ((sealed_old, b"old"), (sealed_new, b"new")):
        assert sealed.metadata["encoding"] == ENCODING and sealed.metadata[KEY_ID] == key_id
        assert CONTACT_EMAIL.encode() not in sealed.SerializeToString()
        assert await rotated.decode([sealed]) == [plain]
    # The old key alone cannot open what the new one sealed: one line naming the key id.
    with pytest.raises(UndecryptablePayload, match="'new', which DEALFLOW_CODEC_KEYS does not"):
        await old.decode([sealed_new])
    # A payload recorded before encryption passes through untouched.
    assert await old.decode([plain]) == [plain]
    # Altered ciphertext, or the key id swapped, is refused.
    tampered = Payload(metadata=dict(sealed_new.metadata), data=sealed_new.data[:-1] + b"\0")
    with pytest.raises(UndecryptablePayload, match="does not decrypt"):
        await rotated.decode([tampered])
    relabelled = Payload(metadata={**sealed_new.metadata, KEY_ID: b"old"}, data=sealed_new.data)
    with pytest.raises(UndecryptablePayload, match="does not decrypt"):
        await rotated.decode([relabelled])
    assert "new" in repr(rotated)


async def test_the_stored_histories_hold_buyer_data_in_the_clear() -> None:
    """The control of the canary below: the search finds buyer data where it is."""
    stored = WorkflowHistory.from_json("won", (HISTORIES / "won_rfq_deal.json").read_text())
    assert "bea@buyer.example.org" in stored_text(stored)
    assert "bea@buyer.example.org" not in stored.to_json()  # base64 in the JSON


# --- the history canary (part 7) ---


async def test_a_whole_deal_leaves_no_buyer_data_in_its_stored_history(deals: Deals) -> None:
    handle = await whole_life(deals)
    history = await without_codec(deals.client).get_workflow_handle(handle.id).fetch_history()
    text = stored_text(history)
    for value in BUYER_DATA:
        assert value not in text, f"{value!r} is stored in the clear"
    # Nothing of the buyer in the ids Temporal indexes.
    assert handle.id == f"deal-{deal_id(handle)}" and deal_id(handle).startswith("D-")
    for value in (CONTACT_NAME, CONTACT_EMAIL, COMPANY):
        assert value not in deals.settings.temporal_task_queue
    # The search attributes are the deal's stage, value, owner (the rep) and next touch,
    # and Temporal's own list of the code patches the deal ran under.
    attributes = search_attributes_of(history)
    patches = attributes.pop("TemporalChangeVersion", [])
    assert set(attributes) <= {attribute.name for attribute in SEARCH_ATTRIBUTES}
    known = {RECORD_DEAL, RESEND_SAME_MESSAGE_ID, KEEP_FAILED_FOR_RESEND, VERIFIED_SENDER}
    assert all(set(json.loads(value)) <= known for value in patches), patches
    assert set(attributes["DealOwner"]) == {json.dumps("rep@seller.example.com")}
    indexed = "".join(value for values in attributes.values() for value in values)
    assert all(value not in indexed for value in BUYER_DATA)
    # The deal's value is the one thing of the deal in the clear, and only there.
    value = Decimal(json.loads(attributes["DealValue"][-1]))
    assert value > 0
    assert f"{value:f}" not in stored_text(history, skip_search_attributes=True)
    # Every other payload is sealed with the current key, but for the markers Temporal
    # itself writes: a code patch's name, a local activity's bookkeeping.
    for event in history.events:
        for path, payload in payloads_in(event):
            if "patch-data" in path:
                assert json.loads(payload.data)["id"] in known, payload.data
            elif path.startswith("marker_recorded_event_attributes.details.data"):
                # A local activity's bookkeeping (which one, which attempt, when).
                assert json.loads(payload.data)["activity_type"] == "record_deal"
            elif "search_attributes" not in path:
                assert payload.metadata["encoding"] == ENCODING, path
    # Through the codec, the same history reads in full (what the worker and CLI see).
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED in [
        e.event_type for e in history.events
    ]
    started = history.events[0].workflow_execution_started_event_attributes.input
    [opened] = await EncryptionCodec(parse_codec_keys(CODEC_KEYS)).decode(list(started.payloads))
    assert CONTACT_EMAIL.encode() in opened.data


# --- the secrets canary (part 6) ---


@on_both_databases
async def test_no_secret_reaches_output_logs_history_or_mail(
    deals: Deals, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    canaries = [*SECRETS.values(), CODEC_KEYS.split("=", 1)[1]]
    if DATABASE_PASSWORD in deals.settings.ledger_url:
        canaries.append(DATABASE_PASSWORD)
    served = deals.settings.model_copy(update={"http_port": free_port()})
    answers: list[str] = []
    clock = DealClock()
    async with (
        running_endpoints(served, deals.client, clock=clock) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        handle = await whole_life(deals, webhook=http, clock=clock)
        # Refusals say what is wrong, never with what.
        forged = await http.post(
            "/webhooks/fulfilment",
            content=b"{}",
            headers={
                "Dealflow-Timestamp": await clock.follow(deals),
                "Dealflow-Signature": "v1=00",
            },
        )
        wrong = await http.post("/codec/decode", content=b"{}", headers={"Authorization": "x"})
        assert (forged.status_code, wrong.status_code) == (401, 401)
        answers += [forged.text, wrong.text]
        # The codec server decodes with the key it never shows.
        token = SECRETS["codec_server_token"]
        raw = await without_codec(deals.client).get_workflow_handle(handle.id).fetch_history()
        started = raw.events[0].workflow_execution_started_event_attributes.input
        decoded = await http.post(
            "/codec/decode",
            content=json_format.MessageToJson(started),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert decoded.status_code == 200 and CONTACT_NAME in str(
            base64.b64decode(decoded.json()["payloads"][0]["data"])
        )
        answers.append(decoded.text)

    history = await handle.fetch_history()
    codec = EncryptionCodec(parse_codec_keys(CODEC_KEYS))
    opened: list[str] = []
    for event in history.events:
        for _, payload in payloads_in(event):
            [plain] = await codec.decode([payload])
            opened.append(plain.SerializeToString().decode("utf-8", errors="replace"))
    mail = [m.message.as_bytes().decode("utf-8", errors="replace") for m in deals.sink.received]
    # Buyer emails name their step only inside the Message-ID, sealed with the canary.
    opener = TokenSigner(SECRETS["signing_secret"])
    sent = [opener.open_message_id(str(m.message["Message-ID"])) for m in deals.sink.received]
    assert [own_parts(own or "")[1] for own in sent][:2] == ["proposal", "final_offer"]
    captured = capfd.readouterr()
    traces = {
        "stdout": captured.out,
        "stderr": captured.err,
        "logs": caplog.text + "".join(str(r.__dict__) for r in caplog.records),
        "history (stored)": stored_text(history),
        "history (decrypted)": "\n".join(opened),
        "mail": "\n".join(mail),
        "HTTP answers": "\n".join(answers),
        "settings": repr(deals.settings) + deals.settings.model_dump_json(),
    }
    for where, text in traces.items():
        for canary in canaries:
            assert canary not in text, f"a secret is in the {where}"
    stored = history.to_json().encode() + "".join(mail).encode()
    assert CODEC_KEY not in stored


# --- the secrets canary, as production runs: processes, logins and failures ---


TEMPORARY_AUTH_FAILURE = "454 4.7.0 Temporary authentication failure"


class LoginRelay(OutboxSink):
    """The SMTP relay behind a login (AUTH on loopback without TLS, which aiosmtpd allows).

    It refuses every login of its first connection with a temporary failure (454), as a
    relay whose authentication backend is away does, then accepts only the right user and
    password; ``logins`` keeps whether each try was right."""

    def __init__(self, folder: Path, username: str, password: str) -> None:
        super().__init__(folder=folder)
        self.username, self.password = username.encode(), password.encode()
        self.logins: list[bool] = []
        self.refused_session: Session | None = None

    def start(self) -> LoginRelay:
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        self._controller = Controller(
            self, hostname="127.0.0.1", port=self.port, authenticator=self._login,
            auth_required=True, auth_require_tls=False,
        )  # fmt: skip
        self._controller.start()
        return self

    def _login(
        self, server: SmtpServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        right = isinstance(data, LoginPassword) and (data.login, data.password) == (
            self.username,
            self.password,
        )
        with self._lock:
            self.logins.append(right)
            if self.refused_session in (None, session):
                self.refused_session = session
                return AuthResult(success=False, handled=False, message=TEMPORARY_AUTH_FAILURE)
        return AuthResult(success=right, handled=False)


def buyer_reply(ours: EmailMessage) -> bytes:
    """The canary contact answers our email (threaded on its sealed Message-ID)."""
    answer = EmailMessage()
    answer["From"] = f"{CONTACT_NAME} <{CONTACT_EMAIL}>"
    answer["To"] = str(ours["Reply-To"])
    answer["Subject"] = f"Re: {ours['Subject']}"
    answer["Message-ID"] = make_msgid(domain="canary-buyer.example.org")
    answer["In-Reply-To"] = answer["References"] = str(ours["Message-ID"])
    answer.set_content("Thank you, we will order the yellow conveyor.")
    return bytes(answer)


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    """``python starter.py ARGS`` as ops type it: its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "starter.py", *args, cwd=ROOT, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, f"$ starter.py {' '.join(args)}\n{out.decode()}{err.decode()}"


@pytest.fixture
def refusing_mailbox() -> Iterator[LocalMailbox]:
    """Dovecot on loopback that first takes another password than the canary."""
    # Not under tmp_path: Dovecot's own users must reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="dealflow-mail-"))
    folder.chmod(0o755)
    server = LocalMailbox(folder, user="sales", password=secrets.token_hex(8)).start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def take_the_canary(mailbox: LocalMailbox) -> None:
    """Dovecot reads its users file again at the next login: now the canary is right."""
    (mailbox.root / "users").write_text(f"sales:{{PLAIN}}{IMAP_PASSWORD}\n")


@pytest.fixture
def login_relay(tmp_path: Path) -> Iterator[LoginRelay]:
    relay = LoginRelay(tmp_path / "outbox", SMTP_USERNAME, SECRETS["smtp_password"]).start()
    yield relay
    relay.stop()


def outbox_of(relay: LoginRelay) -> list[bytes]:
    """The .eml files the relay wrote."""
    assert relay.folder is not None
    return [path.read_bytes() for path in sorted(relay.folder.glob("*.eml"))]


@on_both_databases
# Our relay is on loopback: a login without TLS is what this test wants.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_no_secret_reaches_cli_or_worker_output_failures_history_or_mail(
    ledger_url: str, tmp_path: Path, refusing_mailbox: LocalMailbox, login_relay: LoginRelay
) -> None:
    """``python worker.py`` and ``python starter.py`` as processes on the dev server, an
    SMTP relay that wants a login and refuses the first, and a Dovecot mailbox that
    refuses the first logins: the canaries are in none of what that leaves."""
    if ledger_url.startswith("postgresql://postgres@"):
        ledger_url = ledger_url.replace("postgres@", f"postgres:{DATABASE_PASSWORD}@", 1)
    mailbox, relay = refusing_mailbox, login_relay
    server = TemporalDevServer(tmp_path / "temporal")
    worker: WorkerProcess | None = None
    try:
        await server.start()
        values = {
            "temporal_address": server.address,
            "temporal_task_queue": f"canary-{uuid.uuid4().hex[:8]}",
            "database_url": ledger_url,
            "data_dir": str(tmp_path / "data"),
            "public_url": "http://127.0.0.1:8080",
            "send_window": "always",
            "sender_address": "sales@seller.example.com",
            "rep_address": "rep@seller.example.com",
            "fulfilment_address": "fulfilment@seller.example.com",
            "smtp_host": "127.0.0.1",
            "smtp_port": str(relay.port),
            "smtp_tls": "none",
            "smtp_username": SMTP_USERNAME,
            "imap_host": "127.0.0.1",
            "imap_port": str(mailbox.port),
            "imap_tls": "none",
            "imap_username": "sales",
            "imap_password": IMAP_PASSWORD,
            "codec_keys": CODEC_KEYS,
            **SECRETS,
        }
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("DEALFLOW_")}
        cli_env = {**inherited, **environment(values), "COLUMNS": "200"}
        worker = WorkerProcess("worker", tmp_path / "worker", environment(values))
        await worker.start()
        client = await connect(load_settings(**values, _env_file=None))  # type: ignore[arg-type]
        outputs: list[str] = []
        deal = f"D-{uuid.uuid4().hex[:8]}"
        item = f"Conveyor:2:{ITEM_PRICES[0]}"
        code, said = await run_cli(
            cli_env, "start", "--id", deal, "--company", COMPANY, "--kind", "rfp",
            "--contact", f"{CONTACT_NAME} <{CONTACT_EMAIL}>", "--item", item,
        )  # fmt: skip
        outputs.append(said)
        assert code == 0, said

        # The proposal goes out on the second connection, logged in with the password.
        await wait_for(lambda: relay.received, "the proposal reaches the relay")
        assert relay.logins[-1] and relay.refused_session is not None
        handle = client.get_workflow_handle(f"deal-{deal}")
        # The mailbox refuses the worker: the poller says so, and so does `inbox`.
        report = await wait_for(
            lambda: _trouble(client), "the poller reports the refused login", every=0.5
        )
        assert "IMAP login as sales refused" in report
        code, said = await run_cli(cli_env, "inbox")
        outputs.append(said)
        assert "IMAP login as sales refused" in said

        # Dovecot now takes the canary, and the buyer answers.
        take_the_canary(mailbox)
        mailbox.deliver(buyer_reply(relay.received[0].message))
        await wait_for(lambda: len(relay.received) >= 2, "the rep's task for the reply")
        code, said = await run_cli(cli_env, "inbox")
        outputs.append(said)
        assert code == 0 and "human_reply" in said, said
        # Side by side: the ones that succeed, and the ones that fail (an unknown deal, a
        # refused value, a Temporal that is away).
        away = {**cli_env, "DEALFLOW_TEMPORAL_ADDRESS": "127.0.0.1:9"}
        runs = [
            (0, cli_env, ("status", deal)),
            (0, cli_env, ("status", deal, "--json")),
            (0, cli_env, ("pipeline",)),
            (1, cli_env, ("status", "D-nobody")),
            (1, cli_env, ("discount", deal, "--percent", "250")),
            (1, away, ("status", deal)),
        ]
        results = await asyncio.gather(*(run_cli(env, *args) for _, env, args in runs))
        for (expected, _, _), (code, said) in zip(runs, results, strict=True):
            outputs.append(said)
            assert (code != 0) == bool(expected), said
        worker.stop()
        logs = tail(worker.log, characters=10_000_000)
        # The failures happened and were written down: the refused SMTP login (the log and
        # the deal's sending trouble) and the refused mailbox login (the worker's start).
        assert "Temporary authentication failure" in logs, logs[-3000:]
        assert "the reply mailbox sales@127.0.0.1" in logs and "cannot be read" in logs

        raw = without_codec(client)
        histories = [
            await raw.get_workflow_handle(workflow_id).fetch_history()
            for workflow_id in (handle.id, MAILBOX_POLLER_ID)
        ]
        codec = EncryptionCodec(parse_codec_keys(CODEC_KEYS))
        opened: list[str] = []
        for event in (event for history in histories for event in history.events):
            for _, payload in payloads_in(event):
                [plain] = await codec.decode([payload])
                opened.append(plain.data.decode("utf-8", errors="replace"))
        decrypted = "\n".join(opened)
        assert "Temporary authentication failure" in decrypted  # the send's trouble
        assert "IMAP login as sales refused" in decrypted  # the poller's trouble
        outbox = outbox_of(relay)
        assert outbox and len(outbox) == len(relay.received)
        traces = {
            "CLI output": "\n".join(outputs),
            "worker log": logs,
            "history (stored)": "\n".join(stored_text(history) for history in histories),
            "history (decrypted)": decrypted,
            "outbox": b"\n".join(outbox).decode("utf-8", errors="replace"),
        }
        canaries = [*SECRETS.values(), IMAP_PASSWORD, CODEC_KEYS.split("=", 1)[1]]
        if DATABASE_PASSWORD in ledger_url:
            canaries.append(DATABASE_PASSWORD)
        for where, text in traces.items():
            for canary in canaries:
                assert canary not in text, f"a secret is in the {where}"
        assert CODEC_KEY not in b"".join(outbox)
    finally:
        if worker is not None:
            worker.stop()
        server.stop()


async def _trouble(client: Client) -> str:
    """Why the poller cannot read the mailbox ("" while it can, or before it runs)."""
    try:
        return (await inbox(client)).trouble
    except Refused:
        return ""


# --- the codec server (part 7) ---


async def test_the_codec_server_is_off_without_a_token(deals: Deals) -> None:
    served = deals.settings.model_copy(
        update={"http_port": free_port(), "codec_server_token": None}
    )
    async with (
        running_endpoints(served, deals.client) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        for path in ("/codec/decode", "/codec/encode"):
            answer = await http.post(path, content=b'{"payloads": []}')
            assert answer.status_code == 404
        assert (
            await http.options("/codec/decode", headers={"Origin": UI_ORIGIN})
        ).status_code == 404


async def test_the_codec_server_decodes_for_the_ui_with_its_token(deals: Deals) -> None:
    handle = await deals.start(**canary_deal())
    await stage_is(handle, Stage.PROPOSAL_RECEIVED)
    raw = await without_codec(deals.client).get_workflow_handle(handle.id).fetch_history()
    sealed = raw.events[0].workflow_execution_started_event_attributes.input
    assert sealed.payloads[0].metadata["encoding"] == ENCODING
    token = SECRETS["codec_server_token"]
    served = deals.settings.model_copy(update={"http_port": free_port()})
    body = json_format.MessageToJson(sealed)
    async with (
        running_endpoints(served, deals.client) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        # The UI's preflight: answered for its origin only.
        asked = {"Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST"}
        preflight = await http.options("/codec/decode", headers=asked)
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == UI_ORIGIN
        assert "x-namespace" in preflight.headers["access-control-allow-headers"]
        stranger = await http.options("/codec/decode", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in stranger.headers

        for headers in ({}, {"Authorization": "Bearer " + "x" * len(token)}):
            refused = await http.post("/codec/decode", content=body, headers=headers)
            assert refused.status_code == 401
        refused = await http.post(f"/codec/{'y' * 40}/decode", content=body)
        assert refused.status_code == 401

        # With the token, in the header or as the UI's path segment.
        for path, headers in (
            ("/codec/decode", {"Authorization": f"Bearer {token}", "Origin": UI_ORIGIN}),
            (f"/codec/{token}/decode", {"Origin": UI_ORIGIN, "X-Namespace": "default"}),
        ):
            answer = await http.post(path, content=body, headers=headers)
            assert answer.status_code == 200, answer.text
            assert answer.headers["access-control-allow-origin"] == UI_ORIGIN
            opened = json_format.Parse(answer.text, Payloads())
            assert CONTACT_EMAIL.encode() in opened.payloads[0].data
            assert opened.payloads[0].metadata["encoding"] != ENCODING

        # Encode, then decode: the round trip the UI makes for a signal it sends.
        auth = {"Authorization": f"Bearer {token}"}
        plain = json_format.MessageToJson(
            Payloads(payloads=[Payload(metadata={"encoding": b"json/plain"}, data=b'"hi"')])
        )
        encoded = await http.post("/codec/encode", content=plain, headers=auth)
        assert encoded.status_code == 200
        assert (
            json_format.Parse(encoded.text, Payloads()).payloads[0].metadata["encoding"] == ENCODING
        )
        decoded = await http.post("/codec/decode", content=encoded.text, headers=auth)
        assert json_format.Parse(decoded.text, Payloads()).payloads[0].data == b'"hi"'

        garbage = await http.post("/codec/decode", content=b"not json", headers=auth)
        assert garbage.status_code == 400 and "payloads" in garbage.text
